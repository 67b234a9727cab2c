"""The CPU-fast conv / pool VJPs equal XLA's native gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models import layers
from fsl_jax.models.conv4 import Conv4


@pytest.mark.parametrize("shape,k", [((3, 9, 9, 4), 3), ((2, 7, 6, 1), 3), ((2, 8, 8, 3), 5)])
def test_conv_vjp_matches_xla(shape, k):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (k, k, shape[-1], 5))
  g = jax.random.normal(kg, shape[:3] + (5,))
  ref = jax.vjp(layers._conv, x, w)[1](g)
  new = jax.vjp(layers.conv_same, x, w)[1](g)
  for a, b in zip(ref, new):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,ties", [((2, 8, 8, 3), False), ((2, 7, 5, 2), False),
                                        ((2, 8, 8, 3), True)])
def test_pool_vjp_matches_xla(shape, ties):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  if ties:  # constant regions, as in Omniglot's background: many tied maxima
    x = jnp.round(x) * (x > 0)
  import flax.linen as nn
  native = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(np.asarray(layers.max_pool_2x2(x)), np.asarray(native(x)))
  g = jax.random.normal(jax.random.PRNGKey(2), native(x).shape)
  ref = jax.vjp(native, x)[1](g)[0]
  new = jax.vjp(layers.max_pool_2x2, x)[1](g)[0]
  np.testing.assert_allclose(np.asarray(new), np.asarray(ref), atol=1e-6)


def test_conv4_impls_same_params_and_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 28, 28, 1))
  cpu, xla = Conv4(hidden=8, impl="cpu"), Conv4(hidden=8, impl="xla")
  v = cpu.init(jax.random.PRNGKey(1), x, train=False)
  assert jax.tree.structure(v) == jax.tree.structure(xla.init(jax.random.PRNGKey(1), x, train=False))
  emb = cpu.apply(v, x, train=False)
  assert emb.shape == (6, 8)

  def loss(model, p):
    out, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)

  ga, gb = jax.grad(lambda p: loss(cpu, p))(v["params"]), jax.grad(lambda p: loss(xla, p))(v["params"])
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)


def test_vmap_over_per_task_weights():
  # Later learners vmap the layers over per-task fast weights.
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 6, 6, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3, 3, 2))
  f = lambda x, w: jnp.sum(layers.conv_same(x, w) ** 2)
  ref = jax.vmap(jax.grad(lambda x, w: jnp.sum(layers._conv(x, w) ** 2), argnums=1))(x, w)
  new = jax.vmap(jax.grad(f, argnums=1))(x, w)
  np.testing.assert_allclose(np.asarray(new), np.asarray(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,k", [((3, 9, 9, 4), 3), ((2, 7, 6, 1), 3), ((2, 8, 8, 3), 5)])
def test_im2col_conv_matches_xla_to_second_order(shape, k):
  # conv_im2col is what the MAML family runs on CPU: its value, gradient and
  # the gradient of a gradient (second-order MAML) must be XLA's convolution's.
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (k, k, shape[-1], 5))
  g = jax.random.normal(kg, shape[:3] + (5,))
  np.testing.assert_allclose(np.asarray(layers.conv_im2col(x, w)), np.asarray(layers._conv(x, w)),
                             rtol=1e-5, atol=1e-5)

  def inner_then_outer(conv, x, w):  # one SGD step on w, then a loss at the new w
    w2 = w - 0.1 * jax.grad(lambda w: jnp.sum(conv(x, w) * g))(w)
    return jnp.sum(jnp.tanh(conv(x, w2)))

  for argnum in (0, 1):
    ref = jax.grad(lambda x, w: inner_then_outer(layers._conv, x, w), argnums=argnum)(x, w)
    new = jax.grad(lambda x, w: inner_then_outer(layers.conv_im2col, x, w), argnums=argnum)(x, w)
    np.testing.assert_allclose(np.asarray(new), np.asarray(ref), rtol=1e-4, atol=1e-4)
  xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, -w])  # vmapped per-task weights
  np.testing.assert_allclose(np.asarray(jax.vmap(layers.conv_im2col)(xs, ws)),
                             np.asarray(jax.vmap(layers._conv)(xs, ws)), rtol=1e-5, atol=1e-4)


def test_gradient_learners_pick_im2col_on_cpu_only_when_auto():
  from fsl_jax.meta import maml
  auto = maml.GradientLearner(model=Conv4(hidden=8), ways=5)
  pinned = maml.GradientLearner(model=Conv4(hidden=8, impl="cpu"), ways=5)
  want = "im2col" if jax.default_backend() == "cpu" else "auto"
  assert (auto.net.impl, pinned.net.impl, auto.net.num_classes) == (want, "cpu", 5)



def test_attention_kernels_agree_with_masks_and_gradients():
  # layers.attention: the per-example CPU kernel (heads-leading, lax.map over
  # the batch) computes the einsum kernel's function, masked keys included,
  # and its gradient; a masked key gets no weight.
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(3, 7, 2, 4)).astype(np.float32)) for _ in range(3))
  mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [5], [1]]))
  for m in (None, mask):
    f = lambda impl, q, k, v: layers.attention(q, k, v, impl, key_mask_BxS=m)
    np.testing.assert_allclose(f("per_example", q, k, v), f("einsum", q, k, v), rtol=1e-5,
                               atol=1e-6)
    g = [jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(i, q, k, v))), argnums=(0, 1, 2))(q, k, v)
         for i in ("per_example", "einsum")]
    for a, b in zip(*g):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Example 2 sees only its first key: every query returns that key's value.
  out = layers.attention(q, k, v, "per_example", key_mask_BxS=mask)
  np.testing.assert_allclose(out[2], jnp.broadcast_to(v[2, :1], (7, 2, 4)), rtol=1e-6)
  with pytest.raises(ValueError, match="per_example"):
    layers.attention(q, k, v, "flash")
