"""MetaOptNet's SVM head: the QP's solution, its gradients, invariances, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from fsl_jax import meta, models
from fsl_jax.data import ClassImages, EpisodeSampler, EpisodeSpec
from fsl_jax.meta import metaopt
from fsl_jax.train import builders, meta_step


def _embeddings(rng, ways, shots, dim, spread=1.0, queries=0, relu=False):
  """Support (and query) embeddings drawn around one centre per class."""
  centers = spread * rng.normal(size=(ways, dim))
  def draw(per):
    x = np.repeat(centers, per, 0) + rng.normal(size=(ways * per, dim))
    return np.maximum(x, 0) if relu else x
  sup, sup_y = draw(shots), np.repeat(np.arange(ways), shots)
  if not queries:
    return sup, sup_y
  return sup, sup_y, draw(queries), np.repeat(np.arange(ways), queries)


# ------------------------------------------------ independent references (NumPy / SciPy)

def _project(alpha_SxN, onehot_SxN, c):
  """Euclidean projection of each row onto {a : sum(a) = 0, a <= c * onehot} (via the simplex)."""
  v = c * onehot_SxN - alpha_SxN  # beta = c*onehot - a lies on the simplex scaled by c
  u = -np.sort(-v, axis=1)
  css = np.cumsum(u, 1) - c
  rho = (u - css / np.arange(1, v.shape[1] + 1) > 0).sum(1)
  theta = css[np.arange(len(v)), rho - 1] / rho
  return c * onehot_SxN - np.maximum(v - theta[:, None], 0)


def _kkt_residual(kernel, onehot, alpha, c, ridge):
  """max |alpha - P(alpha - grad)|: zero exactly at the QP's optimum (KKT conditions)."""
  grad = (kernel + ridge * np.eye(len(kernel))) @ alpha - onehot
  return np.abs(alpha - _project(alpha - grad, onehot, c)).max()


def _dual_objective(kernel, onehot, alpha, ridge):
  return 0.5 * np.sum(alpha * ((kernel + ridge * np.eye(len(kernel))) @ alpha)) - np.sum(
      onehot * alpha)


def _slsqp_dual(kernel, onehot, c, ridge):
  s, n = onehot.shape
  hess = np.kron(kernel + ridge * np.eye(s), np.eye(n))  # alpha flattened row-major
  res = optimize.minimize(
      lambda a: 0.5 * a @ hess @ a - onehot.ravel() @ a, np.zeros(s * n),
      jac=lambda a: hess @ a - onehot.ravel(), method="SLSQP",
      constraints=[{"type": "eq", "fun": lambda a: a.reshape(s, n).sum(1),
                    "jac": lambda a: np.kron(np.eye(s), np.ones((1, n)))},
                   {"type": "ineq", "fun": lambda a: c * onehot.ravel() - a,
                    "jac": lambda a: -np.eye(s * n)}],
      options={"ftol": 1e-14, "maxiter": 1000})
  assert res.success, res.message
  return res.x.reshape(s, n)


# ------------------------------------------------ the QP

_svm_dual = jax.jit(metaopt.svm_dual, static_argnums=(2, 3, 4))
_logits = jax.jit(metaopt.metaopt_logits, static_argnums=(3, 5, 6, 7))

# Overlapping 3-shot classes put some alphas on their bound C; 1-shot ones do not.
@pytest.mark.parametrize("ways,shots,spread,on_bound", [(4, 3, 0.4, True), (3, 1, 1.0, False)])
def test_dual_matches_slsqp_and_satisfies_kkt(ways, shots, spread, on_bound):
  rng = np.random.default_rng(0)
  sup, y = _embeddings(rng, ways, shots, 6, spread)
  kernel, onehot = sup @ sup.T, np.eye(ways)[y]
  c, ridge = 0.1, 1.0
  ref = _slsqp_dual(kernel, onehot, c, ridge)
  with jax.enable_x64(True):
    alpha = np.asarray(_svm_dual(jnp.asarray(kernel), jnp.asarray(onehot), c, ridge, 15))
  np.testing.assert_allclose(alpha, ref, atol=1e-6)
  assert _kkt_residual(kernel, onehot, alpha, c, ridge) < 1e-10
  assert _dual_objective(kernel, onehot, alpha, ridge) <= (
      _dual_objective(kernel, onehot, ref, ridge) + 1e-12)
  np.testing.assert_allclose(alpha.sum(1), 0, atol=1e-12)
  assert np.all(alpha <= c * onehot + 1e-12)
  assert np.any(np.isclose(alpha, c * onehot, atol=1e-8) & (onehot > 0)) == on_bound


def test_float32_default_iterations_reach_kkt_on_resnet_sized_kernels():
  # 5-way 5-shot and 20-way 5-shot post-ReLU embeddings of ResNet-12's width.
  rng = np.random.default_rng(1)
  for ways in (5, 20):
    sup, y = _embeddings(rng, ways, 5, 640, 0.5, relu=True)
    kernel, onehot = (sup @ sup.T).astype(np.float32), np.eye(ways, dtype=np.float32)[y]
    alpha = _svm_dual(jnp.asarray(kernel), jnp.asarray(onehot), 0.1, 1.0,
                             metaopt.MetaOptNet.iterations)
    # float32's floor relative to the kernel's size (diagonal ~ 300 here).
    assert _kkt_residual(kernel.astype(np.float64), onehot, np.asarray(alpha, np.float64),
                         0.1, 1.0) < 1e-5


def test_hard_margin_svm_separates_with_unit_margins():
  # Large C and a vanishing ridge: the Crammer-Singer hard-margin SVM, whose
  # weights W = X^T alpha score every support example's class at least 1
  # above every other class, with equality on the support vectors.
  rng = np.random.default_rng(2)
  sup, y = _embeddings(rng, 4, 5, 30, 3.0)
  onehot = np.eye(4)[y]
  with jax.enable_x64(True):
    alpha = np.asarray(_svm_dual(jnp.asarray(sup @ sup.T), jnp.asarray(onehot), 1e3,
                                        1e-9, 40))
  scores = sup @ (sup.T @ alpha)
  margins = scores[np.arange(len(y)), y][:, None] - scores
  margins = margins[onehot == 0]
  assert margins.min() == pytest.approx(1.0, abs=1e-5)
  assert np.all(scores.argmax(1) == y)


@pytest.mark.parametrize("shots", [1, 5])
def test_head_classifies_separable_data_in_1_and_5_shot(shots):
  rng = np.random.default_rng(3)
  sup, y, qry, qy = _embeddings(rng, 5, shots, 64, 3.0, queries=6)
  # Queries, then the support set itself (which the primal weights fit), in one call.
  logits = _logits(jnp.asarray(sup, jnp.float32), jnp.asarray(y),
                   jnp.asarray(np.concatenate([qry, sup]), jnp.float32), 5, {"scale": 1.0})
  assert logits.shape == (30 + 5 * shots, 5) and np.all(np.isfinite(logits))
  np.testing.assert_array_equal(np.argmax(logits, 1), np.concatenate([qy, y]))


def test_support_order_and_class_ids_do_not_matter():
  rng = np.random.default_rng(4)
  sup, y, qry, _ = _embeddings(rng, 5, 5, 64, 0.5, queries=11)  # the shapes above: one compile
  sup, qry = jnp.asarray(sup, jnp.float32), jnp.asarray(qry, jnp.float32)
  head = {"scale": 2.0}
  logits = _logits(sup, jnp.asarray(y), qry, 5, head)
  perm = rng.permutation(len(y))
  shuffled = _logits(sup[perm], jnp.asarray(y[perm]), qry, 5, head)
  np.testing.assert_allclose(shuffled, logits, rtol=1e-4, atol=1e-4)
  # Renaming the classes permutes the logits' columns alike.
  rename = rng.permutation(5)
  renamed = _logits(sup, jnp.asarray(rename[y]), qry, 5, head)
  np.testing.assert_allclose(renamed[:, rename], logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------ gradients

def test_gradients_match_finite_differences():
  rng = np.random.default_rng(5)
  sup, y, qry, qy = _embeddings(rng, 4, 3, 10, 0.4, queries=5)  # some alphas on the bound
  with jax.enable_x64(True):
    sup, qry = jnp.asarray(sup), jnp.asarray(qry)
    def loss(sup, qry, scale):
      logits = _logits(sup, jnp.asarray(y), qry, 4, {"scale": scale})
      return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(qy)).mean()
    args = (sup, qry, jnp.asarray(3.0))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    assert all(np.all(np.isfinite(g)) for g in grads)
    f, eps = jax.jit(loss), 1e-6
    for _ in range(3):
      v = [jnp.asarray(rng.normal(size=np.shape(a))) for a in args]
      fd = (f(*[a + eps * d for a, d in zip(args, v)]) -
            f(*[a - eps * d for a, d in zip(args, v)])) / (2 * eps)
      analytic = sum(jnp.sum(g * d) for g, d in zip(grads, v))
      np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6, atol=1e-9)


# ------------------------------------------------ the learner

def test_registered_with_validated_options():
  net = models.get("conv4", hidden=8)
  learner = meta.get("metaopt", model=net, C=0.5, iterations=20)
  assert isinstance(learner, metaopt.MetaOptNet)
  assert (learner.C, learner.iterations, learner.ridge, learner.init_scale) == (0.5, 20, 1.0, 1.0)
  for bad, flag in [({"C": 0.0}, "learner_kwargs.C"), ({"iterations": 0}, "iterations"),
                    ({"ridge": 0.0}, "learner_kwargs.ridge")]:
    with pytest.raises(ValueError, match=flag):
      meta.get("metaopt", model=net, **bad)


def _separable_source(classes=8, per_class=6, size=16, seed=0):
  """Classes = fixed random patterns + noise, in [0, 1]."""
  rng = np.random.default_rng(seed)
  patterns = rng.random((classes, 1, size, size, 1))
  images = np.clip(patterns + 0.15 * rng.normal(size=(classes, per_class, size, size, 1)), 0, 1)
  return ClassImages(images.astype(np.float32), np.full(classes, per_class, np.int32),
                     [str(i) for i in range(classes)])


def test_trains_through_meta_step_and_predicts():
  # Meta-trained on 1-shot episodes (S = N: one support vector per class),
  # evaluated 5-shot. Conv4-8's embeddings are ~100x smaller than ResNet-12's,
  # so logits start ~0.1 at MetaOptNet's scale 1; starting at 10 lets 10 steps learn.
  src = _separable_source()
  spec = EpisodeSpec(ways=5, shots=1, queries=3)
  sampler = EpisodeSampler(src, spec)
  learner = meta.get("metaopt", model=models.get("conv4", hidden=8), init_scale=10.0)
  tx = optax.adam(1e-2)
  state = builders.init_state(learner, tx, src.image_shape, spec, 0)
  assert set(state["params"]) == {"backbone", "head"}
  assert float(state["params"]["head"]["scale"]) == 10.0

  five_shot = EpisodeSampler(src, EpisodeSpec(5, 5, 1)).batch_fn()(
      jax.random.PRNGKey(1), 1, sampler.images, sampler.counts)
  episode = jax.tree.map(lambda x: x[0], five_shot)
  predict = jax.jit(learner.predict)
  def eval_loss(state):
    logits = predict(builders.variables(state), episode)
    assert logits.shape == (5, 5) and np.all(np.isfinite(logits))
    return float(optax.softmax_cross_entropy_with_integer_labels(
        logits, episode["query_y"]).mean()), np.mean(np.argmax(logits, 1) == episode["query_y"])
  before, _ = eval_loss(state)

  step = jax.jit(meta_step.make_train_step(learner, tx, sampler, 2, builders.make_mesh(1)))
  losses = []
  for i in range(10):
    state, metrics = step(state, jax.random.fold_in(builders.run_key(0), i),
                          (sampler.images, sampler.counts))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
  assert float(state["params"]["head"]["scale"]) != 10.0  # the scale is meta-learned
  after, accuracy = eval_loss(state)
  assert after < 0.6 * before, (before, after)
  assert accuracy >= 0.8  # chance: 0.2
