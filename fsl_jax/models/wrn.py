"""Wide residual networks (Zagoruyko & Komodakis, 2016); WRN-28-10 as few-shot work uses it.

WRN-d-k: a 3x3 stem conv of 16 channels, then three groups of (d - 4) / 6
pre-activation basic blocks of widths 16k, 32k, 64k (strides 1, 2, 2),
then BatchNorm, ReLU and the global average: [B, 64k]. WRN-28-10 (4 blocks
a group, widths 160-320-640) gives [B, 640], the feature width of S2M2
(Mangla et al., 2020) and the other WRN rows of few-shot tables.

A block: BN, ReLU, conv3x3 (stride), BN, ReLU, dropout, conv3x3, added to
the input; where the width or resolution changes the shortcut is a 1x1
conv (stride) of the pre-activated input, as in the authors' code. The
convolutions have no bias. Dropout (`drop_rate`; the paper's 0.3 on CIFAR,
0 by default) is active only with `train=True` and takes its key from the
'dropout' rng.

    net = models.get("wrn")                      # WRN-28-10, 36,472,784 parameters
    net = models.get("wrn", depth=10, widen=1)   # one block a group, widths 16-32-64
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fsl_jax import models
from fsl_jax.models import layers

# PyTorch's kaiming_normal_(mode='fan_out'), as the WRN code initialises its convs.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class PreActBlock(nn.Module):
  features: int
  strides: int = 1
  drop_rate: float = 0.0
  impl: str = "auto"
  bn_steps: int = 0

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool, step=0):
    conv = lambda k, s, name: layers.Conv(self.features, k, use_bias=False, impl=self.impl,
                                          strides=s, kernel_init=KAIMING_FAN_OUT, name=name)
    norm = lambda y, name: layers.batch_norm(y, train, step, self.bn_steps, name)
    act = nn.relu(norm(x_BxHxWxC, "bn0"))
    y = conv(3, self.strides, "conv0")(act)
    y = nn.relu(norm(y, "bn1"))
    y = nn.Dropout(self.drop_rate, name="dropout")(y, deterministic=not train)
    y = conv(3, 1, "conv1")(y)
    if self.strides == 1 and x_BxHxWxC.shape[-1] == self.features:
      return x_BxHxWxC + y
    return conv(1, self.strides, "shortcut")(act) + y


@models.register("wrn")
class WideResNet(nn.Module):
  """Returns [B, 64 * widen]; logits with `num_classes` (a Dense 'head').

  `bn_steps` > 0: per-step BatchNorm picked by `step` (MAML++), as Conv4.
  """
  depth: int = 28
  widen: int = 10
  drop_rate: float = 0.0
  num_classes: int | None = None
  impl: str = "auto"
  bn_steps: int = 0

  # Fields that `layers.deterministic` zeroes to switch dropout off.
  dropout_fields = ("drop_rate",)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True, step=0):
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...); "
                       f"got depth={self.depth}.")
    layers.check_dropout_rng(self, train, [self.drop_rate])
    per_group = (self.depth - 4) // 6
    x = layers.Conv(16, 3, use_bias=False, impl=self.impl, kernel_init=KAIMING_FAN_OUT,
                    name="stem")(x_BxHxWxC)
    for g, (width, strides) in enumerate(zip((16, 32, 64), (1, 2, 2))):
      for b in range(per_group):
        x = PreActBlock(width * self.widen, strides if b == 0 else 1, self.drop_rate,
                        self.impl, self.bn_steps, name=f"group{g}_block{b}")(x, train, step)
    x = nn.relu(layers.batch_norm(x, train, step, self.bn_steps, "bn"))
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, name="head")(x)
    return x
