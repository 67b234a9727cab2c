"""Local-folder image sources, for bringing your own data.

- `load_omniglot_folder(root)`: the original Omniglot layout
  `alphabet/characterNN/IIII_DD.png` (as in images_background.zip), from a
  directory or straight from the .zip; preprocessed exactly like the TFDS
  source (strokes = 1, antialiased resize). Classes are `alphabet/characterNN`
  and each class's alphabet is its group.
- `load_image_folder(root)`: a generic layout of class folders holding images
  (`.png .jpg .jpeg .bmp .gif .webp`), e.g. photos of newly listed products,
  10 per category. Classes may have different numbers of images.
- `load_classes(root, class_of, size)`: the engine under it and under the
  named datasets (Tiny ImageNet's zip, NEU-DET): `class_of(path parts)` picks
  each file's class (or None to leave it out); `min_per_class=N` keeps only
  the classes with at least N images (e.g. LFW's people with >= 10 photos),
  dropping the others before anything decodes, with one line on stderr that
  counts them.

Natural images load as uint8 [C, M, size, size, D]: Pillow decodes and
resizes (antialiased bilinear, JPEG draft mode when shrinking by 2x or more)
in a thread pool, nothing compiles, and the decoded array is written to a
cache (`fsl_jax.data.cache`) that later loads memory-map until a file
changes. Loads over ~5 s show a progress bar.

Class names in `load_image_folder` are the folder's path relative to `root`,
so nested layouts keep every class apart: `alphabet/character01/*.png` gives
the classes `Latin/character01` and `Greek/character01`, not one merged
`character01`, and Tiny ImageNet's `train/<wnid>/images/*.JPEG` gives one
class per wnid (`train/n01443537/images`). For Omniglot itself use
`omniglot_folder`: it adds the alphabet as each class's group and the
strokes = 1 preprocessing of the TFDS source. `load_image_folder` refuses an
image directly in `root` (it has no class) and a class folder that also holds
another class folder (`cats/*.jpg` beside `cats/kittens/*.jpg`).

Both read from a directory or a .zip. Hidden files and folders (names starting
with '.', e.g. macOS `._x.png`) and `__MACOSX/` are not data and are ignored.
A file that does not decode (truncated, not an image) raises `DataError`
naming it; with `skip_bad_images=True` it is skipped instead, with one warning
line per file that counts the skips so far. 16-bit grayscale images (Pillow
modes I;16 and I) are scaled from their 0..65535 range, not clipped at 255.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import io
import multiprocessing
import os
import pathlib
import time
import warnings
import zipfile
from typing import Callable, Iterator, NamedTuple

from absl import logging
import numpy as np
from PIL import Image
import tqdm

from fsl_jax.data import cache
from fsl_jax.data.sources import ClassImages, DataError, resize, to_strokes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Pillow opens 16-bit grayscale PNG/TIFF as I;16 (I;16B, I;16L by byte order),
# older Pillow versions as I; convert("L") would clip every value above 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnreadableImage(DataError):
  """An image file that does not decode; the message names it and the fixes."""

  def __init__(self, where: str, reason: str, fix: str = ""):
    fix = fix or ("Replace or delete it, or set --config.data.skip_bad_images=True to skip "
                  "unreadable images.")
    super().__init__(f"{where} does not decode as an image ({reason}). {fix}")
    self.where, self.reason = where, reason


def _is_data(parts: tuple[str, ...]) -> bool:
  return bool(parts) and parts[0] != "__MACOSX" and not any(p.startswith(".") for p in parts)


class ImageFile(NamedTuple):
  """One image file of a folder or .zip: its path parts relative to the root,
  where to say it is, its stamp (size and mtime, or size and CRC in a zip:
  what the decoded-array cache fingerprints) and a reader of its bytes.

  A tuple, not a dataclass: a warm load lists every file and builds one per
  file, and a frozen dataclass costs 3x a tuple's construction.
  """
  parts: tuple[str, ...]
  where: str
  stamp: tuple[int, int]
  read: Callable[[], bytes]
  path: str = ""  # a file on disk, which a worker process may open itself


@contextlib.contextmanager
def list_images(root: str) -> Iterator[list[ImageFile]]:
  """The image files under `root` (a folder or a .zip), sorted by path.

  A .zip stays open (its files readable) while the context is.
  """
  _check_root(root)
  if os.path.isfile(root):
    if not zipfile.is_zipfile(root):
      raise DataError(f"{root} is a file but not a .zip (or a truncated one): pass a folder of "
                      "class folders or a complete .zip of one.")
    with zipfile.ZipFile(root) as zf:
      files = []
      for info in sorted(zf.infolist(), key=lambda i: i.filename):
        parts = tuple(p for p in info.filename.split("/") if p)
        if info.filename.lower().endswith(IMAGE_SUFFIXES) and _is_data(parts):
          files.append(ImageFile(parts, f"{info.filename} in {root}",
                                 (info.file_size, info.CRC), functools.partial(zf.read, info)))
      yield files
    return
  files = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")
                   and not (d == "__MACOSX" and os.path.samefile(dirpath, root))]
    rel = os.path.relpath(dirpath, root)
    prefix = () if rel == "." else tuple(rel.split(os.sep))
    head = os.path.join(dirpath, "")
    for fname in filenames:
      if fname.lower().endswith(IMAGE_SUFFIXES) and not fname.startswith("."):
        path = head + fname
        try:
          st = os.stat(path)
        except OSError as err:  # a broken link
          raise DataError(f"Cannot read {path}: {err.strerror or err}.") from None
        files.append(ImageFile(prefix + (fname,), path, (st.st_size, st.st_mtime_ns),
                               functools.partial(_read_bytes, path), path))
  files.sort(key=lambda f: f.parts)
  yield files


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _walk(root: str) -> Iterator[tuple[tuple[str, ...], str, Callable[[], bytes]]]:
  """Yields (path parts relative to root, where to say it is, a reader of its bytes)."""
  with list_images(root) as files:
    for f in files:
      yield f.parts, f.where, f.read


def _check_root(root: str) -> None:
  if not os.path.exists(root):
    raise DataError(f"Image folder {root} does not exist.")


def decode_image(data: bytes, where: str, grayscale: bool = False, fix: str = "") -> np.ndarray:
  """Image file bytes -> float32 [H, W, 1 if grayscale else 3] in [0, 1].

  Raises UnreadableImage naming `where` (the file) and `fix` (default: replace
  it or set skip_bad_images) if the bytes do not decode.
  """
  return _read_image(lambda: data, where, grayscale, fix)


def _read_image(read: Callable[[], bytes], where: str, grayscale: bool,
                fix: str = "") -> np.ndarray:
  try:
    img = Image.open(io.BytesIO(read()))
    img.load()  # Image.open only reads the header; truncation shows here
    if img.mode in _SIXTEEN_BIT_MODES:
      gray_HxW = np.clip(np.asarray(img, np.float32) / 65535.0, 0.0, 1.0)
      return gray_HxW[..., None] if grayscale else np.repeat(gray_HxW[..., None], 3, axis=-1)
    img_HxWxD = np.asarray(img.convert("L" if grayscale else "RGB"), np.float32) / 255.0
  except Exception as err:  # pylint: disable=broad-except  # see _reason
    raise UnreadableImage(where, _reason(err), fix) from err
  return img_HxWxD[..., None] if grayscale else img_HxWxD


class _Skipper:
  """Reads images; skips (and counts) unreadable ones when `skip` is set."""

  def __init__(self, skip: bool):
    self.skip, self.skipped = skip, 0

  def read(self, read: Callable[[], bytes], where: str, grayscale: bool) -> np.ndarray | None:
    try:
      return _read_image(read, where, grayscale)
    except UnreadableImage as err:
      self.failed(err)
      return None

  def failed(self, err: UnreadableImage) -> None:
    """Raises `err`, or counts it with one warning line when skipping."""
    if not self.skip:
      raise err
    self.skipped += 1
    logging.warning("skip_bad_images: skipped unreadable image %d: %s (%s)", self.skipped,
                    err.where, err.reason)

  def no_images(self, root: str, layout: str) -> DataError:
    skipped = f" ({self.skipped} unreadable images skipped)" if self.skipped else ""
    return DataError(f"No images in {root}{skipped}: expected {layout}.")


def decode_resize(data: bytes, where: str, size: int, grayscale: bool = False,
                  fix: str = "") -> np.ndarray:
  """Image file bytes -> uint8 [size, size, 1 if grayscale else 3], by Pillow.

  Antialiased bilinear resize (Pillow's BILINEAR widens its support when
  shrinking), from uint8 to uint8: within 1/255 of decoding to float and
  resizing in float (`_float_resize`, which equals `sources.resize`, JAX's
  antialiased linear resize, to 1e-6), apart from JPEGs at least twice the
  size: those decode in Pillow's draft mode, which has the JPEG decoder
  scale by 1/2, 1/4 or 1/8 in the DCT (up to 4x faster); that changes
  pixels by 1/255 on average (tests/test_image_loading.py states and pins
  the tolerances). Raises UnreadableImage naming `where` when the bytes do
  not decode.
  """
  mode = "L" if grayscale else "RGB"
  try:
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and min(img.size) >= 2 * size:
      img.draft(mode, (size, size))
    img.load()  # Image.open only reads the header; truncation shows here
    if img.mode in _SIXTEEN_BIT_MODES:
      gray_HxW = np.clip(np.asarray(img, np.float32) / 65535.0, 0.0, 1.0)
      img_HxWxD = _float_resize(gray_HxW[..., None], size)
      if not grayscale:
        img_HxWxD = np.repeat(img_HxWxD, 3, axis=-1)
      return np.round(img_HxWxD * 255).astype(np.uint8)
    img = img.convert(mode)
    if img.size != (size, size):
      img = img.resize((size, size), Image.BILINEAR)
    out = np.asarray(img)
  except Exception as err:  # pylint: disable=broad-except
    raise UnreadableImage(where, _reason(err), fix) from err
  return out[..., None] if grayscale else out


def _reason(err: Exception) -> str:
  # Reading raises OSError (unreadable file) or zipfile.BadZipFile (bad CRC);
  # Pillow raises OSError (UnidentifiedImageError, "image file is truncated"),
  # SyntaxError (broken PNG chunks), ValueError, zlib.error, struct.error or
  # DecompressionBombError depending on the format and where the bytes end.
  if isinstance(err, Image.UnidentifiedImageError):
    return "not an image Pillow can read"
  return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _float_resize(img_HxWxD: np.ndarray, size: int) -> np.ndarray:
  """Antialiased bilinear resize of a float image to [size, size, D], by Pillow ("F" mode)."""
  if img_HxWxD.shape[:2] == (size, size):
    return img_HxWxD
  channels = [Image.fromarray(np.ascontiguousarray(img_HxWxD[..., d]), "F").resize(
      (size, size), Image.BILINEAR) for d in range(img_HxWxD.shape[-1])]
  return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0.0, 1.0)


def decode_files(files: list[ImageFile], size: int, grayscale: bool = False,
                 skip_bad_images: bool = False, desc: str = "",
                 out: np.ndarray | None = None,
                 slots: list[tuple[int, ...]] | None = None,
                 processes: bool | None = None) -> np.ndarray:
  """Decodes and resizes every file into `out`; returns kept [N] bool.

  Image i goes to `out[slots[i]]` (uint8; default slots: out[i], with `out`
  a [N, size, size, D] array the caller passes to keep the images). Chunks
  of 64 files decode in forked worker processes, one per core, for loads of
  PROCESS_MIN_FILES files or more (`processes`; None: by size), else in a
  thread pool; nothing is compiled. An unreadable file raises UnreadableImage
  naming it, or with `skip_bad_images` is skipped (kept[i] = False) with one
  warning line each. Loads over ~5 s show a progress bar (files, images/s, ETA).
  """
  if out is None:
    out = np.zeros((len(files), size, size, 1 if grayscale else 3), np.uint8)
  slots = slots if slots is not None else [(i,) for i in range(len(files))]
  if processes is None:
    processes = len(files) >= PROCESS_MIN_FILES and (os.cpu_count() or 1) > 1
  # A .zip's members share one locked file handle (reading them from worker
  # threads cost 3x the CPU), and forked workers cannot use it: read them
  # (and any other in-memory source) here, ahead of the decoders. Files on
  # disk are read by the workers.
  def item(f: ImageFile) -> bytes | str | tuple[str, str]:
    if f.path:
      return f.path
    try:
      return f.read()
    except Exception as err:  # pylint: disable=broad-except  # bad zip CRC, I/O
      return (f.where, _reason(err))

  skipper = _Skipper(skip_bad_images)
  kept = np.ones(len(files), bool)
  cores = os.cpu_count() or 1
  if processes:  # forked like torch's DataLoader workers: no GIL between decoders
    pool = concurrent.futures.ProcessPoolExecutor(
        cores, mp_context=multiprocessing.get_context("fork"))
    workers = cores
  else:  # small loads: threads start at once (Pillow releases the GIL while decoding)
    pool = concurrent.futures.ThreadPoolExecutor(max(2, min(16, 2 * cores)))
    workers = 2 * cores
  chunk = 64  # one task per 64 files (Executor.map ignores chunksize for threads)
  pending = collections.deque()  # (lo, future); at most 2 * workers chunks in flight
  # JAX warns at every fork once its backend runs ("...will likely lead to a
  # deadlock"): a fork copies no threads, and the children only decode with
  # Pillow and NumPy and never call JAX, as torch's DataLoader workers do.
  bar = tqdm.tqdm(total=len(files), desc=desc or "decoding images", unit="img", delay=5,
                  mininterval=2, leave=False)
  with pool, warnings.catch_warnings(), bar:
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                            category=RuntimeWarning)

    def drain():
      lo, future = pending.popleft()
      images, errors = future.result()
      for j, (where, reason) in errors:  # in file order
        skipper.failed(UnreadableImage(where, reason))
        kept[lo + j] = False
      for j in range(len(images)):
        if kept[lo + j]:
          out[slots[lo + j]] = images[j]
      bar.update(len(images))

    for lo in range(0, len(files), chunk):
      batch = files[lo:lo + chunk]
      pending.append((lo, pool.submit(_decode_chunk, [f.where for f in batch],
                                      [item(f) for f in batch], size, grayscale)))
      if len(pending) > 2 * workers:
        drain()
    while pending:
      drain()
  return kept


# Loads of at least this many files decode in forked processes (on more than
# one core): on 2 cores, 16,000 64x64 JPEGs took 5.3 s in threads, where the
# GIL serialises Pillow's per-image Python, against 3.1 s for torch's
# DataLoader's two worker processes (BENCHMARKS.md, "Image loading").
PROCESS_MIN_FILES = 512


def _decode_chunk(wheres: list[str], items: list, size: int, grayscale: bool
                  ) -> tuple[np.ndarray, list[tuple[int, tuple[str, str]]]]:
  """(uint8 [n, size, size, D], [(j, (where, reason)) of the files that did not decode]).

  An item is a file's bytes, its path, or (where, reason) when reading it
  already failed. Module level and returning plain values, so it runs in a
  forked worker as well as a thread.
  """
  images = np.zeros((len(items), size, size, 1 if grayscale else 3), np.uint8)
  errors = []
  for j, (where, it) in enumerate(zip(wheres, items)):
    if isinstance(it, tuple):
      errors.append((j, it))
      continue
    try:
      images[j] = decode_resize(_read_bytes(it) if isinstance(it, str) else it, where, size,
                                grayscale)
    except UnreadableImage as err:
      errors.append((j, (err.where, err.reason)))
    except Exception as err:  # pylint: disable=broad-except  # reading a folder file
      errors.append((j, (where, _reason(err))))
  return images, errors


def _decode_classes(root: str, selected: list[tuple[ImageFile, str]], size: int,
                    grayscale: bool, skip_bad_images: bool, layout: str) -> ClassImages:
  """uint8 ClassImages of (file, class) pairs, decoded straight into [C, M, ...] slots."""
  t0 = time.time()
  classes = sorted({c for _, c in selected})
  index = {c: i for i, c in enumerate(classes)}
  labels = np.asarray([index[c] for _, c in selected])
  counts = np.bincount(labels, minlength=len(classes))
  pos = np.zeros(len(labels), np.int64)
  seen = np.zeros(len(classes), np.int64)
  for i, c in enumerate(labels):
    pos[i], seen[c] = seen[c], seen[c] + 1
  out = np.zeros((len(classes), int(counts.max()), size, size, 1 if grayscale else 3), np.uint8)
  kept = decode_files([f for f, _ in selected], size, grayscale, skip_bad_images,
                      desc=f"decoding {os.path.basename(root.rstrip('/'))}", out=out,
                      slots=list(zip(labels.tolist(), pos.tolist())))
  if not kept.any():
    raise DataError(f"No images in {root} ({len(selected)} unreadable images skipped): "
                    f"expected {layout}.")
  if kept.all():
    src = ClassImages(out, counts.astype(np.int32), classes)
  else:  # skipped files leave holes: regroup the decoded ones
    src = ClassImages.from_flat(out[labels[kept], pos[kept]], labels[kept], classes)
  cache.say("Decoded %d images of %s in %.1fs", len(src), root, time.time() - t0)
  return src


def load_classes(root: str, class_of: Callable[[tuple[str, ...]], str | None], size: int,
                 grayscale: bool = False, skip_bad_images: bool = False,
                 cache_dir: str | None = None, name: str = "",
                 layout: str = "class_name/*.png or *.jpg",
                 check: Callable[[list[tuple[ImageFile, str]]], None] | None = None,
                 fingerprint: object = None, min_per_class: int = 0) -> ClassImages:
  """The images under `root` (folder or .zip) whose `class_of(parts)` is a class name.

  uint8 [C, M, size, size, D], classes sorted by name. The first load at a
  given size writes the decoded array to the cache (`fsl_jax.data.cache`),
  later loads memory-map it. The entry is keyed by `name`, `size`,
  `grayscale`, `fingerprint` (what else decides the selection, e.g. a
  dataset's class list) and the files: in a folder each selected file's
  path, size and mtime; a .zip by its own size and mtime (listing 18,000
  members costs more than reading the cached array). `check(selected)` may
  refuse a layout before anything decodes.

  `min_per_class` > 0 keeps the classes with at least that many files and
  says on stderr how many were dropped (a .zip is then listed on every load,
  so the line always shows); a class that falls below it because
  `skip_bad_images` skipped some of its files is dropped after decoding.
  """
  _check_root(root)
  if min_per_class < 0:
    raise DataError(f"min_per_class={min_per_class}: use 0 (every class) or the fewest images "
                    "a class needs to be kept.")
  key = [os.path.abspath(root), size, bool(grayscale), bool(skip_bad_images), fingerprint]
  is_zip = os.path.isfile(root)
  if is_zip:
    st = os.stat(root)
    key.append([st.st_size, st.st_mtime_ns])

  def select(files):
    selected = [(f, c) for f in files if (c := class_of(f.parts)) is not None]
    if check is not None:
      check(selected)
    if not selected:
      raise DataError(f"No images in {root}: expected {layout}.")
    if min_per_class:
      selected = _at_least(selected, min_per_class, root)
    return selected

  def finish(src: ClassImages) -> ClassImages:
    return _drop_small(src, min_per_class, root) if min_per_class else src

  def build(selected=None) -> ClassImages:
    if selected is not None:
      return _decode_classes(root, selected, size, grayscale, skip_bad_images, layout)
    with list_images(root) as files:
      return _decode_classes(root, select(files), size, grayscale, skip_bad_images, layout)

  entry = cache.slug(name or os.path.basename(os.path.abspath(root)))
  entry = f"{entry}-{size}-{'gray' if grayscale else 'rgb'}"
  if is_zip and not min_per_class:
    return cache.cached(entry, key, build, cache_dir)
  with list_images(root) as files:
    selected = select(files)
    key.append([["/".join(f.parts), c, *f.stamp] for f, c in selected])
    return finish(cache.cached(entry, key, lambda: build(selected), cache_dir))


def _at_least(selected: list[tuple[ImageFile, str]], min_per_class: int,
              root: str) -> list[tuple[ImageFile, str]]:
  """The (file, class) pairs of the classes with >= `min_per_class` files; says what went."""
  counts = collections.Counter(c for _, c in selected)
  keep = {c for c, n in counts.items() if n >= min_per_class}
  if not keep:
    raise DataError(f"No class of {root} has min_per_class={min_per_class} images (the largest "
                    f"has {max(counts.values())}): lower --min_per_class "
                    "(config.data.min_per_class; 0 keeps every class).")
  dropped = len(counts) - len(keep)
  cache.say("min_per_class=%d: dropped %d of the %d classes of %s (fewer images), kept %d "
            "classes, %d images", min_per_class, dropped, len(counts), root, len(keep),
            sum(counts[c] for c in keep))
  return [(f, c) for f, c in selected if c in keep] if dropped else selected


def _drop_small(src: ClassImages, min_per_class: int, root: str) -> ClassImages:
  """`src` without the classes that unreadable-image skips left under `min_per_class`."""
  small = src.counts < min_per_class
  if not small.any():
    return src
  if small.all():
    raise DataError(f"No class of {root} has min_per_class={min_per_class} readable images "
                    "after skip_bad_images: lower --min_per_class.")
  cache.say("min_per_class=%d: dropped %d more classes of %s whose unreadable images were "
            "skipped", min_per_class, int(small.sum()), root)
  return src.subset(np.flatnonzero(~small))


def read_png_strokes(data: bytes, where: str = "image", fix: str = "") -> np.ndarray:
  """An Omniglot-style image (white background, any bit depth) -> [H, W] strokes = 1."""
  return to_strokes(decode_image(data, where, True, fix)[None])[0]


def load_omniglot_folder(root: str, image_size: int = 28,
                         skip_bad_images: bool = False) -> ClassImages:
  """`alphabet/characterNN/*.png` (optionally under one top folder, or a .zip)."""
  _check_root(root)
  skipper = _Skipper(skip_bad_images)
  by_class: dict[str, list[np.ndarray]] = {}
  groups: dict[str, str] = {}
  for parts, where, read in _walk(root):
    if len(parts) < 3:
      continue
    gray_HxWx1 = skipper.read(read, where, grayscale=True)
    if gray_HxWx1 is None:
      continue
    alphabet, character = parts[-3], parts[-2]
    name = f"{alphabet}/{character}"
    by_class.setdefault(name, []).append(to_strokes(gray_HxWx1[None])[0])
    groups[name] = alphabet
  if not by_class:
    raise skipper.no_images(root, "alphabet/characterNN/*.png, as in Omniglot's "
                            "images_background.zip")
  return _assemble(by_class, groups, image_size)


def load_image_folder(root: str, image_size: int = 84, grayscale: bool = False,
                      skip_bad_images: bool = False, cache_dir: str | None = None,
                      name: str = "", min_per_class: int = 0) -> ClassImages:
  """Class folders of images: uint8 RGB (or grayscale), resized square.

  A class is named by its folder's path relative to `root` (module docstring).
  Decoded once per size and file list, then read from the decoded-array
  cache (`load_classes`). `min_per_class` > 0 keeps only the classes with at
  least that many images (config.data.min_per_class).
  """

  def class_of(parts):
    if len(parts) < 2:
      raise DataError(f"{os.path.join(root, *parts)} is directly in {root}, outside any class "
                      "folder: put each class's images in a folder named after the class "
                      "(class_name/*.png).")
    return "/".join(parts[:-1])

  def check(selected):
    classes = {c for _, c in selected}
    for c in sorted(classes):
      parts = c.split("/")
      outer = next(("/".join(parts[:k]) for k in range(1, len(parts))
                    if "/".join(parts[:k]) in classes), None)
      if outer is not None:
        raise DataError(f"{os.path.join(root, outer)} holds images and also the class folder "
                        f"{c}: move its own images into a subfolder, so that every class is "
                        "one folder of images.")

  return load_classes(root, class_of, image_size, grayscale, skip_bad_images, cache_dir,
                      name=name or root, check=check, min_per_class=min_per_class)


def _assemble(by_class, groups, image_size) -> ClassImages:
  names = sorted(by_class)
  images, labels = [], []
  for i, name in enumerate(names):
    imgs = by_class[name]
    if imgs[0].ndim == 2:  # strokes [H, W]: resize as one batch per class
      imgs = list(resize(np.stack(imgs)[..., None], image_size))
    images.extend(imgs)
    labels.extend([i] * len(imgs))
  return ClassImages.from_flat(np.stack(images), np.asarray(labels), names,
                               None if groups is None else [groups[n] for n in names])
