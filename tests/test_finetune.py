"""P>M>F test-time fine-tuning (fsl_jax.meta.finetune) on a small Conv4 and generated episodes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import meta, models
from fsl_jax.data.episodes import EpisodeSpec
from fsl_jax.data.sources import ClassImages
from fsl_jax.meta import losses
from fsl_jax.train import evaluation


def _episode(seed=0, ways=3, shots=2, queries=2, size=16):
  rng = np.random.default_rng(seed)
  means = rng.random((ways, 1, size, size, 3))
  s = np.clip(means + 0.1 * rng.normal(size=(ways, shots, size, size, 3)), 0, 1)
  q = np.clip(means + 0.1 * rng.normal(size=(ways, queries, size, size, 3)), 0, 1)
  f = lambda a: jnp.asarray(a.reshape((-1, size, size, 3)), jnp.float32)
  return {"support_x": f(s), "support_y": jnp.repeat(jnp.arange(ways), shots),
          "query_x": f(q), "query_y": jnp.repeat(jnp.arange(ways), queries),
          "classes": jnp.arange(ways)}


def _learner(**kw):
  return meta.get("finetune", model=models.get("conv4", hidden=8), **{"steps": 5, **kw})


def _pseudo_query_loss(learner, variables, ep, key):
  """The fine-tuning objective at `variables` for one augmentation key."""
  aug = learner.augmentation(ep["support_x"].shape[1])
  from fsl_jax.data import augment
  x = jnp.concatenate([ep["support_x"], augment.apply(aug, key, ep["support_x"])])
  emb = learner.embed_images(variables, x)
  s = ep["support_x"].shape[0]
  logits = learner.logits_from_embeddings(variables, emb[:s], ep["support_y"], emb[s:], 3)
  return float(losses.ce_and_accuracy(logits, ep["support_y"])[0])


def test_rate_zero_is_protonet_and_fine_tuning_lowers_the_support_loss():
  ep = _episode()
  tuned = _learner(lr=0.05, steps=8)
  variables = tuned.init(jax.random.PRNGKey(0), ep)
  proto = meta.get("protonet", model=tuned.model)
  np.testing.assert_array_equal(_learner(lr=0.0).predict(variables, ep, jax.random.PRNGKey(1)),
                                proto.predict(variables, ep))
  key = jax.random.PRNGKey(3)
  after = jax.jit(tuned.finetuned_variables, static_argnums=3)(
      variables, ep["support_x"], ep["support_y"], 3, key)
  moved = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(after["params"]), jax.tree.leaves(variables["params"])))
  assert moved > 1e-4
  assert jax.tree.structure(after) == jax.tree.structure(variables)
  # Running statistics are not touched (the backbone runs in evaluation mode).
  for a, b in zip(jax.tree.leaves(after["batch_stats"]), jax.tree.leaves(variables["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  # Without augmentation the objective is deterministic (pseudo-queries = the
  # support images), and the SGD steps lower it (measured 1.095 -> 1.044).
  plain = _learner(lr=0.05, steps=8, augment="")
  tuned_plain = jax.jit(plain.finetuned_variables, static_argnums=3)(
      variables, ep["support_x"], ep["support_y"], 3, key)
  before_loss = _pseudo_query_loss(plain, variables, ep, key)
  assert _pseudo_query_loss(plain, tuned_plain, ep, key) < before_loss - 0.02
  # The same key gives the same fine-tuned predictions; another key, others.
  predict = jax.jit(tuned.predict)
  a, b = predict(variables, ep, key), predict(variables, ep, key)
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(predict(variables, ep, jax.random.PRNGKey(4)) - a)).max() > 0


def test_evaluator_fine_tunes_each_episode():
  rng = np.random.default_rng(0)
  src = ClassImages((rng.random((6, 4, 16, 16, 3)) * 255).astype(np.uint8),
                    np.full(6, 4, np.int32), [str(i) for i in range(6)])
  learner = _learner(lr=0.05, steps=2)
  spec = EpisodeSpec(3, 1, 2)
  variables = learner.init(jax.random.PRNGKey(0), _episode(shots=1))
  assert not learner.embeds_each_image_alone()
  with pytest.raises(ValueError, match="does not embed each image on its own"):
    evaluation.Evaluator(learner, src, spec, episodes=4, embed_once=True)
  res = evaluation.Evaluator(learner, src, spec, episodes=4, seed=1)(variables)
  again = evaluation.Evaluator(learner, src, spec, episodes=4, seed=1)(variables)
  assert res == again and res["episodes"] == 4 and 0.0 <= res["accuracy"] <= 1.0


def test_evaluator_bounds_the_fine_tunings_it_vmaps(monkeypatch):
  # On a GPU (one chunk of episodes, vmapped) 20 ViT-S/16 5-shot fine-tunings
  # at once asked an H200 for 93 GiB: the evaluator caps them at 256 support
  # images (with their augmented copies, 2 x 5 x 5 per episode: 5 episodes).
  rng = np.random.default_rng(0)
  src = ClassImages((rng.random((6, 6, 16, 16, 3)) * 255).astype(np.uint8),
                    np.full(6, 6, np.int32), [str(i) for i in range(6)])
  learner = _learner(lr=0.05, steps=2)
  spec = EpisodeSpec(5, 5, 1)
  assert learner.eval_episodes_per_call(spec) == 5
  variables = learner.init(jax.random.PRNGKey(0), _episode(ways=5, shots=5, queries=1))
  monkeypatch.setattr(meta.base.jax, "default_backend", lambda: "gpu")
  capped = evaluation.Evaluator(learner, src, spec, episodes=12, seed=2, batching="vmap")
  assert capped.vmapped_episodes == 5
  looped = evaluation.Evaluator(learner, src, spec, episodes=12, seed=2, batching="map")
  assert looped.vmapped_episodes == 1
  assert capped(variables) == looped(variables)
  # A learner without the cap vmaps the whole chunk there.
  proto = meta.get("protonet", model=learner.model)
  assert evaluation.Evaluator(proto, src, spec, episodes=12, batching="vmap",
                              embed_once=False).vmapped_episodes == 12


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match="steps=-1"):
    _learner(steps=-1)
  with pytest.raises(ValueError, match="lr=-0.1"):
    _learner(lr=-0.1)
  with pytest.raises(ValueError, match="Unknown augmentation|nope"):
    _learner(augment="nope(3)")
