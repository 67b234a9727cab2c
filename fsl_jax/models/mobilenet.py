"""MobileNetV2 (Sandler et al., 2018) in torchvision's layout, and its inverted-residual layers.

torchvision's `mobilenet_v2`: a 3x3 stride-2 stem (32), seventeen inverted
residual blocks in seven stages (expansion t, width c, repeats n, first
stride s) (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2)
(6,320,1,1), a 1x1 conv to 1280, global average, then Dropout(0.2) and a
Linear classifier. A block is [1x1 expand (when t > 1), BN, ReLU6], [3x3
depthwise (stride s), BN, ReLU6], [1x1 project, BN] plus the input when the
stride is 1 and the widths match. Convs have no bias; BatchNorm eps 1e-5,
momentum 0.1 (flax 0.9); padding (k - 1) // 2 on every side. `width_mult`
rounds every width to a multiple of 8 as torchvision does (`_make_divisible`).

Features: [B, 1280] (the pooled 1x1-conv output); with `num_classes`, logits
from a 'classifier' Dense (after dropout at `dropout`, 0 by default;
torchvision trains with 0.2), the features then sown as ('intermediates',
'features') for one pass to give both (`apply(..., mutable=['intermediates'])`).
NHWC inputs normalised with ImageNet's mean and std (`MEAN`, `STD` on the
0-255 scale), 224x224 for the ImageNet weights.

    net = models.get("mobilenet_v2")                       # 2,223,872 parameters
    variables = mobilenet.load_torchvision(net, "mobilenet_v2-7ebf99e0.pth")

No MobileNetV2 weights are reachable here (../shared/data/README.md);
`load_torchvision` reads a user's torchvision `.pth` (state_dict keys
features.0.0.weight ... classifier.1.bias), without torch.

Depthwise and 1x1 convs run as shifted multiply-adds and matmuls on CPU
(`impl`): XLA's CPU grouped convolution took 7x longer forward and 10x
longer forward+backward than the shifted sum for a [16, 56, 56, 144] 3x3
depthwise conv (measured here, 2 cores).
"""

from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import models
from fsl_jax.models import layers
from fsl_jax.models import torch_weights as tw

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# (expansion t, width c, repeats n, first stride s), torchvision's inverted_residual_setting.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))

# PyTorch's kaiming_normal_(mode='fan_out'), as torchvision initialises MobileNetV2's convs.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pads(n: int, k: int, stride: int, padding: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis of length `n`.

  'torch': (k - 1) // 2 on both sides (PyTorch's `padding=k // 2`, odd k).
  'same': TensorFlow's SAME, the output ceil(n / stride) long, the odd pixel
  after (what XLA's 'SAME' does and EfficientNet's TF weights expect).
  """
  if padding == "torch":
    return (k - 1) // 2, (k - 1) // 2
  if padding == "same":
    total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
    return total // 2, total - total // 2
  raise ValueError(f"Unknown padding {padding!r}; use 'torch' or 'same'.")


def _windows(x_BxHxWxC, k: int, stride: int, padding: str):
  """The k*k strided views of the padded input, one per kernel tap (row-major)."""
  _, h, w, _ = x_BxHxWxC.shape
  ph, pw = pads(h, k, stride, padding), pads(w, k, stride, padding)
  xp = jnp.pad(x_BxHxWxC, ((0, 0), ph, pw, (0, 0)))
  ho, wo = (h + sum(ph) - k) // stride + 1, (w + sum(pw) - k) // stride + 1
  return [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
          for i in range(k) for j in range(k)]


def _xla_conv(x, w, stride: int, padding: str, groups: int = 1):
  k = w.shape[0]
  pad = (pads(x.shape[1], k, stride, padding), pads(x.shape[2], k, stride, padding))
  return jax.lax.conv_general_dilated(x, w, (stride, stride), pad,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


def pooled_head(module: nn.Module, x_BxHxWxC, train: bool):
  """Global average; with `module.num_classes`, features sown as ('intermediates',
  'features') then dropout (`module.dropout`) and the 'classifier' Dense.

  Called inside `module`'s compact __call__ (MobileNetV2, EfficientNet-Lite0).
  """
  x = jnp.mean(x_BxHxWxC, axis=(1, 2))
  if module.num_classes is None:
    return x
  module.sow("intermediates", "features", x)
  if module.dropout:
    layers.check_dropout_rng(module, train, (module.dropout,))
  x = nn.Dropout(module.dropout)(x, deterministic=not train)
  return nn.Dense(module.num_classes, name="classifier")(x)


class Conv(nn.Module):
  """A KxK conv without bias, 'torch' or TF 'same' padding; im2col matmul on CPU."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: str = "torch"
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxHxWxC):
    k, c = self.kernel_size, x_BxHxWxC.shape[-1]
    kernel = self.param("kernel", KAIMING_FAN_OUT, (k, k, c, self.features))
    kernel = kernel.astype(x_BxHxWxC.dtype)
    if layers.resolve_impl(self.impl) == "xla":
      return _xla_conv(x_BxHxWxC, kernel, self.strides, self.padding)
    cols = jnp.concatenate(_windows(x_BxHxWxC, k, self.strides, self.padding), axis=-1)
    return cols @ kernel.reshape(k * k * c, self.features)


class DepthwiseConv(nn.Module):
  """A KxK depthwise conv without bias; kernel [k, k, 1, C] (flax nn.Conv with groups=C).

  On CPU the sum over taps of shifted views times per-channel weights.
  """
  kernel_size: int = 3
  strides: int = 1
  padding: str = "torch"
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxHxWxC):
    k, c = self.kernel_size, x_BxHxWxC.shape[-1]
    kernel = self.param("kernel", KAIMING_FAN_OUT, (k, k, 1, c)).astype(x_BxHxWxC.dtype)
    if layers.resolve_impl(self.impl) == "xla":
      return _xla_conv(x_BxHxWxC, kernel, self.strides, self.padding, groups=c)
    taps = _windows(x_BxHxWxC, k, self.strides, self.padding)
    w_TxC = kernel.reshape(k * k, c)
    y = taps[0] * w_TxC[0]
    for t in range(1, k * k):
      y = y + taps[t] * w_TxC[t]
    return y


def conv1x1(features: int, name: str) -> nn.Dense:
  """A 1x1 conv without bias: a Dense over channels (kernel [C, O])."""
  return nn.Dense(features, use_bias=False, kernel_init=KAIMING_FAN_OUT, name=name)


class InvertedResidual(nn.Module):
  """[1x1 expand, BN, ReLU6] (expand > 1), [depthwise, BN, ReLU6], [1x1 project, BN] (+ x).

  The MobileNetV2 block, also EfficientNet-Lite's (which has no squeeze-excite).
  The input is added when `strides` is 1 and the widths match.
  """
  features: int
  expand: int
  kernel_size: int = 3
  strides: int = 1
  padding: str = "torch"
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.9
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    norm = lambda y, name: nn.BatchNorm(use_running_average=not train,
                                        momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                        name=name)(y)
    c = x_BxHxWxC.shape[-1]
    y = x_BxHxWxC
    if self.expand != 1:
      y = nn.relu6(norm(conv1x1(c * self.expand, "expand")(y), "expand_bn"))
    y = DepthwiseConv(self.kernel_size, self.strides, self.padding, self.impl,
                      name="depthwise")(y)
    y = nn.relu6(norm(y, "depthwise_bn"))
    y = norm(conv1x1(self.features, "project")(y), "project_bn")
    if self.strides == 1 and c == self.features:
      y = y + x_BxHxWxC
    return y


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: the nearest multiple of 8, never 10% below v."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def block_specs(width_mult: float = 1.0) -> list[tuple[int, int, int]]:
  """(expansion, width, stride) of each of the 17 inverted residual blocks."""
  return [(t, make_divisible(c * width_mult), s if i == 0 else 1)
          for t, c, n, s in STAGES for i in range(n)]


@models.register("mobilenet_v2")
class MobileNetV2(nn.Module):
  """Returns pooled features [B, 1280]; logits with `num_classes` (1000: ImageNet's head)."""
  width_mult: float = 1.0
  num_classes: int | None = None
  dropout: float = 0.0   # before the classifier; torchvision trains with 0.2
  impl: str = "auto"

  dropout_fields = ("dropout",)

  def _widths(self) -> tuple[int, int]:
    return make_divisible(32 * self.width_mult), make_divisible(1280 * max(1.0, self.width_mult))

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    stem, last = self._widths()
    norm = lambda y, name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                        epsilon=1e-5, name=name)(y)
    x = Conv(stem, 3, 2, "torch", self.impl, name="stem_conv")(x_BxHxWxC)
    x = nn.relu6(norm(x, "stem_bn"))
    for i, (t, c, s) in enumerate(block_specs(self.width_mult)):
      x = InvertedResidual(c, t, 3, s, "torch", 1e-5, 0.9, self.impl, name=f"block{i}")(x, train)
    x = nn.relu6(norm(conv1x1(last, "head_conv")(x), "head_bn"))
    return pooled_head(self, x, train)


def _bn(prefix: str, path: tuple[str, ...]) -> list[tw.Entry]:
  return tw.batch_norm_entries(prefix, path)


def torchvision_entries(model: MobileNetV2) -> list[tw.Entry]:
  """torchvision state_dict keys -> this module's variables (torchvision's nesting)."""
  e = [tw.Entry("features.0.0.weight", ("params", "stem_conv", "kernel"), tw.CONV),
       *_bn("features.0.1", ("stem_bn",))]
  for i, (t, _, _) in enumerate(block_specs(model.width_mult)):
    p, b = f"features.{i + 1}.conv", f"block{i}"
    j = 0
    if t != 1:
      e += [tw.Entry(f"{p}.0.0.weight", ("params", b, "expand", "kernel"), tw.CONV1X1),
            *_bn(f"{p}.0.1", (b, "expand_bn"))]
      j = 1
    e += [tw.Entry(f"{p}.{j}.0.weight", ("params", b, "depthwise", "kernel"), tw.CONV),
          *_bn(f"{p}.{j}.1", (b, "depthwise_bn")),
          tw.Entry(f"{p}.{j + 1}.weight", ("params", b, "project", "kernel"), tw.CONV1X1),
          *_bn(f"{p}.{j + 2}", (b, "project_bn"))]
  head = f"features.{len(block_specs(model.width_mult)) + 1}"
  e += [tw.Entry(f"{head}.0.weight", ("params", "head_conv", "kernel"), tw.CONV1X1),
        *_bn(f"{head}.1", ("head_bn",))]
  if model.num_classes is not None:
    e += [tw.Entry("classifier.1.weight", ("params", "classifier", "kernel"), tw.LINEAR),
          tw.Entry("classifier.1.bias", ("params", "classifier", "bias"))]
  return e


def variables_from_torchvision(state_dict: Mapping[str, np.ndarray],
                               model: MobileNetV2) -> dict:
  """{'params', 'batch_stats'} of `model` from torchvision's mobilenet_v2 state_dict.

  Shapes are checked against the model's; a model without `num_classes`
  drops the classifier (features only), any other leftover key is refused.
  """
  shapes = tw.model_shapes(model, (1, 32, 32, 3))  # variable shapes do not depend on H, W
  ignore = () if model.num_classes is not None else ("classifier.1.weight", "classifier.1.bias")
  return tw.variables_from_state_dict(state_dict, torchvision_entries(model), shapes,
                                      ignore=ignore, what=f"mobilenet_v2 (width_mult="
                                      f"{model.width_mult}, num_classes={model.num_classes})")


def load_torchvision(model: MobileNetV2, path: str, sha256: str | None = None) -> dict:
  """`variables_from_torchvision` of the .pth at `path` (read without torch).

  `sha256`: the digest or its prefix; torchvision's file names carry the first
  8 hex digits (mobilenet_v2-b0353104.pth, mobilenet_v2-7ebf99e0.pth).
  """
  return variables_from_torchvision(tw.load(path, sha256=sha256), model)


def normalize(images_BxHxWx3) -> jax.Array:
  """0-255 RGB images -> the ImageNet-normalised input torchvision's weights expect."""
  x = jnp.asarray(images_BxHxWx3, jnp.float32)
  return (x - jnp.asarray(MEAN)) / jnp.asarray(STD)

