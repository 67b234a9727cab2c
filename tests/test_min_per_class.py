"""data.min_per_class: image_folder keeps the classes with at least N images
(folders and .zip files, through the cache, after skipped unreadable files);
experiments.evaluate --min_per_class records it and refuses episode specs
that would silently leave classes out, naming --min_per_class and --queries."""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest

from fsl_jax.data import folders, registry
from fsl_jax.data.sources import DataError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = {"big_a": 7, "big_b": 6, "small_a": 2, "small_b": 3}  # images per class


def _write(root: pathlib.Path, sizes=None) -> pathlib.Path:
  """Class folders of 12x12 PNGs, image i of class c a flat grey of value 10 * c + i."""
  for c, (name, n) in enumerate(sorted((sizes or SIZES).items())):
    (root / name).mkdir(parents=True)
    for i in range(n):
      Image.fromarray(np.full((12, 12, 3), 10 * c + i, np.uint8)).save(root / name / f"{i}.png")
  return root


def _zip(folder: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  with zipfile.ZipFile(out, "w") as z:
    for p in sorted(folder.rglob("*.png")):
      z.write(p, p.relative_to(folder).as_posix())
  return out


@pytest.mark.parametrize("as_zip", [False, True])
def test_min_per_class_keeps_the_large_classes(tmp_path, capsys, as_zip):
  root = _write(tmp_path / "data")
  if as_zip:
    root = _zip(root, tmp_path / "data.zip")
  cache = str(tmp_path / "cache")
  every = folders.load_image_folder(str(root), 12, cache_dir=cache)
  assert every.class_names == sorted(SIZES)
  for _ in range(2):  # the decode, then the cache entry of the filtered list
    kept = folders.load_image_folder(str(root), 12, cache_dir=cache, min_per_class=6)
    assert kept.class_names == ["big_a", "big_b"]
    assert kept.counts.tolist() == [7, 6] and kept.images.shape[:2] == (2, 7)
    for i, name in enumerate(kept.class_names):  # the same pixels as the unfiltered load
      j = every.class_names.index(name)
      np.testing.assert_array_equal(kept.images[i, :kept.counts[i]],
                                    every.images[j, :every.counts[j]])
    err = capsys.readouterr().err
    assert "min_per_class=6: dropped 2 of the 4 classes" in err and "kept 2 classes, 13" in err
  # Through the registry's data.min_per_class; 0 keeps everything.
  cfg = ml_collections.ConfigDict({"name": "image_folder", "test_dir": str(root),
                                   "image_size": 12, "cache_dir": cache, "min_per_class": 3})
  assert registry.load_split(cfg, "test").class_names == ["big_a", "big_b", "small_b"]
  cfg.min_per_class = 0
  assert registry.load_split(cfg, "test").num_classes == 4
  with pytest.raises(DataError, match=r"largest has 7\): lower --min_per_class"):
    folders.load_image_folder(str(root), 12, cache_dir=cache, min_per_class=8)
  with pytest.raises(DataError, match="min_per_class=-1"):
    folders.load_image_folder(str(root), 12, cache_dir=cache, min_per_class=-1)


def test_a_class_that_skipped_images_leave_too_small_is_dropped(tmp_path, capsys):
  root = _write(tmp_path / "data")
  (root / "big_b" / "0.png").write_bytes(b"not a png")  # big_b: 5 readable of 6
  src = folders.load_image_folder(str(root), 12, skip_bad_images=True, min_per_class=6,
                                  cache_dir=str(tmp_path / "cache"))
  assert src.class_names == ["big_a"] and src.counts.tolist() == [7]
  assert "dropped 1 more classes" in capsys.readouterr().err


def _evaluate(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--model=conv4", "--weights=random",
       "--dataset=image_folder", "--image_size=12", "--ways=2", "--episodes=4", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_evaluate_min_per_class(tmp_path):
  data = _write(tmp_path / "data")
  # Today's sampler would silently draw only big_a and big_b: refused, naming both fixes.
  err = _evaluate(f"--data_dir={data}", "--shots=1", "--queries=4")
  assert err.returncode == 2, err.stderr
  assert ("2 of the 4 classes of image_folder have fewer than shots + queries = 1 + 4 = 5 "
          "images" in err.stderr)
  assert "--min_per_class=5" in err.stderr and "--queries=1" in err.stderr
  # --min_per_class below shots + queries is refused before anything loads.
  err = _evaluate(f"--data_dir={data}", "--shots=1", "--min_per_class=3")  # queries 15
  assert err.returncode == 2 and "pass --queries=2" in err.stderr, err.stderr
  assert "--min_per_class=16" in err.stderr
  err = _evaluate("--dataset=tiny_imagenet", "--min_per_class=3", "--shots=1", "--queries=2")
  assert err.returncode == 2 and "fixed class lists" in err.stderr, err.stderr

  ok = _evaluate(f"--data_dir={data}", "--shots=1", "--queries=4", "--min_per_class=5")
  assert ok.returncode == 0, ok.stderr[-3000:]
  row = json.loads(ok.stdout.splitlines()[-1])
  assert row["min_per_class"] == 5 and row["episodes"] == 4 and row["ways"] == 2
  assert "dropped 2 of the 4 classes" in ok.stderr
