"""MobileNetV3-Small/-Large: PyTorch parity (eval and train mode), sizes, the .pth reader, errors.

torchvision does not import here (../shared/REFERENCE.md), so the PyTorch
reference is written (benchmarks/torch_backbones.py) with torchvision's
module structure and names (Conv2dNormActivation as a Sequential of conv, BN,
activation; InvertedResidual's `block`; SqueezeExcitation's `fc1`/`fc2`;
`features`, `avgpool`, `classifier`), so that its state_dict keys are those
of torchvision's mobilenet_v3_small / mobilenet_v3_large files. Its block
table is torchvision's `bneck_conf` rows, written out there separately from
the module's, and its parameter counts are torchvision's published ones.
"""

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import models
from fsl_jax.models import mobilenet_v3
from fsl_jax.models import torch_weights as tw

torch = pytest.importorskip("torch")
from test_pretrained_cnns import _check_parity, _numpy_state_dict  # noqa: E402
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
# The torchvision reference (also used by benchmarks/backbones.py).
from torch_backbones import (  # noqa: E402  pylint: disable=wrong-import-position
    TORCHVISION, TorchMobileNetV3, mobilenet_v3_reference as _reference)

# torchvision's documented sizes (1000 classes).
PARAMS = {"small": 2_542_856, "large": 5_483_032}


def test_tables_match_torchvision():
  for arch, (rows, _) in TORCHVISION.items():
    got = [tuple(b) for b in mobilenet_v3.block_specs(arch)]
    assert got == [(cin, k, e, c, se, act == "HS", s) for cin, k, e, c, se, act, s in rows]
  assert mobilenet_v3.widths("small") == (16, 576, 1024)
  assert mobilenet_v3.widths("large") == (16, 960, 1280)


@pytest.mark.parametrize("arch", ["small", "large"])
def test_parameter_counts(arch):
  n_torch = sum(p.numel() for p in TorchMobileNetV3(arch).parameters())
  count = lambda nc: sum(math.prod(a.shape) for a in jax.tree.leaves(jax.eval_shape(
      lambda: models.get(f"mobilenet_v3_{arch}", num_classes=nc).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]))
  assert count(1000) == n_torch == PARAMS[arch]
  # Features only: no classifier.0 (576 -> 1024 / 960 -> 1280) or classifier.3.
  head = {"small": 576 * 1024 + 1024 + 1024 * 1000 + 1000,
          "large": 960 * 1280 + 1280 + 1280 * 1000 + 1000}[arch]
  assert count(None) == PARAMS[arch] - head


@pytest.mark.parametrize("arch", ["small", "large"])
def test_matches_torch_reference(tmp_path, arch):
  ref = _reference(arch, seed={"small": 0, "large": 10}[arch], num_classes=10)
  path = tmp_path / f"mobilenet_v3_{arch}.pth"  # torch >= 1.6's zip format, as torchvision ships
  torch.save(ref.state_dict(), path)
  model = models.get(f"mobilenet_v3_{arch}", num_classes=10)
  variables = mobilenet_v3.load_torchvision(model, str(path), sha256=tw.sha256_of(str(path))[:8])
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  diffs, _, want_l = _check_parity(model, variables, ref, x, max_diff=1e-4)
  print(f"mobilenet_v3_{arch} max |diff| features, logits:", diffs,
        "max |logit|:", float(np.abs(want_l).max()))
  assert np.abs(want_l).max() > 0.5 and np.abs(want_l[0] - want_l[1]).max() > 0.1
  # Features only: the same file, the classifier dropped; the pooled last conv is returned.
  feats = models.get(f"mobilenet_v3_{arch}")
  v = mobilenet_v3.load_torchvision(feats, str(path))
  head = ("classifier", "classifier_hidden")
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, v, {  # same tree, same arrays
      c: {k: t for k, t in tree.items() if k not in head} for c, tree in variables.items()})))
  if arch == "small":  # the code path is shared; one size is run
    with torch.no_grad():
      want = ref(torch.from_numpy(x).permute(0, 3, 1, 2))[0].numpy()
    got = np.asarray(jax.jit(lambda v, x: feats.apply(v, x, train=False))(v, x))
    assert got.shape == (2, 576)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_small_train_mode_matches_torch():
  """Batch statistics in training mode; the running means move as torch's do (momentum 0.01)."""
  ref = _reference("small", seed=20, num_classes=10, dropout=0.0).train()
  sd = {k: v.copy() for k, v in _numpy_state_dict(ref).items()}  # torch updates its own in place
  model = models.get("mobilenet_v3_small", num_classes=10)
  variables = mobilenet_v3.variables_from_torchvision(sd, model)
  x = np.random.default_rng(2).normal(size=(4, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want_f, want_l = (t.numpy() for t in ref(torch.from_numpy(x).permute(0, 3, 1, 2)))
  logits, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"]))(variables, x)
  got_f = np.asarray(state["intermediates"]["features"][0])
  np.testing.assert_allclose(got_f, want_f, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(logits), want_l, rtol=1e-4, atol=1e-4)
  print("mobilenet_v3_small train mode max |diff| features, logits:",
        float(np.abs(got_f - want_f).max()), float(np.abs(np.asarray(logits) - want_l).max()))
  # Running means (torch's running variances use the unbiased variance, flax's the biased one).
  new = mobilenet_v3.variables_from_torchvision(_numpy_state_dict(ref), model)["batch_stats"]
  got_means = {k: v for k, v in _flat(state["batch_stats"]).items() if k[-1] == "mean"}
  want_means = {k: v for k, v in _flat(new).items() if k[-1] == "mean"}
  old_means = {k: v for k, v in _flat(variables["batch_stats"]).items() if k[-1] == "mean"}
  assert set(got_means) == set(want_means) and len(got_means) == 34
  moves = {k: (got_means[k] - old_means[k], want_means[k] - old_means[k]) for k in got_means}
  assert max(np.abs(want).max() for _, want in moves.values()) > 1e-3  # the step moved them
  for k, (got, want) in moves.items():
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7, err_msg=str(k))


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = np.asarray(v)
  return out


def test_conversion_refuses_mismatches():
  small = _numpy_state_dict(TorchMobileNetV3("small"))
  with pytest.raises(ValueError, match=r"mobilenet_v3_large.*shape mismatch for "
                     r"'features.2.block.0.0.weight': the checkpoint has \(72, 16, 1, 1\), "
                     r"the model expects \(64, 16, 1, 1\).*features.0-features.12 are "
                     r"mobilenet_v3_small's layout"):
    mobilenet_v3.variables_from_torchvision(small, models.get("mobilenet_v3_large"))
  net = models.get("mobilenet_v3_small", num_classes=1000)
  with pytest.raises(ValueError, match=r"'classifier.3.weight': the checkpoint has "
                     r"\(1000, 1024\), the model expects \(5, 1024\)"):
    mobilenet_v3.variables_from_torchvision(small, net.clone(num_classes=5))
  with pytest.raises(ValueError, match="unexpected in the checkpoint: 'features.13.weight'"):
    mobilenet_v3.variables_from_torchvision({**small, "features.13.weight": np.ones(3)}, net)
  key = "features.4.block.2.fc2.bias"  # the SE of the fourth block
  with pytest.raises(ValueError, match=f"missing from the checkpoint: '{key}'"):
    mobilenet_v3.variables_from_torchvision({k: v for k, v in small.items() if k != key}, net)
  v = mobilenet_v3.variables_from_torchvision(small, net)
  np.testing.assert_array_equal(v["params"]["block3"]["se"]["fc2"]["bias"], small[key])
  np.testing.assert_array_equal(v["params"]["classifier_hidden"]["kernel"],
                                small["classifier.0.weight"].T)
  # width_mult rounds every width as torchvision does: a 0.75 checkpoint fits a 0.75 model.
  narrow = _numpy_state_dict(TorchMobileNetV3("large", width_mult=0.75))
  v = mobilenet_v3.variables_from_torchvision(
      narrow, models.get("mobilenet_v3_large", width_mult=0.75, num_classes=1000))
  assert v["params"]["head_conv"]["kernel"].shape == (120, 720)
  assert v["params"]["classifier_hidden"]["kernel"].shape == (720, 960)
