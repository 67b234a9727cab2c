"""The learner interface that the training and evaluation binaries run.

A learner is a small object around a Flax backbone with three pure methods:

- `init(key, episode) -> variables`: {'params': ..., plus model state such as
  'batch_stats'}; everything the outer loop trains or carries.
- `outer_loss(variables, episode, key, train) -> (loss, aux)`: the meta-
  training loss on one episode; `aux` holds 'accuracy' and, when training,
  the updated model state under 'model_state'.
- `predict(variables, episode, key) -> logits [N*Q, N]`: query logits after
  whatever adaptation the learner does on the support set.

Episodes are dicts with support_x [N*K, H, W, D], support_y [N*K],
query_x [N*Q, H, W, D], query_y [N*Q] (see `fsl_jax.data.episodes`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax

Variables = dict[str, Any]
Episode = dict[str, jax.Array]


class Learner(Protocol):
  name: str

  def init(self, key: jax.Array, episode: Episode) -> Variables: ...

  def outer_loss(self, variables: Variables, episode: Episode, key: jax.Array,
                 train: bool = True) -> tuple[jax.Array, dict]: ...

  def predict(self, variables: Variables, episode: Episode, key: jax.Array) -> jax.Array: ...


_REGISTRY: dict[str, Callable[..., Learner]] = {}


def register(name: str):
  def deco(factory):
    _REGISTRY[name] = factory
    return factory
  return deco


def get(name: str, **kwargs) -> Learner:
  if name not in _REGISTRY:
    raise KeyError(f"Unknown learner {name!r}; registered: {sorted(_REGISTRY)}.")
  return _REGISTRY[name](**kwargs)


def names() -> list[str]:
  return sorted(_REGISTRY)
