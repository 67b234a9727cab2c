"""ResNet-18 and ResNet-50 (He et al., 2016) in torchvision's layout, and their weight readers.

torchvision's `resnet18` / `resnet50`: a 7x7 stride-2 conv (64, padding 3),
BatchNorm, ReLU, a 3x3 stride-2 max-pool (padding 1, padded with -inf), four
stages of widths 64-128-256-512, each of `depths` blocks with stride 1, 2, 2, 2
in its first block, global average, then a Linear classifier.
- ResNet-18: BasicBlock x (2, 2, 2, 2): [3x3 conv (stride), BN, ReLU], [3x3
  conv, BN], plus the input, ReLU. 11,689,512 parameters with 1000 classes.
- ResNet-50: Bottleneck x (3, 4, 6, 3): [1x1 conv to width, BN, ReLU], [3x3 conv
  (stride), BN, ReLU], [1x1 conv to 4 x width, BN], plus the input, ReLU.
  25,557,032 parameters. The stride is on the 3x3 conv ("ResNet v1.5",
  torchvision's choice since 0.2; He et al.'s v1 put it on the first 1x1).
A block whose stride or width changes projects its input with a strided 1x1
conv and BN ('downsample'). Convs have no bias; BatchNorm eps 1e-5, momentum
0.1 (flax 0.9); convs start from Kaiming normal (fan_out), BN at scale 1,
bias 0, as torchvision initialises them (its zero_init_residual=False).

Features: [B, 512] (18) or [B, 2048] (50), the global average of the last
map; with `num_classes`, logits from a 'classifier' Dense (after dropout at
`dropout`, 0 by default as in torchvision), the features then sown as
('intermediates', 'features') (`mobilenet.pooled_head`). NHWC inputs
normalised with ImageNet's mean and std (`MEAN`, `STD` on the 0-255 scale),
224x224 for the ImageNet weights.

    net = models.get("resnet18")                       # 11,176,512 parameters
    variables = resnet.load_torchvision(net, "resnet18-f37072fd.pth", sha256="f37072fd")

No ResNet weights are reachable here (../shared/data/README.md):
`load_torchvision` reads a user's torchvision `.pth` (state_dict keys conv1.weight,
bn1.*, layer1.0.conv1.weight, ..., layer2.0.downsample.0.weight, fc.weight),
without torch. `variables_from_hf` / `load_hf` read transformers' `ResNetModel`
and `ResNetForImageClassification` checkpoints (microsoft/resnet-18, -50), the
same architecture under other names.

Convs run through `layers.Conv` (`impl`): on CPU a stride-1 conv keeps XLA's
forward with a custom VJP of fast matmuls, a strided one is a strided im2col
matmul; 1x1 convs are Dense layers over channels (strided: on every second
pixel, as a 1x1 stride-2 conv with no padding reads).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import models
from fsl_jax.models import layers, mobilenet
from fsl_jax.models import torch_weights as tw

MEAN, STD = mobilenet.MEAN, mobilenet.STD
normalize = mobilenet.normalize

WIDTHS = (64, 128, 256, 512)   # the stages' widths (a bottleneck's output is 4x)
STEM = 64

# torchvision's files (download.pytorch.org/models/<name>), the sha256 prefixes their names carry.
RESNET18_IMAGENET1K_V1 = "resnet18-f37072fd.pth"
RESNET50_IMAGENET1K_V1 = "resnet50-0676ba61.pth"
RESNET50_IMAGENET1K_V2 = "resnet50-11ad3fa6.pth"
SHA256 = {RESNET18_IMAGENET1K_V1: "f37072fd", RESNET50_IMAGENET1K_V1: "0676ba61",
          RESNET50_IMAGENET1K_V2: "11ad3fa6"}

KAIMING_FAN_OUT = mobilenet.KAIMING_FAN_OUT


def _conv(features: int, k: int, strides: int, impl: str, name: str) -> layers.Conv:
  return layers.Conv(features, k, use_bias=False, impl=impl, strides=strides,
                     kernel_init=KAIMING_FAN_OUT, name=name)


def _conv1x1(x_BxHxWxC, features: int, strides: int, name: str):
  """A 1x1 conv without bias and padding: a Dense over channels of every `strides`-th pixel."""
  return mobilenet.conv1x1(features, name)(x_BxHxWxC[:, ::strides, ::strides])


def _norm(x, train: bool, name: str):
  return layers.batch_norm(x, train, name=name)


def max_pool_3x3(x_BxHxWxC):
  """torchvision's stem pool: 3x3, stride 2, padding 1 with -inf; [B, ceil(H/2), ceil(W/2), C]."""
  return jax.lax.reduce_window(x_BxHxWxC, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


class BasicBlock(nn.Module):
  """[3x3 conv (strides), BN, ReLU], [3x3 conv, BN], + x (or its 1x1 projection), ReLU."""
  features: int
  strides: int = 1
  impl: str = "auto"

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    y = _conv(self.features, 3, self.strides, self.impl, "conv1")(x_BxHxWxC)
    y = nn.relu(_norm(y, train, "bn1"))
    y = _norm(_conv(self.features, 3, 1, self.impl, "conv2")(y), train, "bn2")
    return nn.relu(y + _shortcut(x_BxHxWxC, self.features, self.strides, train))


class Bottleneck(nn.Module):
  """[1x1 conv, BN, ReLU], [3x3 conv (strides), BN, ReLU], [1x1 conv to 4x, BN], + x, ReLU."""
  features: int        # the 3x3 conv's width; the block outputs 4 * features
  strides: int = 1
  impl: str = "auto"

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    out = self.features * self.expansion
    y = nn.relu(_norm(_conv1x1(x_BxHxWxC, self.features, 1, "conv1"), train, "bn1"))
    y = _conv(self.features, 3, self.strides, self.impl, "conv2")(y)   # v1.5: stride here
    y = nn.relu(_norm(y, train, "bn2"))
    y = _norm(_conv1x1(y, out, 1, "conv3"), train, "bn3")
    return nn.relu(y + _shortcut(x_BxHxWxC, out, self.strides, train))


def _shortcut(x_BxHxWxC, features: int, strides: int, train: bool):
  """The input, or its strided 1x1 conv + BN where the stride or width changes
  (torchvision's `downsample`; called inside the block's compact method)."""
  if strides == 1 and x_BxHxWxC.shape[-1] == features:
    return x_BxHxWxC
  return _norm(_conv1x1(x_BxHxWxC, features, strides, "downsample_conv"), train, "downsample_bn")


class ResNet(nn.Module):
  """Returns pooled features [B, 512 * expansion]; logits with `num_classes` (1000: ImageNet's).

  Subclasses fix the architecture (`depths`, `block`); see the module doc.
  """
  num_classes: int | None = None
  dropout: float = 0.0   # before the classifier; torchvision has none
  impl: str = "auto"

  depths: ClassVar[tuple[int, ...]] = ()
  block: ClassVar[type[nn.Module]] = BasicBlock
  dropout_fields = ("dropout",)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    x = _conv(STEM, 7, 2, self.impl, "conv1")(x_BxHxWxC)
    x = max_pool_3x3(nn.relu(_norm(x, train, "bn1")))
    for s, (width, depth) in enumerate(zip(WIDTHS, self.depths)):
      for i in range(depth):
        strides = 2 if s > 0 and i == 0 else 1
        x = self.block(width, strides, self.impl, name=f"layer{s + 1}_{i}")(x, train)
    return mobilenet.pooled_head(self, x, train)


@models.register("resnet18")
class ResNet18(ResNet):
  depths: ClassVar[tuple[int, ...]] = (2, 2, 2, 2)
  block: ClassVar[type[nn.Module]] = BasicBlock


@models.register("resnet50")
class ResNet50(ResNet):
  depths: ClassVar[tuple[int, ...]] = (3, 4, 6, 3)
  block: ClassVar[type[nn.Module]] = Bottleneck


# ------------------------------------------------------------ torchvision state_dicts

def _block_keys(model: ResNet):
  """(torchvision prefix 'layer{s}.{i}', Flax block name, whether it has a downsample) per block."""
  cin, out = STEM, []
  for s, (width, depth) in enumerate(zip(WIDTHS, model.depths)):
    for i in range(depth):
      cout = width * model.block.expansion
      strides = 2 if s > 0 and i == 0 else 1
      out.append((f"layer{s + 1}.{i}", f"layer{s + 1}_{i}", cout != cin or strides != 1))
      cin = cout
  return out


def torchvision_entries(model: ResNet) -> list[tw.Entry]:
  """torchvision state_dict keys -> this module's variables."""
  e = [tw.Entry("conv1.weight", ("params", "conv1", "kernel"), tw.CONV),
       *tw.batch_norm_entries("bn1", ("bn1",))]
  bottleneck = model.block is Bottleneck
  # (conv, its layout): a bottleneck's 1x1 convs are Dense kernels.
  convs = ([("conv1", tw.CONV1X1), ("conv2", tw.CONV), ("conv3", tw.CONV1X1)] if bottleneck
           else [("conv1", tw.CONV), ("conv2", tw.CONV)])
  for p, b, downsample in _block_keys(model):
    for j, (conv, layout) in enumerate(convs, start=1):
      e += [tw.Entry(f"{p}.{conv}.weight", ("params", b, conv, "kernel"), layout),
            *tw.batch_norm_entries(f"{p}.bn{j}", (b, f"bn{j}"))]
    if downsample:
      e += [tw.Entry(f"{p}.downsample.0.weight", ("params", b, "downsample_conv", "kernel"),
                     tw.CONV1X1),
            *tw.batch_norm_entries(f"{p}.downsample.1", (b, "downsample_bn"))]
  if model.num_classes is not None:
    e += [tw.Entry("fc.weight", ("params", "classifier", "kernel"), tw.LINEAR),
          tw.Entry("fc.bias", ("params", "classifier", "bias"))]
  return e


def _name(model: ResNet) -> str:
  return f"{type(model).__name__.lower()} (num_classes={model.num_classes})"


def _variables(state_dict, entries, model: ResNet, head: tuple[str, ...]) -> dict:
  shapes = tw.model_shapes(model, (1, 32, 32, 3))  # variable shapes do not depend on H, W
  ignore = () if model.num_classes is not None else head
  return tw.variables_from_state_dict(state_dict, entries, shapes, ignore=ignore,
                                      what=_name(model))


def variables_from_torchvision(state_dict: Mapping[str, np.ndarray], model: ResNet) -> dict:
  """{'params', 'batch_stats'} of `model` from torchvision's resnet18/50 state_dict.

  Shapes are checked against the model's; a model without `num_classes`
  drops `fc.weight`/`fc.bias` (features only); any other missing or leftover
  key is refused by name.
  """
  return _variables(state_dict, torchvision_entries(model), model, ("fc.weight", "fc.bias"))


def load_torchvision(model: ResNet, path: str, sha256: str | None = None) -> dict:
  """`variables_from_torchvision` of the .pth at `path` (read without torch).

  `sha256`: the digest or its prefix; torchvision's file names carry the
  first 8 hex digits (`SHA256`: resnet18-f37072fd.pth, resnet50-11ad3fa6.pth).
  """
  return variables_from_torchvision(tw.load(path, sha256=sha256), model)


# ------------------------------------------------------------ Hugging Face checkpoints

HF_CLASSIFIER = ("classifier.1.weight", "classifier.1.bias")


def _hf_key(torchvision_key: str, prefix: str) -> str:
  """torchvision's key -> transformers' ResNetModel key (with `prefix`, 'resnet.' or '')."""
  parts = torchvision_key.split(".")
  if parts[0] == "fc":
    return f"classifier.1.{parts[1]}"
  if parts[0] == "conv1":
    return f"{prefix}embedder.embedder.convolution.{parts[1]}"
  if parts[0] == "bn1":
    return f"{prefix}embedder.embedder.normalization.{parts[1]}"
  stage, block, module, leaf = int(parts[0][len("layer"):]) - 1, parts[1], parts[2], parts[-1]
  base = f"{prefix}encoder.stages.{stage}.layers.{block}"
  if module == "downsample":
    return f"{base}.shortcut.{'convolution' if parts[3] == '0' else 'normalization'}.{leaf}"
  j = int(module[-1]) - 1   # conv1/bn1 -> layer.0, conv2/bn2 -> layer.1, ...
  kind = "convolution" if module.startswith("conv") else "normalization"
  return f"{base}.layer.{j}.{kind}.{leaf}"


def hf_entries(model: ResNet, prefix: str = "") -> list[tw.Entry]:
  """transformers' ResNet keys -> this module's variables (torchvision's entries renamed).

  `prefix` 'resnet.' for ResNetForImageClassification (whose head is
  'classifier.1'), '' for ResNetModel.
  """
  return [tw.Entry(_hf_key(e.torch_key, prefix), e.flax_path, e.layout)
          for e in torchvision_entries(model)]


def _check_hf_config(config: Any, model: ResNet) -> None:
  """Refuses the ResNetConfig settings that change the computation but no shape."""
  get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
  bottleneck = model.block is Bottleneck
  want = {"layer_type": "bottleneck" if bottleneck else "basic", "hidden_act": "relu",
          "downsample_in_first_stage": False, "depths": list(model.depths),
          "hidden_sizes": [w * model.block.expansion for w in WIDTHS], "embedding_size": STEM}
  if bottleneck:
    want["downsample_in_bottleneck"] = False   # True: stride on the first 1x1 (ResNet v1)
  defaults = {"hidden_act": "relu", "downsample_in_first_stage": False,
              "downsample_in_bottleneck": False, "embedding_size": STEM}
  bad = []
  for k, v in want.items():
    got = get(k, defaults.get(k))
    if got is not None and (list(got) if isinstance(v, list) else got) != v:
      bad.append(f"{k}={got!r} (want {v!r})")
  if bad:
    raise ValueError(f"This ResNetConfig is not torchvision's {type(model).__name__.lower()}: "
                     f"{', '.join(bad)}.")


def variables_from_hf(state_dict: Mapping[str, np.ndarray], model: ResNet,
                      config: Any = None) -> dict:
  """{'params', 'batch_stats'} of `model` from a transformers ResNet state_dict.

  Reads `ResNetModel` keys (embedder.embedder.convolution.weight,
  encoder.stages.{s}.layers.{i}.layer.{j}.convolution.weight, ...shortcut...)
  and `ResNetForImageClassification` keys (the same under 'resnet.', and
  'classifier.1.weight/bias' for `num_classes` models; dropped for features).
  transformers' ResNet is torchvision's when `downsample_in_bottleneck` and
  `downsample_in_first_stage` are False (their defaults); shapes cannot show
  either, so pass the `config` (a ResNetConfig or config.json's dict) to have
  them checked.
  """
  if config is not None:
    _check_hf_config(config, model)
  prefix = "resnet." if any(k.startswith("resnet.") for k in state_dict) else ""
  return _variables(state_dict, hf_entries(model, prefix), model, HF_CLASSIFIER)


def load_hf(model: ResNet, path_or_id: str) -> dict:
  """`variables_from_hf` of a save_pretrained directory (or a hub id, online), config checked."""
  from fsl_jax.models import hf_loading  # pylint: disable=import-outside-toplevel
  directory = hf_loading.resolve(path_or_id)
  return variables_from_hf(hf_loading.load_state_dict(directory), model,
                           hf_loading.load_config(directory))
