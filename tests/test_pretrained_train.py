"""Meta-training from pretrained weights (init_weights, optimizer groups, frozen BatchNorm),
the pmf.py / simpleshot_pretrained.py configs, and evaluating a checkpoint with --method=finetune.

The weight file is a torchvision-layout MobileNetV2 .pth with random weights,
written here with torch (the real EfficientNet-Lite0 file is exercised by
tests/test_pretrained_eval.py under FSL_JAX_SHARED).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from experiments.configs import natural, pmf, simpleshot_pretrained
from fsl_jax.train import checkpoint, meta_trainer, optim

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _folder(root: pathlib.Path, classes=6, per_class=4, size=16):
  rng = np.random.default_rng(0)
  for c in range(classes):
    d = root / f"class{c:02d}"
    d.mkdir(parents=True)
    base = rng.integers(0, 256, 3)
    for i in range(per_class):
      img = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(d / f"{i}.png")
  return root


def _mobilenet_pth(path):
  torch = pytest.importorskip("torch")
  from test_pretrained_cnns import TorchMobileNetV2, _randomise_bn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = _randomise_bn(TorchMobileNetV2(), 0)
  torch.save(net.state_dict(), path)
  return path


def _config(tmp_path, data, weights):
  c = pmf.get_config("runlocal")
  c.model = "mobilenet_v2_imagenet"
  c.init_weights = str(weights)
  c.data.name = "image_folder"
  c.data.train_dir = c.data.val_dir = c.data.test_dir = str(data)
  c.data.image_size = 16
  c.val_every = 0
  # Everything but the last block and the 1x1 head stays as in the file.
  c.optimizer.groups = r"backbone/(stem_|block([0-9]|1[0-5])/)=0"
  c.optimizer.learning_rate = 1e-2
  return c


def _params(workdir):
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  try:
    carry, meta, _ = ckpt.restore_raw(None)
  finally:
    ckpt.close()
  return carry["state"], meta


def test_meta_training_starts_from_the_file_and_keeps_frozen_groups(tmp_path):
  from fsl_jax.models import mobilenet, pretrained  # pylint: disable=g-import-not-at-top
  weights = _mobilenet_pth(tmp_path / "mobilenet_v2-random.pth")
  data = _folder(tmp_path / "data")
  res = meta_trainer.train_and_evaluate(_config(tmp_path, data, weights), str(tmp_path / "wd"))
  assert res["episodes"] == 10
  state, meta = _params(tmp_path / "wd")
  assert meta["init_weights"]["weights"] == str(weights)
  assert len(meta["init_weights"]["weights_sha256"]) == 16
  model = pretrained.build("mobilenet_v2_imagenet", size=32)
  file_vars = pretrained.nest(mobilenet.load_torchvision(model.backbone, str(weights)))
  flat = lambda t: {optim.param_path(p): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  got, want = flat(state["params"]), flat(file_vars["params"])
  assert got.keys() == want.keys()
  trained = re.compile(r"backbone/(block16|head_)")
  for name, value in got.items():
    if trained.search(name):
      continue
    np.testing.assert_array_equal(value, want[name], err_msg=name)  # frozen: as in the file
  moved = [n for n in got if trained.search(n) and np.abs(got[n] - want[n]).max() > 0]
  assert any("head_conv" in n for n in moved) and any("block16" in n for n in moved)
  # Frozen BatchNorm: the running statistics are the file's after training.
  for name, value in flat(state["model_state"]["batch_stats"]).items():
    np.testing.assert_array_equal(value, flat(file_vars["batch_stats"])[name], err_msg=name)

  # The checkpoint evaluated with P>M>F fine-tuning (--method=finetune).
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path / 'wd'}",
       "--method=finetune", "--learner_kwarg=steps=2", "--learner_kwarg=lr=0.001",
       "--ways=3", "--shots=1", "--queries=2", "--episodes=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  assert row["method"] == "finetune" and row["episodes"] == 3 and 0 <= row["accuracy"] <= 1
  saved = json.loads((tmp_path / "wd" / "results.jsonl").read_text().splitlines()[-1])
  assert saved["method"] == "finetune" and saved["learner_kwargs"] == ["steps=2", "lr=0.001"]


def test_bad_pretrained_settings_are_refused(tmp_path):
  data = tmp_path / "data"
  c = _config(tmp_path, data, tmp_path / "missing.pth")
  c.model, c.model_kwargs = "conv4", {}
  with pytest.raises(ValueError, match="set --config.model to one of"):
    meta_trainer.MetaTraining(c, str(tmp_path / "a"))
  c = _config(tmp_path, data, tmp_path / "missing.pth")
  c.learner = "maml"
  c.learner_kwargs = {"ways": 3}
  with pytest.raises(ValueError, match="pretrained initialisation is for the metric learners"):
    meta_trainer.MetaTraining(c, str(tmp_path / "b"))
  with pytest.raises(ValueError, match="matches no parameter"):
    tx = optim.with_groups(optax.adam(1e-3), optim.parse_groups("backbone/typo=0"))
    tx.init({"backbone": {"block0": {"kernel": np.zeros(2)}}})
  with pytest.raises(ValueError, match="bad group"):
    optim.parse_groups("block0")
  with pytest.raises(ValueError, match="bad group"):
    optim.parse_groups("block0=-1")


def test_groups_scale_and_freeze_updates():
  params = {"a": {"w": np.ones(3, np.float32)}, "b": {"w": np.ones(3, np.float32)},
            "c": {"w": np.ones(3, np.float32)}}
  grads = jax.tree.map(lambda x: x * 2.0, params)
  tx = optim.with_groups(optax.sgd(0.1), optim.parse_groups("^a/=0; ^b/=0.5"))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"]["w"], 0.0)
  np.testing.assert_allclose(updates["b"]["w"], -0.1)   # 0.5 x -0.1 x 2
  np.testing.assert_allclose(updates["c"]["w"], -0.2)


@pytest.mark.parametrize("module", [pmf, simpleshot_pretrained])
def test_pretrained_configs(module):
  for variant in (None, "cpu60", "runlocal", "vit"):
    c = module.get_config(variant)
    assert c.model == ("dino_vit_s16" if variant == "vit" else "efficientnet_lite0_imagenet")
    assert c.model_kwargs.frozen_bn
    assert c.init_weights == ("" if variant == "runlocal" else "default")
  assert module.get_config("cpu60").optimizer.groups == natural.LITE0_FREEZE_EARLY
  with pytest.raises(ValueError, match="Unknown variant"):
    module.get_config("bogus")


def test_vit_variant_asks_for_its_weights(tmp_path):
  # DINO ViT-S/16 has no file here: the run stops naming the config key to set.
  c = pmf.get_config("vit")
  c.data.name = "image_folder"
  c.data.train_dir = c.data.val_dir = c.data.test_dir = str(_folder(tmp_path / "data"))
  c.data.image_size = 16
  c.model_kwargs.size = 32
  c.train.ways = c.eval.ways = 3
  c.train.shots = c.eval.shots = 1
  c.train.queries = c.eval.queries = 2
  with pytest.raises(ValueError, match=r"dino_vit_s16 has no weight file here: pass "
                                       r"--config.init_weights=PATH"):
    meta_trainer.train_and_evaluate(c, str(tmp_path / "wd"))
