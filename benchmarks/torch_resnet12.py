"""PyTorch ResNet-12 and WRN, written here to match `fsl_jax.models` layer for layer.

References for parity tests (tests/test_backbones.py) and for throughput
comparisons on the same machine. Importable by path (`sys.path` holding
`benchmarks/`), as tests/test_gradient_learners.py does for torch_reference.

    net = ResNet12(widths=(64, 160, 320, 640), drop_rate=0.1, avg_pool=True)
    load_from_flax(net, variables)     # variables of fsl_jax.models.get("resnet12", ...)
    net.eval(); feats = net(images_NCHW)

Architectures (see fsl_jax/models/resnet12.py and wrn.py for the sources):
- ResNet12: per block 3 x [conv3x3 no bias, BN, leaky ReLU 0.1] with the last
  leaky ReLU after adding a 1x1 conv + BN shortcut; max-pool 2x2 (floor);
  dropout after blocks 1-2 and DropBlock after blocks 3-4 in training mode;
  global average or NCHW flatten; optional Linear head.
- WideResNet: 3x3 stem (16), three groups of pre-activation blocks
  [BN, ReLU, conv3x3 (stride, padding 1), BN, ReLU, dropout, conv3x3] with an
  identity or 1x1-conv (stride) shortcut of the pre-activated input; BN,
  ReLU, global average; optional Linear head.
BatchNorm: momentum 0.1 (flax's 0.9), eps 1e-5.

Layouts, flax -> torch (`load_from_flax`): conv kernel [k, k, I, O] ->
weight [O, I, k, k]; BatchNorm scale/bias -> weight/bias and batch_stats
mean/var -> running_mean/running_var; Dense kernel [D, N] -> Linear weight
[N, D]. Flax flattens NHWC, torch NCHW: a head after `avg_pool=False` has
its input rows reordered.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def drop_block(x_NCHW: torch.Tensor, rate: float, block_size: int) -> torch.Tensor:
  """DropBlock (Ghiasi et al., 2018), the algorithm of fsl_jax.models.layers.drop_block."""
  n, c, h, w = x_NCHW.shape
  bs = max(1, min(block_size, h, w))
  gamma = rate / bs**2 * (h * w) / ((h - bs + 1) * (w - bs + 1))
  seeds = torch.bernoulli(torch.full((n, c, h - bs + 1, w - bs + 1), gamma,
                                     device=x_NCHW.device, dtype=x_NCHW.dtype))
  dropped = F.max_pool2d(F.pad(seeds, (bs - 1,) * 4), bs, stride=1)
  keep = 1 - dropped
  return x_NCHW * keep * (keep.numel() / keep.sum().clamp(min=1))


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)


class ResBlock12(nn.Module):
  def __init__(self, cin: int, cout: int, rate: float, use_drop_block: bool, block_size: int):
    super().__init__()
    self.convs = nn.ModuleList([nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False)
                                for i in range(3)])
    self.bns = nn.ModuleList([_bn(cout) for _ in range(3)])
    self.shortcut_conv = nn.Conv2d(cin, cout, 1, bias=False)
    self.shortcut_bn = _bn(cout)
    self.rate, self.use_drop_block, self.block_size = rate, use_drop_block, block_size

  def forward(self, x):
    y = x
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      y = bn(conv(y))
      if i < 2:
        y = F.leaky_relu(y, 0.1)
    y = F.leaky_relu(y + self.shortcut_bn(self.shortcut_conv(x)), 0.1)
    y = F.max_pool2d(y, 2)
    if not self.training or self.rate == 0:
      return y
    if self.use_drop_block:
      return drop_block(y, self.rate, self.block_size)
    return F.dropout(y, self.rate, training=True)


class ResNet12(nn.Module):
  def __init__(self, widths=(64, 160, 320, 640), drop_rate: float = 0.1, avg_pool: bool = True,
               block_size: int = 5, dropout: float | None = None, in_channels: int = 3,
               num_classes: int | None = None, image_size: int = 84):
    super().__init__()
    early = drop_rate if dropout is None else dropout
    n = len(widths)
    cins = (in_channels,) + tuple(widths[:-1])
    self.blocks = nn.ModuleList([
        ResBlock12(cin, cout, drop_rate if i >= n - 2 else early, i >= n - 2, block_size)
        for i, (cin, cout) in enumerate(zip(cins, widths))])
    self.avg_pool = avg_pool
    # A head after the flattened map needs its size: image_size halved (floor) per block.
    side = image_size
    for _ in widths:
      side //= 2
    dim = widths[-1] if avg_pool else widths[-1] * side * side
    self.head = None if num_classes is None else nn.Linear(dim, num_classes)

  def forward(self, x_NCHW):
    for block in self.blocks:
      x_NCHW = block(x_NCHW)
    x = x_NCHW.mean((2, 3)) if self.avg_pool else x_NCHW.flatten(1)
    return x if self.head is None else self.head(x)


class PreActBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, drop_rate: float):
    super().__init__()
    self.bn0, self.bn1 = _bn(cin), _bn(cout)
    self.conv0 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    self.conv1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
    self.shortcut = (None if stride == 1 and cin == cout
                     else nn.Conv2d(cin, cout, 1, stride, bias=False))
    self.drop_rate = drop_rate

  def forward(self, x):
    act = F.relu(self.bn0(x))
    y = F.relu(self.bn1(self.conv0(act)))
    y = self.conv1(F.dropout(y, self.drop_rate, training=self.training))
    return (x if self.shortcut is None else self.shortcut(act)) + y


class WideResNet(nn.Module):
  def __init__(self, depth: int = 28, widen: int = 10, drop_rate: float = 0.0,
               in_channels: int = 3, num_classes: int | None = None):
    super().__init__()
    per_group = (depth - 4) // 6
    self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
    blocks, cin = [], 16
    for width, stride in zip((16, 32, 64), (1, 2, 2)):
      for b in range(per_group):
        blocks.append(PreActBlock(cin, width * widen, stride if b == 0 else 1, drop_rate))
        cin = width * widen
    self.groups = nn.ModuleList(blocks)
    self.per_group = per_group
    self.bn = _bn(cin)
    self.head = None if num_classes is None else nn.Linear(cin, num_classes)

  def forward(self, x_NCHW):
    x = self.stem(x_NCHW)
    for block in self.groups:
      x = block(x)
    x = F.relu(self.bn(x)).mean((2, 3))
    return x if self.head is None else self.head(x)


# ----------------------------------------------------------------- weights

def _t(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, dtype=np.float32))


def _conv(conv: nn.Conv2d, p) -> None:
  conv.weight.data.copy_(_t(p["kernel"]).permute(3, 2, 0, 1))


def _norm(bn: nn.BatchNorm2d, p, s) -> None:
  bn.weight.data.copy_(_t(p["scale"]))
  bn.bias.data.copy_(_t(p["bias"]))
  if s is not None:
    bn.running_mean.copy_(_t(s["mean"]))
    bn.running_var.copy_(_t(s["var"]))


def _head(net, p, channels: int) -> None:
  kernel = np.asarray(p["kernel"], np.float32)          # [D, N], rows in NHWC order
  if kernel.shape[0] != channels:                        # a flattened map: reorder to NCHW
    hw = kernel.shape[0] // channels
    side = math.isqrt(hw)
    n = kernel.shape[-1]
    kernel = kernel.reshape(side, side, channels, n).transpose(2, 0, 1, 3).reshape(-1, n)
  if tuple(net.head.weight.shape) != kernel.T.shape:
    raise ValueError(f"The torch head is {tuple(net.head.weight.shape)}, the flax one "
                     f"{kernel.T.shape}; build the torch net with the flax image_size.")
  net.head.weight.data.copy_(_t(kernel.T))
  net.head.bias.data.copy_(_t(p["bias"]))


@torch.no_grad()
def load_from_flax(net: nn.Module, variables) -> nn.Module:
  """Copies flax `variables` ({'params', 'batch_stats'}) of the same architecture into `net`."""
  params, stats = variables["params"], variables.get("batch_stats")
  st = lambda *path: _get(stats, path)
  if isinstance(net, ResNet12):
    for i, block in enumerate(net.blocks):
      p = params[f"block{i}"]
      for j in range(3):
        _conv(block.convs[j], p[f"conv{j}"])
        _norm(block.bns[j], p[f"bn{j}"], st(f"block{i}", f"bn{j}"))
      _conv(block.shortcut_conv, p["shortcut_conv"])
      _norm(block.shortcut_bn, p["shortcut_bn"], st(f"block{i}", "shortcut_bn"))
    channels = net.blocks[-1].shortcut_bn.num_features
  elif isinstance(net, WideResNet):
    _conv(net.stem, params["stem"])
    for k, block in enumerate(net.groups):
      name = f"group{k // net.per_group}_block{k % net.per_group}"
      p = params[name]
      _conv(block.conv0, p["conv0"])
      _conv(block.conv1, p["conv1"])
      _norm(block.bn0, p["bn0"], st(name, "bn0"))
      _norm(block.bn1, p["bn1"], st(name, "bn1"))
      if block.shortcut is not None:
        _conv(block.shortcut, p["shortcut"])
    _norm(net.bn, params["bn"], st("bn"))
    channels = net.bn.num_features
  else:
    raise ValueError(f"load_from_flax knows ResNet12 and WideResNet, not {type(net).__name__}.")
  if "head" in params:
    if net.head is None:
      raise ValueError("The flax variables have a 'head'; build the torch net with num_classes.")
    _head(net, params["head"], channels)
  return net


def _get(tree, path):
  for k in path:
    if tree is None:
      return None
    tree = tree.get(k)
  return tree
