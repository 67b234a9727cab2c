"""CIFAR-FS and FC100: few-shot class splits of CIFAR-100, read from TFDS `cifar100`.

Both take all 600 images of each class (TFDS 'train' and 'test' records
together: 500 + 100) and split the 100 classes, not the images:

- `cifar_fs` (Bertinetto et al., ICLR 2019, "Meta-learning with differentiable
  closed-form solvers"): 64 / 16 / 20 classes drawn at random over all
  superclasses, by fine-label name.
- `fc100` (Oreshkin et al., NeurIPS 2018, "TADAM"): split by superclass so
  that test classes share no superclass with training ones: 12 / 4 / 4
  superclasses = 60 / 20 / 20 classes.

`trainval` is train + val. Images are uint8 RGB at their native 32x32;
`data.image_size` resizes on the host (Pillow, antialiased bilinear). Each
class's group is its CIFAR-100 superclass. Data: `tfds.data_source`
(array_record, no TensorFlow) from `data.data_dir` / $TFDS_DATA_DIR, or
`data.download=True` once online. The decoded split is cached
(`fsl_jax.data.cache`), so later loads memory-map it.

The TFDS reader and the host-side uint8 resize here are shared with `cub`.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from fsl_jax.data import cache
from fsl_jax.data.sources import CLASS_SPLITS, ClassImages, DataError, class_split

SPLITS = CLASS_SPLITS

# CIFAR-100's 20 superclasses (coarse labels 0..19, in this order) and their
# five classes each, as on https://www.cs.toronto.edu/~kriz/cifar.html.
SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
# Fine label i is the i-th name in alphabetical order (CIFAR-100's
# fine_label_names, which TFDS's ClassLabel 'label' uses).
FINE_NAMES = tuple(sorted(n for names in SUPERCLASSES.values() for n in names))
SUPERCLASS_OF = {n: s for s, names in SUPERCLASSES.items() for n in names}

# CIFAR-FS split by fine-label name, as in Bertinetto et al.'s split files
# (splits/bertinetto/{train,val,test}.txt of their CIFAR-FS release), here as
# listed in torchmeta (tristandeleu/pytorch-meta,
# torchmeta/datasets/assets/cifar100/cifar-fs/{val,test}.json) and checked
# against a second public copy of the split; train = the other 64 classes.
CIFAR_FS_VAL = (
    "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
    "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor")
CIFAR_FS_TEST = (
    "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
    "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale",
    "woman", "worm")
CIFAR_FS_TRAIN = tuple(n for n in FINE_NAMES if n not in CIFAR_FS_VAL + CIFAR_FS_TEST)

# FC100 split by superclass (coarse labels train 1-6, 9, 10, 15, 17-19; val 8,
# 11, 13, 16; test 0, 7, 12, 14), as in Oreshkin et al.'s TADAM code
# (ElementAI/TADAM) and torchmeta's cifar100/fc100/{train,test}.json.
FC100_TRAIN = (
    "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "reptiles", "trees", "vehicles_1", "vehicles_2")
FC100_VAL = ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
             "small_mammals")
FC100_TEST = ("aquatic_mammals", "insects", "medium_mammals", "people")


def split_classes(dataset: str, split: str) -> tuple[str, ...]:
  """The fine-label names of `split` (train, val, test, trainval) of cifar_fs or fc100."""
  if dataset == "cifar_fs":
    parts = {"train": CIFAR_FS_TRAIN, "val": CIFAR_FS_VAL, "test": CIFAR_FS_TEST}
  elif dataset == "fc100":
    by_super = lambda supers: tuple(n for s in supers for n in SUPERCLASSES[s])
    parts = {"train": by_super(FC100_TRAIN), "val": by_super(FC100_VAL),
             "test": by_super(FC100_TEST)}
  else:
    raise DataError(f"Unknown CIFAR-100 few-shot dataset {dataset!r}; choose cifar_fs or fc100.")
  return tuple(sorted(class_split(dataset, split, parts)))


def resize_uint8(images_NxHxWxD: np.ndarray, size: int, grayscale: bool = False) -> np.ndarray:
  """uint8 images -> uint8 [N, size, size, 1 if grayscale else 3] on the host (Pillow).

  Antialiased bilinear (Pillow's BILINEAR widens its support when shrinking);
  a thread pool, since Pillow releases the GIL while it resizes.
  """
  n = len(images_NxHxWxD)
  out = np.zeros((n, size, size, 1 if grayscale else 3), np.uint8)

  def one(i):
    a = np.asarray(images_NxHxWxD[i])
    img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
    img = img.convert("L" if grayscale else "RGB")
    if img.size != (size, size):
      img = img.resize((size, size), Image.BILINEAR)
    out[i] = np.asarray(img).reshape(out.shape[1:])

  if n < 256:
    for i in range(n):
      one(i)
  else:
    with concurrent.futures.ThreadPoolExecutor(max(2, min(16, 2 * (os.cpu_count() or 1)))) as pool:
      list(pool.map(one, range(n), chunksize=256))
  return out


def _missing(name: str, data_dir: str | None, err: Exception) -> DataError:
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  fix = (f"Point --config.data.data_dir (or TFDS_DATA_DIR) at a directory holding a prepared "
         f"copy of TFDS '{name}' (array_record), or prepare it once online with "
         "--config.data.download=True.")
  if not tfds_stamp(name, data_dir):
    return DataError(f"TFDS dataset '{name}' is not prepared in {where}. {fix}")
  return DataError(f"TFDS dataset '{name}' could not be read from {where} ({type(err).__name__}: "
                   f"{' '.join(str(err).split())[:300]}). {fix}")


def tfds_stamp(name: str, data_dir: str | None) -> list:
  """The prepared files of TFDS `name` (name, size, mtime); [] if none (or mocked)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    directory = str(tfds.builder(name, data_dir=data_dir).data_dir)
    files = sorted(os.listdir(directory))
  except Exception:  # pylint: disable=broad-except  # not prepared: data_source will say so
    return []
  stamp = []
  for f in files:
    st = os.stat(os.path.join(directory, f))
    stamp.append([f, st.st_size, st.st_mtime_ns])
  return [os.path.abspath(directory), stamp]


def tfds_records(name: str, split: str, data_dir: str | None = None, download: bool = False,
                 chunk: int = 512) -> Iterator[list[dict]]:
  """The records of a TFDS split in chunks (lists of dicts of numpy values)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    if download:
      # array_record: the random-access format tfds.data_source reads.
      tfds.builder(name, data_dir=data_dir).download_and_prepare(file_format="array_record")
    ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    n = len(ds)
  except Exception as err:  # pylint: disable=broad-except
    raise _missing(name, data_dir, err) from err
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    try:
      records = ds.__getitems__(idx)
    except TypeError:  # tfds.testing.mock_data's sources (TFDS 4.9) read one record at a time
      records = [ds[i] for i in idx]
    yield list(records)


def cached_tfds(name: str, entry: str, key: Sequence, data_dir: str | None, build,
                cache_dir: str | None = None) -> ClassImages:
  """`build()`, through the decoded-array cache when TFDS `name` is prepared on disk."""
  stamp = tfds_stamp(name, data_dir)
  if not stamp:  # nothing on disk to fingerprint (mock data, or missing: build raises)
    return build()
  return cache.cached(entry, [name, list(key), stamp], build, cache_dir)


def _check_label_names(data_dir: str | None) -> None:
  """Refuses a cifar100 whose fine-label names are not FINE_NAMES in order.

  Unnamed labels ('0'..'99': a builder not prepared yet, or
  tfds.testing.mock_data) pass; reading says whether the data is there.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    names = list(tfds.builder("cifar100", data_dir=data_dir).info.features["label"].names)
  except Exception:  # pylint: disable=broad-except
    return
  if names != [str(i) for i in range(len(names))] and names != list(FINE_NAMES):
    raise DataError("TFDS cifar100's fine labels are not CIFAR-100's 100 names in alphabetical "
                    f"order (got {names[:4]}...): the cifar_fs/fc100 class splits index the "
                    "standard cifar100; prepare that one.")


def load_cifar100_fewshot(dataset: str, split: str, image_size: int = 32,
                          data_dir: str | None = None, grayscale: bool = False,
                          download: bool = False, cache_dir: str | None = None) -> ClassImages:
  """The `split` classes of `dataset` (cifar_fs or fc100): uint8 [C, 600, s, s, 3]."""
  names = split_classes(dataset, split)
  labels = {FINE_NAMES.index(n) for n in names}
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None

  def build() -> ClassImages:
    images, fine = [], []
    for tfds_split in ("train", "test"):
      for records in tfds_records("cifar100", tfds_split, data_dir, download):
        for r in records:
          if int(r["label"]) in labels:
            images.append(np.asarray(r["image"], np.uint8))
            fine.append(int(r["label"]))
    if not images:
      raise DataError(f"TFDS cifar100 has no images of the {dataset} {split} classes.")
    x = np.stack(images)
    if x.shape[1:3] != (image_size, image_size) or grayscale:
      x = resize_uint8(x, image_size, grayscale)
    return ClassImages.from_flat(x, np.asarray(fine), FINE_NAMES,
                                 [SUPERCLASS_OF[n] for n in FINE_NAMES])

  _check_label_names(data_dir)
  entry = f"{dataset}-{split}-{image_size}-{'gray' if grayscale else 'rgb'}"
  return cached_tfds("cifar100", entry, [dataset, split, image_size, grayscale, names],
                     data_dir, build, cache_dir)

