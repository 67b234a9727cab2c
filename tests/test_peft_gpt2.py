"""Prompt / prefix / LoRA tuning and vocabulary resize on a frozen tiny GPT-2."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsl_jax.models import gpt2, gpt2_generate
from fsl_jax.peft import prefix, prompt, vocab
from fsl_jax.peft import gpt2_tuning

V, N_NEW = 300, 2
# Direct prefixes share every code path with prefix_mlp after `to_kv`
# (test_prefix_reparam_materializes_exactly), so the MLP form stands for both.
METHODS = {"prompt": dict(n_prompt=5), "prefix_mlp": dict(prefix_len=3, prefix_hidden=16),
           "lora": dict(lora_rank=4)}


@pytest.fixture(scope="module")
def base():
  config = gpt2.Gpt2Config.tiny(vocab_size=V, n_embd=32, n_head=4, eos_token_id=V - 1,
                                dropout=0.0)
  return config, gpt2.init_params(config, jax.random.key(0))


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, V + N_NEW, (4, 13)).astype(np.int32)
  mask = np.ones((4, 12), bool)
  mask[2, 9:] = False  # right padding
  weights = mask.astype(np.float32)
  return {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]),
          "weights": jnp.asarray(weights), "mask": jnp.asarray(mask)}


_CACHE = {}


def _trained(base, name, steps=3):
  if name not in _CACHE:
    _CACHE[name] = _train(base, name, steps)
  return _CACHE[name]


def _train(base, name, steps):
  config, params = base
  method = name.split("_")[0]
  spec, tuned = gpt2_tuning.init_tuned(jax.random.key(1), config, params, method,
                                     n_new_tokens=N_NEW, **METHODS[name])
  cfg = config.replace(vocab_size=V + N_NEW)
  tx = optax.adam(1e-2)
  step = jax.jit(gpt2_tuning.make_train_step(cfg, spec, tx))
  state = {"tuned": tuned, "opt_state": tx.init(tuned), "step": 0}
  batch = _batch()
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, params)
    losses.append(float(metrics["loss"]))
  return cfg, spec, tuned, state["tuned"], losses


@pytest.fixture(scope="module", params=list(METHODS))
def trained(request, base):
  before = jax.tree.map(np.array, base[1])
  cfg, spec, start, tuned, losses = _trained(base, request.param)
  return {"name": request.param, "cfg": cfg, "spec": spec, "start": start, "tuned": tuned,
          "losses": losses, "base_before": before}


def _prompts():
  ids = np.array([[5, 6, 7, 8, 9, V], [0, 0, 0, 11, 12, V + 1]], np.int32)
  mask = np.array([[1] * 6, [0, 0, 0, 1, 1, 1]], bool)  # left padded
  return ids, mask


def test_only_tuned_leaves_change(trained, base):
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
               base[1], trained["base_before"])
  changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)),
                         trained["start"], trained["tuned"])
  assert all(jax.tree.leaves(changed)), changed
  assert trained["losses"][-1] < trained["losses"][0]


def test_cached_generation_and_save_load(trained, base, tmp_path):
  """Cached decoding equals uncached argmax; reloaded weights reproduce outputs."""
  cfg, spec, tuned = trained["cfg"], trained["spec"], trained["tuned"]
  ids, mask = _prompts()
  out = np.asarray(gpt2_tuning.generate(cfg, base[1], tuned, spec, ids, mask, 6, eos_id=None))
  seq = np.concatenate([ids, out], 1)
  full_mask = np.concatenate([mask, np.ones_like(out, bool)], 1)
  logits = gpt2_tuning.tuned_logits_jit(cfg, base[1], tuned, spec, jnp.asarray(seq),
                                      jnp.asarray(full_mask))
  teacher = np.asarray(jnp.argmax(logits[:, ids.shape[1] - 1:-1], -1))
  np.testing.assert_array_equal(teacher, out)

  path = os.path.join(tmp_path, "tuned.safetensors")
  gpt2_tuning.save_tuned(path, tuned, spec, cfg, "tiny")
  tuned2, spec2, cfg2, _ = gpt2_tuning.load_tuned(path, base[0])
  assert spec2 == spec and cfg2.vocab_size == V + N_NEW
  logits2 = gpt2_tuning.tuned_logits_jit(cfg2, base[1], tuned2, spec2, jnp.asarray(seq),
                                       jnp.asarray(full_mask))
  if trained["name"] == "prefix_mlp":  # saved in inference form (MLP collapsed)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits2), atol=1e-5)
  else:
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(logits2))
  out2 = gpt2_tuning.generate(cfg2, base[1], tuned2, spec2, ids, mask, 6, eos_id=None)
  np.testing.assert_array_equal(out, np.asarray(out2))
  with pytest.raises(ValueError, match="Load it onto the base it was trained on"):
    gpt2_tuning.load_tuned(path, base[0].replace(n_embd=64))


def test_lora_merges_q_and_v_slices_only(base):
  config, params = base
  cfg, spec, _, tuned, _ = _trained(base, "lora")
  merged, _, _ = gpt2_tuning.assemble(cfg, params, tuned, spec)
  d = config.n_embd
  w0 = np.asarray(params["h_0"]["attn"]["c_attn"]["kernel"])
  w1 = np.asarray(merged["h_0"]["attn"]["c_attn"]["kernel"])
  np.testing.assert_array_equal(w0[:, d:2 * d], w1[:, d:2 * d])  # k untouched
  assert not np.array_equal(w0[:, :d], w1[:, :d]) and not np.array_equal(w0[:, 2 * d:], w1[:, 2 * d:])
  assert not np.array_equal(np.asarray(params["h_1"]["mlp"]["c_fc"]["kernel"]),
                            np.asarray(merged["h_1"]["mlp"]["c_fc"]["kernel"]))
  # Merged weights run as a plain GPT-2 for inference.
  ids, mask = _prompts()
  np.testing.assert_array_equal(
      np.asarray(gpt2_generate.generate(cfg, merged, ids, mask, 6, eos_id=None)),
      np.asarray(gpt2_tuning.generate(cfg, params, tuned, spec, ids, mask, 6, eos_id=None)))


def test_prompt_inits_and_file_size_on_gpt2_width(tmp_path):
  wte = np.random.default_rng(0).normal(size=(1000, 768)).astype(np.float32) * 0.02
  assert prompt.init(jax.random.key(1), wte, 20, "random").shape == (20, 768)
  p = np.asarray(prompt.init(jax.random.key(1), wte, 20, "vocab"))
  assert np.isclose(np.abs(wte[None] - p[:, None]).sum(-1), 0).any(1).all()  # vocab rows
  t = prompt.init(jax.random.key(1), wte, 5, "text", text_ids=[3, 4])
  np.testing.assert_array_equal(np.asarray(t), wte[[3, 4, 3, 4, 3]])
  with pytest.raises(ValueError, match="text_ids"):
    prompt.init(jax.random.key(1), wte, 5, "text")
  config = gpt2.Gpt2Config.small(vocab_size=50257 + N_NEW)
  spec = gpt2_tuning.TuneSpec("prompt", N_NEW)
  path = str(tmp_path / "p.safetensors")
  gpt2_tuning.save_tuned(path, {"prompt": p, "new_rows": jnp.zeros((N_NEW, 768))}, spec, config,
                       "gpt2")
  assert os.path.getsize(path) < 100_000  # 20 x 768 fp32 = 61 KB, well under 1 MB


def test_prefix_reparam_materializes_exactly():
  params = prefix.init(jax.random.key(0), 3, 2, 32, reparam_hidden=8)
  a = prefix.to_kv(params, 2, 4, 8)
  b = prefix.to_kv(prefix.materialize(params), 2, 4, 8)
  assert a[1]["k"].shape == (1, 3, 4, 8)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with pytest.raises(ValueError, match="another base"):
    prefix.to_kv(params, 3, 4, 8)


def _tiny_tokenizer(tmp_path):
  transformers = pytest.importorskip("transformers")
  keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
  chars = {b: chr(b) for b in keep}
  chars.update({b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in keep)})
  vocab_map = {chars[b]: b for b in range(256)}
  vocab_map["<|endoftext|>"] = 256
  return transformers.GPT2TokenizerFast(vocab=vocab_map, merges=[], unk_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_special_tokens_and_resize(tmp_path, base):
  tok = _tiny_tokenizer(tmp_path)
  ids = vocab.add_special_tokens(tok, ["<customer>", "<system>"])
  assert ids == [257, 258]
  assert tok("<customer>hi")["input_ids"][0] == 257
  params = base[1]
  rows = vocab.init_rows(jax.random.key(0), params["wte"]["embedding"], 2)
  resized = vocab.with_rows(params, rows)
  assert resized["wte"]["embedding"].shape == (V + 2, 32)
  np.testing.assert_array_equal(np.asarray(resized["wte"]["embedding"][:V]),
                                np.asarray(params["wte"]["embedding"]))
  with pytest.raises(ValueError, match="width"):
    vocab.with_rows(params, jnp.zeros((2, 7)))
