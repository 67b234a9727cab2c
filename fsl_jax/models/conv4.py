"""Conv4 (Vinyals et al. 2016; Snell et al. 2017): 4 x [conv3x3, BN, ReLU, maxpool 2]."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fsl_jax import models
from fsl_jax.models import layers


class ConvBlock(nn.Module):
  features: int = 64
  impl: str = "auto"  # see fsl_jax.models.layers: 'cpu' gradients or XLA's
  bn_steps: int = 0   # >0: per-step BatchNorm (MAML++), picked by `step`

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool, step=0):
    x = layers.Conv(self.features, 3, impl=self.impl, name="Conv_0")(x_BxHxWxC)
    if self.bn_steps:
      x = layers.StepBatchNorm(self.bn_steps, name="BatchNorm_0")(x, train, step)
    else:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
    x = nn.relu(x)
    return layers.max_pool(x, self.impl)


@models.register("conv4")
class Conv4(nn.Module):
  """Returns flat embeddings [B, D]; 28x28 inputs give D = 64 (1x1x64).

  With `num_classes`, adds a linear head 'head' and returns logits instead
  (the MAML-family classifier). With `bn_steps` > 0 every BatchNorm keeps
  that many sets of weights and statistics and `step` picks one (MAML++).
  """
  hidden: int = 64
  num_blocks: int = 4
  num_classes: int | None = None
  impl: str = "auto"
  bn_steps: int = 0

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True, step=0):
    x = x_BxHxWxC
    for i in range(self.num_blocks):
      x = ConvBlock(self.hidden, self.impl, self.bn_steps, name=f"block{i}")(x, train, step)
    x = x.reshape((x.shape[0], -1))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, name="head")(x)
    return x
