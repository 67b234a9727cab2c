"""GPT-2 generation: the prompt prefills a KV cache, then `fsl_jax.decoding` runs.

    out_BxN = gpt2_generate.generate(config, params, ids_BxT, mask_BxT, max_new_tokens=20)
    out_BxN = gpt2_generate.generate(..., method="sample", temperature=0.7, top_p=0.9, rng=key)
    out_BxRxN = gpt2_generate.generate(..., method="beam", num_beams=4, num_return_sequences=R)

Prompts are left-padded (mask 0 on the left); positions skip the padding, as
in transformers. A soft prompt (`soft_prompt_PxD`, prompt tuning) goes before
the prompt's embeddings in the prefill; prefix-tuning keys/values
(`prefix_kv`) fill the first cache slots. Both stay fixed while decoding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fsl_jax import decoding
from fsl_jax.models.gpt2 import Gpt2, Gpt2Config, init_cache


def prefill(config: Gpt2Config, params, ids_BxT, mask_BxT, max_new_tokens: int,
            soft_prompt_PxD=None, prefix_kv=None):
  """Runs the prompt (after an optional soft prompt) into a fresh cache.

  Returns (last logits BxV, cache). The cache has room for the prefix, the
  soft prompt, the prompt and `max_new_tokens`.
  """
  model = Gpt2(config)
  b, t = ids_BxT.shape
  mask_BxT = jnp.ones((b, t), jnp.bool_) if mask_BxT is None else mask_BxT.astype(jnp.bool_)
  embeds_BxTxD = model.apply({"params": params}, ids_BxT, method=Gpt2.embed)
  if soft_prompt_PxD is not None:
    p = soft_prompt_PxD.shape[0]
    prompt_BxPxD = jnp.broadcast_to(soft_prompt_PxD.astype(embeds_BxTxD.dtype),
                                    (b, p, embeds_BxTxD.shape[-1]))
    embeds_BxTxD = jnp.concatenate([prompt_BxPxD, embeds_BxTxD], axis=1)
    mask_BxT = jnp.concatenate([jnp.ones((b, p), jnp.bool_), mask_BxT], axis=1)
  n_prefix = 0 if prefix_kv is None else prefix_kv[0]["k"].shape[-3]
  slots = n_prefix + embeds_BxTxD.shape[1] + max_new_tokens
  cache = init_cache(config, b, slots, prefix_kv=prefix_kv)
  logits_BxTxV, cache = model.apply({"params": params}, inputs_embeds_BxTxD=embeds_BxTxD,
                                    attention_mask_BxT=mask_BxT, cache=cache)
  return logits_BxTxV[:, -1], cache


def step_fn(config: Gpt2Config, params) -> decoding.StepFn:
  """The decoding step: (tokens_B, cache) -> (logits_BxV, cache)."""
  model = Gpt2(config)

  def step(tokens_B, cache):
    logits_Bx1xV, cache = model.apply({"params": params}, tokens_B[:, None], cache=cache)
    return logits_Bx1xV[:, 0], cache
  return step


@functools.partial(jax.jit, static_argnames=(
    "config", "max_new_tokens", "method", "processors", "top_k", "num_beams", "early_stopping",
    "num_return_sequences"))
def _generate(config, params, ids_BxT, mask_BxT, rng, soft_prompt_PxD, prefix_kv, *,
              max_new_tokens, method, eos_id, pad_id, processors, temperature, top_k, top_p,
              num_beams, length_penalty, early_stopping, num_return_sequences):
  logits_BxV, cache = prefill(config, params, ids_BxT, mask_BxT, max_new_tokens,
                              soft_prompt_PxD, prefix_kv)
  return decoding.decode(
      step_fn(config, params), cache, logits_BxV, max_new_tokens, method, eos_id=eos_id,
      pad_id=pad_id, processors=processors, rng=rng, temperature=temperature, top_k=top_k,
      top_p=top_p, num_beams=num_beams, length_penalty=length_penalty,
      early_stopping=early_stopping, num_return_sequences=num_return_sequences)


def generate(config: Gpt2Config, params, ids_BxT, mask_BxT=None, max_new_tokens: int = 20,
             method: str = "greedy", *, eos_id: int | None = -1, pad_id: int | None = None,
             rng=None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             num_beams: int = 4, length_penalty: float = 1.0, early_stopping=False,
             num_return_sequences: int = 1, min_new_tokens: int = 0,
             bad_token_ids: tuple[int, ...] = (), soft_prompt_PxD=None,
             prefix_kv=None) -> jax.Array:
  """New tokens BxN (N = max_new_tokens), `pad_id` after EOS; jitted, KV-cached.

  eos_id=-1 means the config's EOS; None never stops. pad_id defaults to the
  EOS id (as transformers). min_new_tokens bans EOS before that many tokens;
  bad_token_ids are never generated. method='beam' with num_return_sequences
  R > 1 gives BxRxN, best first.
  """
  eos_id = config.eos_token_id if eos_id == -1 else eos_id
  pad_id = (eos_id if eos_id is not None else 0) if pad_id is None else pad_id
  ids_BxT = jnp.asarray(ids_BxT, jnp.int32)
  extra = 0 if soft_prompt_PxD is None else soft_prompt_PxD.shape[0]
  if ids_BxT.shape[1] + extra + max_new_tokens > config.n_positions:
    raise ValueError(f"Prompt ({ids_BxT.shape[1]} tokens + {extra} soft) + max_new_tokens "
                     f"({max_new_tokens}) exceeds the {config.n_positions} positions of "
                     f"{config.name}; shorten the prompt or max_new_tokens.")
  mask_BxT = jnp.ones_like(ids_BxT, jnp.bool_) if mask_BxT is None else jnp.asarray(mask_BxT, bool)
  rng = jax.random.key(0) if rng is None else rng
  processors = decoding.Processors(bad_token_ids=tuple(int(i) for i in bad_token_ids),
                                   min_new_tokens=int(min_new_tokens))
  return _generate(config, params, ids_BxT, mask_BxT, rng, soft_prompt_PxD, prefix_kv,
                   max_new_tokens=int(max_new_tokens), method=method,
                   eos_id=jnp.int32(-1 if eos_id is None else eos_id), pad_id=jnp.int32(pad_id),
                   processors=processors, temperature=float(temperature), top_k=int(top_k),
                   top_p=float(top_p), num_beams=int(num_beams),
                   length_penalty=float(length_penalty), early_stopping=early_stopping,
                   num_return_sequences=int(num_return_sequences))
