"""Soft prompt tuning (Lester et al., 2021): P learned vectors before the input.

The prompt is one [P, D] array; the model and its embedding stay frozen.

    prompt_PxD = prompt.init(key, wte_VxD, 20, how="vocab")
    embeds, mask = prompt.prepend(prompt_PxD, embeds_BxTxD, mask_BxT)

Position ids then come from the extended mask (the prompt takes positions
0..P-1 and shifts the text), and at generation the prompt is run through the
KV cache as part of the prefill (`gpt2_generate.generate(..., soft_prompt_PxD=)`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

INITS = ("random", "vocab", "text")


def init(key: jax.Array, wte_VxD: jax.Array, n_tokens: int, how: str = "vocab",
         text_ids: Sequence[int] | None = None, sample_from: int = 5000) -> jax.Array:
  """A [n_tokens, D] prompt.

  how="random": N(0, std of the embedding matrix);
  how="vocab": rows of `n_tokens` distinct ids drawn from the first
    `sample_from` vocabulary entries (BPE ids are roughly frequency ordered);
  how="text": the embeddings of `text_ids`, repeated or cut to n_tokens.
  """
  v, d = wte_VxD.shape
  wte_VxD = jnp.asarray(wte_VxD, jnp.float32)
  if n_tokens <= 0:
    raise ValueError(f"n_tokens must be positive, got {n_tokens}.")
  if how == "random":
    return jax.random.normal(key, (n_tokens, d)) * jnp.std(wte_VxD)
  if how == "vocab":
    pool = min(sample_from, v)
    ids = jax.random.choice(key, pool, (n_tokens,), replace=n_tokens > pool)
    return wte_VxD[ids]
  if how == "text":
    if not text_ids:
      raise ValueError("how='text' needs text_ids (the tokenized init text).")
    ids = jnp.resize(jnp.asarray(list(text_ids), jnp.int32), (n_tokens,))
    return wte_VxD[ids]
  raise ValueError(f"Unknown prompt init {how!r}; use one of {INITS}.")


def prepend(prompt_PxD: jax.Array, embeds_BxTxD: jax.Array, mask_BxT: jax.Array | None = None
            ) -> tuple[jax.Array, jax.Array]:
  """[prompt; embeds] and the mask extended with P ones."""
  b, t, d = embeds_BxTxD.shape
  p = prompt_PxD.shape[0]
  if prompt_PxD.shape[1] != d:
    raise ValueError(f"Prompt width {prompt_PxD.shape[1]} != model width {d}.")
  if mask_BxT is None:
    mask_BxT = jnp.ones((b, t), jnp.bool_)
  prompt_BxPxD = jnp.broadcast_to(prompt_PxD.astype(embeds_BxTxD.dtype), (b, p, d))
  return (jnp.concatenate([prompt_BxPxD, embeds_BxTxD], axis=1),
          jnp.concatenate([jnp.ones((b, p), jnp.bool_), mask_BxT.astype(jnp.bool_)], axis=1))
