"""N-way K-shot Q-query episodes as a pure jitted function of a PRNG key.

The split lives once in device memory as `images_CxMxHxWxD`. An episode draws
N distinct classes (among those with at least K+Q examples), then K+Q distinct
examples of each, and remaps labels to 0..N-1 in draw order. With rotations,
class `r * C + c` is class c rotated by r * 90 degrees, so the augmented
classes cost no memory. The same key always gives the same episode, so
training with `fold_in(seed_key, step)` is reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fsl_jax.data.sources import ClassImages, DataError

Episode = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
  ways: int
  shots: int
  queries: int

  def __post_init__(self):
    for name in ("ways", "shots", "queries"):
      if int(getattr(self, name)) < 1:
        raise DataError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.ways < 2:
      raise DataError(f"ways must be >= 2 for classification, got {self.ways}.")


def _draw_without_replacement(key, valid_M, k):
  """Indices of k distinct True entries of valid_M, in random order."""
  u = jax.random.uniform(key, valid_M.shape)
  u = jnp.where(valid_M, u, 2.0)
  return jnp.argsort(u)[:k]


def sample_episode(key: jax.Array, images_CxMxHxWxD: jax.Array, counts_C: jax.Array,
                   spec: EpisodeSpec, rotations: bool = False) -> Episode:
  """One episode; shapes are static given `spec`.

  Returns support_x [N*K, H, W, D], support_y [N*K], query_x [N*Q, H, W, D],
  query_y [N*Q] (labels in 0..N-1, grouped by class) and classes [N] (the
  global class ids drawn, r * C + c with rotations).
  """
  n, k, q = spec.ways, spec.shots, spec.queries
  num_c, max_m = images_CxMxHxWxD.shape[:2]
  n_rot = 4 if rotations else 1
  key_c, key_x = jax.random.split(key)
  eligible = jnp.tile(counts_C >= k + q, n_rot)
  classes_N = _draw_without_replacement(key_c, eligible, n)
  base_N, rot_N = classes_N % num_c, classes_N // num_c

  def examples(key_i, c):
    valid = jnp.arange(max_m) < counts_C[c]
    return _draw_without_replacement(key_i, valid, k + q)

  idx_NxS = jax.vmap(examples)(jax.random.split(key_x, n), base_N)
  x = images_CxMxHxWxD[base_N[:, None], idx_NxS]  # [N, K+Q, H, W, D]
  if rotations:
    rotated = jnp.stack([jnp.rot90(x, r, axes=(2, 3)) for r in range(4)])
    x = rotated[rot_N, jnp.arange(n)]
  img = x.shape[2:]
  labels = jnp.arange(n, dtype=jnp.int32)
  return {
      "support_x": x[:, :k].reshape((n * k,) + img),
      "support_y": jnp.repeat(labels, k),
      "query_x": x[:, k:].reshape((n * q,) + img),
      "query_y": jnp.repeat(labels, q),
      "classes": classes_N.astype(jnp.int32),
  }


def check_spec(source: ClassImages, spec: EpisodeSpec, rotations: bool, split: str = "") -> None:
  """Raises DataError with a fix when `spec` cannot be drawn from `source`."""
  where = f" in split '{split}'" if split else ""
  need = spec.shots + spec.queries
  max_count = int(source.counts.max()) if source.num_classes else 0
  if need > max_count:
    raise DataError(
        f"shots + queries = {spec.shots} + {spec.queries} = {need} but classes{where} have at "
        f"most {max_count} examples; lower shots or queries (e.g. --config.queries / --shots).")
  eligible = int((source.counts >= need).sum()) * (4 if rotations else 1)
  if spec.ways > eligible:
    raise DataError(
        f"{spec.ways}-way episodes need {spec.ways} classes with >= {need} examples, but "
        f"split{where} has {eligible}{' (rotations included)' if rotations else ''}; "
        f"lower ways or use a larger split.")
  if rotations and source.image_shape[0] != source.image_shape[1]:
    raise DataError(f"rotations need square images, got {source.image_shape}.")


class EpisodeSampler:
  """Holds a split on device and samples episodes or meta-batches of them."""

  def __init__(self, source: ClassImages, spec: EpisodeSpec, rotations: bool = False,
               split: str = "", sharding: Any = None):
    check_spec(source, spec, rotations, split)
    self.source, self.spec, self.rotations = source, spec, rotations
    put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
    self.images = put(source.images)
    self.counts = put(source.counts)
    self._one = jax.jit(self.sample_fn())
    self._batch = jax.jit(self.batch_fn(), static_argnums=1)

  def sample_fn(self):
    """A pure `fn(key, images, counts) -> Episode`, for use inside a jitted step."""
    spec, rot = self.spec, self.rotations
    return lambda key, images, counts: sample_episode(key, images, counts, spec, rot)

  def batch_fn(self):
    one = self.sample_fn()

    def batch(key, size, images, counts):
      keys = jax.random.split(key, size)
      return jax.vmap(one, in_axes=(0, None, None))(keys, images, counts)

    return batch

  def sample(self, key: jax.Array) -> Episode:
    return self._one(key, self.images, self.counts)

  def sample_batch(self, key: jax.Array, size: int) -> Episode:
    return self._batch(key, size, self.images, self.counts)

