"""Fixed-seed few-shot evaluation: mean accuracy and 95% CI over E episodes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import meta
from fsl_jax.data.episodes import EpisodeSampler, EpisodeSpec
from fsl_jax.data.sources import ClassImages


def episode_chunk(spec: EpisodeSpec, images_per_chunk: int = 4096) -> int:
  """Episodes evaluated per jitted call, bounding activation memory."""
  return max(1, images_per_chunk // (spec.ways * (spec.shots + spec.queries)))


class Evaluator:
  """Accuracy on episodes i = 0..E-1 drawn with fold_in(PRNGKey(seed), i).

  The episode set depends only on (source, spec, seed, E), so any two
  checkpoints are compared on exactly the same episodes. Built once per
  (learner, split, spec); every call with same-shaped variables reuses one
  compiled program (validation during training calls it many times).
  """

  def __init__(self, learner, source: ClassImages, spec: EpisodeSpec, episodes: int = 1000,
               seed: int = 0, rotations: bool = False, split: str = "test",
               batching: str = "auto"):
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
      raise ValueError(f"episodes={episodes!r}: evaluate on at least 1 episode.")
    self.spec, self.episodes, self.split = spec, episodes, split
    self.sampler = EpisodeSampler(source, spec, rotations=rotations, split=split)
    one = self.sampler.sample_fn()
    self.chunk = chunk = min(episode_chunk(spec), episodes)
    base = jax.random.PRNGKey(seed)
    mode = meta.task_batching(learner, batching)
    # Per-task-weight learners on CPU vmap a few episodes at a time, as the
    # trainer's gradient chunks (meta.task_chunk; 1.8x faster for MAML).
    size = meta.task_chunk(learner, mode, chunk)

    def accuracies(variables, start, images, counts):
      idx = start + jnp.arange(chunk)

      def acc(i):
        ep = one(jax.random.fold_in(base, i), images, counts)
        logits = learner.predict(variables, ep, jax.random.fold_in(base, -1 - i))
        return jnp.mean(jnp.argmax(logits, -1) == ep["query_y"])

      if mode == "map" or (not size and chunk > 64):
        return jax.lax.map(acc, idx)
      if size:
        return jax.lax.map(acc, idx, batch_size=size)
      return jax.vmap(acc)(idx)

    self.compiled = jax.jit(accuracies)

  def __call__(self, variables) -> dict:
    accs = []
    for start in range(0, self.episodes, self.chunk):
      accs.append(np.asarray(self.compiled(variables, jnp.asarray(start, jnp.int32),
                                           self.sampler.images, self.sampler.counts)))
    accs = np.concatenate(accs)[:self.episodes].astype(np.float64)
    return {
        "split": self.split, "ways": self.spec.ways, "shots": self.spec.shots,
        "accuracy": round(float(accs.mean()), 6),
        "ci95": round(float(1.96 * accs.std() / math.sqrt(len(accs))), 6),
        "episodes": int(len(accs)),
    }


def evaluate(learner, variables, source: ClassImages, spec: EpisodeSpec, episodes: int = 1000,
             seed: int = 0, rotations: bool = False, split: str = "test",
             batching: str = "auto") -> dict:
  """One evaluation (see Evaluator); build an Evaluator to evaluate repeatedly."""
  return Evaluator(learner, source, spec, episodes, seed, rotations, split, batching)(variables)
