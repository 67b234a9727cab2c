"""The learner interface that the training and evaluation binaries run.

A learner is a small object around a Flax backbone with three pure methods:

- `init(key, episode) -> variables`: {'params': ..., plus model state such as
  'batch_stats'}; everything the outer loop trains or carries.
- `outer_loss(variables, episode, key, train) -> (loss, aux)`: the meta-
  training loss on one episode; `aux` holds 'accuracy' and, when training,
  the updated model state under 'model_state'.
- `predict(variables, episode, key) -> logits [N*Q, N]`: query logits after
  whatever adaptation the learner does on the support set.

Optional attributes the trainer reads: `per_task_weights` (True when the
learner adapts weights per task, see `task_batching`) and `uses_step` (True
when `outer_loss` takes the training step as `step=`, for schedules inside
the loss such as MAML++'s annealing). Gradient-based learners share
`fsl_jax.meta.maml.GradientLearner`, whose `adapt(variables, x, y, steps)`
returns fast weights; a new one overrides a hook or two (see docs/learners.md).

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


def task_batching(learner, batching: str = "auto") -> str:
  """'vmap' or 'map': how a meta-batch of tasks runs.

  Learners that adapt per-task weights (`per_task_weights = True`, the MAML
  family) turn vmapped convolutions into grouped convolutions, which XLA on
  CPU runs several times slower than a loop; 'auto' therefore loops
  (`lax.map`) for them on CPU unless their backbone convolves by im2col
  matmuls (`impl='im2col'`, the CPU default of the MAML family, which vmaps
  into batched matmuls), and vmaps everywhere else.
  """
  if batching == "auto":
    per_task = getattr(learner, "per_task_weights", False)
    impl = getattr(getattr(learner, "net", None), "impl", None)
    grouped = per_task and jax.default_backend() == "cpu" and impl != "im2col"
    return "map" if grouped else "vmap"
  if batching not in ("vmap", "map"):
    raise ValueError(f"Unknown task batching {batching!r}; use auto, vmap or map.")
  return batching


def map_tasks(fn: Callable, batching: str) -> Callable:
  """fn over the leading (task) axis of all its arguments, by vmap or lax.map."""
  if batching == "vmap":
    return jax.vmap(fn)
  return lambda *args: jax.lax.map(lambda a: fn(*a), args)


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
