"""Local-folder image sources, for bringing your own data.

- `load_omniglot_folder(root)`: the original Omniglot layout
  `alphabet/characterNN/IIII_DD.png` (as in images_background.zip), from a
  directory or straight from the .zip; preprocessed exactly like the TFDS
  source (strokes = 1, antialiased resize). Classes are `alphabet/characterNN`
  and each class's alphabet is its group.
- `load_image_folder(root)`: a generic layout of class folders holding images
  (`.png .jpg .jpeg .bmp .gif .webp`), e.g. photos of newly listed products,
  10 per category. Classes may have different numbers of images.

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

import functools
import io
import os
import pathlib
import zipfile
from typing import Callable, Iterator

from absl import logging
import numpy as np
from PIL import Image

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


def _walk(root: str) -> Iterator[tuple[tuple[str, ...], str, Callable[[], bytes]]]:
  """Yields (path parts relative to root, where to say it is, a reader of its bytes)."""
  if os.path.isfile(root):
    if not zipfile.is_zipfile(root):
      raise DataError(f"{root} is a file but not a .zip (or a truncated one): pass a folder of "
                      "class folders or a complete .zip of one.")
    with zipfile.ZipFile(root) as zf:
      for name in sorted(zf.namelist()):
        parts = tuple(p for p in name.split("/") if p)
        if name.lower().endswith(IMAGE_SUFFIXES) and _is_data(parts):
          yield parts, f"{name} in {root}", functools.partial(zf.read, name)
    return
  base = pathlib.Path(root)
  for path in sorted(base.rglob("*")):
    parts = path.relative_to(base).parts
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and _is_data(parts):
      yield parts, str(path), path.read_bytes


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
  # Reading raises OSError (unreadable file) or zipfile.BadZipFile (bad CRC);
  # Pillow raises OSError (UnidentifiedImageError, "image file is truncated"),
  # SyntaxError (broken PNG chunks), ValueError, zlib.error, struct.error or
  # DecompressionBombError depending on the format and where the bytes end.
  except Exception as err:  # pylint: disable=broad-except
    reason = ("not an image Pillow can read" if isinstance(err, Image.UnidentifiedImageError)
              else f"{type(err).__name__}: {' '.join(str(err).split())}")
    raise UnreadableImage(where, reason, fix) from err
  return img_HxWxD[..., None] if grayscale else img_HxWxD


class _Skipper:
  """Reads images; skips (and counts) unreadable ones when `skip` is set."""

  def __init__(self, skip: bool):
    self.skip, self.skipped = skip, 0

  def read(self, read: Callable[[], bytes], where: str, grayscale: bool) -> np.ndarray | None:
    try:
      return _read_image(read, where, grayscale)
    except UnreadableImage as err:
      if not self.skip:
        raise
      self.skipped += 1
      logging.warning("skip_bad_images: skipped unreadable image %d: %s (%s)", self.skipped,
                      err.where, err.reason)
      return None

  def no_images(self, root: str, layout: str) -> DataError:
    skipped = f" ({self.skipped} unreadable images skipped)" if self.skipped else ""
    return DataError(f"No images in {root}{skipped}: expected {layout}.")


def _resize_one(img_HxWxD: np.ndarray, size: int) -> np.ndarray:
  """Antialiased bilinear resize of one image to [size, size, D], by Pillow.

  Pillow's float ("F") bilinear resize agrees with `sources.resize` (JAX,
  antialias=True) to 1e-6, and compiles nothing: photos come in many sizes,
  and JAX compiled once per size (0.5 s an image).
  """
  if img_HxWxD.shape[:2] == (size, size):
    return img_HxWxD
  channels = [Image.fromarray(np.ascontiguousarray(img_HxWxD[..., d]), "F").resize(
      (size, size), Image.BILINEAR) for d in range(img_HxWxD.shape[-1])]
  return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0.0, 1.0)


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
                      skip_bad_images: bool = False) -> ClassImages:
  """Class folders of images: RGB (or grayscale) in [0, 1], resized square.

  A class is named by its folder's path relative to `root` (module docstring).
  """
  _check_root(root)
  skipper = _Skipper(skip_bad_images)
  by_class: dict[str, list[np.ndarray]] = {}
  for parts, where, read in _walk(root):
    if len(parts) < 2:
      raise DataError(f"{where} is directly in {root}, outside any class folder: put each "
                      "class's images in a folder named after the class (class_name/*.png).")
    img_HxWxD = skipper.read(read, where, grayscale)
    if img_HxWxD is None:
      continue
    by_class.setdefault("/".join(parts[:-1]), []).append(_resize_one(img_HxWxD, image_size))
  if not by_class:
    raise skipper.no_images(root, "class_name/*.png or *.jpg")
  for name in by_class:
    parts = name.split("/")
    outer = next(("/".join(parts[:k]) for k in range(1, len(parts))
                  if "/".join(parts[:k]) in by_class), None)
    if outer is not None:
      raise DataError(f"{os.path.join(root, outer)} holds images and also the class folder "
                      f"{name}: move its own images into a subfolder, so that every class is "
                      "one folder of images.")
  return _assemble(by_class, None, image_size)


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
