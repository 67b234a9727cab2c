"""Omniglot from TFDS (`tfds.data_source`, no TensorFlow) with two split schemes.

- `lake`: train = TFDS 'train' (the background set, 964 characters) minus the
  validation alphabets, val = those alphabets, trainval = the whole background
  set, test = TFDS 'test' (the evaluation set, 659 characters).
- `vinyals`: all 1623 characters split into 1028 train / 172 val / 423 test
  characters (Vinyals et al., 2016) by alphabet, except that Gurmukhi is cut:
  characters 1-41 train, 42-45 test (as in Snell et al.'s split files).

Images become 28x28 (configurable) float32 with strokes = 1, background = 0,
whatever the decoder returns, resized with antialiasing.
"""

from __future__ import annotations

import os

import numpy as np

from fsl_jax.data.sources import ClassImages, DataError, resize, to_strokes

# Vinyals et al. (2016) split, by alphabet (as in Snell et al.'s split files).
VINYALS_TEST_ALPHABETS = (
    "Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar",
    "Tibetan", "ULOG")
VINYALS_VAL_ALPHABETS = (
    "Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
# Gurmukhi characters from this number on are test characters in `vinyals`.
VINYALS_GURMUKHI_FIRST_TEST = 42
# The lake scheme carves validation out of the background set with the same
# five alphabets (all five are background alphabets).
LAKE_VAL_ALPHABETS = VINYALS_VAL_ALPHABETS

SPLITS = ("train", "val", "trainval", "test")
SCHEMES = ("lake", "vinyals")


def _missing_message(name: str, data_dir: str | None, err: Exception) -> str:
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return (f"TFDS dataset '{name}' could not be read from {where} ({type(err).__name__}: {err}). "
          "Point TFDS_DATA_DIR (or --config.data.data_dir) at a directory holding a prepared "
          f"copy, e.g. `export TFDS_DATA_DIR=../shared/tfds`, or go online with "
          "--config.data.download=True so TFDS downloads and prepares it.")


_CACHE: dict = {}


def clear_cache() -> None:
  """Forgets decoded splits (tests that mock TFDS call this)."""
  _CACHE.clear()


def read_tfds_split(name: str, split: str, data_dir: str | None = None,
                    download: bool = False, chunk: int = 2048) -> dict[str, np.ndarray]:
  """All records of a TFDS split as numpy arrays (image, label, alphabet, ...).

  Decoded once per process: train and val of the lake scheme share a split.
  """
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
  key = (name, split, data_dir)
  if key not in _CACHE:
    _CACHE[key] = _read_tfds_split(name, split, data_dir, download, chunk)
  return _CACHE[key]


def _read_tfds_split(name, split, data_dir, download, chunk):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    if download:
      tfds.builder(name, data_dir=data_dir).download_and_prepare()
    ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    n = len(ds)
    records = []
    for i in range(0, n, chunk):
      idx = list(range(i, min(n, i + chunk)))
      records.extend(ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[j] for j in idx])
    info_names = None
    try:
      info_names = list(ds.dataset_info.features["alphabet"].names)
    except Exception:  # pylint: disable=broad-except
      pass
  except DataError:
    raise
  except Exception as err:  # pylint: disable=broad-except
    raise DataError(_missing_message(name, data_dir, err)) from err
  if not records:
    raise DataError(f"TFDS split {name}/{split} is empty.")
  out = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
  out["alphabet_names"] = np.asarray(info_names if info_names else [], dtype=object)
  return out


def _characters(data: dict[str, np.ndarray], image_size: int) -> ClassImages:
  names = list(data["alphabet_names"])
  alphabets = [names[a] if a < len(names) else str(a) for a in data["alphabet"]]
  label = data["label"]
  class_names = {}
  groups = {}
  for lab, alpha, cid in zip(label, alphabets, data["alphabet_char_id"]):
    class_names.setdefault(int(lab), f"{alpha}/character{int(cid) + 1:02d}")
    groups.setdefault(int(lab), alpha)
  images = resize(to_strokes(data["image"])[..., None], image_size)
  size = int(label.max()) + 1
  names_by_label = [class_names.get(i, str(i)) for i in range(size)]
  groups_by_label = [groups.get(i, "") for i in range(size)]
  return ClassImages.from_flat(images, label, names_by_label, groups_by_label)


def _characters_of_split(name: str, split: str, data_dir: str | None, download: bool,
                         image_size: int) -> ClassImages:
  """`_characters` of a TFDS split, once per process and size (each scheme's
  splits select from the same one or two decoded, resized TFDS splits)."""
  key = ("characters", name, split, data_dir or os.environ.get("TFDS_DATA_DIR") or None,
         image_size)
  if key not in _CACHE:
    src = _characters(read_tfds_split(name, split, data_dir, download), image_size)
    src.images.setflags(write=False)  # shared by every caller: never changed in place
    _CACHE[key] = src
  return _CACHE[key]


def _vinyals_test(name: str, alphabet: str) -> bool:
  if alphabet == "Gurmukhi":
    return int(name.rsplit("character", 1)[1]) >= VINYALS_GURMUKHI_FIRST_TEST
  return alphabet in VINYALS_TEST_ALPHABETS


def _select(src: ClassImages, pred, what: str) -> ClassImages:
  idx = [i for i, (n, g) in enumerate(zip(src.class_names, src.groups)) if pred(n, g)]
  if not idx:
    raise DataError(f"No {what} characters in this data: the scheme selects by alphabet name, "
                    "which comes from the TFDS metadata of the real Omniglot.")
  return src.subset(idx)


def _concat(a: ClassImages, b: ClassImages) -> ClassImages:
  m = max(a.images.shape[1], b.images.shape[1])
  pad = lambda x: np.pad(x, [(0, 0), (0, m - x.shape[1])] + [(0, 0)] * 3)
  return ClassImages(np.concatenate([pad(a.images), pad(b.images)]),
                     np.concatenate([a.counts, b.counts]),
                     a.class_names + b.class_names, (a.groups or []) + (b.groups or []))


def load_omniglot(split: str = "train", scheme: str = "lake", image_size: int = 28,
                  data_dir: str | None = None, download: bool = False,
                  name: str = "omniglot") -> ClassImages:
  """A split of Omniglot as `ClassImages` (see module docstring for schemes)."""
  if scheme not in SCHEMES:
    raise DataError(f"Unknown Omniglot split scheme {scheme!r}; choose one of {SCHEMES}.")
  if split not in SPLITS:
    raise DataError(f"Unknown split {split!r}; choose one of {SPLITS}.")
  read = lambda s: _characters_of_split(name, s, data_dir, download, image_size)
  if scheme == "lake":
    if split == "test":
      return read("test")
    background = read("train")
    if split == "trainval":
      return background
    is_val = split == "val"
    return _select(background, lambda n, g: (g in LAKE_VAL_ALPHABETS) == is_val, split)
  everything = _concat(read("train"), read("test"))
  in_val = lambda n, g: g in VINYALS_VAL_ALPHABETS
  preds = {
      "test": _vinyals_test,
      "val": in_val,
      "trainval": lambda n, g: not _vinyals_test(n, g),
      "train": lambda n, g: not _vinyals_test(n, g) and not in_val(n, g),
  }
  return _select(everything, preds[split], split)
