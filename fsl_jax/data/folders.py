"""Local-folder image sources, for bringing your own data.

- `load_omniglot_folder(root)`: the original Omniglot layout
  `alphabet/characterNN/IIII_DD.png` (as in images_background.zip), from a
  directory or straight from the .zip; preprocessed exactly like the TFDS
  source (strokes = 1, antialiased resize).
- `load_image_folder(root)`: a generic `class_name/*.{png,jpg,jpeg}` layout,
  e.g. photos of newly listed products, 10 per category. Classes may have
  different numbers of images.
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
from typing import Iterator

import numpy as np
from PIL import Image

from fsl_jax.data.sources import ClassImages, DataError, resize, to_strokes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _walk(root: str) -> Iterator[tuple[tuple[str, ...], bytes]]:
  """Yields (relative path parts, file bytes) for image files under root (dir or zip)."""
  if zipfile.is_zipfile(root):
    with zipfile.ZipFile(root) as zf:
      for name in sorted(zf.namelist()):
        if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("__MACOSX"):
          yield tuple(p for p in name.split("/") if p), zf.read(name)
    return
  base = pathlib.Path(root)
  for path in sorted(base.rglob("*")):
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
      yield path.relative_to(base).parts, path.read_bytes()


def _check_root(root: str) -> None:
  if not os.path.exists(root):
    raise DataError(f"Image folder {root} does not exist.")


def read_png_strokes(data: bytes) -> np.ndarray:
  """A 1-bit/grayscale Omniglot-style PNG (white background) -> [H, W] strokes=1."""
  img = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
  return to_strokes(img[None])[0]


def load_omniglot_folder(root: str, image_size: int = 28) -> ClassImages:
  """`alphabet/characterNN/*.png` (optionally under one top folder, or a .zip)."""
  _check_root(root)
  by_class: dict[str, list[np.ndarray]] = {}
  groups: dict[str, str] = {}
  for parts, data in _walk(root):
    if len(parts) < 3:
      continue
    alphabet, character = parts[-3], parts[-2]
    name = f"{alphabet}/{character}"
    by_class.setdefault(name, []).append(read_png_strokes(data))
    groups[name] = alphabet
  if not by_class:
    raise DataError(f"No images in {root}: expected alphabet/characterNN/*.png, as in "
                    "Omniglot's images_background.zip.")
  return _assemble(by_class, groups, image_size)


def load_image_folder(root: str, image_size: int = 84, grayscale: bool = False) -> ClassImages:
  """`class_name/*.{png,jpg}`: RGB (or grayscale) images in [0, 1], resized square."""
  _check_root(root)
  by_class: dict[str, list[np.ndarray]] = {}
  for parts, data in _walk(root):
    if len(parts) < 2:
      continue
    img = Image.open(io.BytesIO(data)).convert("L" if grayscale else "RGB")
    arr = np.asarray(img, np.float32) / 255.0
    if grayscale:
      arr = arr[..., None]
    # Resize each image on its own (sizes differ), then stack.
    by_class.setdefault(parts[-2], []).append(resize(arr[None], image_size)[0])
  if not by_class:
    raise DataError(f"No images in {root}: expected class_name/*.png or *.jpg.")
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
