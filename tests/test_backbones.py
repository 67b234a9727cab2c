"""ResNet-12, WRN and Conv4 backbones: PyTorch parity, real shapes, DropBlock, every learner."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import meta, models
from fsl_jax.models import layers

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = (4, 8, 12, 16)  # ResNet-12 widths for tests (one set: shared compiled init ops)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _torch_ref():
  pytest.importorskip("torch")
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import torch_resnet12
  return torch_resnet12


def _trained_stats(model, variables, x):
  """`variables` with BatchNorm statistics moved off their initial 0 / 1."""
  _, state = model.apply(variables, 2 * x + 1, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.PRNGKey(9)})
  return {**variables, **state}


def _check_parity(model, torch_net, x_BxHxWxC, ref):
  import torch
  variables = model.init(jax.random.PRNGKey(1), x_BxHxWxC, train=False)
  variables = jax.jit(lambda v, x: _trained_stats(model, v, x))(variables, x_BxHxWxC)
  ref.load_from_flax(torch_net, variables)
  x_t = torch.from_numpy(x_BxHxWxC).permute(0, 3, 1, 2)
  with torch.no_grad():
    want_eval = torch_net.eval()(x_t).numpy()
    want_train = torch_net.train()(x_t).numpy()  # batch statistics (no dropout in these nets)
  got_eval, (got_train, _) = jax.jit(lambda v, x: (
      model.apply(v, x, train=False),
      model.apply(v, x, train=True, mutable=["batch_stats"])))(variables, x_BxHxWxC)
  np.testing.assert_allclose(np.asarray(got_eval), want_eval, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ parity

@pytest.mark.parametrize("avg_pool,impl", [(True, "auto"), (False, "im2col")])
def test_resnet12_matches_torch_reference(avg_pool, impl):
  ref = _torch_ref()
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  # drop_rate=0 so that training mode (batch statistics) compares too; DropBlock is tested below.
  model = models.get("resnet12", widths=SMALL, drop_rate=0.0, avg_pool=avg_pool,
                     num_classes=5, impl=impl)
  torch_net = ref.ResNet12(SMALL, drop_rate=0.0, avg_pool=avg_pool, num_classes=5, image_size=32)
  _check_parity(model, torch_net, x, ref)
  # The features alone (no head) have the documented widths.
  feats = models.get("resnet12", widths=SMALL, avg_pool=avg_pool)
  out = jax.eval_shape(lambda: feats.init_with_output(jax.random.PRNGKey(0), x, train=False)[0])
  assert out.shape == (4, 16 if avg_pool else 2 * 2 * 16)


def test_wrn_matches_torch_reference():
  ref = _torch_ref()
  x = np.random.default_rng(1).normal(size=(3, 16, 16, 3)).astype(np.float32)
  # WRN-10-1: one block a group, 16 -> 16 (identity shortcut), 16 -> 32 and 32 -> 64
  # (stride 2, 1x1-conv shortcuts).
  model = models.get("wrn", depth=10, widen=1, num_classes=4)
  _check_parity(model, ref.WideResNet(10, 1, num_classes=4), x, ref)


@pytest.mark.parametrize("size,k", [(8, 3), (7, 3), (8, 1)])
def test_strided_convolution_is_the_same_on_every_path(size, k):
  # WRN's stride-2 convs: strided im2col on CPU, XLA's strided conv elsewhere,
  # both padding k // 2 on every side like the torch reference (checked above).
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
  got = layers.conv_im2col(x, w, stride=2)
  assert got.shape == (2, (size + 1) // 2, (size + 1) // 2, 5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(layers._conv_strided(x, w, 2)),
                             rtol=1e-5, atol=1e-5)
  # ... the stride-1 convolution at every other position.
  np.testing.assert_allclose(np.asarray(got), np.asarray(layers._conv(x, w))[:, ::2, ::2],
                             rtol=1e-5, atol=1e-5)
  # The CPU path (XLA's forward, im2col's VJP): the same value and gradients
  # as XLA's own strided convolution, to first and second order.
  np.testing.assert_allclose(np.asarray(layers.conv_strided(x, w, 2)), np.asarray(got),
                             rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g) + jnp.sum(f(x, w) ** 2) * 0.1
  ours = jax.grad(loss(lambda x, w: layers.conv_strided(x, w, 2)), argnums=(0, 1))(x, w)
  want = jax.grad(loss(lambda x, w: layers._conv_strided(x, w, 2)), argnums=(0, 1))(x, w)
  for a, b in zip(ours, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  hess = lambda f: jax.grad(lambda w: jnp.sum(jax.grad(loss(f))(x, w) ** 2))(w)
  np.testing.assert_allclose(np.asarray(hess(lambda x, w: layers.conv_strided(x, w, 2))),
                             np.asarray(hess(lambda x, w: layers._conv_strided(x, w, 2))),
                             rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------ real shapes

def test_real_configurations_shapes_and_parameter_counts():
  x = jax.ShapeDtypeStruct((2, 84, 84, 3), jnp.float32)

  def shapes(name, **kw):
    model = models.get(name, **kw)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return out.shape, _count(variables["params"])

  # 64-160-320-640: 12,424,320 weights (the ~12.4M usually quoted).
  assert shapes("resnet12") == ((2, 640), 12_424_320)
  assert shapes("resnet12", avg_pool=False) == ((2, 5 * 5 * 640), 12_424_320)  # MetaOptNet's
  # WRN-28-10: 36.5M, as in Zagoruyko & Komodakis's table (their 10-class head aside).
  assert shapes("wrn") == ((2, 640), 36_472_784)
  assert shapes("conv4") == ((2, 5 * 5 * 64), 113_088)  # 84 -> 42 -> 21 -> 10 -> 5


def test_conv4_trains_at_other_input_sizes():
  # Conv4 flattens whatever map is left: 32x32 RGB -> 2x2 x hidden.
  rng = np.random.default_rng(2)
  ep = {"support_x": jnp.asarray(rng.random((3, 32, 32, 3), np.float32)),
        "support_y": jnp.arange(3), "query_x": jnp.asarray(rng.random((6, 32, 32, 3), np.float32)),
        "query_y": jnp.repeat(jnp.arange(3), 2), "classes": jnp.arange(3)}
  model = models.get("conv4", hidden=8)
  variables = model.init(jax.random.PRNGKey(0), ep["support_x"], train=False)
  assert model.apply(variables, ep["support_x"], train=False).shape == (3, 2 * 2 * 8)
  learner = meta.get("protonet", model=model)
  loss, aux = jax.jit(lambda ep: learner.outer_loss(learner.init(jax.random.PRNGKey(0), ep), ep,
                                                    jax.random.PRNGKey(1)))(ep)
  assert np.isfinite(float(loss)) and set(aux["model_state"]) == {"batch_stats"}


# ------------------------------------------------------------ DropBlock

def _expected_dropped_fraction(h, w, bs, rate):
  """P(a pixel is covered by some seed), averaged over the map (seeds independent)."""
  gamma = rate / bs**2 * (h * w) / ((h - bs + 1) * (w - bs + 1))
  cover = lambda n: np.array([min(y, n - bs) - max(0, y - bs + 1) + 1 for y in range(n)])
  k_HxW = np.outer(cover(h), cover(w))
  return float(np.mean(1 - (1 - gamma) ** k_HxW))


@pytest.mark.parametrize("hw,bs", [(10, 5), (5, 5), (8, 3)])
def test_drop_block_drops_whole_blocks_at_the_target_rate(hw, bs):
  rate = 0.1
  x = jnp.ones((64, hw, hw, 16))  # 1024 maps a draw
  fn = jax.jit(lambda k: layers.drop_block(x, k, rate, bs))
  outs = np.stack([np.asarray(fn(jax.random.PRNGKey(i))) for i in range(4)])
  dropped = outs == 0
  # Every dropped pixel lies in a fully dropped bs x bs square (blocks, not pixels):
  # the mask equals its morphological opening by a bs x bs square.
  m = jnp.asarray(np.moveaxis(dropped, -1, 2).reshape((-1, hw, hw, 1)), jnp.float32)
  eroded = jax.lax.reduce_window(m, 1.0, jax.lax.min, (1, bs, bs, 1), (1, 1, 1, 1), "VALID")
  pad = ((0, 0), (bs - 1, bs - 1), (bs - 1, bs - 1), (0, 0))
  opened = jax.lax.reduce_window(jnp.pad(eroded, pad), 0.0, jax.lax.max, (1, bs, bs, 1),
                                 (1, 1, 1, 1), "VALID")
  np.testing.assert_array_equal(np.asarray(opened), np.asarray(m))
  # The dropped fraction: the seeds' exact expectation, near the target rate.
  want = _expected_dropped_fraction(hw, hw, bs, rate)
  assert 0.75 * rate < want <= rate
  assert abs(dropped.mean() - want) < 0.01, (dropped.mean(), want)
  # Kept activations are rescaled so that the batch keeps its sum.
  for out in outs:
    kept = out[out != 0]
    np.testing.assert_allclose(kept, out.size / kept.size, rtol=1e-5)
  # Same key, same mask.
  np.testing.assert_array_equal(np.asarray(fn(jax.random.PRNGKey(3))), outs[3])


def test_resnet12_dropout_only_in_training_and_from_the_rng():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 32, 32, 3)), jnp.float32)
  drop = models.get("resnet12", widths=SMALL, drop_rate=0.3, block_size=2)
  plain = drop.clone(drop_rate=0.0)
  variables = drop.init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(
      plain.init(jax.random.PRNGKey(0), x, train=False))
  # Eval mode: the identity, no key needed.
  np.testing.assert_array_equal(np.asarray(drop.apply(variables, x, train=False)),
                                np.asarray(plain.apply(variables, x, train=False)))
  # Training mode: a key is required and decides the masks.
  with pytest.raises(ValueError, match="rngs=\\{'dropout': key\\}"):
    drop.apply(variables, x, train=True, mutable=["batch_stats"])
  run = lambda m, k: np.asarray(m.apply(variables, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": jax.random.PRNGKey(k)})[0])
  np.testing.assert_array_equal(run(drop, 1), run(drop, 1))
  assert np.abs(run(drop, 1) - run(drop, 2)).max() > 1e-3
  assert np.abs(run(drop, 1) - run(plain, 1)).max() > 1e-3
  # deterministic(): the same net with its dropout off (MAML's transductive meta-test).
  off = layers.deterministic(drop)
  np.testing.assert_array_equal(run(off, 1), run(plain, 1))
  conv4 = models.get("conv4")
  assert layers.deterministic(conv4) is conv4


# ------------------------------------------------------------ every learner

LEARNERS = {
    "protonet": {}, "matchingnet": {}, "r2d2": {},
    "baseline": {"num_classes": 10, "finetune_steps": 5},
    **{name: {"ways": 3, "inner_steps": 1, "eval_inner_steps": 1}
       for name in ("maml", "fomaml", "anil", "metasgd", "reptile")},
    # First order: MAML++'s own parts (outer_loss, per-step BatchNorm, multi-step loss) at
    # about half the compile time of second order, which maml runs.
    "mamlpp": {"ways": 3, "inner_steps": 1, "eval_inner_steps": 1, "first_order": True,
               "first_order_steps": 0}}

# These differ from MAML only in hooks that never touch the backbone (first
# order, which weights adapt, learned inner rates): their step is traced (the
# dropout keys, gradients and state of the same program), not compiled, which
# would take 10-30 s each on a shared 2-core CPU. maml, mamlpp and reptile run.
TRACED_ONLY = {"fomaml", "anil", "metasgd"}


def _rgb_episode(seed=6, size=16):
  rng = np.random.default_rng(seed)
  return {"support_x": jnp.asarray(rng.random((3, size, size, 3), np.float32)),
          "support_y": jnp.arange(3),
          "query_x": jnp.asarray(rng.random((6, size, size, 3), np.float32)),
          "query_y": jnp.repeat(jnp.arange(3), 2), "classes": jnp.asarray([7, 2, 4])}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_trains_with_resnet12_and_draws_dropout_from_its_key(name):
  # One training step's loss and gradients with dropout and DropBlock on, as
  # the trainer computes them (outer_loss under value_and_grad, a key per task).
  ep = _rgb_episode()
  kw = LEARNERS[name]
  model = models.get("resnet12", widths=SMALL, drop_rate=0.3, block_size=2)
  learner = meta.get(name, model=model, **kw)
  variables = learner.init(jax.random.PRNGKey(0), ep)
  params = variables.pop("params")
  extra = {"step": jnp.asarray(0)} if getattr(learner, "uses_step", False) else {}

  @jax.jit
  def step(params, key):
    loss_fn = lambda p: learner.outer_loss({"params": p, **variables}, ep, key, True, **extra)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, aux["model_state"]

  # Training without a key is refused, naming the fix.
  with pytest.raises(ValueError, match="needs a key"):
    learner.outer_loss({"params": params, **variables}, ep, None, True, **extra)
  if name in TRACED_ONLY:
    shapes = jax.eval_shape(step, params, jax.random.PRNGKey(1))
    assert jax.tree.structure(shapes) == jax.tree.structure((0.0, params, variables))
    return
  loss, grads, new_state = step(params, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and np.isfinite(_flat(grads)).all()
  assert np.abs(_flat(grads)).max() > 0
  # Training-mode BatchNorm: the running statistics moved.
  assert set(new_state) == {"batch_stats"}
  assert np.abs(_flat(new_state) - _flat(variables)).max() > 1e-6
  # The dropout masks come from the key: same key, same loss; another key, another.
  assert float(step(params, jax.random.PRNGKey(1))[0]) == float(loss)
  assert float(step(params, jax.random.PRNGKey(2))[0]) != float(loss)
  if name == "maml":
    # Meta-test: no dropout (also in transductive BatchNorm's training mode), no key needed.
    plain = meta.get(name, model=model.clone(drop_rate=0.0), **kw)
    both = jax.jit(lambda v: (learner.predict(v, ep), plain.predict(v, ep)))
    got, want = both({"params": params, **variables})
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
