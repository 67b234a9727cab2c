"""Backbones, chosen by name from a registry.

    model = models.get("conv4", **kwargs)   # a flax.linen.Module (also resnet12, wrn, ...)
    models.register("my_net")(MyNet)        # later backbones join the same way

An unknown name or option is a ValueError naming the close names or options
(`fsl_jax.registry.Registry`); registering a taken name is refused.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from fsl_jax.registry import Registry

# Backbone factories by name (Flax module classes, called with the model's options).
MODELS = Registry("model")


def register(name: str, factory: Callable[..., nn.Module] | None = None):
  """`@register("name")` on a backbone class (a duplicate name is refused)."""
  return MODELS.register(name, factory)


def get(name: str, **kwargs) -> nn.Module:
  """The backbone `name` built with `kwargs`."""
  return MODELS.build(name, **kwargs)


def names() -> list[str]:
  return MODELS.names()


from fsl_jax.models import conv4  # noqa: E402,F401  (registers itself)
from fsl_jax.models import resnet12  # noqa: E402,F401
from fsl_jax.models import wrn  # noqa: E402,F401
from fsl_jax.models import mobilenet  # noqa: E402,F401
from fsl_jax.models import efficientnet  # noqa: E402,F401
from fsl_jax.models import mobilenet_v3  # noqa: E402,F401
from fsl_jax.models import resnet  # noqa: E402,F401
from fsl_jax.models import vit  # noqa: E402,F401
from fsl_jax.models import text_backbone  # noqa: E402,F401  (bert_text: packed token ids)
# Last: registers each pretrained weight file's name as a backbone (its input step included).
from fsl_jax.models import pretrained  # noqa: E402,F401
