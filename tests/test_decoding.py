"""Model-agnostic decoding on a toy bigram 'model' (tiny, fast)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import decoding

V = 6


def _bigram(seed=0):
  """State = (last token per row, a per-row step counter); logits from a table."""
  table_VxV = jax.random.normal(jax.random.key(seed), (V, V)) * 2.0

  def step(tok_B, state):
    return table_VxV[tok_B], {"last": tok_B, "count": state["count"] + 1, "index": state["index"] + 1}

  return table_VxV, step


def _start(table, first_B):
  state = {"last": jnp.asarray(first_B), "count": jnp.zeros(len(first_B), jnp.int32),
           "index": jnp.zeros((), jnp.int32)}
  return state, table[jnp.asarray(first_B)]


def test_greedy_follows_argmax_chain_and_stops_at_eos():
  table, step = _bigram()
  state, first = _start(table, [0, 3])
  out = np.asarray(decoding.greedy(step, state, first, 8, eos_id=-1, pad_id=9))
  t = np.asarray(table)
  for row, start in zip(out, [0, 3]):
    cur = start
    for tok in row:
      cur = int(np.argmax(t[cur]))
      assert tok == cur
  eos = int(out[0, 2])
  stopped = np.asarray(decoding.greedy(step, state, first, 8, eos_id=eos, pad_id=9))
  k = list(stopped[0]).index(eos)
  assert (stopped[0, k + 1:] == 9).all() and k <= 2


def test_filter_logits_matches_transformers_warpers():
  torch = pytest.importorskip("torch")
  lp = pytest.importorskip("transformers.generation.logits_process")
  logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 3
  for temp, k, p in [(1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 10, 0.5), (1.0, 0, 0.05)]:
    ref = torch.tensor(logits)
    ref = lp.TemperatureLogitsWarper(temp)(None, ref)
    if k:
      ref = lp.TopKLogitsWarper(k)(None, ref)
    if p < 1.0:
      ref = lp.TopPLogitsWarper(p)(None, ref)
    ours = np.asarray(jax.jit(decoding.filter_logits, static_argnums=2)(
        jnp.asarray(logits), temp, k, p))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref.numpy()))
    fin = np.isfinite(ours)
    np.testing.assert_allclose(ours[fin], ref.numpy()[fin], rtol=1e-6)


def test_sampling_follows_distribution():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1, 1e-9, 1e-9, 1e-9]]))
  logits = jnp.repeat(logits, 4000, axis=0)
  step = lambda tok, s: (logits, s)
  out = np.asarray(decoding.sample(step, {"i": jnp.zeros(4000)}, logits, 1, rng=jax.random.key(0)))
  freq = np.bincount(out[:, 0], minlength=V) / 4000
  np.testing.assert_allclose(freq[:3], [0.7, 0.2, 0.1], atol=0.03)
  top1 = np.asarray(decoding.sample(step, {"i": jnp.zeros(4000)}, logits, 1, top_p=0.5,
                                    rng=jax.random.key(1)))
  assert (top1 == 0).all()


def test_beam_search_finds_best_sequence_without_eos():
  """With no EOS, length_penalty irrelevant: beams >= V^1 covers the exact optimum for 2 steps."""
  table, step = _bigram(1)
  state, first = _start(table, [2])
  logp = np.asarray(jax.nn.log_softmax(table, -1))
  first_lp = np.asarray(jax.nn.log_softmax(first, -1))[0]
  best = max(itertools.product(range(V), repeat=2),
             key=lambda s: first_lp[s[0]] + logp[s[0], s[1]])
  seq, score = decoding.beam_search(step, state, first, 2, num_beams=V, length_penalty=0.0)
  assert tuple(np.asarray(seq[0])) == best
  np.testing.assert_allclose(float(score[0]), first_lp[best[0]] + logp[best[0], best[1]], rtol=1e-5)


def test_beam_search_returns_the_best_hypotheses_in_order():
  """num_return_sequences=R: the R best of all V^2 two-token sequences, best first."""
  table, step = _bigram(1)
  state, first = _start(table, [2])
  logp = np.asarray(jax.nn.log_softmax(table, -1))
  first_lp = np.asarray(jax.nn.log_softmax(first, -1))[0]
  score = lambda s: first_lp[s[0]] + logp[s[0], s[1]]
  ranked = sorted(itertools.product(range(V), repeat=2), key=score, reverse=True)
  seqs, scores = decoding.beam_search(step, state, first, 2, num_beams=V * V, length_penalty=0.0,
                                      num_return_sequences=3)
  assert seqs.shape == (1, 3, 2) and scores.shape == (1, 3)
  assert [tuple(s) for s in np.asarray(seqs[0])] == ranked[:3]
  np.testing.assert_allclose(np.asarray(scores[0]), [score(s) for s in ranked[:3]], rtol=1e-5)
  with pytest.raises(ValueError, match="num_beams"):
    decoding.beam_search(step, state, first, 2, num_beams=2, num_return_sequences=3)


def test_beam_search_reorders_state_with_beams():
  """A second-order model: logits depend on the state, so a wrong cache reorder
  gives a different (worse) answer than exhaustive search over V^3 sequences."""
  t1 = jax.random.normal(jax.random.key(3), (V, V)) * 2.0
  t2 = jax.random.normal(jax.random.key(4), (V, V)) * 2.0

  def logits_of(tok, prev):
    return t1[tok] + t2[prev]

  def step(tok_B, state):
    return logits_of(tok_B, state["last"]), {"last": tok_B, "index": state["index"] + 1}

  start = 4
  state = {"last": jnp.array([start]), "index": jnp.zeros((), jnp.int32)}
  first = logits_of(jnp.array([start]), jnp.array([0]))
  lsm = lambda x: np.asarray(jax.nn.log_softmax(x, -1))

  def score(s):
    return (lsm(first[0])[s[0]] + lsm(logits_of(s[0], start))[s[1]]
            + lsm(logits_of(s[1], s[0]))[s[2]])

  best = max(itertools.product(range(V), repeat=3), key=score)
  seq, sc = decoding.beam_search(step, state, first, 3, num_beams=V * V, length_penalty=0.0)
  assert tuple(np.asarray(seq[0])) == best
  np.testing.assert_allclose(float(sc[0]), score(best), rtol=1e-5)


def test_processors_match_transformers_logits_processors():
  """Bad tokens, min new tokens, forced BOS / EOS at every step, as a seq2seq decoder sees them."""
  torch = pytest.importorskip("torch")
  lp = pytest.importorskip("transformers.generation.logits_process")
  n, eos, bos = 5, 1, 4
  procs = decoding.Processors(bad_token_ids=(0, 3), min_new_tokens=2, forced_bos_token_id=bos,
                              forced_eos_token_id=eos)
  # transformers counts the decoder start token: cur_len = 1 + t, max_length = 1 + n.
  ref = lp.LogitsProcessorList([
      lp.NoBadWordsLogitsProcessor([[0], [3]], eos_token_id=eos),
      lp.MinNewTokensLengthLogitsProcessor(1, 2, eos), lp.ForcedBOSTokenLogitsProcessor(bos),
      lp.ForcedEOSTokenLogitsProcessor(1 + n, eos)])
  scores = np.random.default_rng(0).normal(size=(2, V)).astype(np.float32)
  for t in range(n):
    ids = torch.zeros((2, 1 + t), dtype=torch.long)
    want = ref(ids, torch.tensor(scores)).numpy()
    got = np.asarray(jax.jit(procs, static_argnums=2)(jnp.asarray(scores), t, n, eos))
    np.testing.assert_array_equal(got, want)
  # A traced t (as inside the decoding loops) gives the same.
  assert (np.asarray(procs(jnp.asarray(scores), jnp.int32(0), n, eos))[:, bos] == 0).all()


def test_greedy_and_beam_apply_processors():
  """The engine feeds processors the step count: EOS late enough, banned tokens never."""
  table, step = _bigram()
  state, first = _start(table, [0, 3])
  free = np.asarray(decoding.greedy(step, state, first, 8, eos_id=-1, pad_id=9))
  eos, banned = int(free[0, 1]), int(free[1, 0])
  assert eos != banned and banned in free[0]  # row 0 would emit both
  procs = decoding.Processors(bad_token_ids=(banned,), min_new_tokens=4)
  out = np.asarray(decoding.greedy(step, state, first, 8, eos_id=eos, pad_id=9,
                                   processors=procs))
  assert banned not in out and eos not in out[:, :4]
  seqs = np.asarray(decoding.beam_search(step, state, first, 8, eos_id=eos, pad_id=9, num_beams=3,
                                         processors=procs)[0])
  assert banned not in seqs and eos not in seqs[:, :4]
