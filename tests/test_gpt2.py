"""GPT-2 port vs transformers' PyTorch GPT2LMHeadModel (random weights, real width)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fsl_jax.models import gpt2, gpt2_generate, gpt2_hf  # pylint: disable=wrong-import-position

PROMPT_LEN = 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """A 2-layer GPT-2 in the real gpt2 width (768) and vocabulary (50257)."""
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2)).eval()
  path = tmp_path_factory.mktemp("gpt2") / "ckpt"
  model.save_pretrained(path)
  config, params = gpt2_hf.from_pretrained(str(path))
  return {"torch": model, "path": str(path), "config": config, "params": params}


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 50000, (2, PROMPT_LEN))
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  ids[1, :4] = 50256
  return ids, mask


def _hf_generate(model, ids, mask, **kw):
  with torch.no_grad():
    out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                         pad_token_id=50256, **kw)
  return out.numpy()[:, ids.shape[1]:]


def _ours(ckpt, ids, mask, **kw):
  return np.asarray(gpt2_generate.generate(ckpt["config"], ckpt["params"], ids, mask, **kw))


def test_checkpoint_layout(ckpt):
  assert "model.safetensors" in os.listdir(ckpt["path"])
  c = ckpt["config"]
  assert (c.n_embd, c.vocab_size, c.n_layer, c.n_head) == (768, 50257, 2, 12)
  assert ckpt["params"]["h_0"]["attn"]["c_attn"]["kernel"].shape == (768, 2304)


def test_logits_parity_fp32(ckpt):
  ids, mask = _batch()
  with torch.no_grad():
    ref = ckpt["torch"](torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  # transformers numbers positions 0.. regardless of padding in a plain forward.
  pos = np.broadcast_to(np.arange(PROMPT_LEN), ids.shape)
  ours = np.asarray(gpt2.lm_logits(ckpt["config"], ckpt["params"], jnp.asarray(ids),
                                   jnp.asarray(mask), positions_BxT=jnp.asarray(pos)))
  err = np.abs(ref - ours)[mask.astype(bool)].max()
  assert err < 1e-4, err


def test_long_sequence_parity_blocked_attention(ckpt):
  """T=256 takes the blocked causal-attention path (query blocks of 128)."""
  assert gpt2._ATTN_CHUNK == 128  # pylint: disable=protected-access
  ids = np.random.default_rng(1).integers(0, 50000, (1, 256))
  with torch.no_grad():
    ref = ckpt["torch"](torch.tensor(ids)).logits.numpy()
  ours = np.asarray(gpt2.lm_logits(ckpt["config"], ckpt["params"], jnp.asarray(ids)))
  assert np.abs(ref - ours).max() < 1e-4


def test_greedy_20_tokens_match_transformers_generate(ckpt):
  ids, mask = _batch()
  ref = _hf_generate(ckpt["torch"], ids, mask, max_new_tokens=20, do_sample=False)
  ours = _ours(ckpt, ids, mask, max_new_tokens=20)
  assert ref.shape == (2, 20)
  np.testing.assert_array_equal(ours, ref)


def test_eos_stops_and_pads_like_transformers(ckpt):
  ids, mask = _batch()
  free = _ours(ckpt, ids, mask, max_new_tokens=20, eos_id=None)
  eos = int(free[0, 6])  # a token example 0 emits mid-way
  ref = _hf_generate(ckpt["torch"], ids, mask, max_new_tokens=20, do_sample=False,
                     eos_token_id=eos)
  ours = _ours(ckpt, ids, mask, max_new_tokens=20, eos_id=eos, pad_id=50256)
  first = list(ours[0]).index(eos)
  assert (ours[0, first + 1:] == 50256).all()
  np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)
  assert (ours[:, ref.shape[1]:] == 50256).all()


@pytest.mark.parametrize("kw", [dict(num_beams=3, length_penalty=1.0, early_stopping=False),
                                dict(num_beams=2, length_penalty=0.5, early_stopping=True)])
def test_beam_search_matches_transformers(ckpt, kw):
  ids, mask = _batch()
  free = _ours(ckpt, ids, mask, max_new_tokens=20, eos_id=None)
  eos = int(free[1, 3])
  ref = _hf_generate(ckpt["torch"], ids, mask, max_new_tokens=10, do_sample=False,
                     eos_token_id=eos, **kw)
  ours = _ours(ckpt, ids, mask, max_new_tokens=10, method="beam", eos_id=eos, pad_id=50256, **kw)
  np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)


def test_beam_search_num_return_sequences_matches_transformers(ckpt):
  ids, mask = _batch()
  ref = _hf_generate(ckpt["torch"], ids, mask, max_new_tokens=8, do_sample=False, num_beams=4,
                     num_return_sequences=3)
  ours = _ours(ckpt, ids, mask, max_new_tokens=8, method="beam", num_beams=4,
               num_return_sequences=3)
  assert ours.shape == (2, 3, 8)
  np.testing.assert_array_equal(ours.reshape(6, 8)[:, :ref.shape[1]], ref)
  with pytest.raises(ValueError, match="method='beam'"):
    gpt2_generate.generate(ckpt["config"], ckpt["params"], ids, mask, num_return_sequences=2)


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3)])
def test_min_new_tokens_and_bad_tokens_match_transformers(ckpt, kw):
  ids, mask = _batch()
  free = _ours(ckpt, ids, mask, max_new_tokens=12, eos_id=None)
  eos, bad = int(free[0, 2]), int(free[1, 0])
  ref = _hf_generate(ckpt["torch"], ids, mask, max_new_tokens=12, do_sample=False,
                     eos_token_id=eos, min_new_tokens=5, bad_words_ids=[[bad]], **kw)
  ours = _ours(ckpt, ids, mask, max_new_tokens=12, method="beam" if kw else "greedy", eos_id=eos,
               pad_id=50256, min_new_tokens=5, bad_token_ids=(bad,), **kw)
  assert bad not in ours and eos not in ours[:, :5]
  np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)


def _teacher_forced_argmax(config, params, ids, mask, new):
  """Uncached greedy check: argmax of one full forward over prompt + new tokens."""
  seq = jnp.concatenate([jnp.asarray(ids), jnp.asarray(new)], axis=1)
  m = jnp.concatenate([jnp.asarray(mask), jnp.ones(new.shape, jnp.int32)], axis=1)
  logits = gpt2.lm_logits(config, params, seq, m)
  return np.asarray(jnp.argmax(logits[:, ids.shape[1] - 1:-1], axis=-1))


def test_cached_equals_uncached(ckpt):
  config, params = ckpt["config"], ckpt["params"]
  ids, mask = _batch()
  cached = _ours(ckpt, ids, mask, max_new_tokens=20, eos_id=None)
  np.testing.assert_array_equal(_teacher_forced_argmax(config, params, ids, mask, cached), cached)
  # Cached prefill logits equal uncached logits of the same position.
  last, _ = gpt2_generate.prefill(config, params, jnp.asarray(ids), jnp.asarray(mask), 4)
  full = gpt2.lm_logits(config, params, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1]), atol=1e-4)


def test_sampling_is_seeded_and_cold_sampling_is_greedy(ckpt):
  config, params = ckpt["config"], ckpt["params"]
  ids, mask = _batch()
  sample = lambda t, p, s: np.asarray(gpt2_generate.generate(
      config, params, ids, mask, max_new_tokens=20, method="sample", temperature=t, top_p=p,
      eos_id=None, rng=jax.random.key(s)))
  cold = sample(1e-4, 1.0, 3)
  np.testing.assert_array_equal(_teacher_forced_argmax(config, params, ids, mask, cold), cold)
  a, b, c = sample(2.0, 0.9, 1), sample(2.0, 0.9, 1), sample(2.0, 0.9, 2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_sharded_safetensors_and_pytorch_bin(ckpt, tmp_path):
  ref = ckpt["params"]
  sharded = tmp_path / "sharded"
  ckpt["torch"].save_pretrained(sharded, max_shard_size="60MB")
  assert (sharded / "model.safetensors.index.json").exists()
  binary = tmp_path / "bin"
  ckpt["torch"].config.save_pretrained(binary)
  torch.save(ckpt["torch"].state_dict(), binary / "pytorch_model.bin")
  for path in (sharded, binary):
    _, params = gpt2_hf.from_pretrained(str(path))
    jax.tree.map(np.testing.assert_array_equal, params, ref)


def test_mismatched_checkpoints_name_the_problem(ckpt, tmp_path):
  with pytest.raises(ValueError, match="n_layer=2 in checkpoint vs 24 expected"):
    gpt2_hf.from_pretrained(ckpt["path"], config=gpt2.Gpt2Config.medium())
  other = tmp_path / "bert"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ValueError, match="model_type='bert'"):
    gpt2_hf.from_pretrained(str(other))
  state = {k: v.numpy() for k, v in ckpt["torch"].state_dict().items()}
  with pytest.raises(ValueError, match="another size"):
    gpt2_hf.params_from_state_dict(state, gpt2.Gpt2Config.small(n_layer=2, n_embd=1024, n_head=16))
  with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
    gpt2_hf.from_pretrained(str(tmp_path / "missing"))


def test_bf16_runs_close_to_fp32(ckpt):
  ids, _ = _batch()
  f32 = gpt2.lm_logits(ckpt["config"], ckpt["params"], jnp.asarray(ids))
  cfg16 = ckpt["config"].replace(dtype="bfloat16")
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), ckpt["params"])
  b16 = gpt2.lm_logits(cfg16, p16, jnp.asarray(ids))
  assert b16.dtype == jnp.float32
  # Same top-1 on most positions; bf16 keeps ~3 significant digits.
  agree = np.mean(np.argmax(np.asarray(f32), -1) == np.argmax(np.asarray(b16), -1))
  assert agree > 0.8, agree


def test_presets():
  assert gpt2.Gpt2Config.preset("gpt2-xl").n_embd == 1600
  assert gpt2.Gpt2Config.preset("openai-community/gpt2-large").n_layer == 36
  assert gpt2.Gpt2Config.preset("distilgpt2").n_layer == 6
  with pytest.raises(ValueError, match="choose one of"):
    gpt2.Gpt2Config.preset("gpt3")


def test_real_gpt2_tokenizer_loads_offline(shared_dir):
  tok = transformers.AutoTokenizer.from_pretrained(str(shared_dir / "data/tokenizers/gpt2"))
  assert tok("Hello world")["input_ids"] == [15496, 995]
  assert len(tok) == 50257
