"""The natural-image configs train and evaluate end to end on data in the real shapes.

Tiny ImageNet from a generated zip in the official layout (64x64 JPEGs),
CIFAR-FS (ProtoNet and MetaOptNet, ResNet-12, augmentation) under
`tfds.testing.mock_data` (32x32), mini-ImageNet from a generated pickle cache
(84x84, on the host path), and a bring-your-own folder of 10 photos per class
with the documented command. `runlocal` shrinks the steps and widths, not the
image shapes.
"""

import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fsl_jax.data import mini_imagenet, tiny_imagenet
from fsl_jax.train import meta_trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(name, arg, **overrides):
  module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
  c = module.get_config(arg)
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def _image(rng, size, c):
  """A class-coloured noisy image, so a few steps have something to learn."""
  base = np.array([(c * 53) % 256, (c * 97) % 256, (c * 151) % 256])
  return np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)


def _jpeg(img) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def _tiny_zip(path, per_class=6, classes_per_split=4):
  rng = np.random.default_rng(0)
  wnids = [w for split in ("train", "val", "test")
           for w in tiny_imagenet.split_wnids(split)[:classes_per_split]]
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
    zf.writestr("tiny-imagenet-200/words.txt", "".join(f"{w}\tthing {w}\n" for w in wnids))
    for c, w in enumerate(wnids):
      for i in range(per_class):
        zf.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG", _jpeg(_image(rng, 64, c)))
  return path


def _result(workdir):
  return json.loads((pathlib.Path(workdir) / "results.jsonl").read_text().splitlines()[-1])


@pytest.mark.parametrize("variant", ["runlocal,aug", "runlocal,resnet12"])
def test_tiny_imagenet_trains_and_evaluates(tmp_path, variant):
  data = _tiny_zip(tmp_path / "tiny-imagenet-200.zip")
  c = _config("protonet_tiny_imagenet", variant, **{"data.data_dir": str(data)})
  res = meta_trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  assert res["split"] == "test" and res["episodes"] == 10 and 0 <= res["accuracy"] <= 1
  assert _result(tmp_path / "wd")["accuracy"] == res["accuracy"]
  meta = json.loads((tmp_path / "wd" / "config.json").read_text())
  assert meta["data"]["image_size"] == 64


def test_cifar_fs_pipeline_under_mock_data(tmp_path, monkeypatch):
  # metaopt_cifar_fs is protonet_cifar_fs's body (ResNet-12, augmentation, SGD
  # piecewise) with the SVM head: one run covers both configs' pipeline.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # nothing prepared: the mock
  c = _config("metaopt_cifar_fs", "runlocal")
  assert c.learner == "metaopt" and c.optimizer.schedule == "piecewise"
  assert c.model == "resnet12" and c.train.augment.startswith("random_crop(32")
  with tfds.testing.mock_data(num_examples=600, policy=tfds.testing.MockPolicy.USE_CODE):
    res = meta_trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  assert res["ways"] == 3 and 0 <= res["accuracy"] <= 1
  rows = [json.loads(l) for l in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_mini_imagenet_pickle_cache_on_the_host_path(tmp_path):
  rng = np.random.default_rng(0)
  for split in ("train", "val", "test"):
    wnids = mini_imagenet.split_wnids(split)[:4]
    images = np.stack([_image(rng, 84, c) for c in range(4) for _ in range(5)])
    class_dict = {w: list(range(i * 5, i * 5 + 5)) for i, w in enumerate(wnids)}
    with open(tmp_path / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
      pickle.dump({"image_data": images, "class_dict": class_dict}, f)
  c = _config("protonet_mini_imagenet", "runlocal", **{"data.data_dir": str(tmp_path),
                                                       "data.placement": "host"})
  res = meta_trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  assert res["episodes"] == 10 and 0 <= res["accuracy"] <= 1


def test_bring_your_own_folder_with_the_documented_command(tmp_path):
  """README's command: 10 photos per class, train on some classes, test on others."""
  rng = np.random.default_rng(1)
  for split, classes in (("train", range(0, 6)), ("test", range(6, 10))):
    for c in classes:
      d = tmp_path / "photos" / split / f"product_{c}"
      d.mkdir(parents=True)
      for i in range(10):
        (d / f"{i}.jpg").write_bytes(_jpeg(_image(rng, 120 + 7 * i, c)))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.meta_train",
       "--config=experiments/configs/protonet_folder.py:runlocal",
       f"--workdir={tmp_path / 'wd'}",
       f"--config.data.train_dir={tmp_path / 'photos' / 'train'}",
       f"--config.data.test_dir={tmp_path / 'photos' / 'test'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert res["split"] == "test" and res["ways"] == 3 and res["episodes"] == 10
