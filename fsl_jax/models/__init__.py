"""Backbones, chosen by name from a small registry.

    model = models.get("conv4", **kwargs)   # a flax.linen.Module
    models.register("my_net")(MyNet)        # later backbones join the same way
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = factory
    return factory
  return deco


def get(name: str, **kwargs) -> nn.Module:
  if name not in _REGISTRY:
    raise KeyError(f"Unknown model {name!r}; registered: {sorted(_REGISTRY)}.")
  return _REGISTRY[name](**kwargs)


def names() -> list[str]:
  return sorted(_REGISTRY)


from fsl_jax.models import conv4  # noqa: E402,F401  (registers itself)
