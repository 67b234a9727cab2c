"""N-way K-shot Q-query episodes as a pure jitted function of a PRNG key.

The split lives once in device memory as `images_CxMxHxWxD` (uint8 for
natural images, float32 for Omniglot strokes). An episode draws N distinct
classes (among those with at least K+Q examples), then K+Q distinct examples
of each, and remaps labels to 0..N-1 in draw order. With rotations, class
`r * C + c` is class c rotated by r * 90 degrees, so the augmented classes
cost no memory. Images become float32 in [0, 1] after the gather, inside the
step, and training episodes may then be augmented (`fsl_jax.data.augment`)
with keys folded from the episode key. The same key always gives the same
episode, so training with `fold_in(seed_key, step)` is reproducible and
resumable.

A split too large to hold on the device (`placement`) stays on the host:
`HostEpisodes` draws the same indices from the same keys (they need only
the class counts), gathers the uint8 pixels from the (memory-mapped) array
on the host a few steps ahead (a grain pipeline), and the step finishes the
episodes exactly as the device path does: the same key gives the same
episode on either path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import distributed
from fsl_jax.data import augment as augment_lib
from fsl_jax.data.sources import ClassImages, DataError, as_float

Episode = dict[str, jax.Array]
AUGMENT_ON = ("support", "query", "both")


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


def episode_indices(key: jax.Array, counts_C: jax.Array, max_m: int, spec: EpisodeSpec,
                    rotations: bool = False) -> tuple[jax.Array, jax.Array]:
  """(classes [N] (r * C + c with rotations), example indices [N, K+Q]) that `key` draws.

  Needs only the counts and the padded class size M, so the host path draws
  exactly the device path's episodes without the images.
  """
  n, k, q = spec.ways, spec.shots, spec.queries
  num_c = counts_C.shape[0]
  key_c, key_x = jax.random.split(key)
  eligible = jnp.tile(counts_C >= k + q, 4 if rotations else 1)
  classes_N = _draw_without_replacement(key_c, eligible, n)

  def examples(key_i, c):
    valid = jnp.arange(max_m) < counts_C[c]
    return _draw_without_replacement(key_i, valid, k + q)

  idx_NxS = jax.vmap(examples)(jax.random.split(key_x, n), classes_N % num_c)
  return classes_N.astype(jnp.int32), idx_NxS


def finish_episode(key: jax.Array, x_NxSxHxWxD: jax.Array, classes_N: jax.Array, num_c: int,
                   spec: EpisodeSpec, rotations: bool = False, augment=None,
                   augment_on: str = "both") -> Episode:
  """The episode of gathered pixels [N, K+Q, H, W, D]: float, rotated, augmented, split.

  Augmentation (an op chain of `fsl_jax.data.augment.parse`) draws from
  fold_in(key, 2), so the episode's classes and examples do not depend on it.
  """
  n, k, q = spec.ways, spec.shots, spec.queries
  x = as_float(x_NxSxHxWxD)
  if rotations:
    rotated = jnp.stack([jnp.rot90(x, r, axes=(2, 3)) for r in range(4)])
    x = rotated[classes_N // num_c, jnp.arange(n)]
  support, query = x[:, :k], x[:, k:]
  if augment is not None:
    key_s, key_q = jax.random.split(jax.random.fold_in(key, 2))
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    if augment_on in ("support", "both"):
      support = augment_lib.apply(augment, key_s, flat(support)).reshape(
          (n, k) + support.shape[2:])
    if augment_on in ("query", "both"):
      query = augment_lib.apply(augment, key_q, flat(query)).reshape((n, q) + query.shape[2:])
  img = support.shape[2:]
  labels = jnp.arange(n, dtype=jnp.int32)
  return {
      "support_x": support.reshape((n * k,) + img),
      "support_y": jnp.repeat(labels, k),
      "query_x": query.reshape((n * q,) + img),
      "query_y": jnp.repeat(labels, q),
      "classes": classes_N,
  }


def sample_episode(key: jax.Array, images_CxMxHxWxD: jax.Array, counts_C: jax.Array,
                   spec: EpisodeSpec, rotations: bool = False, augment=None,
                   augment_on: str = "both") -> Episode:
  """One episode; shapes are static given `spec`.

  Returns support_x [N*K, H, W, D], support_y [N*K], query_x [N*Q, H, W, D],
  query_y [N*Q] (labels in 0..N-1, grouped by class; images float32 in
  [0, 1]) and classes [N] (the global class ids drawn, r * C + c with
  rotations).
  """
  num_c, max_m = images_CxMxHxWxD.shape[:2]
  classes_N, idx_NxS = episode_indices(key, counts_C, max_m, spec, rotations)
  x = images_CxMxHxWxD[(classes_N % num_c)[:, None], idx_NxS]  # [N, K+Q, H, W, D]
  return finish_episode(key, x, classes_N, num_c, spec, rotations, augment, augment_on)


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


def check_augment(augment, image_shape, augment_on: str = "both") -> None:
  """Refuses an op chain that changes the image shape, and an unknown `augment_on`."""
  if augment_on not in AUGMENT_ON:
    raise DataError(f"train.augment_on={augment_on!r}: use one of {', '.join(AUGMENT_ON)}.")
  if augment is None:
    return
  out = jax.eval_shape(augment, jax.ShapeDtypeStruct((2,), jnp.uint32),
                       jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32))
  if tuple(out.shape) != tuple(image_shape):
    raise DataError(
        f"The augmentation {getattr(augment, 'spec', '')!r} turns {list(image_shape)} images "
        f"into {list(out.shape)}: support and query must keep the model's input shape; give "
        f"its size ops (random_resized_crop, random_crop, resize) the image size "
        f"{image_shape[0]} (config.data.image_size).")


def placement_for(source: ClassImages, placement: str = "auto",
                  fraction: float = 0.25) -> str:
  """'device' or 'host' for a split: 'auto' keeps it on the device when its
  images take at most `fraction` of the device's memory (on CPU: of the
  machine's RAM), else samples on the host."""
  if placement in ("device", "host"):
    return placement
  if placement != "auto":
    raise DataError(f"data.placement={placement!r}: use auto, device or host.")
  return "device" if source.images.nbytes <= fraction * device_memory() else "host"


def device_memory() -> int:
  """Bytes of memory of the first device (RAM on CPU)."""
  dev = jax.local_devices()[0]
  try:
    limit = (dev.memory_stats() or {}).get("bytes_limit")
  except Exception:  # pylint: disable=broad-except  # CPU clients may not report
    limit = None
  if limit:
    return int(limit)
  try:
    import os  # pylint: disable=g-import-not-at-top
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 8 << 30


class EpisodeSampler:
  """Holds a split on device and samples episodes or meta-batches of them."""

  def __init__(self, source: ClassImages, spec: EpisodeSpec, rotations: bool = False,
               split: str = "", sharding: Any = None, augment=None, augment_on: str = "both"):
    check_spec(source, spec, rotations, split)
    check_augment(augment, source.image_shape, augment_on)
    self.source, self.spec, self.rotations = source, spec, rotations
    self.augment, self.augment_on = augment, augment_on
    put = (lambda a: distributed.put(a, sharding)) if sharding is not None else jnp.asarray
    self.images = put(np.asarray(source.images))
    self.counts = put(source.counts)
    self._one = jax.jit(self.sample_fn())
    self._batch = jax.jit(self.batch_fn(), static_argnums=1)

  def sample_fn(self):
    """A pure `fn(key, images, counts) -> Episode`, for use inside a jitted step."""
    spec, rot, aug, on = self.spec, self.rotations, self.augment, self.augment_on
    return lambda key, images, counts: sample_episode(key, images, counts, spec, rot, aug, on)

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


class HostEpisodes:
  """Meta-batches of a split kept on the host, for splits too large for the device.

  `batch(key)` returns {'key', 'x' uint8 [B, N, K+Q, H, W, D], 'classes'
  [B, N]}: the pixels of the meta-batch the device path's
  `EpisodeSampler.batch_fn()(key, B, ...)` would gather. `finish(batch)`
  (inside the jitted step) turns it into the same episodes. `feed(rng)` is
  the harness's `batches`: step s's batch from fold_in(rng, s), prepared
  `prefetch` steps ahead by a grain pipeline, so a resumed run gets the same
  batches. `tasks` (a slice of the meta-batch) makes this process gather
  only those tasks, as in a multi-process run: task i's episode comes from
  the i-th key of the global batch's split, whichever process draws it.
  """

  def __init__(self, source: ClassImages, spec: EpisodeSpec, meta_batch: int,
               rotations: bool = False, split: str = "", augment=None,
               augment_on: str = "both", prefetch: int = 4, threads: int = 2,
               tasks: slice | None = None):
    check_spec(source, spec, rotations, split)
    check_augment(augment, source.image_shape, augment_on)
    self.source, self.spec, self.rotations = source, spec, rotations
    self.augment, self.augment_on = augment, augment_on
    self.meta_batch, self.prefetch, self.threads = meta_batch, prefetch, threads
    self.images = source.images  # numpy or a memory map; never copied whole
    cpu = jax.local_devices(backend="cpu")[0]  # this process's own
    self._cpu = cpu
    counts = jax.device_put(jnp.asarray(source.counts), cpu)
    max_m = int(source.images.shape[1])

    tasks = tasks or slice(0, meta_batch)

    def indices(key):
      keys = jax.random.split(key, meta_batch)[tasks]
      return jax.vmap(lambda k: episode_indices(k, counts, max_m, spec, rotations))(keys)

    self._indices = jax.jit(indices)

  def batch(self, data_key: jax.Array) -> dict:
    """The host-gathered meta-batch of the data key (the step's `split(key)[0]`)."""
    classes, idx = self._indices(jax.device_put(data_key, self._cpu))
    classes, idx = np.asarray(classes), np.asarray(idx)
    base = classes % self.source.num_classes
    x = self.images[base[..., None], idx]  # [B, N, K+Q, H, W, D]
    return {"x": x, "classes": classes}

  def finish(self, data_key: jax.Array, batch: dict) -> Episode:
    """The episodes (vmapped over the meta-batch) of a host batch, inside the step."""
    keys = jax.random.split(data_key, self.meta_batch)
    num_c, spec, rot = self.source.num_classes, self.spec, self.rotations
    aug, on = self.augment, self.augment_on
    return jax.vmap(lambda k, x, c: finish_episode(k, x, c, num_c, spec, rot, aug, on))(
        keys, batch["x"], batch["classes"])

  def feed(self, rng: jax.Array, data_key: Callable[[jax.Array], jax.Array]):
    """`batches` for the harness: s -> {'key': fold_in(rng, s), **batch(data_key(that))}."""
    rng = jax.device_put(rng, self._cpu)

    def at(s: int) -> dict:
      key = jax.random.fold_in(rng, s)
      return {"key": np.asarray(key), **self.batch(data_key(key))}

    state = {"next": None, "it": None}

    def batch_at(s: int) -> dict:
      if state["next"] != s:  # first call, or a jump (resume): restart the pipeline at s
        ds = grain.MapDataset.range(s, 2**62).map(at)
        state["it"] = iter(ds.to_iter_dataset(grain.ReadOptions(
            num_threads=self.threads, prefetch_buffer_size=self.prefetch)))
      state["next"] = s + 1
      return next(state["it"])

    return batch_at
