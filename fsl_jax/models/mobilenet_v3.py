"""MobileNetV3-Small and -Large (Howard et al., 2019) in torchvision's layout.

torchvision's `mobilenet_v3_small` / `mobilenet_v3_large`: a 3x3 stride-2
stem conv to 16, BN, hardswish; eleven (small) or fifteen (large) bottleneck
blocks (`SMALL`, `LARGE`: the paper's Tables 2 and 1, torchvision's
inverted_residual_setting); a 1x1 conv to 6x the last block's width (576 /
960), BN, hardswish; global average; then torchvision's classifier
Linear(576 -> 1024 / 960 -> 1280), hardswish, Dropout(0.2), Linear(-> 1000).
A block is [1x1 expand, BN, act] (absent when the expanded width equals the
input's), [kxk depthwise (stride s), BN, act], [squeeze-excite: average,
1x1 conv with bias to make_divisible(expanded // 4), ReLU, 1x1 conv with
bias back, hardsigmoid, times the input] (where the table says SE), [1x1
project, BN] (no activation), plus the input when the stride is 1 and the
widths match. act is ReLU (RE) or hardswish (HS) per block. Convs other
than SE's have no bias; padding (k - 1) // 2 on every side; BatchNorm eps
1e-3, momentum 0.01 (flax 0.99). `width_mult` rounds every block width and
the classifier's hidden width to a multiple of 8 (`mobilenet.make_divisible`,
torchvision's `_make_divisible`); the last conv is 6x the last block's width.

Features: with `num_classes=None`, [B, 576] (small) / [B, 960] (large), the
pooled output of the last conv. torchvision's classifier has one more
Linear + hardswish (1024 / 1280 wide, 'classifier_hidden') before the
logits; with `num_classes` the model includes it, so the whole ImageNet head
loads: logits from 'classifier' after 'classifier_hidden', hardswish and
dropout at `dropout` (0 by default; torchvision trains with 0.2), the pooled
features [B, 576 / 960] then sown as ('intermediates', 'features')
(`apply(..., mutable=['intermediates'])`), as MobileNetV2's are. NHWC
inputs normalised with ImageNet's mean and std (`mobilenet.normalize`),
224x224 for the ImageNet weights.

    net = models.get("mobilenet_v3_small")   # 927,008 parameters; 2,542,856 with num_classes=1000
    net = models.get("mobilenet_v3_large")   # 2,971,952 parameters; 5,483,032 with num_classes=1000
    variables = mobilenet_v3.load_torchvision(net, "mobilenet_v3_large-5c1a4163.pth")

`load_torchvision` reads a user's torchvision `.pth` without torch (keys
features.0.0.weight, features.i.block.j..., classifier.0/3.*):
mobilenet_v3_small-047dcff4.pth (IMAGENET1K_V1), mobilenet_v3_large-8738ca79.pth
(IMAGENET1K_V1), mobilenet_v3_large-5c1a4163.pth (IMAGENET1K_V2). None is
reachable here (../shared/data/README.md).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import models
from fsl_jax.models import layers
from fsl_jax.models import torch_weights as tw
from fsl_jax.models.mobilenet import (KAIMING_FAN_OUT, MEAN, STD, Conv, DepthwiseConv,  # noqa: F401
                                      conv1x1, make_divisible, normalize)

# (kernel, expanded width, out width, squeeze-excite, activation, stride) of each block,
# torchvision's inverted_residual_setting (dilation 1); the first block's input is the stem's 16.
SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
         (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
         (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
         (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))
LARGE = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
         (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
         (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
         (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
         (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))
STEM = 16
# The classifier's hidden width (torchvision's last_channel), before width_mult.
HIDDEN = {"small": 1024, "large": 1280}
SETTINGS = {"small": SMALL, "large": LARGE}
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
# torchvision initialises its Linears with normal(0, 0.01) and zero bias.
LINEAR_INIT = nn.initializers.normal(0.01)


class BlockSpec(NamedTuple):
  cin: int
  kernel: int
  expanded: int
  cout: int
  se: bool
  hardswish: bool
  stride: int


def block_specs(arch: str, width_mult: float = 1.0) -> list[BlockSpec]:
  """Each block's widths (rounded as torchvision's `adjust_channels`), kernel, SE, act, stride."""
  if arch not in SETTINGS:
    raise ValueError(f"Unknown MobileNetV3 arch {arch!r}; use 'small' or 'large'.")
  w = lambda c: make_divisible(c * width_mult)
  specs, cin = [], w(STEM)
  for k, e, c, se, act, s in SETTINGS[arch]:
    specs.append(BlockSpec(cin, k, w(e), w(c), se, act == "HS", s))
    cin = w(c)
  return specs


def widths(arch: str, width_mult: float = 1.0) -> tuple[int, int, int]:
  """(stem, last conv, classifier hidden) widths."""
  return (make_divisible(STEM * width_mult), 6 * block_specs(arch, width_mult)[-1].cout,
          make_divisible(HIDDEN[arch] * width_mult))


def _norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      name=name)


class SqueezeExcite(nn.Module):
  """torchvision's SqueezeExcitation with hardsigmoid: x * hsig(fc2(relu(fc1(mean(x)))))."""
  squeeze: int

  @nn.compact
  def __call__(self, x_BxHxWxC):
    c = x_BxHxWxC.shape[-1]
    s_BxC = jnp.mean(x_BxHxWxC, axis=(1, 2))
    s_BxC = nn.relu(nn.Dense(self.squeeze, kernel_init=KAIMING_FAN_OUT, name="fc1")(s_BxC))
    s_BxC = jax.nn.hard_sigmoid(nn.Dense(c, kernel_init=KAIMING_FAN_OUT, name="fc2")(s_BxC))
    return x_BxHxWxC * s_BxC[:, None, None, :]


class Bottleneck(nn.Module):
  """[1x1 expand, BN, act], [depthwise, BN, act], [SE], [1x1 project, BN] (+ x).

  MobileNetV3's block (torchvision's `InvertedResidual`); the expand conv is
  absent when `expanded` equals the input width, the input added when
  `strides` is 1 and the widths match.
  """
  features: int
  expanded: int
  kernel_size: int = 3
  strides: int = 1
  se: bool = False
  hardswish: bool = False
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    act = jax.nn.hard_swish if self.hardswish else nn.relu
    c = x_BxHxWxC.shape[-1]
    y = x_BxHxWxC
    if self.expanded != c:
      y = act(_norm(train, "expand_bn")(conv1x1(self.expanded, "expand")(y)))
    y = DepthwiseConv(self.kernel_size, self.strides, "torch", self.impl, name="depthwise")(y)
    y = act(_norm(train, "depthwise_bn")(y))
    if self.se:
      y = SqueezeExcite(make_divisible(self.expanded // 4), name="se")(y)
    y = _norm(train, "project_bn")(conv1x1(self.features, "project")(y))
    if self.strides == 1 and c == self.features:
      y = y + x_BxHxWxC
    return y


class MobileNetV3(nn.Module):
  """Pooled features [B, 576 / 960]; logits with `num_classes` (1000: ImageNet's head).

  `ARCH` ('small' or 'large') is set by the registered subclasses.
  """
  width_mult: float = 1.0
  num_classes: int | None = None
  dropout: float = 0.0   # before the logits; torchvision trains with 0.2
  impl: str = "auto"     # 'auto'/'cpu'/'im2col': shifted sums and matmuls; 'xla': XLA's convs

  dropout_fields = ("dropout",)
  ARCH = "large"

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    stem, last, hidden = widths(self.ARCH, self.width_mult)
    x = Conv(stem, 3, 2, "torch", self.impl, name="stem_conv")(x_BxHxWxC)
    x = jax.nn.hard_swish(_norm(train, "stem_bn")(x))
    for i, b in enumerate(block_specs(self.ARCH, self.width_mult)):
      x = Bottleneck(b.cout, b.expanded, b.kernel, b.stride, b.se, b.hardswish, self.impl,
                     name=f"block{i}")(x, train)
    x = jax.nn.hard_swish(_norm(train, "head_bn")(conv1x1(last, "head_conv")(x)))
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x
    self.sow("intermediates", "features", x)
    x = nn.Dense(hidden, kernel_init=LINEAR_INIT, name="classifier_hidden")(x)
    x = jax.nn.hard_swish(x)
    if self.dropout:
      layers.check_dropout_rng(self, train, (self.dropout,))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Dense(self.num_classes, kernel_init=LINEAR_INIT, name="classifier")(x)


@models.register("mobilenet_v3_small")
class MobileNetV3Small(MobileNetV3):
  """MobileNetV3-Small: features [B, 576]; with `num_classes`, 576 -> 1024 -> logits."""
  ARCH = "small"


@models.register("mobilenet_v3_large")
class MobileNetV3Large(MobileNetV3):
  """MobileNetV3-Large: features [B, 960]; with `num_classes`, 960 -> 1280 -> logits."""
  ARCH = "large"


CLASSIFIER_KEYS = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                   "classifier.3.bias")


def _bn(prefix: str, path: tuple[str, ...]) -> list[tw.Entry]:
  return tw.batch_norm_entries(prefix, path)


def torchvision_entries(model: MobileNetV3) -> list[tw.Entry]:
  """torchvision state_dict keys -> this module's variables."""
  e = [tw.Entry("features.0.0.weight", ("params", "stem_conv", "kernel"), tw.CONV),
       *_bn("features.0.1", ("stem_bn",))]
  specs = block_specs(model.ARCH, model.width_mult)
  for i, spec in enumerate(specs):
    p, b = f"features.{i + 1}.block", f"block{i}"
    j = 0
    if spec.expanded != spec.cin:
      e += [tw.Entry(f"{p}.0.0.weight", ("params", b, "expand", "kernel"), tw.CONV1X1),
            *_bn(f"{p}.0.1", (b, "expand_bn"))]
      j = 1
    e += [tw.Entry(f"{p}.{j}.0.weight", ("params", b, "depthwise", "kernel"), tw.CONV),
          *_bn(f"{p}.{j}.1", (b, "depthwise_bn"))]
    j += 1
    if spec.se:
      for fc in ("fc1", "fc2"):
        e += [tw.Entry(f"{p}.{j}.{fc}.weight", ("params", b, "se", fc, "kernel"), tw.CONV1X1),
              tw.Entry(f"{p}.{j}.{fc}.bias", ("params", b, "se", fc, "bias"))]
      j += 1
    e += [tw.Entry(f"{p}.{j}.0.weight", ("params", b, "project", "kernel"), tw.CONV1X1),
          *_bn(f"{p}.{j}.1", (b, "project_bn"))]
  head = f"features.{len(specs) + 1}"
  e += [tw.Entry(f"{head}.0.weight", ("params", "head_conv", "kernel"), tw.CONV1X1),
        *_bn(f"{head}.1", ("head_bn",))]
  if model.num_classes is not None:
    for key, name in (("classifier.0", "classifier_hidden"), ("classifier.3", "classifier")):
      e += [tw.Entry(f"{key}.weight", ("params", name, "kernel"), tw.LINEAR),
            tw.Entry(f"{key}.bias", ("params", name, "bias"))]
  return e


def variables_from_torchvision(state_dict: Mapping[str, np.ndarray],
                               model: MobileNetV3) -> dict:
  """{'params', 'batch_stats'} of `model` from torchvision's mobilenet_v3_small/large state_dict.

  Shapes are checked against the model's (a small checkpoint given to a
  large model is refused naming the first key whose shape differs); a model
  without `num_classes` drops the classifier (classifier.0 and .3), any
  other leftover key is refused.
  """
  shapes = tw.model_shapes(model, (1, 32, 32, 3))  # variable shapes do not depend on H, W
  entries = torchvision_entries(model)
  what = (f"mobilenet_v3_{model.ARCH} (width_mult={model.width_mult}, "
          f"num_classes={model.num_classes})")
  _check_shapes(state_dict, entries, shapes, what)
  ignore = () if model.num_classes is not None else CLASSIFIER_KEYS
  return tw.variables_from_state_dict(state_dict, entries, shapes, ignore=ignore, what=what)


def _check_shapes(state_dict: Mapping[str, np.ndarray], entries: list[tw.Entry], shapes,
                  what: str) -> None:
  """Refuses keys the checkpoint and the model share with different shapes, naming them.

  Run before the key-set check, so that a checkpoint of the other size (or
  width_mult) is named by its first differing shape, not by a list of keys
  one layout has and the other lacks; the message also says which layout
  the checkpoint's number of `features.N` modules matches.
  """
  wrong = []
  for e in entries:
    if e.torch_key in state_dict:
      node = shapes
      for k in e.flax_path:
        node = node[k]
      want = tuple(e.layout.to_torch(tuple(node.shape)))
      got = tuple(np.shape(state_dict[e.torch_key]))
      if got != want:
        wrong.append(f"{e.torch_key!r}: the checkpoint has {got}, the model expects {want}")
  if not wrong:
    return
  n = len({k.split(".")[1] for k in state_dict if k.startswith("features.")})
  layouts = {len(block_specs(a)) + 2: f"mobilenet_v3_{a}" for a in SETTINGS}
  hint = (f"; its features.0-features.{n - 1} are {layouts[n]}'s layout" if n in layouts else "")
  more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
  raise ValueError(f"The state_dict does not fit the {what}: shape mismatch for "
                   f"{'; '.join(wrong[:3])}{more}{hint}.")


def load_torchvision(model: MobileNetV3, path: str, sha256: str | None = None) -> dict:
  """`variables_from_torchvision` of the .pth at `path` (read without torch).

  `sha256`: the digest or its prefix; torchvision's file names carry the first
  8 hex digits (mobilenet_v3_small-047dcff4.pth, mobilenet_v3_large-8738ca79.pth,
  mobilenet_v3_large-5c1a4163.pth).
  """
  return variables_from_torchvision(tw.load(path, sha256=sha256), model)
