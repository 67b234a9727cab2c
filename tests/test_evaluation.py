"""Evaluation that embeds each image of a split once equals the per-episode one."""

import jax
import numpy as np
import pytest

from fsl_jax import meta, models
from fsl_jax.data.episodes import EpisodeSpec
from fsl_jax.data.sources import ClassImages
from fsl_jax.train import evaluation
from fsl_jax.train.builders import dummy_episode


def _split(classes=12, per_class=50, size=16, seed=0):
  """uint8 images whose class sets their mean colour; some classes short (padded slots)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (classes, 1, 1, 1, 3))
  noise = rng.integers(-60, 61, (classes, per_class, size, size, 3))
  images = np.clip(base + noise, 0, 255).astype(np.uint8)
  counts = np.full(classes, per_class, np.int32)
  counts[::3] = per_class - 7
  for c in range(classes):
    images[c, counts[c]:] = 0
  return ClassImages(images, counts, [f"c{i}" for i in range(classes)])


LEARNERS = {"protonet": {}, "matchingnet": {}, "r2d2": {}, "metaopt": {},
            "baseline": {"num_classes": 7, "finetune_steps": 3}}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_embedding_each_image_once_gives_the_per_episode_accuracy(name):
  src = _split()  # 600 slots: two embedding calls of 512, the second overlapping
  spec = EpisodeSpec(5, 2, 4)
  learner = meta.get(name, model=models.get("conv4", hidden=8), **LEARNERS[name])
  assert learner.embeds_each_image_alone()
  variables = learner.init(jax.random.PRNGKey(1), dummy_episode(src.image_shape, spec))
  # Running statistics other than init's, so eval-mode BatchNorm matters.
  stats = variables["batch_stats"]
  variables["batch_stats"] = jax.tree.map(lambda v: v * 0.5 - 0.02, stats)
  once = evaluation.Evaluator(learner, src, spec, 40, seed=3, embed_once=True)
  per_episode = evaluation.Evaluator(learner, src, spec, 40, seed=3, embed_once=False)
  assert once.embed_once and not per_episode.embed_once
  a, b = once(variables), per_episode(variables)
  assert a == b
  if name != "baseline":  # its 3 fine-tuning steps from a random head stay at chance
    assert 0.3 < a["accuracy"] < 1.0, a


def test_learners_that_adapt_per_episode_are_evaluated_per_episode():
  src = _split(classes=6, per_class=8)
  spec = EpisodeSpec(3, 1, 2)
  learner = meta.get("fomaml", model=models.get("conv4", hidden=8, num_classes=3),
                     inner_steps=1)
  assert not evaluation.Evaluator(learner, src, spec, 4).embed_once
  with pytest.raises(ValueError, match="does not embed each image on its own"):
    evaluation.Evaluator(learner, src, spec, 4, embed_once=True)


def test_only_real_images_are_embedded():
  # One class far larger than the rest (LFW: 530 photos of one person, 10 of most):
  # the padding slots are never embedded, and the embeddings are the images' own.
  src = _split(classes=5, per_class=40, size=8)
  src.counts[0], src.counts[1:] = 40, 6
  spec = EpisodeSpec(3, 1, 2)
  learner = meta.get("protonet", model=models.get("conv4", hidden=4))
  variables = learner.init(jax.random.PRNGKey(0), dummy_episode(src.image_shape, spec))
  ev = evaluation.Evaluator(learner, src, spec, 10, embed_once=True, images_per_call=16)
  assert len(ev.real_c) == 40 + 4 * 6  # not the 5 x 40 slots
  calls = []
  real_embed = ev.embed_block
  ev.embed_block = lambda v, x: calls.append(len(x)) or real_embed(v, x)
  emb = np.asarray(ev.embed_split(variables))
  assert sum(calls) <= 64 + 16 and emb.shape[:2] == (5, 40)
  want = np.asarray(learner.embed_images(variables, src.images[2, :6].astype(np.float32) / 255))
  np.testing.assert_allclose(emb[2, :6], want, rtol=1e-5, atol=1e-6)
  assert not emb[2, 6:].any()  # padding rows stay zero (the sampler never draws them)
