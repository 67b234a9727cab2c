"""Bottleneck adapters and q/v LoRA on the seq2seq base: identity at init,
frozen base, named adapters, adapter-only save/load."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsl_jax.models import marian, mbart, seq2seq
from fsl_jax.peft import adapters, freeze
from fsl_jax.proj.translation import tuning

METHODS = ["pfeiffer", "houlsby", "lora"]


def _setup(family=marian):
  cfg = family.tiny(vocab_size=64)
  base = seq2seq.init_params(cfg, jax.random.PRNGKey(0), std=0.2)
  rng = np.random.RandomState(0)
  batch = {"src_ids": rng.randint(2, 60, (3, 7)).astype(np.int32),
           "labels": rng.randint(2, 60, (3, 5)).astype(np.int32)}
  batch["src_mask"] = np.ones((3, 7), bool)
  batch["label_mask"] = np.ones((3, 5), bool)
  return cfg, base, batch


def _logits(cfg, params, acfg, batch):
  return seq2seq.forward(cfg, params, batch["src_ids"], batch["src_mask"],
                         seq2seq.shift_right(cfg, batch["labels"]), adapter_cfg=acfg)


@pytest.mark.parametrize("family", [marian, mbart])
@pytest.mark.parametrize("method", METHODS)
def test_identity_at_init(method, family):
  cfg, base, batch = _setup(family)
  spec = adapters.AdapterSpec(method, reduction_factor=4)
  tree = adapters.init(jax.random.PRNGKey(1), cfg, base, spec)
  params, acfg = adapters.apply(base, adapters.trainable(tree), spec, tree.get("_spec"))
  np.testing.assert_array_equal(_logits(cfg, params, acfg, batch), _logits(cfg, base, None, batch))


def test_placements_and_lora_targets():
  cfg, base, _ = _setup()
  pf = adapters.init(jax.random.PRNGKey(1), cfg, base, adapters.AdapterSpec("pfeiffer"))
  ho = adapters.init(jax.random.PRNGKey(1), cfg, base, adapters.AdapterSpec("houlsby"))
  assert set(pf["encoder"]["layers"][0]) == {"adapter_ffn"}
  assert set(ho["decoder"]["layers"][1]) == {"adapter_ffn", "adapter_attn"}
  assert pf["encoder"]["layers"][0]["adapter_ffn"]["down"]["kernel"].shape == (32, 2)
  lo = adapters.init(jax.random.PRNGKey(1), cfg, base, adapters.AdapterSpec("lora", lora_rank=2))
  paths = sorted(lo["lora"])
  assert len(paths) == 2 * (cfg.encoder_layers + 2 * cfg.decoder_layers)
  assert all(p.endswith(("q_proj/kernel", "v_proj/kernel")) for p in paths)


@pytest.mark.parametrize("method", METHODS)
def test_training_changes_only_the_adapter(method):
  cfg, base, batch = _setup()
  base_copy = jax.tree.map(np.array, base)
  spec = adapters.AdapterSpec(method, reduction_factor=4, lora_rank=2)
  tree = adapters.init(jax.random.PRNGKey(1), cfg, base, spec)
  trainable, lspec = adapters.trainable(tree), tree.get("_spec")
  tx = optax.adam(1e-2)
  step = jax.jit(tuning.make_train_step(cfg, tuning.params_fn(method, spec, lspec), tx, 0.0))
  state = {"trainable": trainable, "opt_state": tx.init(trainable), "step": 0}
  before = jax.tree.map(np.array, trainable)
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch, base)
    losses.append(float(metrics["loss"]))
  trainable = state["trainable"]
  assert losses[-1] < losses[0]
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_copy)):
    np.testing.assert_array_equal(np.asarray(a), b)  # frozen base bit-identical
  changed = [not np.array_equal(np.asarray(a), b)
             for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(before))]
  assert any(changed)
  n = freeze.count_params(trainable)
  assert 0 < n < freeze.count_params(base) // 4


def test_named_adapters_switch_and_save_load(tmp_path):
  cfg, base, batch = _setup()
  bank = adapters.AdapterBank(cfg, base)
  bank.add("pf", adapters.AdapterSpec("pfeiffer", reduction_factor=4), jax.random.PRNGKey(1))
  bank.add("lo", adapters.AdapterSpec("lora", lora_rank=2), jax.random.PRNGKey(2))
  assert bank.names == ["pf", "lo"] and bank.active == "lo"
  # Give both adapters non-zero weights so they change the output.
  bump = lambda t: jax.tree.map(lambda x: x + 0.05, t)
  bank.set_weights(bump(bank.weights("pf")), "pf")
  bank.set_weights(bump(bank.weights("lo")), "lo")
  out = {}
  for name in (None, "pf", "lo"):
    bank.activate(name)
    out[name] = np.asarray(_logits(cfg, *bank.params(), batch))
  assert not np.allclose(out[None], out["pf"]) and not np.allclose(out["pf"], out["lo"])
  for name in ("pf", "lo"):
    bank.save(str(tmp_path / f"{name}.safetensors"), name)
  fresh = adapters.AdapterBank(cfg, base)
  for name in ("pf", "lo"):
    assert fresh.load(str(tmp_path / f"{name}.safetensors")) == name
    np.testing.assert_allclose(_logits(cfg, *fresh.params(), batch), out[name], atol=1e-6)
  # Only the adapter is in the file: far smaller than the base.
  assert (tmp_path / "pf.safetensors").stat().st_size < 0.2 * 4 * freeze.count_params(base)
  other = adapters.AdapterBank(cfg.replace(d_model=16), base)
  with pytest.raises(ValueError, match="matching base"):
    other.load(str(tmp_path / "pf.safetensors"))
  with pytest.raises(KeyError, match="No adapter named"):
    bank.activate("missing")
