"""ResNet-18 / ResNet-50: parity with torchvision's layout and transformers' ResNet, weight reading.

torchvision does not import here (../shared/REFERENCE.md), so its ResNet is
written (benchmarks/torch_backbones.py) with torchvision's module names
(conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, fc, ...), which makes its
state_dict keys torchvision's. transformers' `ResNetForImageClassification` (random weights)
is the second reference. Weights are random, BatchNorm statistics moved off
1 / 0, fp32; inputs 56x56 so that stages see odd maps (7 -> 4 at layer3).
"""

import copy
import functools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import models
from fsl_jax.models import layers, resnet

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
# The torchvision reference (also used by benchmarks/backbones.py).
from torch_backbones import (  # noqa: E402  pylint: disable=wrong-import-position
    RESNET_ARCHS as ARCHS, TorchResNet, randomise_bn as _randomise_bn)

PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}   # torchvision's, 1000 classes


@functools.lru_cache(maxsize=None)
def _torch_resnet(name):
  """The randomised torchvision reference (1000 classes, eval mode), built once per run."""
  torch.manual_seed({"resnet18": 0, "resnet50": 1}[name])
  block, depths = ARCHS[name]
  return _randomise_bn(TorchResNet(block, depths), seed=2)


def _numpy_state_dict(net):
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _x(b, seed, size=56):
  return np.random.default_rng(seed).normal(size=(b, size, size, 3)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, x, train):
  """(logits, features, new batch_stats) of one pass; compiled once per (model, train)."""
  logits, state = model.apply(variables, x, train=train,
                              mutable=["intermediates", "batch_stats"] if train
                              else ["intermediates"])
  return logits, state["intermediates"]["features"][0], state.get("batch_stats")


def _close(got, want, what):
  """Max |diff| within 1e-4 of the output's scale (max |want|, at least 1); returns both."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, what
  diff = float(np.abs(got - want).max())
  scale = max(1.0, float(np.abs(want).max()))
  assert diff <= 1e-4 * scale, f"{what}: max |diff| {diff:.3g} at scale {scale:.3g}"
  return f"{diff:.2g} (scale {scale:.3g})"


def _torch_out(net, x_BxHxWxC):
  with torch.no_grad():
    return [t.numpy() for t in net(torch.from_numpy(x_BxHxWxC).permute(0, 3, 1, 2))]


# ------------------------------------------------------------ layers

@pytest.mark.parametrize("size", [9, 10])
def test_stem_conv_and_max_pool_match_torch(size):
  """7x7 stride-2 conv (padding 3), 3x3 stride-2 max-pool (padding 1, -inf), odd and even maps."""
  rng = np.random.default_rng(size)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32) - 2.0  # mostly < 0: -inf pads show
  w_OxIxKxK = rng.normal(size=(8, 3, 7, 7)).astype(np.float32)
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2)
  want = F.conv2d(x_t, torch.from_numpy(w_OxIxKxK), stride=2, padding=3).permute(0, 2, 3, 1)
  for impl in ("cpu", "xla", "im2col"):
    conv = layers.Conv(8, 7, use_bias=False, impl=impl, strides=2)
    got = jax.jit(conv.apply)({"params": {"kernel": w_OxIxKxK.transpose(2, 3, 1, 0)}}, x)
    assert got.shape == (2, -(-size // 2), -(-size // 2), 8)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-4, err_msg=impl)
  want = F.max_pool2d(x_t, 3, 2, 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(jax.jit(resnet.max_pool_3x3)(x), want)


def test_blocks_init_like_torchvision():
  """Kaiming normal (fan_out) convs, BatchNorm at scale 1, bias 0; the shortcut where it belongs."""
  init = lambda block: jax.jit(functools.partial(block.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 64)))["params"]
  v = init(resnet.Bottleneck(64, strides=2))
  assert set(v) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv",
                    "downsample_bn"}
  assert v["conv2"]["kernel"].shape == (3, 3, 64, 64)
  assert v["conv3"]["kernel"].shape == (64, 256)
  for name, fan_out in [("conv2", 9 * 64), ("conv3", 256), ("downsample_conv", 256)]:
    std = float(np.std(v[name]["kernel"]))
    assert abs(std / math.sqrt(2 / fan_out) - 1) < 0.05, name
  np.testing.assert_array_equal(v["bn3"]["scale"], 1)
  np.testing.assert_array_equal(v["bn3"]["bias"], 0)
  assert set(init(resnet.BasicBlock(64))) == {"conv1", "bn1", "conv2", "bn2"}   # identity shortcut


# ------------------------------------------------------------ torchvision parity

def test_resnet18_matches_torchvision_reference(tmp_path):
  ref = _torch_resnet("resnet18")
  path = tmp_path / resnet.RESNET18_IMAGENET1K_V1   # torch >= 1.6's zip format, as torchvision's
  torch.save(ref.state_dict(), path)
  model = models.get("resnet18", num_classes=1000)
  # The name's sha256 prefix is torchvision's real file's, not this one's: it is refused.
  with pytest.raises(ValueError, match="sha256 mismatch"):
    resnet.load_torchvision(model, str(path), sha256=resnet.SHA256[path.name])
  variables = resnet.load_torchvision(model, str(path),
                                      sha256=resnet.tw.sha256_of(str(path))[:8])
  x = _x(2, seed=0)
  want_f, want_l = _torch_out(ref, x)
  got_l, got_f, _ = _apply(model, variables, x, False)
  diffs = _close(got_f, want_f, "features"), _close(got_l, want_l, "logits")
  print("resnet18 eval max |diff| features, logits:", diffs)

  # Training mode: batch statistics, and the running averages they update.
  train_ref = copy.deepcopy(ref).train()
  n_by_bn = {}
  for name, m in train_ref.named_modules():
    if isinstance(m, tnn.BatchNorm2d):
      m.register_forward_hook(lambda m, inp, out, name=name: n_by_bn.__setitem__(
          name, inp[0].numel() // inp[0].shape[1]))
  want_f, want_l = _torch_out(train_ref, x)
  got_l, got_f, stats = _apply(model, variables, x, True)
  diffs = _close(got_f, want_f, "train features"), _close(got_l, want_l, "train logits")
  print("resnet18 train max |diff| features, logits:", diffs)
  new_sd = _numpy_state_dict(train_ref)
  old = variables["batch_stats"]
  checked = 0
  for e in resnet.torchvision_entries(model):
    if e.flax_path[0] != "batch_stats":
      continue
    path_ = e.flax_path[1:]
    got, before = stats, old
    for k in path_:
      got, before = got[k], before[k]
    got, before = np.asarray(got), np.asarray(before)
    if e.torch_key.endswith("running_mean"):
      _close(got, new_sd[e.torch_key], e.torch_key)
    else:  # torch moves running_var by the unbiased batch variance, flax by the biased one
      n = n_by_bn[e.torch_key[:-len(".running_var")]]
      _close((got - 0.9 * before) * n / (n - 1), new_sd[e.torch_key] - 0.9 * before, e.torch_key)
    checked += 1
  assert checked == 2 * 20   # 20 BatchNorms in resnet18


def test_resnet50_matches_torchvision_reference():
  ref = _torch_resnet("resnet50")
  model = models.get("resnet50", num_classes=1000)
  variables = resnet.variables_from_torchvision(_numpy_state_dict(ref), model)
  x = _x(1, seed=1)
  want_f, want_l = _torch_out(ref, x)
  got_l, got_f, _ = _apply(model, variables, x, False)
  assert got_f.shape == (1, 2048)
  diffs = _close(got_f, want_f, "features"), _close(got_l, want_l, "logits")
  print("resnet50 eval max |diff| features, logits:", diffs)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_parameter_counts_equal_torchvision(name):
  n_torch = sum(p.numel() for p in _torch_resnet(name).parameters())
  fc = 1000 * (512 * (4 if name == "resnet50" else 1) + 1)   # the 1000-way head
  for num_classes, n_fc in [(1000, 0), (None, fc)]:
    shapes = resnet.tw.model_shapes(models.get(name, num_classes=num_classes), (1, 32, 32, 3))
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))
    assert n + n_fc == n_torch == PARAMS[name]


def test_conversion_names_mismatches():
  sd18 = _numpy_state_dict(_torch_resnet("resnet18"))
  feats = resnet.variables_from_torchvision(sd18, models.get("resnet18"))  # fc dropped
  assert "classifier" not in feats["params"]
  assert feats["params"]["layer2_0"]["downsample_conv"]["kernel"].shape == (64, 128)
  np.testing.assert_array_equal(feats["params"]["layer2_0"]["conv1"]["kernel"],
                                sd18["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
  with pytest.raises(ValueError, match=r"resnet50 \(num_classes=1000\).*missing from the "
                     r"checkpoint: 'layer1.0.conv3.weight'"):
    resnet.variables_from_torchvision(sd18, models.get("resnet50", num_classes=1000))
  with pytest.raises(ValueError, match=r"unexpected in the checkpoint: 'layer1.0.conv3.weight'"):
    resnet.variables_from_torchvision(_numpy_state_dict(_torch_resnet("resnet50")),
                                      models.get("resnet18"))
  with pytest.raises(ValueError, match=r"Shape mismatch for 'fc.weight'.*\(1000, 512\).*"
                     r"\(10, 512\)"):
    resnet.variables_from_torchvision(sd18, models.get("resnet18", num_classes=10))
  wide = {**sd18, "layer3.1.conv2.weight": np.zeros((256, 128, 3, 3), np.float32)}
  with pytest.raises(ValueError, match=r"'layer3.1.conv2.weight'.*\(256, 128, 3, 3\).*"
                     r"\(256, 256, 3, 3\)"):
    resnet.variables_from_torchvision(wide, models.get("resnet18"))
  with pytest.raises(ValueError, match="unexpected in the checkpoint: 'layer5.0.conv1.weight'"):
    resnet.variables_from_torchvision({**sd18, "layer5.0.conv1.weight": np.ones(3)},
                                      models.get("resnet18"))


# ------------------------------------------------------------ transformers' ResNet

@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_matches_transformers_resnet(tmp_path, name):
  transformers = pytest.importorskip("transformers")
  bottleneck = name == "resnet50"
  config = transformers.ResNetConfig(
      layer_type="bottleneck" if bottleneck else "basic", depths=list(ARCHS[name][1]),
      hidden_sizes=[w * (4 if bottleneck else 1) for w in (64, 128, 256, 512)], num_labels=1000)
  torch.manual_seed(3)
  hf = _randomise_bn(transformers.ResNetForImageClassification(config), seed=4)
  x = _x(2 if name == "resnet18" else 1, seed=2)
  with torch.no_grad():
    x_t = torch.from_numpy(x).permute(0, 3, 1, 2)
    want_f = hf.resnet(x_t).pooler_output[:, :, 0, 0].numpy()   # the ResNetModel inside
    want_l = hf(x_t).logits.numpy()
  model = models.get(name, num_classes=1000)
  variables = resnet.variables_from_hf(_numpy_state_dict(hf), model, config)
  got_l, got_f, _ = _apply(model, variables, x, False)
  diffs = _close(got_f, want_f, "pooler_output"), _close(got_l, want_l, "logits")
  print(f"{name} vs transformers max |diff| pooled, logits:", diffs)

  # A bare ResNetModel's keys give the same backbone (features only).
  bare = resnet.variables_from_hf(_numpy_state_dict(hf.resnet), model.clone(num_classes=None))
  assert "classifier" not in bare["params"]
  for a, b in zip(jax.tree.leaves(bare), jax.tree.leaves(
      {c: {k: v for k, v in t.items() if k != "classifier"} for c, t in variables.items()})):
    np.testing.assert_array_equal(a, b)
  if bottleneck:  # the stride on the first 1x1 (ResNet v1): same shapes, refused by its config
    v1 = transformers.ResNetConfig(**{**config.to_dict(), "downsample_in_bottleneck": True})
    with pytest.raises(ValueError, match="downsample_in_bottleneck=True"):
      resnet.variables_from_hf(_numpy_state_dict(hf), model, v1)
  else:  # a save_pretrained directory (safetensors + config.json), without torch
    hf.save_pretrained(tmp_path / "hf")
    loaded = resnet.load_hf(model, str(tmp_path / "hf"))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="layer_type='basic' \\(want 'bottleneck'\\)"):
      resnet.variables_from_hf({}, models.get("resnet50"), config)
