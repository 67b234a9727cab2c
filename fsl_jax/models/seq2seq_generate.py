"""Marian / mBART generation: the encoder once, then `fsl_jax.decoding`.

The encoder runs once and cross-attention keys/values are computed once per
layer; the decoder start token is the prefill, then the decoding engine runs
the decoder one token per step against a fixed-size KV cache, all in one jit.
Greedy (num_beams=1) and beam search are transformers' algorithms, so outputs
are token-identical to its `generate` on the same weights.

    gen = GenerationConfig(num_beams=4, max_new_tokens=64)
    out_BxL = generate(cfg, params, input_ids_BxS, mask_BxS, gen)

Returned rows start with the decoder start token (as transformers returns
them) and are padded with the pad token after EOS.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import decoding
from fsl_jax.models import seq2seq
from fsl_jax.models.seq2seq import AdapterConfig, Seq2SeqConfig


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Decoding options (hashable: jit-static). `None` fields fall back to the model config."""
  max_new_tokens: int = 64
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = False  # True | False | "never", as in transformers
  min_new_tokens: int = 0  # EOS is banned before this many new tokens
  forced_bos_token_id: int | None = None  # e.g. the mBART target language id
  forced_eos_token_id: int | None = -1  # -1: take the model config's
  bad_token_ids: tuple[int, ...] = ()  # never generated (opus-mt bans the pad token)

  @classmethod
  def from_max_length(cls, max_length: int, **kw) -> "GenerationConfig":
    """transformers' `max_length` counts the decoder start token."""
    return cls(max_new_tokens=max_length - 1, **kw)

  def processors(self, cfg: Seq2SeqConfig) -> decoding.Processors:
    eos = cfg.forced_eos_token_id if self.forced_eos_token_id == -1 else self.forced_eos_token_id
    return decoding.Processors(bad_token_ids=tuple(self.bad_token_ids),
                               min_new_tokens=self.min_new_tokens,
                               forced_bos_token_id=self.forced_bos_token_id,
                               forced_eos_token_id=eos)


def _step_fn(cfg, params, enc_kv, enc_mask_BxS, adapter_cfg) -> decoding.StepFn:
  """(tokens_B, {"cache", "pos"}) -> (logits_BxV, state); the encoder side is closed over."""

  def step(tokens_B, state):
    logits_Bx1xV, cache = seq2seq.decode(cfg, params, tokens_B[:, None], enc_kv, enc_mask_BxS,
                                         state["cache"], offset=state["pos"],
                                         adapter_cfg=adapter_cfg)
    return logits_Bx1xV[:, 0], {"cache": cache, "pos": state["pos"] + 1}
  return step


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _generate(cfg, params, input_ids_BxS, mask_BxS, gen, adapter_cfg):
  """New tokens BxN (N = gen.max_new_tokens), pad after EOS."""
  b, n = input_ids_BxS.shape[0], gen.max_new_tokens
  enc_BxSxD = seq2seq.encode(cfg, params, input_ids_BxS, mask_BxS, adapter_cfg)
  enc_kv = seq2seq.cross_kv(cfg, params, enc_BxSxD)
  state = {"cache": seq2seq.init_cache(cfg, b, n + 1, enc_BxSxD.dtype),
           "pos": jnp.zeros((), jnp.int32)}
  start_B = jnp.full((b,), cfg.decoder_start_token_id, jnp.int32)
  first_logits_BxV, state = _step_fn(cfg, params, enc_kv, mask_BxS, adapter_cfg)(start_B, state)
  beams = max(gen.num_beams, 1)  # the engine repeats the state; the encoder side is repeated here
  step = _step_fn(cfg, params, decoding.expand(enc_kv, beams), decoding.expand(mask_BxS, beams),
                  adapter_cfg)
  pad = cfg.eos_token_id if cfg.pad_token_id is None else cfg.pad_token_id
  return decoding.decode(step, state, first_logits_BxV, n, "beam" if beams > 1 else "greedy",
                         eos_id=cfg.eos_token_id, pad_id=pad, processors=gen.processors(cfg),
                         num_beams=beams, length_penalty=gen.length_penalty,
                         early_stopping=gen.early_stopping)


def generate(cfg: Seq2SeqConfig, params, input_ids_BxS, attention_mask_BxS=None,
             gen: GenerationConfig = GenerationConfig(),
             adapter_cfg: AdapterConfig | None = None) -> np.ndarray:
  """Token ids [B, L] (start token first), cropped like transformers' output.

  L - 1 is the longest row's length up to and including its EOS.
  """
  input_ids = jnp.asarray(input_ids_BxS, jnp.int32)
  mask = (jnp.ones_like(input_ids, bool) if attention_mask_BxS is None
          else jnp.asarray(attention_mask_BxS).astype(bool))
  if gen.max_new_tokens >= cfg.max_position_embeddings:
    raise ValueError(f"max_new_tokens={gen.max_new_tokens} exceeds the model's "
                     f"{cfg.max_position_embeddings} positions.")
  new_BxN = np.asarray(_generate(cfg, params, input_ids, mask, gen, adapter_cfg))
  is_eos_BxN = new_BxN == cfg.eos_token_id
  len_B = np.where(is_eos_BxN.any(1), is_eos_BxN.argmax(1) + 1, new_BxN.shape[1])
  start_Bx1 = np.full((new_BxN.shape[0], 1), cfg.decoder_start_token_id, new_BxN.dtype)
  return np.concatenate([start_Bx1, new_BxN], axis=1)[:, :1 + int(len_B.max())]


def strip(ids_L, cfg: Seq2SeqConfig, drop: tuple[int, ...] = ()) -> list[int]:
  """Generated ids without the start token, stopping at EOS, pads dropped."""
  out = []
  for t in list(ids_L)[1:]:
    t = int(t)
    if t == cfg.eos_token_id:
      break
    if t != cfg.pad_token_id and t not in drop:
      out.append(t)
  return out
