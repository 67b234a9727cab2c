"""Omniglot from the real data in ../shared (FSL_JAX_SHARED)."""

import numpy as np
import pytest

from fsl_jax.data import folders, lake_runs, omniglot, sources


@pytest.fixture
def tfds_dir(shared_dir):
  omniglot.clear_cache()
  return str(shared_dir / "tfds")


def test_lake_and_vinyals_split_sizes(tfds_dir):
  sizes = {s: omniglot.load_omniglot(s, "lake", data_dir=tfds_dir).num_classes
           for s in ("train", "val", "trainval", "test")}
  assert sizes["trainval"] == 964 and sizes["test"] == 659
  assert sizes["train"] + sizes["val"] == 964 and sizes["val"] > 0
  vin = {s: omniglot.load_omniglot(s, "vinyals", data_dir=tfds_dir).num_classes
         for s in ("train", "val", "test")}
  assert vin == {"train": 1028, "val": 172, "test": 423}


def test_images_are_strokes_on_zero_background(tfds_dir):
  test = omniglot.load_omniglot("test", "lake", data_dir=tfds_dir)
  assert test.images.shape == (659, 20, 28, 28, 1) and (test.counts == 20).all()
  x = test.images
  assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
  # Strokes are a minority of pixels; the background (border) is 0.
  assert 0.03 < x.mean() < 0.2
  assert np.median(x[:, :, 0, :, 0]) == 0.0


def test_tensorflow_range_gives_same_strokes():
  rng = np.random.default_rng(0)
  bits = (rng.random((2, 105, 105, 3)) < 0.9).astype(np.uint8)
  np.testing.assert_array_equal(sources.to_strokes(bits), sources.to_strokes(bits * 255))


def test_folder_source_matches_tfds_preprocessing(shared_dir):
  zip_path = shared_dir / "data" / "omniglot" / "images_background_small1.zip"
  src = folders.load_omniglot_folder(str(zip_path))
  assert src.num_classes > 50 and (src.counts == 20).all()
  assert src.class_names[0].count("/") == 1 and src.groups[0] in src.class_names[0]
  assert 0.03 < src.images.mean() < 0.2 and src.images.max() > 0.9


def test_lake_runs_round_trip_on_evaluation_images(shared_dir, tmp_path):
  data = omniglot.read_tfds_split("omniglot", "test", str(shared_dir / "tfds"))
  images, groups = lake_runs.characters_by_alphabet(data)
  assert images.shape == (659, 20, 105, 105) and len(set(groups)) == 20
  lake_runs.write_runs(str(tmp_path), images, groups, num_runs=2)
  runs = lake_runs.read_runs(str(tmp_path))
  assert len(runs) == 2
  run = runs[0]
  assert run.train_x.shape == (20, 28, 28, 1) and run.test_x.shape == (20, 28, 28, 1)
  assert sorted(run.test_y) == list(range(20))
  # The PNG round trip keeps the strokes: each test item is closer (in pixels)
  # to some training image of its own alphabet run than to blank.
  assert run.test_x.mean() > 0.03
  # A 1-bit PNG written from the source image reads back exactly.
  from PIL import Image
  img = np.asarray(Image.open(tmp_path / "run01" / "training" / "class01.png").convert("L"))
  assert img.shape == (105, 105) and set(np.unique(img)) <= {0, 255}
