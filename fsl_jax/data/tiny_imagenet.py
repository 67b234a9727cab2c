"""Tiny ImageNet (Stanford CS231n) as a few-shot benchmark: 200 wnids split 120/40/40.

Layout: the official `tiny-imagenet-200.zip`
(http://cs231n.stanford.edu/tiny-imagenet-200.zip, 248 MB):

    tiny-imagenet-200/wnids.txt, words.txt
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG   (500 per class, 64x64)
    tiny-imagenet-200/val/images/*.JPEG + val_annotations.txt

read straight from the .zip or from its unpacked folder; `data.data_dir` may
be the zip, the `tiny-imagenet-200` folder, or a folder holding either. The
few-shot splits are class splits: base (`train`, 120 wnids), `val` (40) and
novel (`test`, 40), fixed below as literal lists (`trainval` = base + val).
Every class's images are its `train/<wnid>/images` (500 in the full set, 80
in ../shared's subset); the official val/ images (50 per class, the same
classes) are not used, and the unlabelled test/ images neither.

Images load as uint8 at their native 64x64 (`data.image_size`, e.g. 84 to
match mini-ImageNet backbones), decoded once and then memory-mapped from the
decoded-array cache (`fsl_jax.data.folders.load_classes`). Class names are
the wnids; `class_words(root)` gives their words from words.txt.
"""

from __future__ import annotations

import os
import zipfile

from absl import logging

from fsl_jax.data import folders
from fsl_jax.data.sources import (CLASS_SPLITS, ClassImages, DataError, class_split, read_text,
                                  text_lines)

SPLITS = CLASS_SPLITS
DEFAULT_IMAGE_SIZE = 64
DOWNLOAD = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TOP = "tiny-imagenet-200"

# The class split, made once and pasted here: the 200 wnids of wnids.txt,
# sorted, permuted by np.random.default_rng(0).permutation; the first 120 are
# base classes, the next 40 val, the last 40 novel; each list sorted.
TRAIN_WNIDS = (
    "n01443537", "n01629819", "n01641577", "n01742172", "n01768244", "n01774384", "n01784675",
    "n01855672", "n01910747", "n01944390", "n01945685", "n01950731", "n01983481", "n02074367",
    "n02094433", "n02106662", "n02123045", "n02132136", "n02165456", "n02190166", "n02206856",
    "n02226429", "n02233338", "n02236044", "n02268443", "n02279972", "n02364673", "n02395406",
    "n02410509", "n02423022", "n02437312", "n02480495", "n02669723", "n02788148", "n02791270",
    "n02802426", "n02814533", "n02814860", "n02815834", "n02841315", "n02909870", "n02927161",
    "n02948072", "n02950826", "n02988304", "n02999410", "n03014705", "n03026506", "n03042490",
    "n03085013", "n03089624", "n03100240", "n03179701", "n03201208", "n03250847", "n03255030",
    "n03388043", "n03393912", "n03404251", "n03424325", "n03544143", "n03584254", "n03599486",
    "n03617480", "n03670208", "n03706229", "n03733131", "n03763968", "n03804744", "n03814639",
    "n03837869", "n03854065", "n03930313", "n03937543", "n03970156", "n03976657", "n03977966",
    "n03983396", "n03992509", "n04023962", "n04067472", "n04070727", "n04074963", "n04099969",
    "n04133789", "n04146614", "n04254777", "n04259630", "n04275548", "n04285008", "n04311004",
    "n04328186", "n04366367", "n04371430", "n04376876", "n04398044", "n04417672", "n04456115",
    "n04465501", "n04486054", "n04501370", "n04507155", "n04532670", "n04540053", "n04560804",
    "n04596742", "n07579787", "n07583066", "n07614500", "n07615774", "n07715103", "n07747607",
    "n07749582", "n07753592", "n07768694", "n07873807", "n07875152", "n09246464", "n09256479",
    "n09428293",
)

VAL_WNIDS = (
    "n01644900", "n01698640", "n01774750", "n01984695", "n02002724", "n02056570", "n02058221",
    "n02085620", "n02099712", "n02129165", "n02231487", "n02281406", "n02481823", "n02504458",
    "n02730930", "n02769748", "n02793495", "n02795169", "n02837789", "n02906734", "n02917067",
    "n02963159", "n02977058", "n03444034", "n03447447", "n03649909", "n03902125", "n03980874",
    "n04008634", "n04118538", "n04149813", "n04179913", "n04251144", "n04265275", "n04356056",
    "n04399382", "n04597913", "n07920052", "n09193705", "n09332890",
)

TEST_WNIDS = (
    "n01770393", "n01882714", "n01917289", "n02099601", "n02113799", "n02123394", "n02124075",
    "n02125311", "n02321529", "n02403003", "n02415577", "n02486410", "n02509815", "n02666196",
    "n02699494", "n02808440", "n02823428", "n02843684", "n02883205", "n02892201", "n03126707",
    "n03160309", "n03355925", "n03400231", "n03637318", "n03662601", "n03770439", "n03796401",
    "n03838899", "n03891332", "n04487081", "n04532106", "n04562935", "n06596364", "n07695742",
    "n07711569", "n07720875", "n07734744", "n07871810", "n12267677",
)


def split_wnids(split: str) -> tuple[str, ...]:
  """The wnids of `split` (train, val, test or trainval)."""
  return class_split("tiny_imagenet", split,
                     {"train": TRAIN_WNIDS, "val": VAL_WNIDS, "test": TEST_WNIDS})


def find_root(data_dir: str) -> str:
  """The zip or `tiny-imagenet-200` folder that `data_dir` is or holds."""
  if not data_dir:
    raise DataError(f"Set --config.data.data_dir to tiny-imagenet-200.zip (or its unpacked "
                    f"folder); download it from {DOWNLOAD}.")
  if not os.path.exists(data_dir):
    raise DataError(f"{data_dir} does not exist: set --config.data.data_dir to "
                    f"tiny-imagenet-200.zip or its unpacked folder (from {DOWNLOAD}).")
  if os.path.isfile(data_dir):
    return data_dir
  if os.path.exists(os.path.join(data_dir, "wnids.txt")) or os.path.isdir(
      os.path.join(data_dir, "train")):
    return data_dir
  for name in (_TOP, _TOP + ".zip"):
    if os.path.exists(os.path.join(data_dir, name)):
      return os.path.join(data_dir, name)
  raise DataError(f"{data_dir} holds neither tiny-imagenet-200.zip nor a tiny-imagenet-200 "
                  f"folder (with wnids.txt and train/<wnid>/images/*.JPEG): download {DOWNLOAD} "
                  "and point --config.data.data_dir at it.")


def _read(root: str, name: str) -> str:
  """A text file of the dataset (`wnids.txt`, `words.txt`) from the zip or folder."""
  if os.path.isfile(root):
    with zipfile.ZipFile(root) as zf:
      members = [m for m in zf.namelist() if m in (name, f"{_TOP}/{name}")]
      if not members:
        raise DataError(f"{root} has no {name} (expected {_TOP}/{name}).")
      return zf.read(members[0]).decode("utf-8")
  return read_text(os.path.join(root, name))


def class_words(root: str) -> dict[str, str]:
  """wnid -> its words in words.txt (e.g. 'goldfish, Carassius auratus'), for wnids.txt's wnids."""
  root = find_root(root)
  wnids = set(_read(root, "wnids.txt").split())
  words = {}
  for line in text_lines(_read(root, "words.txt")):
    wnid, _, text = line.partition("\t")
    if wnid in wnids:
      words[wnid] = text.strip()
  return words


def load_tiny_imagenet(split: str, data_dir: str, image_size: int = DEFAULT_IMAGE_SIZE,
                       grayscale: bool = False, skip_bad_images: bool = False,
                       cache_dir: str | None = None) -> ClassImages:
  """The `split` classes of Tiny ImageNet: uint8 [C, M, size, size, 3 (1 if grayscale)]."""
  wanted = set(split_wnids(split))
  root = find_root(data_dir)

  def class_of(parts):
    # .../train/<wnid>/images/<file>: a training image of the class <wnid>.
    if len(parts) >= 4 and parts[-4] == "train" and parts[-2] == "images" and parts[-3] in wanted:
      return parts[-3]
    return None

  src = folders.load_classes(
      root, class_of, image_size, grayscale, skip_bad_images, cache_dir,
      name=f"tiny_imagenet-{split}-{os.path.basename(os.path.abspath(root))}",
      layout=f"{_TOP}/train/<wnid>/images/*.JPEG holding some of the {len(wanted)} {split} "
             f"wnids of fsl_jax.data.tiny_imagenet (the official zip from {DOWNLOAD})",
      fingerprint=sorted(wanted))
  missing = len(wanted) - src.num_classes
  if missing:
    logging.warning("tiny_imagenet %s: %d of its %d classes are not in %s (a subset?); "
                    "loaded %d.", split, missing, len(wanted), root, src.num_classes)
  return src
