"""Fixed-seed few-shot evaluation: mean accuracy and 95% CI over E episodes.

A learner whose prediction embeds each image on its own (the metric
learners: ProtoNet, MatchingNet, R2D2, MetaOptNet, Baseline++; see
`MetricLearner.embeds_each_image_alone`) is evaluated by embedding every
image of the split once and drawing the episodes over the embeddings: the
same episodes and the same predictions, one backbone pass per image instead
of one per image per episode (1,000 5-way 1-shot episodes with 15 queries
touch 80,000 images; Tiny ImageNet's 40 test classes hold 3,200).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import meta
from fsl_jax.data.episodes import (EpisodeSampler, EpisodeSpec, check_spec, episode_indices,
                                   finish_episode)
from fsl_jax.data.sources import ClassImages, as_float


def ci95(accs_E) -> float:
  """Half-width of the 95% interval of the mean of per-episode accuracies: 1.96 std / sqrt(E)."""
  accs_E = np.asarray(accs_E, np.float64)
  return round(float(1.96 * accs_E.std() / math.sqrt(len(accs_E))), 6)


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
               batching: str = "auto", embed_once: bool | None = None,
               images_per_call: int = 0):
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
      raise ValueError(f"episodes={episodes!r}: evaluate on at least 1 episode.")
    self.spec, self.episodes, self.split = spec, episodes, split
    base = jax.random.PRNGKey(seed)
    alone = getattr(learner, "embeds_each_image_alone", lambda: False)() and not rotations
    if embed_once and not alone:
      raise ValueError(f"embed_once: {type(learner).__name__} does not embed each image on its "
                       "own (or rotations are on); evaluate with embed_once=None.")
    self.embed_once = alone if embed_once is None else embed_once
    if self.embed_once:
      # The images stay on the host: only their embeddings go to the device.
      check_spec(source, spec, rotations, split)
      self.source = source
      self.counts = jnp.asarray(source.counts)
      self._build_embedded(learner, base, images_per_call or IMAGES_PER_CALL)
      return
    self.sampler = EpisodeSampler(source, spec, rotations=rotations, split=split)
    one = self.sampler.sample_fn()
    self.chunk = chunk = min(episode_chunk(spec), episodes)
    mode = meta.task_batching(learner, batching)
    # Per-task-weight learners on CPU vmap a few episodes at a time, as the
    # trainer's gradient chunks (meta.task_chunk; 1.8x faster for MAML). A
    # learner that back-propagates through its backbone per episode
    # (FineTune) also caps the vmapped episodes everywhere: 20 vmapped ViT-S/16
    # 5-way 5-shot fine-tunings at 224x224 asked an H200 for 93 GiB.
    size = meta.task_chunk(learner, mode, chunk)
    cap = getattr(learner, "eval_episodes_per_call", None)
    if mode == "vmap" and cap is not None:
      cap = max(1, int(cap(spec)))
      if cap < (size or chunk):  # size 0: the whole chunk at once
        size = cap
    # Episodes evaluated side by side (vmapped) in one step of the loop.
    self.vmapped_episodes = 1 if mode == "map" else size or chunk

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

  def _build_embedded(self, learner, base: jax.Array, images_per_call: int) -> None:
    """The embed-once programs: embed a block of images; accuracies of episodes over embeddings."""
    spec = self.spec
    counts = np.asarray(self.source.counts)
    num_c, max_m = self.source.images.shape[:2]
    # The real image slots (class c's first counts[c]); padding is never embedded, so a
    # split with one large class (LFW: 530 photos of one person, 10 of most) costs
    # one pass per image, not per slot.
    self.real_c, self.real_m = np.nonzero(np.arange(max_m)[None, :] < counts[:, None])
    self.block = block = min(len(self.real_c), images_per_call)
    self.embed_block = jax.jit(lambda variables, x: learner.embed_images(variables, as_float(x)))
    self.chunk = chunk = min(EMBEDDED_EPISODES_PER_CALL, self.episodes)

    def accuracies(variables, start, emb_CxMxD, counts):
      def acc(i):
        key = jax.random.fold_in(base, i)  # the key `sample_episode` would get
        classes_N, idx_NxS = episode_indices(key, counts, max_m, spec)
        ep = finish_episode(key, emb_CxMxD[classes_N[:, None], idx_NxS], classes_N, num_c, spec)
        logits = learner.logits_from_embeddings(variables, ep["support_x"], ep["support_y"],
                                                ep["query_x"], spec.ways)
        return jnp.mean(jnp.argmax(logits, -1) == ep["query_y"])

      return jax.vmap(acc)(start + jnp.arange(chunk))

    self.compiled = jax.jit(accuracies)

  def embed_split(self, variables) -> jax.Array:
    """[C, M, D] embeddings of the split's images (zeros in the padding slots)."""
    images = self.source.images
    num_c, max_m = images.shape[:2]
    total, block = len(self.real_c), self.block
    parts = []
    for start in range(0, total, block):
      at = min(start, total - block)  # the last block ends at the last image
      x = np.asarray(images[self.real_c[at:at + block], self.real_m[at:at + block]])
      parts.append(self.embed_block(variables, x)[start - at:])  # new rows only
    emb = jnp.concatenate(parts)
    flat = jnp.zeros((num_c * max_m,) + emb.shape[1:], emb.dtype)
    flat = flat.at[jnp.asarray(self.real_c * max_m + self.real_m)].set(emb)
    return flat.reshape((num_c, max_m) + emb.shape[1:])

  def __call__(self, variables) -> dict:
    if self.embed_once:
      data, counts = self.embed_split(variables), self.counts
    else:
      data, counts = self.sampler.images, self.sampler.counts
    accs = []
    for start in range(0, self.episodes, self.chunk):
      accs.append(np.asarray(self.compiled(variables, jnp.asarray(start, jnp.int32), data,
                                           counts)))
    accs = np.concatenate(accs)[:self.episodes].astype(np.float64)
    return {
        "split": self.split, "ways": self.spec.ways, "shots": self.spec.shots,
        "accuracy": round(float(accs.mean()), 6),
        "ci95": ci95(accs),
        "episodes": int(len(accs)),
    }


# Images per backbone call when a split is embedded once (the default of
# Evaluator's `images_per_call`), and episodes per
# call over its embeddings (each episode is then a gather and a head).
IMAGES_PER_CALL = 512
EMBEDDED_EPISODES_PER_CALL = 250


def evaluate(learner, variables, source: ClassImages, spec: EpisodeSpec, episodes: int = 1000,
             seed: int = 0, rotations: bool = False, split: str = "test",
             batching: str = "auto", embed_once: bool | None = None) -> dict:
  """One evaluation (see Evaluator); build an Evaluator to evaluate repeatedly."""
  return Evaluator(learner, source, spec, episodes, seed, rotations, split, batching,
                   embed_once)(variables)
