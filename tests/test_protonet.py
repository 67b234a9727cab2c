"""ProtoNet loss against a NumPy reference; it learns a small problem."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsl_jax import meta, models
from fsl_jax.data import testing
from fsl_jax.meta import losses, protonet


def _numpy_protonet(sup, sup_y, qry, qry_y, ways, temperature=1.0):
  protos = np.stack([sup[sup_y == c].mean(0) for c in range(ways)])
  d = ((qry[:, None, :] - protos[None]) ** 2).sum(-1)
  logits = -d / temperature
  logits = logits - logits.max(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -logp[np.arange(len(qry_y)), qry_y].mean(), (logits.argmax(1) == qry_y).mean()


@pytest.mark.parametrize("temperature", [1.0, 64.0])
def test_loss_matches_numpy(temperature):
  rng = np.random.default_rng(0)
  ways, shots, q, d = 5, 3, 4, 16
  sup = rng.normal(size=(ways * shots, d)).astype(np.float32)
  qry = rng.normal(size=(ways * q, d)).astype(np.float32)
  sup_y, qry_y = np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), q)
  learner = protonet.ProtoNet(models.get("conv4"), temperature=temperature)
  logits = learner.query_logits({}, jnp.asarray(sup), jnp.asarray(sup_y), jnp.asarray(qry), ways)
  loss, acc = losses.ce_and_accuracy(logits, jnp.asarray(qry_y))
  ref_loss, ref_acc = _numpy_protonet(sup, sup_y, qry, qry_y, ways, temperature)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(acc), ref_acc)


def test_loss_decreases_and_accuracy_rises():
  from fsl_jax.data import EpisodeSampler, EpisodeSpec, omniglot
  from fsl_jax.train import evaluation
  from fsl_jax.train.builders import dummy_episode
  with testing.mock_omniglot(train_classes=40, test_classes=20):
    train, test = omniglot.load_omniglot("train"), omniglot.load_omniglot("test")
  spec = EpisodeSpec(5, 1, 5)
  sampler = EpisodeSampler(train, spec)
  learner = meta.get("protonet", model=models.get("conv4", hidden=16))
  variables = learner.init(jax.random.PRNGKey(0), dummy_episode(train.image_shape, spec))
  before = evaluation.evaluate(learner, variables, test, EpisodeSpec(5, 1, 5), 100, seed=7)
  tx = optax.adam(3e-3)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt, key):
    ep = sampler.sample_fn()(key, sampler.images, sampler.counts)
    def loss_fn(p):
      loss, aux = learner.outer_loss({"params": p, **state}, ep, key)
      return loss, aux["model_state"]
    (loss, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt)
    return optax.apply_updates(params, upd), new_state, opt, loss

  losses = []
  for i in range(150):
    params, state, opt, loss = step(params, state, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  after = evaluation.evaluate(learner, {"params": params, **state}, test, EpisodeSpec(5, 1, 5),
                              100, seed=7)
  assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
  assert after["accuracy"] > before["accuracy"] + 0.1, (before, after)
  assert after["accuracy"] > 0.6, (before, after)


def test_a_temperature_that_is_not_positive_is_refused():
  with pytest.raises(ValueError, match="use a positive value"):
    protonet.ProtoNet(models.get("conv4"), temperature=0.0)
