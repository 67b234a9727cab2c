"""Metric learners: NumPy references, the shared base, learning, end-to-end runs."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsl_jax.meta import baseline, matchingnet, metric, protonet, r2d2

ROOT = pathlib.Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense on flattened images: [B, 16]."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(32)(x.reshape((x.shape[0], -1)))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(16)(x)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    return nn.Dense(16)(x.reshape((x.shape[0], -1)))


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _toy_episode(rng, centers_CxF, classes, shots, queries, noise):
  """An episode of 4x4x1 'images' drawn around class centres."""
  n, f = len(classes), centers_CxF.shape[1]
  def draw(per):
    x = centers_CxF[np.repeat(classes, per)] + noise * rng.normal(size=(n * per, f))
    return jnp.asarray(x.reshape(n * per, 4, 4, 1), jnp.float32)
  return {"support_x": draw(shots), "support_y": jnp.repeat(jnp.arange(n), shots),
          "query_x": draw(queries), "query_y": jnp.repeat(jnp.arange(n), queries),
          "classes": jnp.asarray(classes, jnp.int32)}


# ------------------------------------------------------------ references

def test_r2d2_head_matches_numpy_primal_ridge():
  rng = np.random.default_rng(0)
  ways, shots, q, lam = 4, 3, 5, 0.7
  for d in (20, 8):  # more and fewer features than support examples
    sup = rng.normal(size=(ways * shots, d)).astype(np.float32)
    qry = rng.normal(size=(ways * q, d)).astype(np.float32)
    sup_y = np.repeat(np.arange(ways), shots)
    y = np.eye(ways)[sup_y]
    w_ref = np.linalg.solve(sup.T.astype(np.float64) @ sup + lam * np.eye(d), sup.T @ y)
    w = r2d2.ridge_weights(jnp.asarray(sup), jnp.asarray(y, jnp.float32), jnp.asarray(lam))
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-4, atol=1e-5)
    head = {"log_lambda": jnp.log(lam), "scale": jnp.asarray(3.0), "bias": jnp.asarray(0.5)}
    logits = r2d2.r2d2_logits(jnp.asarray(sup), jnp.asarray(sup_y), jnp.asarray(qry), ways, head)
    np.testing.assert_allclose(np.asarray(logits), 3.0 * qry @ w_ref + 0.5, rtol=1e-4, atol=1e-4)


def test_matchingnet_probs_match_numpy():
  rng = np.random.default_rng(1)
  ways, shots, q, d, scale = 5, 2, 3, 12, 7.0
  sup = rng.normal(size=(ways * shots, d)).astype(np.float32)
  qry = rng.normal(size=(ways * q, d)).astype(np.float32)
  sup_y = rng.permutation(np.repeat(np.arange(ways), shots))
  cos = _normalize(qry.astype(np.float64)) @ _normalize(sup.astype(np.float64)).T
  attn = np.exp(scale * cos)
  attn /= attn.sum(1, keepdims=True)
  ref = np.stack([attn[:, sup_y == c].sum(1) for c in range(ways)], 1)
  probs = matchingnet.matching_probs(jnp.asarray(sup), jnp.asarray(sup_y), jnp.asarray(qry),
                                     ways, scale)
  np.testing.assert_allclose(np.asarray(probs), ref, rtol=1e-5, atol=1e-6)
  logits = matchingnet.matching_logits(jnp.asarray(sup), jnp.asarray(sup_y), jnp.asarray(qry),
                                       ways, scale, eps=1e-6)
  np.testing.assert_allclose(np.asarray(logits), np.log(ref + 1e-6), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ the shared base

@dataclasses.dataclass(frozen=True)
class NearestMean(metric.MetricLearner):
  """A new metric learner: only its logits (dot products with class means)."""
  name: str = "nearest_mean"

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    del head
    return query_QxD @ protonet.prototypes(support_SxD, support_y_S, ways).T


def test_metric_learners_share_embedding_loss_and_predict():
  rng = np.random.default_rng(5)
  ep = _toy_episode(rng, rng.normal(size=(8, 16)), [6, 1, 4], 2, 3, 1.5)
  key = jax.random.PRNGKey(0)
  x = jnp.concatenate([ep["support_x"], ep["query_x"]])
  backbone = TinyNet().init(key, x, train=False)
  for learner in [protonet.ProtoNet(TinyNet()), matchingnet.MatchingNet(TinyNet(), scale=5.0),
                  r2d2.R2D2(TinyNet(), init_lambda=0.5), NearestMean(TinyNet())]:
    variables = learner.init(key, ep)
    # Params: the backbone's alone, or {'backbone', head_key} (checkpoint layouts).
    if learner.head_key is None:
      assert jax.tree.structure(variables) == jax.tree.structure(dict(backbone))
    else:
      assert set(variables["params"]) == {"backbone", learner.head_key}
    jax.tree.map(np.testing.assert_array_equal, learner.backbone_variables(variables),
                 dict(backbone))

    # predict: the hook's logits on one eval-mode embedding of support + query.
    emb = TinyNet().apply(backbone, x, train=False)
    want = learner.query_logits(learner.head(variables), emb[:6], ep["support_y"], emb[6:], 3)
    logits = learner.predict(variables, ep)
    assert logits.shape == (9, 3)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-5)

    # outer_loss at eval: cross-entropy and accuracy of those logits, no state.
    loss, aux = learner.outer_loss(variables, ep, train=False)
    z = np.asarray(logits, np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    y = np.asarray(ep["query_y"])
    np.testing.assert_allclose(float(loss), -logp[np.arange(9), y].mean(), rtol=1e-4, atol=1e-6)
    assert float(aux["accuracy"]) == np.mean(np.argmax(logits, -1) == y)
    assert aux["model_state"] == {}

    # Training: BatchNorm statistics of the whole episode (all 15 images) come back.
    _, aux = learner.outer_loss(variables, ep, train=True)
    dense = backbone["params"]["Dense_0"]
    h_BxH = np.asarray(x).reshape(15, -1) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(aux["model_state"]["batch_stats"]["BatchNorm_0"]["mean"],
                               0.1 * h_BxH.mean(0), rtol=1e-4, atol=1e-6)  # momentum 0.9 from 0


# ------------------------------------------------------------ Baseline++

def test_baseline_outer_loss_uses_global_labels():
  rng = np.random.default_rng(2)
  learner = baseline.BaselinePP(Linear(), num_classes=12, scale=5.0)
  ep = _toy_episode(rng, rng.normal(size=(12, 16)), [7, 2, 9], 2, 3, 0.1)
  variables = jax.jit(learner.init)(jax.random.PRNGKey(0), ep)
  loss, aux = jax.jit(learner.outer_loss)(variables, ep)  # train=True

  params = variables["params"]
  x = jnp.concatenate([ep["support_x"], ep["query_x"]])
  emb = np.asarray(Linear().apply({"params": params["backbone"]}, x), np.float64)
  w = np.asarray(params["classifier"]["weight"], np.float64)
  assert w.shape == (12, 16)
  logits = 5.0 * _normalize(emb) @ _normalize(w).T
  labels = np.asarray(ep["classes"])[np.concatenate([ep["support_y"], ep["query_y"]])]
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(float(loss), -logp[np.arange(len(labels)), labels].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["accuracy"]), (logits.argmax(1) == labels).mean())
  local = np.concatenate([ep["support_y"], ep["query_y"]])  # what episodic learners use
  assert abs(float(loss) + logp[np.arange(len(local)), local].mean()) > 1e-2

  # A num_classes too small for the episode's class ids makes the loss NaN.
  small = baseline.BaselinePP(Linear(), num_classes=9, scale=5.0)
  small_vars = {**variables, "params": {**params, "classifier": {"weight": w[:9]}}}
  assert np.isnan(float(jax.jit(small.outer_loss)(small_vars, ep)[0]))
  with pytest.raises(ValueError, match="--config.learner_kwargs.num_classes"):
    baseline.BaselinePP(Linear()).init(jax.random.PRNGKey(0), ep)


def test_baseline_predict_fits_support_and_beats_chance():
  rng = np.random.default_rng(3)
  centers = 3.0 * rng.normal(size=(5, 16))
  learner = baseline.BaselinePP(TinyNet(), num_classes=5, finetune_steps=50, finetune_lr=0.05)
  ep = _toy_episode(rng, centers, [0, 1, 2, 3, 4], 2, 10, 0.5)
  variables = jax.jit(learner.init)(jax.random.PRNGKey(0), ep)
  logits = jax.jit(learner.predict)(variables, ep, None)
  assert logits.shape == (50, 5)
  assert float(jnp.mean(jnp.argmax(logits, -1) == ep["query_y"])) > 0.8  # chance: 0.2

  # Fine-tuning lowers the support loss from the class-mean initialisation.
  sup = jnp.asarray(rng.normal(size=(10, 16)), jnp.float32)
  sup_y = jnp.repeat(jnp.arange(5), 2)
  @jax.jit
  def support_losses(sup):
    def loss(steps):
      w = baseline.finetune_classifier(sup, sup_y, 5, steps, 0.05, 10.0)
      logits = baseline.cosine_logits(sup, w, 10.0)
      return optax.softmax_cross_entropy_with_integer_labels(logits, sup_y).mean()
    return loss(0), loss(50)
  before, after = support_losses(sup)
  assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------ learning

@pytest.mark.parametrize("name", ["matchingnet", "r2d2", "baseline"])
def test_loss_decreases(name):
  rng = np.random.default_rng(4)
  centers = rng.normal(size=(10, 16))
  episodes = [_toy_episode(rng, centers, rng.choice(10, 4, replace=False), 2, 3, 0.8)
              for _ in range(4)]
  batch = jax.tree.map(lambda *a: jnp.stack(a), *episodes)
  learner = {"matchingnet": matchingnet.MatchingNet(TinyNet()),
             "r2d2": r2d2.R2D2(TinyNet()),
             "baseline": baseline.BaselinePP(TinyNet(), num_classes=10)}[name]
  variables = jax.jit(learner.init)(jax.random.PRNGKey(0), episodes[0])
  params = variables.pop("params")
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt):
    def loss_fn(p):
      losses, aux = jax.vmap(lambda ep: learner.outer_loss({"params": p, **state}, ep))(batch)
      return losses.mean(), jax.tree.map(lambda x: x.mean(0), aux["model_state"])
    (loss, state), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt)
    return optax.apply_updates(params, upd), state, opt, loss

  losses = []
  for _ in range(30):
    params, variables, opt, loss = step(params, variables, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


# ------------------------------------------------------------ end to end

@pytest.mark.slow  # ~25 s each on CPU, mostly compiling Conv4's train step
@pytest.mark.parametrize("name", ["matchingnet", "r2d2", "baseline"])
def test_runlocal_trains_end_to_end(name, tmp_path):
  cmd = [sys.executable, "-m", "fsl_jax.data.testing", "experiments.meta_train",
         f"--config=experiments/configs/{name}_omniglot.py:runlocal", f"--workdir={tmp_path}",
         "--config.val_every=0"]  # the final evaluation runs `predict` already
  proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(res) == {"split", "ways", "shots", "accuracy", "ci95", "episodes"}
  assert (res["split"], res["ways"], res["shots"], res["episodes"]) == ("test", 5, 1, 20)
  assert 0.0 <= res["accuracy"] <= 1.0 and res["ci95"] > 0
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert all(np.isfinite(r["loss"]) for r in rows)
