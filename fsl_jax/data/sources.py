"""Class-indexed image sources and the image preprocessing they share.

A `ClassImages` holds a whole split as one dense array `images_CxMxHxWxD`
(C classes, up to M examples each, padded) plus `counts_C`, so an episode is a
gather from an array that lives once in device memory.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


class DataError(ValueError):
  """Bad or missing data; the message says how to fix it."""


def read_text(path: str) -> str:
  """A UTF-8 text file (a leading BOM dropped), or DataError naming the file.

  Undecodable bytes are reported with their line, counted from 1.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as err:
    raise DataError(f"Cannot read {path}: {err.strerror or err}.") from None
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as err:
    line = data[:err.start].count(b"\n") + 1
    raise DataError(f"{path}:{line} is not UTF-8 text (byte {data[err.start]:#04x}); save the "
                    "file as UTF-8.") from None


# The class splits of the few-shot benchmarks (trainval = train + val classes).
CLASS_SPLITS = ("train", "val", "test", "trainval")


def class_split(dataset: str, split: str, parts: dict) -> tuple:
  """The classes of `split` in `parts` ({'train', 'val', 'test'} -> classes);
  'trainval' is the sorted union of train and val. An unknown split is a
  DataError naming the splits."""
  if split not in CLASS_SPLITS:
    raise DataError(f"Unknown {dataset} split {split!r}; choose one of "
                    f"{', '.join(CLASS_SPLITS)}.")
  if split == "trainval":
    return tuple(sorted(parts["train"] + parts["val"]))
  return parts[split]


def text_lines(text: str) -> list[str]:
  """Lines split like Python's text files (\\n, \\r\\n or \\r), without their ends."""
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  return lines[:-1] if lines[-1] == "" else lines


@dataclasses.dataclass
class ClassImages:
  """A split: `images` [C, M, H, W, D], `counts` [C].

  `images` are uint8 (0..255; natural images, a quarter of float32's memory
  on device) or float32 in [0, 1] (Omniglot strokes); the episode sampler
  turns either into float32 in [0, 1] inside the step (`as_float`).
  """
  images: np.ndarray
  counts: np.ndarray
  class_names: list[str]
  # Alphabet (or other group) of each class, when the source has one.
  groups: list[str] | None = None

  def __post_init__(self):
    if self.images.ndim != 5:
      raise DataError(f"images must be [C, M, H, W, D], got {self.images.shape}.")
    if len(self.counts) != self.images.shape[0] or len(self.class_names) != len(self.counts):
      raise DataError("images, counts and class_names disagree on the number of classes.")

  @property
  def num_classes(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[2:])

  def __len__(self) -> int:
    return int(self.counts.sum())

  def subset(self, class_indices: Sequence[int]) -> "ClassImages":
    idx = np.asarray(class_indices, dtype=np.int64)
    max_count = int(self.counts[idx].max()) if len(idx) else 0
    return ClassImages(
        images=self.images[idx, :max_count],
        counts=self.counts[idx],
        class_names=[self.class_names[i] for i in idx],
        groups=None if self.groups is None else [self.groups[i] for i in idx])

  @classmethod
  def from_flat(cls, images_NxHxWxD: np.ndarray, labels_N: np.ndarray,
                class_names: Sequence[str] | None = None,
                groups: Sequence[str] | None = None) -> "ClassImages":
    """Groups a flat array by integer label (labels need not be contiguous).

    `class_names`/`groups`, when given, are indexed by the original label.
    """
    labels_N = np.asarray(labels_N)
    uniq, inverse, counts = np.unique(labels_N, return_inverse=True, return_counts=True)
    c, m = len(uniq), int(counts.max()) if len(uniq) else 0
    dtype = np.uint8 if images_NxHxWxD.dtype == np.uint8 else np.float32
    out = np.zeros((c, m) + images_NxHxWxD.shape[1:], dtype)
    order = np.argsort(inverse, kind="stable")
    pos = np.arange(len(labels_N)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[inverse[order], pos] = images_NxHxWxD[order]
    names = [str(u) for u in uniq] if class_names is None else [class_names[u] for u in uniq]
    grp = None if groups is None else [groups[u] for u in uniq]
    return cls(out, counts.astype(np.int32), names, grp)


def match_channels(source: ClassImages, channels: int) -> ClassImages:
  """`source` with `channels` (1 or 3) channels: RGB averaged to gray, gray repeated.

  For evaluating a model on another dataset (a grayscale-trained model on
  RGB photos, or an RGB model on X-rays stored as one channel).
  """
  have = source.image_shape[-1]
  if have == channels:
    return source
  if channels == 3 and have == 1:
    images = np.repeat(source.images, 3, axis=-1)
  elif channels == 1 and have == 3:
    mean = np.asarray(source.images, np.float32).mean(-1, keepdims=True)
    images = np.round(mean).astype(np.uint8) if source.images.dtype == np.uint8 else mean
  else:
    raise DataError(f"Cannot turn {have}-channel images into {channels}-channel ones.")
  return dataclasses.replace(source, images=images)


def as_float(images):
  """Images as float32 in [0, 1]: uint8 divided by 255, float32 unchanged (jax or numpy)."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / np.float32(255)
  return images


def to_strokes(images: np.ndarray, white_background: bool = True) -> np.ndarray:
  """[N, H, W(, D)] images of any integer range -> [N, H, W] float32, strokes=1.

  Normalises each image by its own maximum, so {0,1} (TFDS without
  TensorFlow), {0,255} (with it) and boolean images give the same result.
  """
  x = np.asarray(images)
  if x.ndim == 4:
    x = x[..., 0]
  x = x.astype(np.float32)
  peak = x.reshape(len(x), -1).max(axis=1).reshape(-1, 1, 1)
  x = x / np.maximum(peak, 1e-8) * (peak > 0)
  return 1.0 - x if white_background else x




@functools.lru_cache(maxsize=None)
def _resize_fn(size: int):
  # One jitted function per size, so each input shape compiles once per
  # process (a fresh lambda per call compiled again for every class: 0.4 s
  # each, 57 s for Omniglot's 136-class small1 zip).
  return jax.jit(lambda a: jax.image.resize(
      a, (a.shape[0], size, size, a.shape[3]), method="linear", antialias=True))


def resize(images_NxHxWxD: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
  """Antialiased bilinear resize to size x size, in chunks to bound memory."""
  x = np.asarray(images_NxHxWxD, np.float32)
  if x.shape[1:3] == (size, size):
    return x
  fn = _resize_fn(int(size))
  out = []
  for i in range(0, len(x), chunk):
    part = x[i:i + chunk]
    n = len(part)
    if n < chunk and len(x) > chunk:  # pad the tail: one compiled shape
      part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
    out.append(np.asarray(fn(part))[:n])
  return np.clip(np.concatenate(out), 0.0, 1.0) if out else x[:, :size, :size]
