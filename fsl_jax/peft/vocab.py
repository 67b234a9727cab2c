"""Special tokens and embedding resize with only the new rows trainable.

The base `wte` stays frozen and untouched; the N new rows are a separate
[N, D] array, concatenated at use:

    ids = vocab.add_special_tokens(tokenizer, ["<customer>", "<system>"])
    new_NxD = vocab.init_rows(key, base["wte"]["embedding"], len(ids))
    params = vocab.with_rows(base, new_NxD)      # wte is [V + N, D]
    config = config.replace(vocab_size=V + N)

Saving the tuned weights saves `new_NxD` alone; reloading concatenates it onto
the same base again, so a resized vocabulary never mismatches the checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
  """Adds tokens (never split by BPE); returns their ids in the same order."""
  tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)},
                               replace_extra_special_tokens=False)
  ids = tokenizer.convert_tokens_to_ids(list(tokens))
  if any(i is None or i == tokenizer.unk_token_id for i in ids):
    raise ValueError(f"Could not add special tokens {tokens}: got ids {ids}.")
  return list(ids)


def init_rows(key: jax.Array, wte_VxD: jax.Array, n_new: int) -> jax.Array:
  """New rows near the mean embedding (keeps initial logits sane)."""
  wte_VxD = jnp.asarray(wte_VxD, jnp.float32)
  mean_D = jnp.mean(wte_VxD, axis=0)
  std = jnp.std(wte_VxD)
  return mean_D[None] + 0.1 * std * jax.random.normal(key, (n_new, wte_VxD.shape[1]))


def with_rows(params: dict, new_NxD: jax.Array | None) -> dict:
  """Base params with `wte/embedding` extended by the new rows (base untouched)."""
  if new_NxD is None or new_NxD.shape[0] == 0:
    return params
  wte = params["wte"]["embedding"]
  if new_NxD.shape[1] != wte.shape[1]:
    raise ValueError(f"New embedding rows have width {new_NxD.shape[1]}; the base has {wte.shape[1]}.")
  return {**params, "wte": {"embedding": jnp.concatenate([wte, new_NxD.astype(wte.dtype)], 0)}}
