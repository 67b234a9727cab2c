"""The 20-way within-alphabet one-shot task of Lake et al. (2015).

Each of the 20 official runs is a folder:

    runNN/training/classNN.png   20 one-shot examples (one per character)
    runNN/test/itemNN.png        20 queries
    runNN/class_labels.txt       lines "runNN/test/itemNN.png runNN/training/classNN.png"

Images are 105x105 1-bit PNGs with a white background. `read_runs` reads that
layout; `write_runs` builds runs in exactly that format from evaluation-set
characters (20 characters of one alphabet per run, two different drawers),
since the official runs are not distributed with TFDS.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image

from fsl_jax.data.folders import read_png_strokes
from fsl_jax.data.sources import (ClassImages, DataError, read_text, resize, text_lines,
                                  to_strokes)


@dataclasses.dataclass
class Run:
  name: str
  train_x: np.ndarray   # [20, S, S, 1] strokes = 1, in class order
  test_x: np.ndarray    # [20, S, S, 1]
  test_y: np.ndarray    # [20] index into train_x


# The fix for an unreadable image in a run: runs are fixed sets, nothing to skip.
_REMAKE = "Replace it, or build new runs with `python -m experiments.make_lake_runs`."


def read_runs(runs_dir: str, image_size: int = 28) -> list[Run]:
  root = pathlib.Path(runs_dir)
  run_dirs = sorted(p for p in root.glob("run*") if p.is_dir()) if root.is_dir() else []
  if not run_dirs:
    raise DataError(f"No runNN folders in {runs_dir}: expected runNN/training, runNN/test and "
                    "runNN/class_labels.txt as in Lake et al.'s one-shot classification runs.")
  runs = []
  for run in run_dirs:
    labels_file = run / "class_labels.txt"
    if not labels_file.exists():
      raise DataError(f"{labels_file} is missing.")
    train_files = sorted((run / "training").glob("*.png"))
    index = {f"{run.name}/training/{p.name}": i for i, p in enumerate(train_files)}
    test_files, test_y = [], []
    for n, line in enumerate(text_lines(read_text(str(labels_file))), 1):
      if not line.strip():
        continue
      fields = line.split()
      where = f"{labels_file}:{n}"
      if len(fields) != 2:
        raise DataError(f"{where} has {len(fields)} fields ({line.strip()[:80]!r}); expected "
                        f"'{run.name}/test/itemNN.png {run.name}/training/classNN.png'.")
      test_rel, train_rel = fields
      if train_rel not in index:
        raise DataError(f"{where}: {train_rel} is not an image in {run / 'training'}.")
      if not (root / test_rel).is_file():
        raise DataError(f"{where}: {test_rel} is not a file under {root}.")
      test_files.append(root / test_rel)
      test_y.append(index[train_rel])
    if not test_files:
      raise DataError(f"{labels_file} lists no test items: expected lines "
                      f"'{run.name}/test/itemNN.png {run.name}/training/classNN.png'.")
    load = lambda files: resize(np.stack([
        read_png_strokes(p.read_bytes(), str(p), _REMAKE) for p in files])[..., None], image_size)
    runs.append(Run(run.name, load(train_files), load(test_files), np.asarray(test_y)))
  return runs


def characters_by_alphabet(data: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
  """A TFDS Omniglot split (`omniglot.read_tfds_split`) at full resolution as
  (strokes [C, drawers, H, W], alphabet name of each character)."""
  chars = ClassImages.from_flat(to_strokes(data["image"])[..., None], data["label"])
  names = list(data["alphabet_names"])
  alpha_of = {int(l): int(a) for l, a in zip(data["label"], data["alphabet"])}
  groups = [names[alpha_of[int(n)]] if names else str(alpha_of[int(n)]) for n in chars.class_names]
  return chars.images[..., 0], groups


def _save_png(strokes_HxW: np.ndarray, path: pathlib.Path) -> None:
  """Strokes=1 -> a 1-bit PNG with a white background, as in the official runs."""
  Image.fromarray(strokes_HxW < 0.5).convert("1").save(path)


def write_runs(out_dir: str, images_CxDxHxW: np.ndarray, groups: list[str],
               num_runs: int = 20, ways: int = 20, seed: int = 0) -> None:
  """Builds `num_runs` runs from 105x105 character images (strokes = 1).

  images_CxDxHxW: C characters x D drawers. Each run picks an alphabet with at
  least `ways` characters, `ways` of its characters, and two different
  drawers of each: one for training/classNN, one for test/itemNN. Test items
  are shuffled; class_labels.txt records the answer.
  """
  rng = np.random.default_rng(seed)
  groups = np.asarray(groups)
  alphabets = [a for a in sorted(set(groups)) if (groups == a).sum() >= ways]
  if not alphabets:
    raise DataError(f"No alphabet has {ways} characters.")
  root = pathlib.Path(out_dir)
  for r in range(1, num_runs + 1):
    run = root / f"run{r:02d}"
    (run / "training").mkdir(parents=True, exist_ok=True)
    (run / "test").mkdir(parents=True, exist_ok=True)
    alpha = alphabets[(r - 1) % len(alphabets)]
    chars = rng.choice(np.flatnonzero(groups == alpha), ways, replace=False)
    order = rng.permutation(ways)
    drawers = [rng.choice(images_CxDxHxW.shape[1], 2, replace=False) for _ in chars]
    lines = []
    for c, ch in enumerate(chars):
      _save_png(images_CxDxHxW[ch, drawers[c][0]], run / "training" / f"class{c + 1:02d}.png")
    for item, c in enumerate(order):
      _save_png(images_CxDxHxW[chars[c], drawers[c][1]], run / "test" / f"item{item + 1:02d}.png")
      lines.append(f"run{r:02d}/test/item{item + 1:02d}.png run{r:02d}/training/class{c + 1:02d}.png")
    (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
