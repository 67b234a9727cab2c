"""Natural images through the episode pipeline: uint8 in, float out, augmentation, host path.

A split is held as uint8 and becomes float32 in [0, 1] inside the step;
training augmentation draws from the episode key; a split too large for the
device is sampled on the host into exactly the episodes the device path
draws, so switching placement (or resuming) changes no number.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from fsl_jax.data import augment, episodes
from fsl_jax.data.sources import ClassImages, DataError, as_float

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _uint8_source(num_classes=10, per_class=8, size=12, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_classes, per_class, size, size, 3), dtype=np.uint8)
  counts = np.full(num_classes, per_class, np.int32)
  counts[3] = min(5, per_class)  # uneven classes: padded rows must never be drawn
  images[3, counts[3]:] = 0
  return ClassImages(images, counts, [f"c{i}" for i in range(num_classes)])


def test_uint8_split_gives_float_episodes_of_the_same_pixels():
  src = _uint8_source()
  spec = episodes.EpisodeSpec(4, 2, 3)
  sampler = episodes.EpisodeSampler(src, spec)
  assert sampler.images.dtype == np.uint8  # a quarter of float32's device memory
  ep = sampler.sample(jax.random.PRNGKey(0))
  assert ep["support_x"].dtype == np.float32
  flat = as_float(src.images.reshape((-1,) + src.image_shape))
  for x in np.concatenate([np.asarray(ep["support_x"]), np.asarray(ep["query_x"])]):
    assert np.any(np.all(np.abs(flat - x) < 1e-7, axis=(1, 2, 3)))  # an image of the split


@pytest.mark.parametrize("rotations,spec_text,on", [
    (False, "", "both"),
    (True, "flip_lr|cutout(4)", "support"),
    (False, "random_resized_crop(12, scale=(0.5, 1.0))|color_jitter(0.4, 0.4, 0.4, 0.1)", "both"),
])
def test_host_path_draws_exactly_the_device_episodes(rotations, spec_text, on, production_xla):
  if not production_xla.here:  # bit-exact under users' XLA flags (conftest.ProductionXla)
    production_xla.rerun()
    return
  src = _uint8_source()
  spec = episodes.EpisodeSpec(5, 1, 2)
  aug = augment.parse(spec_text)
  device = episodes.EpisodeSampler(src, spec, rotations=rotations, augment=aug, augment_on=on)
  host = episodes.HostEpisodes(src, spec, meta_batch=3, rotations=rotations, augment=aug,
                               augment_on=on)
  key = jax.random.PRNGKey(7)
  want = device.sample_batch(key, 3)
  got = jax.jit(host.finish)(key, host.batch(key))
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_augmentation_draws_from_the_episode_key_and_leaves_the_draw_alone():
  src = _uint8_source()
  spec = episodes.EpisodeSpec(4, 2, 2)
  plain = episodes.EpisodeSampler(src, spec)
  aug = episodes.EpisodeSampler(src, spec, augment=augment.parse("flip_lr(p=1.0)"),
                                augment_on="support")
  key = jax.random.PRNGKey(3)
  a, b = plain.sample(key), aug.sample(key)
  np.testing.assert_array_equal(a["classes"], b["classes"])
  np.testing.assert_array_equal(a["query_x"], b["query_x"])  # query not augmented
  np.testing.assert_array_equal(np.asarray(a["support_x"])[:, :, ::-1], b["support_x"])
  c = episodes.EpisodeSampler(src, spec, augment=augment.parse("cutout(6)")).sample(key)
  d = episodes.EpisodeSampler(src, spec, augment=augment.parse("cutout(6)")).sample(key)
  np.testing.assert_array_equal(c["support_x"], d["support_x"])  # same key, same pixels


def test_an_augmentation_that_changes_the_shape_is_refused():
  with pytest.raises(DataError, match=r"turns \[12, 12, 3\] images into \[8, 8, 3\].*image "
                                      r"size 12"):
    episodes.EpisodeSampler(_uint8_source(), episodes.EpisodeSpec(3, 1, 1),
                            augment=augment.parse("random_resized_crop(8)"))
  with pytest.raises(DataError, match="augment_on='supprt'"):
    episodes.EpisodeSampler(_uint8_source(), episodes.EpisodeSpec(3, 1, 1),
                            augment=augment.parse("flip_lr"), augment_on="supprt")


def test_host_feed_restarts_exactly_at_any_step():
  src = _uint8_source()
  host = episodes.HostEpisodes(src, episodes.EpisodeSpec(3, 1, 1), meta_batch=2)
  rng = jax.random.PRNGKey(0)
  data_key = lambda k: jax.random.split(k)[0]
  feed = host.feed(rng, data_key)
  run = [feed(s) for s in range(6)]
  resumed = host.feed(rng, data_key)
  for s in (3, 4, 5):
    got = resumed(s)
    for k in run[s]:
      np.testing.assert_array_equal(got[k], run[s][k])


def _folder(root: pathlib.Path, classes=8, per_class=6, size=20):
  rng = np.random.default_rng(0)
  for c in range(classes):
    d = root / f"class{c:02d}"
    d.mkdir(parents=True)
    base = rng.integers(0, 256, 3)
    for i in range(per_class):
      img = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(d / f"{i}.png")
  return root


def _meta_train(workdir, data, *extra, env=None):
  args = [sys.executable, "-m", "experiments.meta_train",
          "--config=experiments/configs/protonet_omniglot.py:runlocal", f"--workdir={workdir}",
          "--config.data.name=image_folder", f"--config.data.train_dir={data}",
          f"--config.data.val_dir={data}", f"--config.data.test_dir={data}",
          "--config.data.image_size=16", "--config.data.rotations=False",
          "--config.train.ways=3", "--config.eval.ways=3", "--config.eval.queries=2",
          "--config.train.queries=2", *extra]
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=env or {**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()], proc


def test_training_on_the_host_path_matches_the_device_path(tmp_path, production_xla):
  data = _folder(tmp_path / "data")
  aug = "--config.train.augment=flip_lr|random_crop(16, padding=2)"
  env = production_xla.env()  # bit-exact under users' XLA flags (conftest.ProductionXla)
  dev, proc = _meta_train(tmp_path / "dev", data, aug, "--config.data.placement=device", env=env)
  assert "on the device" in proc.stderr
  host, proc = _meta_train(tmp_path / "host", data, aug, "--config.data.placement=host", env=env)
  assert "on the host" in proc.stderr
  drop = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]
  assert drop(dev) == drop(host) and any("loss" in r for r in dev)
  result = lambda wd: json.loads((wd / "results.jsonl").read_text().splitlines()[-1])
  assert result(tmp_path / "dev")["accuracy"] == result(tmp_path / "host")["accuracy"]

  # Cross-domain: the trained model on another folder (other sizes, one
  # channel), resized to its 16x16 RGB input; the result names the dataset.
  other = tmp_path / "other"
  _folder(other, classes=4, per_class=5, size=40)
  for p in other.rglob("*.png"):
    Image.open(p).convert("L").save(p)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path / 'dev'}",
       "--dataset=image_folder", f"--data_dir={other}", "--ways=3", "--shots=1",
       "--queries=2", "--episodes=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  assert row["dataset"] == "image_folder" and row["episodes"] == 5 and row["ways"] == 3
  assert 0.0 <= row["accuracy"] <= 1.0
  saved = json.loads((tmp_path / "dev" / "results.jsonl").read_text().splitlines()[-1])
  assert saved["data_dir"] == str(other)


def test_match_channels_for_cross_domain_evaluation():
  from fsl_jax.data.sources import match_channels  # pylint: disable=import-outside-toplevel
  src = _uint8_source(num_classes=5, per_class=2, size=4)
  gray = match_channels(src, 1)
  assert gray.images.shape == (5, 2, 4, 4, 1) and gray.images.dtype == np.uint8
  np.testing.assert_array_equal(
      gray.images[..., 0], np.round(src.images.astype(np.float32).mean(-1)).astype(np.uint8))
  back = match_channels(gray, 3)
  assert back.images.shape == src.images.shape
  np.testing.assert_array_equal(back.images[..., 0], back.images[..., 2])
  assert match_channels(src, 3) is src
