"""CUB-200-2011 birds as a few-shot benchmark, from TFDS `caltech_birds2011`.

The split of Chen et al. (ICLR 2019, "A Closer Look at Few-shot
Classification"; filelists/CUB/write_CUB_filelist.py in
wyharveychen/CloserLookFewShot): the 200 classes in the order of their folders
(`001.Black_footed_Albatross` ... `200.Common_Yellowthroat`, 0-based index i)
go to base (`train`) when i % 2 == 0 (100 classes), `val` when i % 4 == 1
(50) and novel (`test`) when i % 4 == 3 (50); `trainval` = base + val. TFDS's
label is that index (folder number - 1). All 11,788 images are used (TFDS
'train' and 'test' records together: CUB's own train/test halves split
images, not classes).

Images vary in size (about 500x375); each is resized (squashed, no crop) to
`data.image_size` x `data.image_size` (default 84) on the host with Pillow as
its chunk of records is read, so the full-size images never sit in memory
together; the result is uint8 and cached (`fsl_jax.data.cache`), so later
loads memory-map it. Class names are `NNN.name` like the folders (TFDS's
`label_name`, lower-cased). Data: `tfds.data_source` from `data.data_dir` /
$TFDS_DATA_DIR, or `data.download=True` once online (TFDS downloads
CUB_200_2011.tgz from data.caltech.edu).
"""

from __future__ import annotations

import os

import numpy as np

from fsl_jax.data.cifar import cached_tfds, resize_uint8, tfds_records
from fsl_jax.data.sources import ClassImages, DataError

SPLITS = ("train", "val", "test", "trainval")
NUM_CLASSES = 200
DEFAULT_IMAGE_SIZE = 84


def split_labels(split: str) -> tuple[int, ...]:
  """The class indices (TFDS labels, 0..199) of `split` by Chen et al.'s rule."""
  rules = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1,
           "test": lambda i: i % 4 == 3, "trainval": lambda i: i % 2 == 0 or i % 4 == 1}
  if split not in rules:
    raise DataError(f"Unknown cub split {split!r}; choose one of {', '.join(SPLITS)}.")
  return tuple(i for i in range(NUM_CLASSES) if rules[split](i))


def load_cub(split: str, image_size: int = DEFAULT_IMAGE_SIZE, data_dir: str | None = None,
             grayscale: bool = False, download: bool = False,
             cache_dir: str | None = None) -> ClassImages:
  """The `split` classes of CUB-200-2011: uint8 [C, M, size, size, 3 (1 if grayscale)]."""
  labels = set(split_labels(split))
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None

  def build() -> ClassImages:
    chunks, kept, names = [], [], {}
    for tfds_split in ("train", "test"):
      for records in tfds_records("caltech_birds2011", tfds_split, data_dir, download, chunk=256):
        mine = [r for r in records if int(r["label"]) in labels]
        if not mine:
          continue
        chunks.append(resize_uint8([np.asarray(r["image"], np.uint8) for r in mine], image_size,
                                   grayscale))
        for r in mine:
          label = int(r["label"])
          kept.append(label)
          name = r.get("label_name", "")
          name = name.decode() if isinstance(name, bytes) else str(name)
          names.setdefault(label, f"{label + 1:03d}.{name.lower()}")
    if not chunks:
      raise DataError(f"TFDS caltech_birds2011 has no images of the cub {split} classes.")
    class_names = [names.get(i, f"{i + 1:03d}") for i in range(NUM_CLASSES)]
    return ClassImages.from_flat(np.concatenate(chunks), np.asarray(kept), class_names)

  entry = f"cub-{split}-{image_size}-{'gray' if grayscale else 'rgb'}"
  return cached_tfds("caltech_birds2011", entry, [split, image_size, grayscale], data_dir,
                     build, cache_dir)
