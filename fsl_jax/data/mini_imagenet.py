"""mini-ImageNet and tieredImageNet from the files users download.

`mini_imagenet` (Vinyals et al. 2016 with Ravi & Larochelle's 2017 split: 100
ImageNet classes x 600 images, 64 / 16 / 20 classes, 84x84). Layouts, in the
order they are looked for in `data.data_dir`:

  (a) the pickle caches `mini-imagenet-cache-{train,val,test}.pkl` (a dict:
      'image_data' uint8 [N, 84, 84, 3], 'class_dict' {wnid: [indices]});
  (b) Ravi & Larochelle's split files `{train,val,test}.csv` (`filename,label`,
      https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet)
      beside an `images/` folder of the 60,000 84x84 JPEGs named like
      `n0153282900000005.jpg`;
  (c) the same CSVs with `data.imagenet_dir` = an ILSVRC-2012 train folder
      (`<wnid>/<wnid>_<n>.JPEG`): file `<wnid>NNNNNNNN.jpg` of a CSV is the
      NNNNNNNN-th (from 1) of that class's JPEGs sorted by <n>, the mapping of
      the public generators (yaoyao-liu/mini-imagenet-tools'
      mini_imagenet_generator.py, and filelists/miniImagenet in Chen et al.'s
      CloserLookFewShot); images are squashed to 84x84 like theirs.

For split folders of class folders (`train/<wnid>/*.jpg`, as
mini-imagenet-tools writes them) use the `image_folder` dataset. Every class
of a file is checked against the split's wnid list below; a CSV or cache
naming another class is refused, naming it.

`tiered_imagenet` (Ren et al., ICLR 2018: 608 ILSVRC-12 classes in 34
super-categories; train / val / test = 351 / 97 / 160 classes in 20 / 6 / 8
categories) from the caches of renmengye/few-shot-ssl-public:
`{split}_labels.pkl` (a dict: 'label_specific', 'label_general',
'label_specific_str', 'label_general_str') with `{split}_images_png.pkl` (a
list of PNG bytes) or the `{split}_images.npz` its `decompress` writes
('images' uint8 [N, 84, 84, 3]). That npz holds OpenCV's BGR channel order
(cv2.imdecode); it is flipped to RGB unless `data.npz_bgr=False`. The PNGs
decode to RGB. Class names are 'label_specific_str' (words, not wnids), each
class's group its super-category.

Both give uint8 [C, M, s, s, 3] at `data.image_size` (default 84), `trainval`
= train + val, and write the decoded-array cache (`fsl_jax.data.cache`), so
a second load memory-maps instead of unpickling gigabytes. Pickles can run
code when loaded: load only files from a source you trust.
"""

from __future__ import annotations

import csv
import functools
import os
import pickle
import re

from absl import logging
import numpy as np

from fsl_jax.data import cache, folders
from fsl_jax.data.cifar import resize_uint8
from fsl_jax.data.sources import (CLASS_SPLITS, ClassImages, DataError, class_split, read_text,
                                  text_lines)

SPLITS = CLASS_SPLITS
DEFAULT_IMAGE_SIZE = 84
RAVI_CSVS = "https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
TIERED_SOURCE = "https://github.com/renmengye/few-shot-ssl-public (tiered-imagenet.tar)"

# Ravi & Larochelle's mini-ImageNet split (the classes of their
# train/val/test.csv), as listed in public loaders that check them against the
# mini-imagenet-cache pickles' class_dict order, and the same 100 wnids as
# mini-imagenet-tools' generator; sorted.
TRAIN_WNIDS = (
    "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747",
    "n02074367", "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551",
    "n02108915", "n02111277", "n02113712", "n02120079", "n02165456", "n02457408", "n02606052",
    "n02687172", "n02747177", "n02795169", "n02823428", "n02966193", "n03017168", "n03047690",
    "n03062245", "n03207743", "n03220513", "n03337140", "n03347037", "n03400231", "n03476684",
    "n03527444", "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
    "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548", "n04296562",
    "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
    "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560",
    "n13133613",
)
VAL_WNIDS = (
    "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
    "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
    "n03980874", "n09256479",
)
TEST_WNIDS = (
    "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
    "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
    "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480",
)


def split_wnids(split: str) -> tuple[str, ...]:
  """The mini-ImageNet wnids of `split` (train, val, test or trainval)."""
  return class_split("mini_imagenet", split,
                     {"train": TRAIN_WNIDS, "val": VAL_WNIDS, "test": TEST_WNIDS})


def _parts(split: str) -> tuple[str, ...]:
  if split not in SPLITS:
    raise DataError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
  return ("train", "val") if split == "trainval" else (split,)


def _not_in_split(wnid: str, split: str, where: str) -> DataError:
  other = next((s for s in ("train", "val", "test") if wnid in split_wnids(s)), None)
  what = f"a {other} class" if other else "not a mini-ImageNet class"
  return DataError(f"{where} names class {wnid}, which is not a {split} class of Ravi & "
                   f"Larochelle's mini-ImageNet split ({what}): use the split's own {split} "
                   f"file ({RAVI_CSVS}).")


def _mini_layouts(data_dir: str, split: str) -> str:
  p = split if split != "trainval" else "{train,val}"
  return (f"Set --config.data.data_dir to a folder holding one mini-ImageNet layout for split "
          f"'{split}' ({data_dir or 'data_dir is empty'} has none): (a) "
          f"mini-imagenet-cache-{p}.pkl; (b) {p}.csv (Ravi & Larochelle's split, {RAVI_CSVS}) "
          "beside images/ with the 60,000 84x84 JPEGs named like n0153282900000005.jpg; (c) the "
          "same CSVs with --config.data.imagenet_dir set to an ILSVRC-2012 train folder "
          "(<wnid>/<wnid>_<n>.JPEG).")


def _concat(sources: list[ClassImages]) -> ClassImages:
  if len(sources) == 1:
    return sources[0]
  m = max(s.images.shape[1] for s in sources)
  pad = lambda x: np.pad(x, [(0, 0), (0, m - x.shape[1])] + [(0, 0)] * 3)
  groups = None if any(s.groups is None for s in sources) else sum((s.groups for s in sources), [])
  return ClassImages(np.concatenate([pad(s.images) for s in sources]),
                     np.concatenate([s.counts for s in sources]),
                     sum((list(s.class_names) for s in sources), []), groups)


def _str(x) -> str:
  return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _unpickle(path: str):
  """A pickle (Python 2 ones too: their str and numpy arrays read as latin-1)."""
  try:
    with open(path, "rb") as f:
      data = pickle.load(f, encoding="latin1")
  except Exception as err:  # pylint: disable=broad-except  # truncated, not a pickle, ...
    raise DataError(f"{path} does not unpickle ({type(err).__name__}: {err}); download it "
                    "again.") from err
  if isinstance(data, dict):
    data = {_str(k): v for k, v in data.items()}
  return data


def _stamp(*paths: str) -> list:
  return [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


def _fill(out: np.ndarray, images_NxHxWxD, inverse_N, pos_N, size: int, grayscale: bool,
          chunk: int = 4096) -> None:
  """out[inverse[i], pos[i]] = images[i], resized where needed, a chunk at a time."""
  for i in range(0, len(inverse_N), chunk):
    x = np.asarray(images_NxHxWxD[i:i + chunk])
    if x.shape[1:] != out.shape[2:]:
      x = resize_uint8(x, size, grayscale)
    out[inverse_N[i:i + chunk], pos_N[i:i + chunk]] = x


def _slots(labels_N: np.ndarray):
  """Sorted classes, each example's class index and position in it, class counts."""
  classes, inverse, counts = np.unique(labels_N, return_inverse=True, return_counts=True)
  order = np.argsort(inverse, kind="stable")
  pos = np.empty(len(labels_N), np.int64)
  pos[order] = np.arange(len(labels_N)) - np.repeat(np.cumsum(counts) - counts, counts)
  return classes, inverse, pos, counts.astype(np.int32)


def _mini_pickle(path: str, split: str, size: int, grayscale: bool, cache_dir) -> ClassImages:
  wanted = set(split_wnids(split))

  def build() -> ClassImages:
    data = _unpickle(path)
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
      raise DataError(f"{path} is not a mini-ImageNet cache (a dict with 'image_data' and "
                      "'class_dict').")
    images = data["image_data"]
    class_dict = {_str(k): np.asarray(v, np.int64) for k, v in data["class_dict"].items()}
    for wnid in sorted(class_dict):
      if wnid not in wanted:
        raise _not_in_split(wnid, split, path)
    labels = np.full(len(images), -1, np.int64)
    names = sorted(class_dict)
    for c, wnid in enumerate(names):
      labels[class_dict[wnid]] = c
    keep = np.flatnonzero(labels >= 0)
    classes, inverse, pos, counts = _slots(labels[keep])
    out = np.zeros((len(classes), int(counts.max()), size, size, 1 if grayscale else 3), np.uint8)
    _fill(out, np.asarray(images)[keep], inverse, pos, size, grayscale)
    return ClassImages(out, counts, [names[c] for c in classes])

  key = [_stamp(path), size, grayscale, sorted(wanted)]
  return cache.cached(f"mini_imagenet-{split}-pkl-{size}-{'gray' if grayscale else 'rgb'}", key,
                      build, cache_dir)


def read_split_csv(path: str, split: str) -> dict[str, str]:
  """Ravi & Larochelle's `filename,label` CSV -> {file name: wnid}, checked against the split."""
  wanted = set(split_wnids(split))
  lines = text_lines(read_text(path))
  if not lines or [f.strip().lower() for f in lines[0].split(",")] != ["filename", "label"]:
    raise DataError(f"{path}:1 should be the header 'filename,label' of Ravi & Larochelle's "
                    f"split files ({RAVI_CSVS}).")
  rows = {}
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = [f.strip() for f in next(csv.reader([line]))]
    if len(fields) != 2:
      raise DataError(f"{path}:{lineno} has {len(fields)} fields; expected filename,label.")
    name, wnid = fields
    if wnid not in wanted:
      raise _not_in_split(wnid, split, f"{path}:{lineno}")
    if not re.fullmatch(r"n\d{8}\d{8}\.jpg", name) or not name.startswith(wnid):
      raise DataError(f"{path}:{lineno}: {name!r} is not <wnid><8 digits>.jpg of its class "
                      f"{wnid} (as in n0153282900000005.jpg).")
    rows[name] = wnid
  return rows


def _mini_images(images_dir, rows, split, size, grayscale, skip_bad_images, cache_dir):
  def class_of(parts):
    return rows.get(parts[-1]) if len(parts) == 1 else None

  def check(selected):
    missing = sorted(set(rows) - {f.parts[-1] for f, _ in selected})
    if missing:
      raise DataError(f"{len(missing)} images named in the {split} CSV are not in {images_dir} "
                      f"(e.g. {missing[0]}): unpack all 60,000 mini-ImageNet JPEGs there.")

  return folders.load_classes(images_dir, class_of, size, grayscale, skip_bad_images, cache_dir,
                              name=f"mini_imagenet-{split}-images",
                              layout=f"images/<wnid><8 digits>.jpg as named in the {split} CSV",
                              check=check, fingerprint="ravi")


def _read_file(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _mini_imagenet_train(imagenet_dir, rows, split, size, grayscale, skip_bad_images, cache_dir):
  """The CSV's images from an ILSVRC-2012 train folder (module docstring, layout (c))."""
  wanted: dict[str, list[int]] = {}
  for name, wnid in rows.items():
    wanted.setdefault(wnid, []).append(int(name[9:17]))
  classes = sorted(wanted)
  files, slots = [], []
  for c, wnid in enumerate(classes):
    folder = os.path.join(imagenet_dir, wnid)
    try:
      jpegs = [n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg"))]
      jpegs.sort(key=lambda n: int(os.path.splitext(n)[0].rsplit("_", 1)[1]))
    except (OSError, ValueError, IndexError):
      raise DataError(f"{folder} is not a folder of <wnid>_<n>.JPEG: --config.data.imagenet_dir "
                      "must be the ILSVRC-2012 train folder, one <wnid>/ per class.") from None
    for j, k in enumerate(sorted(wanted[wnid])):
      if not 1 <= k <= len(jpegs):
        raise DataError(f"The {split} CSV asks for image {k} of {wnid}, but {folder} has "
                        f"{len(jpegs)}: use the full ILSVRC-2012 train folder.")
      path = os.path.join(folder, jpegs[k - 1])
      st = os.stat(path)
      files.append(folders.ImageFile((wnid, jpegs[k - 1]), path, (st.st_size, st.st_mtime_ns),
                                     functools.partial(_read_file, path)))
      slots.append((c, j))

  def build() -> ClassImages:
    counts = np.asarray([len(wanted[w]) for w in classes], np.int32)
    out = np.zeros((len(classes), int(counts.max()), size, size, 1 if grayscale else 3), np.uint8)
    kept = folders.decode_files(files, size, grayscale, skip_bad_images,
                                desc=f"decoding mini-ImageNet {split}", out=out, slots=slots)
    if kept.all():
      return ClassImages(out, counts, classes)
    labels, pos = np.asarray(slots).T
    return ClassImages.from_flat(out[labels[kept], pos[kept]], labels[kept], classes)

  key = [size, grayscale, skip_bad_images, [[f.where, *f.stamp] for f in files]]
  return cache.cached(f"mini_imagenet-{split}-ilsvrc-{size}-{'gray' if grayscale else 'rgb'}",
                      key, build, cache_dir)


def load_mini_imagenet(split: str, data_dir: str, image_size: int = DEFAULT_IMAGE_SIZE,
                       imagenet_dir: str = "", grayscale: bool = False,
                       skip_bad_images: bool = False, cache_dir: str | None = None) -> ClassImages:
  """The `split` classes of mini-ImageNet from layout (a), (b) or (c) (module docstring)."""
  parts = _parts(split)
  if not data_dir or not os.path.isdir(data_dir):
    raise DataError(_mini_layouts(data_dir, split))
  pickles = [os.path.join(data_dir, f"mini-imagenet-cache-{p}.pkl") for p in parts]
  csvs = [os.path.join(data_dir, f"{p}.csv") for p in parts]
  images_dir = os.path.join(data_dir, "images")
  if all(os.path.isfile(p) for p in pickles):
    src = _concat([_mini_pickle(path, p, image_size, grayscale, cache_dir)
                   for path, p in zip(pickles, parts)])
  elif all(os.path.isfile(c) for c in csvs) and (os.path.isdir(images_dir) or imagenet_dir):
    rows = {}
    for path, p in zip(csvs, parts):
      rows.update(read_split_csv(path, p))
    if os.path.isdir(images_dir):
      src = _mini_images(images_dir, rows, split, image_size, grayscale, skip_bad_images,
                         cache_dir)
    else:
      src = _mini_imagenet_train(imagenet_dir, rows, split, image_size, grayscale,
                                 skip_bad_images, cache_dir)
  else:
    raise DataError(_mini_layouts(data_dir, split))
  if src.num_classes < len(split_wnids(split)):
    logging.warning("mini_imagenet %s: %d of its %d classes are in %s.", split, src.num_classes,
                    len(split_wnids(split)), data_dir)
  return src


def _blob_bytes(blob) -> bytes:
  # An encoded image as stored: bytes, or cv2.imencode's uint8 array [n, 1].
  return bytes(blob) if isinstance(blob, (bytes, bytearray)) else np.asarray(blob).tobytes()


def _tiered_part(data_dir, part, size, grayscale, npz_bgr, skip_bad_images, cache_dir):
  labels_pkl = os.path.join(data_dir, f"{part}_labels.pkl")
  npz = os.path.join(data_dir, f"{part}_images.npz")
  png = os.path.join(data_dir, f"{part}_images_png.pkl")
  images_path = npz if os.path.isfile(npz) else png
  if not (data_dir and os.path.isfile(labels_pkl) and os.path.isfile(images_path)):
    raise DataError(f"Set --config.data.data_dir to the tieredImageNet folder holding "
                    f"{part}_labels.pkl and {part}_images_png.pkl (or {part}_images.npz) "
                    f"({data_dir or 'data_dir is empty'} has not both); from {TIERED_SOURCE}.")

  def build() -> ClassImages:
    labels = _unpickle(labels_pkl)
    keys = ("label_specific", "label_general", "label_specific_str", "label_general_str")
    if not isinstance(labels, dict) or not set(keys) <= set(labels):
      raise DataError(f"{labels_pkl} is not a tieredImageNet labels file (a dict with "
                      f"{', '.join(keys)}).")
    specific = np.asarray(labels["label_specific"], np.int64).reshape(-1)
    general = np.asarray(labels["label_general"], np.int64).reshape(-1)
    names = [_str(s) for s in labels["label_specific_str"]]
    categories = [_str(s) for s in labels["label_general_str"]]
    classes, inverse, pos, counts = _slots(specific)
    if len(general) != len(specific) or classes.max() >= len(names) or (
        general.max() >= len(categories)):
      raise DataError(f"{labels_pkl}: label arrays and name lists disagree in length.")
    group_of = {}
    for c, g in zip(specific, general):
      if group_of.setdefault(int(c), int(g)) != g:
        raise DataError(f"{labels_pkl}: class {names[c]} has examples in two categories.")
    out = np.zeros((len(classes), int(counts.max()), size, size, 1 if grayscale else 3), np.uint8)
    kept = np.ones(len(specific), bool)
    if images_path == npz:
      with np.load(npz) as z:
        images = z["images"] if "images" in z else None
      if images is None or images.ndim != 4 or len(images) != len(specific):
        raise DataError(f"{npz} should hold 'images' [{len(specific)}, 84, 84, 3] uint8.")
      _fill(out, images[..., ::-1] if npz_bgr else images, inverse, pos, size, grayscale)
    else:
      blobs = _unpickle(png)
      if len(blobs) != len(specific):
        raise DataError(f"{png} holds {len(blobs)} images for {len(specific)} labels.")
      files = [folders.ImageFile((str(i),), f"image {i} of {png}", (0, 0),
                                 functools.partial(_blob_bytes, b))
               for i, b in enumerate(blobs)]
      kept = folders.decode_files(files, size, grayscale, skip_bad_images,
                                  desc=f"decoding tieredImageNet {part}", out=out,
                                  slots=list(zip(inverse.tolist(), pos.tolist())))
    class_names = [names[c] for c in classes]
    groups = [categories[group_of[int(c)]] for c in classes]
    if kept.all():
      return ClassImages(out, counts, class_names, groups)
    return ClassImages.from_flat(out[inverse[kept], pos[kept]], inverse[kept], class_names,
                                 groups)

  key = [_stamp(labels_pkl, images_path), size, grayscale, npz_bgr, skip_bad_images]
  return cache.cached(f"tiered_imagenet-{part}-{size}-{'gray' if grayscale else 'rgb'}", key,
                      build, cache_dir)


def load_tiered_imagenet(split: str, data_dir: str, image_size: int = DEFAULT_IMAGE_SIZE,
                         grayscale: bool = False, npz_bgr: bool = True,
                         skip_bad_images: bool = False,
                         cache_dir: str | None = None) -> ClassImages:
  """The `split` of tieredImageNet from Ren et al.'s caches (module docstring)."""
  return _concat([_tiered_part(data_dir, p, image_size, grayscale, npz_bgr, skip_bad_images,
                               cache_dir) for p in _parts(split)])
