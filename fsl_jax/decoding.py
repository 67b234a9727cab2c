"""One decoding engine for every language model: greedy, sampling, beam search.

A model plugs in through a step function and the state after its prompt:

    step(tokens_B: int32[B], state) -> (logits_BxV: float32, state)
    first_logits_BxV: the logits for the first new token (from the prefill).

    out_BxN = decoding.decode(step, state, first_logits_BxV, 20, "beam", eos_id=eos,
                              processors=decoding.Processors(bad_token_ids=(pad,)))

`state` is any pytree: a decoder-only KV cache, or a seq2seq decoder cache and
its write position. Beam search repeats it num_beams times along axis 0
(`expand`) and reorders it after every step (`gather`): every leaf with
ndim >= 1 must be batch-leading; scalars (a shared write index) are left alone.
What the step only reads (encoder keys/values) is better closed over, repeated
once with `expand`, than carried in the state and reordered at every step.

Logits processors (`Processors`) act in one place, in transformers' order: on
the logits for greedy and sampling, on the log-probabilities for beam search,
as transformers' `generate` does. Every loop is a `lax.while_loop` with static
shapes that stops once every sequence is done, so a whole decode jits as one.

Outputs are int32 [B, max_new_tokens] ([B, R, max_new_tokens] for beam search
with num_return_sequences R > 1), `pad_id` after EOS (EOS itself kept).
`eos_id < 0` disables stopping; eos_id and pad_id may be traced. Beam search
follows transformers (num_beams, length_penalty, early_stopping
True/False/"never"): the same 2*num_beams candidate pool, finished-hypothesis
scores sum_logprobs / generated_len ** length_penalty and the same stop heuristic.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
NEG = -1.0e9
METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class Processors:
  """Logits processors (hashable: jit-static). `t` counts the tokens generated so far."""
  bad_token_ids: tuple[int, ...] = ()  # never generated (single-token bad_words_ids)
  min_new_tokens: int = 0  # EOS is banned while t < min_new_tokens
  forced_bos_token_id: int | None = None  # the only choice at t == 0 (mBART's target language)
  forced_eos_token_id: int | None = None  # the only choice at t == max_new_tokens - 1

  def __call__(self, scores_NxV, t, max_new_tokens: int, eos_id):
    """Bad tokens, min new tokens, forced BOS, forced EOS: transformers' order."""
    vocab_V = jnp.arange(scores_NxV.shape[-1])
    if self.bad_token_ids:
      bad_V = jnp.isin(vocab_V, jnp.asarray(self.bad_token_ids))
      scores_NxV = jnp.where(bad_V, -jnp.inf, scores_NxV)
    if self.min_new_tokens > 0:
      early_eos_V = (vocab_V == eos_id) & (t < self.min_new_tokens)
      scores_NxV = jnp.where(early_eos_V, -jnp.inf, scores_NxV)
    for token, at in ((self.forced_bos_token_id, 0),
                      (self.forced_eos_token_id, max_new_tokens - 1)):
      if token is not None:  # transformers sets the forced token to 0, the rest to -inf
        forced_V = jnp.where(vocab_V == token, 0.0, -jnp.inf)
        scores_NxV = jnp.where(t == at, forced_V, scores_NxV)
    return scores_NxV


def filter_logits(logits_BxV, temperature=1.0, top_k: int = 0, top_p=1.0):
  """Temperature, then top-k, then nucleus (top-p) filtering, as transformers."""
  logits_BxV = logits_BxV / jnp.asarray(temperature, logits_BxV.dtype)
  if top_k and top_k > 0:
    kth_B = jax.lax.top_k(logits_BxV, min(top_k, logits_BxV.shape[-1]))[0][:, -1]
    logits_BxV = jnp.where(logits_BxV < kth_B[:, None], -jnp.inf, logits_BxV)
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  keep_BxV = mass_before_BxV < top_p
  keep_BxV = keep_BxV.at[:, 0].set(True)
  # Threshold: the smallest kept logit; ties at the threshold are kept.
  n_keep_B = jnp.sum(keep_BxV, axis=-1)
  thresh_B = jnp.take_along_axis(sorted_BxV, (n_keep_B - 1)[:, None], axis=-1)
  filtered = jnp.where(logits_BxV < thresh_B, -jnp.inf, logits_BxV)
  return jnp.where(jnp.asarray(top_p) < 1.0, filtered, logits_BxV)


def _loop(step: StepFn, state, first_logits_BxV, max_new_tokens, eos_id, pad_id, processors,
          choose):
  """The greedy / sampling loop; `choose(scores_BxV, i) -> tokens_B`."""
  b = first_logits_BxV.shape[0]
  out_BxN = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  done_B = jnp.zeros((b,), jnp.bool_)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, out_BxN, done_B, logits_BxV, state = carry
    scores_BxV = processors(logits_BxV, i, max_new_tokens, eos_id)
    tok_B = choose(scores_BxV, i).astype(jnp.int32)
    tok_B = jnp.where(done_B, pad_id, tok_B)
    out_BxN = jax.lax.dynamic_update_slice_in_dim(out_BxN, tok_B[:, None], i, axis=1)
    done_B = done_B | ((tok_B == eos_id) & (eos_id >= 0))
    # The last token needs no forward pass.
    logits_BxV, state = jax.lax.cond(
        i + 1 < max_new_tokens, lambda s: step(tok_B, s), lambda s: (logits_BxV, s), state)
    return i + 1, out_BxN, done_B, logits_BxV, state

  carry = (jnp.zeros((), jnp.int32), out_BxN, done_B,
           first_logits_BxV.astype(jnp.float32), state)
  return jax.lax.while_loop(cond, body, carry)[1]


def greedy(step: StepFn, state, first_logits_BxV, max_new_tokens: int, eos_id: int = -1,
           pad_id: int = 0, processors: Processors = Processors()) -> jax.Array:
  return _loop(step, state, first_logits_BxV, max_new_tokens, eos_id, pad_id, processors,
               lambda scores_BxV, i: jnp.argmax(scores_BxV, axis=-1))


def sample(step: StepFn, state, first_logits_BxV, max_new_tokens: int, eos_id: int = -1,
           pad_id: int = 0, rng: jax.Array | None = None, *, temperature=1.0,
           top_k: int = 0, top_p=1.0, processors: Processors = Processors()) -> jax.Array:
  """Processors, then temperature / top-k / top-p, then a draw (token i uses fold_in(rng, i))."""
  rng = jax.random.key(0) if rng is None else rng

  def choose(scores_BxV, i):
    scores_BxV = filter_logits(scores_BxV, temperature, top_k, top_p)
    return jax.random.categorical(jax.random.fold_in(rng, i), scores_BxV, axis=-1)

  return _loop(step, state, first_logits_BxV, max_new_tokens, eos_id, pad_id, processors,
               choose)


def expand(state, n: int):
  """Repeats every batch-leading leaf n times (example-major: b0,b0,..,b1,..)."""
  return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0) if jnp.ndim(x) >= 1 else x, state)


def gather(state, index_N: jax.Array):
  return jax.tree.map(lambda x: x[index_N] if jnp.ndim(x) >= 1 else x, state)


def _take(x_BxKx, idx_BxM):
  """Per-example gather along axis 1."""
  extra = x_BxKx.ndim - 2
  return jnp.take_along_axis(x_BxKx, idx_BxM.reshape(idx_BxM.shape + (1,) * extra), axis=1)


def beam_search(step: StepFn, state, first_logits_BxV, max_new_tokens: int, eos_id: int = -1,
                pad_id: int = 0, *, num_beams: int = 4, length_penalty=1.0,
                early_stopping: bool | str = False, num_return_sequences: int = 1,
                processors: Processors = Processors()) -> tuple[jax.Array, jax.Array]:
  """Returns (best sequences BxN, their scores B), `state` for B examples.

  Matches transformers' vectorised beam search with one EOS id. The state
  and first logits are expanded to B*num_beams internally. With
  `num_return_sequences` R > 1 returns the R best finished hypotheses per
  example, best first: (BxRxN, BxR) (transformers flattens them to B*R rows).
  """
  b, v = first_logits_BxV.shape
  nb, n = num_beams, max_new_tokens
  if not 1 <= num_return_sequences <= nb:
    raise ValueError(f"num_return_sequences={num_return_sequences} must be between 1 and "
                     f"num_beams={nb}; raise num_beams to return more hypotheses.")
  k = 2 * nb
  lp = jnp.asarray(length_penalty, jnp.float32)
  state = expand(state, nb)
  logits_NxV = jnp.repeat(first_logits_BxV.astype(jnp.float32), nb, axis=0)
  running_BxMxN = jnp.full((b, nb, n), pad_id, jnp.int32)
  running_scores_BxM = jnp.tile(jnp.array([0.0] + [NEG] * (nb - 1), jnp.float32), (b, 1))
  top_mask_K = jnp.arange(k) < nb
  flat_offset_Bx1 = (jnp.arange(b) * nb)[:, None]

  def body(c):
    t = c["t"]
    logits_NxV, state = jax.lax.cond(
        t > 0, lambda s: step(c["running"][:, :, t - 1].reshape(-1), s),
        lambda s: (c["logits"], s), c["state"])
    logp_NxV = processors(jax.nn.log_softmax(logits_NxV, axis=-1), t, n, eos_id)
    logp_BxMV = (logp_NxV.reshape(b, nb, v) + c["running_scores"][:, :, None]).reshape(b, nb * v)
    topk_lp_BxK, topk_idx_BxK = jax.lax.top_k(logp_BxMV, k)
    beam_BxK, tok_BxK = topk_idx_BxK // v, (topk_idx_BxK % v).astype(jnp.int32)
    topk_seq_BxKxN = _take(c["running"], beam_BxK)
    topk_seq_BxKxN = topk_seq_BxKxN.at[:, :, t].set(tok_BxK)
    hits_BxK = jnp.broadcast_to(t + 1 >= n, (b, k))
    hits_BxK = hits_BxK | ((tok_BxK == eos_id) & (eos_id >= 0))
    # Running beams: best num_beams that did not finish.
    run_lp_BxK = topk_lp_BxK + hits_BxK.astype(jnp.float32) * NEG
    next_BxM = jax.lax.top_k(run_lp_BxK, nb)[1]
    running = _take(topk_seq_BxKxN, next_BxM)
    running_scores = _take(run_lp_BxK, next_BxM)
    src_beam_BxM = _take(beam_BxK, next_BxM)
    # Finished hypotheses: merge newly finished top-num_beams candidates.
    did_BxK = hits_BxK & top_mask_K[None]
    fin_lp_BxK = topk_lp_BxK / (jnp.asarray(t + 1, jnp.float32) ** lp)
    full_Bx1 = jnp.all(c["finished"], axis=-1, keepdims=True) & (early_stopping is True)
    fin_lp_BxK += full_Bx1.astype(jnp.float32) * NEG
    fin_lp_BxK += (~c["unsat"]).astype(jnp.float32) * NEG
    fin_lp_BxK += (~did_BxK).astype(jnp.float32) * NEG
    m_seq = jnp.concatenate([c["seqs"], topk_seq_BxKxN], axis=1)
    m_scores = jnp.concatenate([c["scores"], fin_lp_BxK], axis=1)
    m_fin = jnp.concatenate([c["finished"], did_BxK], axis=1)
    best_BxM = jax.lax.top_k(m_scores, nb)[1]
    seqs, scores = _take(m_seq, best_BxM), _take(m_scores, best_BxM)
    finished = _take(m_fin, best_BxM)
    state = gather(state, (src_beam_BxM + flat_offset_Bx1).reshape(-1))
    # Stop heuristic (transformers' _check_early_stop_heuristic).
    t1 = t + 1
    if early_stopping == "never":
      best_len = jnp.where(lp > 0, jnp.asarray(n, jnp.float32), t1.astype(jnp.float32))
    else:
      best_len = t1.astype(jnp.float32)
    best_possible_Bx1 = running_scores[:, :1] / (best_len ** lp)
    worst_BxM = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), NEG)
    unsat = c["unsat"] & jnp.any(best_possible_Bx1 > worst_BxM, axis=-1, keepdims=True)
    go = (jnp.any(unsat) & ~(jnp.all(finished) & (early_stopping is True))
          & ~jnp.all(hits_BxK) & (t1 < n))
    return {"t": t1, "logits": logits_NxV, "state": state, "running": running,
            "running_scores": running_scores, "seqs": seqs, "scores": scores,
            "finished": finished, "unsat": unsat, "go": go}

  carry = {"t": jnp.zeros((), jnp.int32), "logits": logits_NxV, "state": state,
           "running": running_BxMxN, "running_scores": running_scores_BxM,
           "seqs": running_BxMxN, "scores": jnp.full((b, nb), NEG, jnp.float32),
           "finished": jnp.zeros((b, nb), jnp.bool_), "unsat": jnp.ones((b, 1), jnp.bool_),
           "go": jnp.asarray(n > 0)}
  out = jax.lax.while_loop(lambda c: c["go"], body, carry)
  # Finished hypotheses stay sorted by score (top_k), best first.
  if num_return_sequences == 1:
    return out["seqs"][:, 0], out["scores"][:, 0]
  return out["seqs"][:, :num_return_sequences], out["scores"][:, :num_return_sequences]


def decode(step: StepFn, state, first_logits_BxV, max_new_tokens: int, method: str = "greedy",
           *, eos_id=-1, pad_id=0, processors: Processors = Processors(), rng=None,
           temperature=1.0, top_k: int = 0, top_p=1.0, num_beams: int = 4, length_penalty=1.0,
           early_stopping: bool | str = False, num_return_sequences: int = 1) -> jax.Array:
  """New tokens by `method` ("greedy" | "sample" | "beam"): BxN, or BxRxN for R beams."""
  if method not in METHODS:
    raise ValueError(f"Unknown decoding method {method!r}; use one of {METHODS}.")
  if num_return_sequences != 1 and method != "beam":
    raise ValueError(f"num_return_sequences={num_return_sequences} needs method='beam' "
                     f"(got {method!r}); for several samples, call with different rng keys.")
  args = (step, state, first_logits_BxV, max_new_tokens, eos_id, pad_id)
  if method == "greedy":
    return greedy(*args, processors=processors)
  if method == "sample":
    return sample(*args, rng, temperature=temperature, top_k=top_k, top_p=top_p,
                  processors=processors)
  return beam_search(*args, num_beams=num_beams, length_penalty=length_penalty,
                     early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                     processors=processors)[0]
