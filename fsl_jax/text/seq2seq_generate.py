"""Cached greedy and beam-search decoding for `fsl_jax.models.seq2seq`.

The encoder runs once; cross-attention keys/values are computed once per
layer; the decoder runs one token per step against a fixed-size KV cache, all
inside one jitted `lax.while_loop`. The beam search follows the same
static-shape algorithm as transformers' `generate` (top 2K continuations,
finished-hypothesis pool with length penalty `score / len ** length_penalty`,
the same early-stop heuristic and `early_stopping` modes), so outputs are
token-identical to it on the same weights.

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

from fsl_jax.models import seq2seq
from fsl_jax.models.seq2seq import AdapterConfig, Seq2SeqConfig

BIG = -1.0e9


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Decoding options (hashable: jit-static). `None` fields fall back to the model config."""
  max_new_tokens: int = 64
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = False  # True | False | "never", as in transformers
  forced_bos_token_id: int | None = None  # e.g. the mBART target language id
  forced_eos_token_id: int | None = -1  # -1: take the model config's
  bad_token_ids: tuple[int, ...] = ()  # never generated (opus-mt bans the pad token)

  @classmethod
  def from_max_length(cls, max_length: int, **kw) -> "GenerationConfig":
    """transformers' `max_length` counts the decoder start token."""
    return cls(max_new_tokens=max_length - 1, **kw)


def _process(cfg: Seq2SeqConfig, gen: GenerationConfig, scores_NxV, cur_len, max_length):
  """Logits processors, in transformers' order: bad words, forced BOS, forced EOS."""
  v = scores_NxV.shape[-1]
  if gen.bad_token_ids:
    bad = jnp.zeros((v,), bool).at[jnp.asarray(gen.bad_token_ids)].set(True)
    scores_NxV = jnp.where(bad, -jnp.inf, scores_NxV)
  bos = gen.forced_bos_token_id
  if bos is not None:
    forced = jnp.where(jnp.arange(v) == bos, 0.0, -jnp.inf)  # transformers sets it to 0
    scores_NxV = jnp.where(cur_len == 1, forced, scores_NxV)
  eos = cfg.forced_eos_token_id if gen.forced_eos_token_id == -1 else gen.forced_eos_token_id
  if eos is not None:
    forced = jnp.where(jnp.arange(v) == eos, 0.0, -jnp.inf)
    scores_NxV = jnp.where(cur_len == max_length - 1, forced, scores_NxV)
  return scores_NxV


def _step(cfg, params, adapter_cfg, tokens_N, cur_len, cache, enc_kv, enc_mask):
  """Logits [N, V] for the token at position cur_len - 1."""
  logits, cache = seq2seq.decode(cfg, params, tokens_N[:, None], enc_kv, enc_mask, cache,
                                 offset=cur_len - 1, adapter_cfg=adapter_cfg)
  return logits[:, 0], cache


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _greedy(cfg, params, input_ids, mask, gen, adapter_cfg):
  b = input_ids.shape[0]
  max_length = gen.max_new_tokens + 1
  enc = seq2seq.encode(cfg, params, input_ids, mask, adapter_cfg)
  enc_kv = seq2seq.cross_kv(cfg, params, enc)
  tokens = jnp.full((b, max_length), cfg.pad_token_id, jnp.int32)
  tokens = tokens.at[:, 0].set(cfg.decoder_start_token_id)
  state = dict(tokens=tokens, cur_len=jnp.int32(1), unfinished=jnp.ones((b,), bool),
               cache=seq2seq.init_cache(cfg, b, max_length, enc.dtype))

  def body(s):
    logits, cache = _step(cfg, params, adapter_cfg, s["tokens"][:, s["cur_len"] - 1], s["cur_len"],
                          s["cache"], enc_kv, mask)
    logits = _process(cfg, gen, logits, s["cur_len"], max_length)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nxt = jnp.where(s["unfinished"], nxt, cfg.pad_token_id)
    tokens = jax.lax.dynamic_update_slice_in_dim(s["tokens"], nxt[:, None], s["cur_len"], axis=1)
    unfinished = s["unfinished"] & (nxt != cfg.eos_token_id)
    return dict(tokens=tokens, cur_len=s["cur_len"] + 1, unfinished=unfinished, cache=cache)

  def cond(s):
    return jnp.any(s["unfinished"]) & (s["cur_len"] < max_length)

  out = jax.lax.while_loop(cond, body, state)
  return out["tokens"], out["cur_len"]


def _gather(x_BxKx, idx_BxJ):
  return jnp.take_along_axis(x_BxKx, idx_BxJ.reshape(idx_BxJ.shape + (1,) * (x_BxKx.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _beam(cfg, params, input_ids, mask, gen, adapter_cfg):
  b, k = input_ids.shape[0], gen.num_beams
  k2 = 2 * k  # transformers keeps (1 + number of EOS tokens) * K = 2K candidates
  max_length = gen.max_new_tokens + 1
  lp = gen.length_penalty
  enc = seq2seq.encode(cfg, params, input_ids, mask, adapter_cfg)
  enc_kv = [(jnp.repeat(kk, k, axis=0), jnp.repeat(vv, k, axis=0))
            for kk, vv in seq2seq.cross_kv(cfg, params, enc)]
  mask_n = jnp.repeat(mask, k, axis=0)
  fill = cfg.pad_token_id if cfg.pad_token_id else cfg.eos_token_id
  seqs = jnp.full((b, k, max_length), fill, jnp.int32).at[:, :, 0].set(cfg.decoder_start_token_id)
  state = dict(
      running=seqs, running_scores=jnp.zeros((b, k)).at[:, 1:].set(BIG),
      seqs=seqs, scores=jnp.full((b, k), BIG), lengths=jnp.zeros((b, k), jnp.int32),
      finished=jnp.zeros((b, k), bool), unsat=jnp.ones((b, 1), bool),
      cur_len=jnp.int32(1), done=jnp.bool_(False),
      cache=seq2seq.init_cache(cfg, b * k, max_length, enc.dtype))
  top_mask = jnp.arange(k2) < k

  def body(s):
    cur_len = s["cur_len"]
    tokens_n = s["running"][:, :, cur_len - 1].reshape(-1)
    logits, cache = _step(cfg, params, adapter_cfg, tokens_n, cur_len, s["cache"], enc_kv, mask_n)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = _process(cfg, gen, logp, cur_len, max_length)
    v = logp.shape[-1]
    logp = logp.reshape(b, k, v) + s["running_scores"][:, :, None]
    topk_logp, topk_idx = jax.lax.top_k(logp.reshape(b, k * v), k2)
    src_beam = topk_idx // v
    tok = (topk_idx % v).astype(jnp.int32)
    topk_seqs = _gather(s["running"], src_beam)
    topk_seqs = jax.lax.dynamic_update_slice_in_dim(topk_seqs, tok[:, :, None], cur_len, axis=2)
    hits = (tok == cfg.eos_token_id) | (cur_len + 1 >= max_length)

    # Running beams: the best K continuations that did not just finish.
    run_logp = topk_logp + hits.astype(jnp.float32) * BIG
    _, nxt = jax.lax.top_k(run_logp, k)
    running = _gather(topk_seqs, nxt)
    running_scores = _gather(run_logp, nxt)
    cache_src = _gather(src_beam, nxt)

    # Finished pool: merge new hypotheses (from the top K only) by penalised score.
    did = hits & top_mask[None, :]
    scored = topk_logp / ((cur_len + 1 - 1) ** lp)
    full = jnp.all(s["finished"], axis=-1, keepdims=True) & (gen.early_stopping is True)
    scored = scored + full.astype(jnp.float32) * BIG
    scored = scored + (~s["unsat"]).astype(jnp.float32) * BIG
    scored = scored + (~did).astype(jnp.float32) * BIG
    m_seqs = jnp.concatenate([s["seqs"], topk_seqs], axis=1)
    m_scores = jnp.concatenate([s["scores"], scored], axis=1)
    m_len = jnp.concatenate([s["lengths"], jnp.full((b, k2), cur_len, jnp.int32)], axis=1)
    m_fin = jnp.concatenate([s["finished"], did], axis=1)
    _, keep = jax.lax.top_k(m_scores, k)
    seqs, scores = _gather(m_seqs, keep), _gather(m_scores, keep)
    lengths, finished = _gather(m_len, keep), _gather(m_fin, keep)

    flat_src = (jnp.arange(b)[:, None] * k + cache_src).reshape(-1)
    cache = jax.tree.map(lambda c: jnp.take(c, flat_src, axis=0), cache)
    cur_len = cur_len + 1

    # transformers' early-stop heuristic: can a running beam still beat the worst finished one?
    if gen.early_stopping == "never" and lp > 0.0:
      best_len = jnp.float32(max_length - 1)
    else:
      best_len = (cur_len - 1).astype(jnp.float32)
    best_running = running_scores[:, :1] / (best_len ** lp)
    worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), BIG)
    unsat = s["unsat"] & jnp.any(best_running > worst, axis=-1, keepdims=True)
    open_beam = ~(jnp.all(finished) & (gen.early_stopping is True))
    done = ~(jnp.any(unsat) & open_beam & ~jnp.all(hits))
    return dict(running=running, running_scores=running_scores, seqs=seqs, scores=scores,
                lengths=lengths, finished=finished, unsat=unsat, cur_len=cur_len, done=done,
                cache=cache)

  out = jax.lax.while_loop(lambda s: ~s["done"], body, state)
  return out["seqs"][:, 0], out["lengths"][:, 0], out["scores"][:, 0]


def generate(cfg: Seq2SeqConfig, params, input_ids_BxS, attention_mask_BxS=None,
             gen: GenerationConfig = GenerationConfig(), adapter_cfg: AdapterConfig | None = None,
             return_scores: bool = False):
  """Token ids [B, L] (start token first), cropped like transformers' output."""
  input_ids = jnp.asarray(input_ids_BxS, jnp.int32)
  mask = (jnp.ones_like(input_ids, bool) if attention_mask_BxS is None
          else jnp.asarray(attention_mask_BxS).astype(bool))
  if gen.max_new_tokens >= cfg.max_position_embeddings:
    raise ValueError(f"max_new_tokens={gen.max_new_tokens} exceeds the model's "
                     f"{cfg.max_position_embeddings} positions.")
  if gen.num_beams <= 1:
    tokens, cur_len = _greedy(cfg, params, input_ids, mask, gen, adapter_cfg)
    out = np.asarray(tokens)[:, :int(cur_len)]
    return (out, None) if return_scores else out
  seqs, lengths, scores = _beam(cfg, params, input_ids, mask, gen, adapter_cfg)
  out = np.asarray(seqs)[:, :int(np.max(np.asarray(lengths))) + 1]
  return (out, np.asarray(scores)) if return_scores else out


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
