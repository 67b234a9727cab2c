"""ResNet-12, the few-shot variant of MetaOptNet (Lee et al., 2019) and FEAT (Ye et al., 2020).

Four residual blocks of widths 64-160-320-640. Each block is three
[conv3x3 (no bias), BatchNorm, leaky ReLU 0.1] with the last leaky ReLU after
the residual add, a 1x1 conv + BatchNorm shortcut, then a 2x2 max-pool; so
84x84 images end as 5x5x640 maps and 32x32 ones as 2x2x640.

Regularisation as in MetaOptNet's and FEAT's code: after the pool, the first
two blocks apply dropout and the last two DropBlock (block size 5 for
mini-ImageNet, 2 for CIFAR-FS in MetaOptNet), both at `drop_rate` (0.1 in
both papers; 0 disables). MetaOptNet ramps DropBlock's rate linearly from 0
over its first 40,000 training batches; the backbone sees no training step,
so here the rate is fixed. `dropout` sets the first two blocks' rate apart
(None: `drop_rate`). Both are active only with `train=True` and take their
keys from the 'dropout' rng (`apply(..., rngs={'dropout': key})`); a
training-mode call without one is refused.

Features: the global average of the last map, [B, 640] (`avg_pool=True`,
FEAT), or the flattened map (`avg_pool=False`, MetaOptNet: 5*5*640 = 16000
at 84x84), in NHWC order.

    net = models.get("resnet12")                       # 12,424,320 parameters
    net = models.get("resnet12", widths=(8, 16, 24, 32), drop_rate=0.0)
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fsl_jax import models
from fsl_jax.models import layers

# PyTorch's kaiming_normal_(mode='fan_out') with its default gain sqrt(2),
# as MetaOptNet and FEAT initialise their convolutions.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.1)


class ResBlock(nn.Module):
  """3 x [conv3x3, BN, leaky ReLU] + 1x1-conv shortcut, max-pool, then dropout or DropBlock."""
  features: int
  impl: str = "auto"
  bn_steps: int = 0
  drop_rate: float = 0.0
  drop_block: bool = False    # DropBlock (else elementwise dropout) at drop_rate
  block_size: int = 5

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool, step=0):
    conv = lambda k, name: layers.Conv(self.features, k, use_bias=False, impl=self.impl,
                                       kernel_init=KAIMING_FAN_OUT, name=name)
    norm = lambda y, name: layers.batch_norm(y, train, step, self.bn_steps, name)
    y = x_BxHxWxC
    for i in range(3):
      y = norm(conv(3, f"conv{i}")(y), f"bn{i}")
      if i < 2:
        y = leaky_relu(y)
    shortcut = norm(conv(1, "shortcut_conv")(x_BxHxWxC), "shortcut_bn")
    y = layers.max_pool(leaky_relu(y + shortcut), self.impl)
    if self.drop_block:
      return layers.DropBlock(self.drop_rate, self.block_size, name="dropblock")(y, train)
    return nn.Dropout(self.drop_rate, name="dropout")(y, deterministic=not train)


@models.register("resnet12")
class ResNet12(nn.Module):
  """Returns [B, widths[-1]] (avg_pool) or flat maps; logits with `num_classes`.

  With `num_classes`, adds a linear head 'head' (the MAML-family
  classifier); with `bn_steps` > 0 every BatchNorm keeps that many sets of
  weights and statistics and `step` picks one (MAML++), as Conv4 does.
  """
  widths: tuple[int, ...] = (64, 160, 320, 640)
  drop_rate: float = 0.1
  dropout: float | None = None   # the first two blocks' rate; None: drop_rate
  block_size: int = 5
  avg_pool: bool = True
  num_classes: int | None = None
  impl: str = "auto"
  bn_steps: int = 0

  # Fields that `layers.deterministic` zeroes to switch dropout off.
  dropout_fields = ("drop_rate", "dropout")

  def _rates(self) -> list[float]:
    early = self.drop_rate if self.dropout is None else self.dropout
    n = len(self.widths)
    return [early if i < n - 2 else self.drop_rate for i in range(n)]

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True, step=0):
    if len(self.widths) < 2:
      raise ValueError(f"resnet12 needs at least 2 widths (DropBlock runs in the last two "
                       f"blocks); got widths={tuple(self.widths)}.")
    rates = self._rates()
    layers.check_dropout_rng(self, train, rates)
    x = x_BxHxWxC
    n = len(self.widths)
    for i, (features, rate) in enumerate(zip(self.widths, rates)):
      x = ResBlock(features, self.impl, self.bn_steps, rate, drop_block=i >= n - 2,
                   block_size=self.block_size, name=f"block{i}")(x, train, step)
    if self.avg_pool:
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = x.reshape((x.shape[0], -1))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, name="head")(x)
    return x
