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
Metric learners (ProtoNet, MatchingNet, R2D2, Baseline++) share
`fsl_jax.meta.metric.MetricLearner`: one embedding of the episode, and a
new one supplies only its query logits.

Learners are registered by name in `LEARNERS` (`register`, `get`, `names`).

Episodes are dicts with support_x [N*K, H, W, D], support_y [N*K],
query_x [N*Q, H, W, D], query_y [N*Q] (see `fsl_jax.data.episodes`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax

from fsl_jax.registry import Registry

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


# Tasks per gradient chunk that `task_chunk` picks on CPU.
CPU_TASK_CHUNK = 2


def task_chunk(learner, batching: str, tasks: int, chunk: int = 0) -> int:
  """Tasks per gradient chunk when a device's `tasks` tasks are vmapped.

  0 means one chunk of all of them. Otherwise the trainer takes the
  meta-gradient of `chunk` vmapped tasks at a time in a loop and averages
  (the same mean gradient, with one chunk's activations live at a time).
  On CPU a whole vmapped meta-batch of a per-task-weight learner is slow
  (its activations stream through memory): second-order MAML, 5-way 1-shot
  15-query tasks, 5 inner steps, meta-batch 32, ran 3.3 tasks/s in one
  chunk, 5.7 in chunks of 8, 6.5 of 4, 7.2 of 2 and 6.9 of 1; at the cpu60
  shape (3 queries, 1 inner step, meta-batch 8) 24 in one chunk and 34-39
  in chunks of 2 (BENCHMARKS.md). `chunk` > 0 asks for that many (it must
  divide `tasks`); 0 picks CPU_TASK_CHUNK (or 1 for an odd count) on CPU for
  learners with `per_task_weights`, and one chunk elsewhere. A loop
  (`batching='map'`) takes no chunks.
  """
  if batching != "vmap":
    return 0
  if chunk:
    if chunk < 0 or tasks % chunk:
      raise ValueError(f"train.task_chunk={chunk} must divide the {tasks} tasks each device "
                       "runs per step; set it to a divisor or to 0 (automatic).")
    return 0 if chunk == tasks else chunk
  if not getattr(learner, "per_task_weights", False) or jax.default_backend() != "cpu":
    return 0
  best = CPU_TASK_CHUNK if tasks % CPU_TASK_CHUNK == 0 else 1
  return 0 if best >= tasks else best


def map_tasks(fn: Callable, batching: str) -> Callable:
  """fn over the leading (task) axis of all its arguments, by vmap or lax.map."""
  if batching == "vmap":
    return jax.vmap(fn)
  return lambda *args: jax.lax.map(lambda a: fn(*a), args)


# Learner factories by name (the classes, called with `model=` and the learner's options).
LEARNERS = Registry("learner")


def register(name: str, factory: Callable[..., Learner] | None = None):
  """`@register("name")` on a learner class (a duplicate name is refused)."""
  return LEARNERS.register(name, factory)


def get(name: str, **kwargs) -> Learner:
  """The learner `name` built with `kwargs`; an unknown name or option is a ValueError."""
  return LEARNERS.build(name, **kwargs)


def names() -> list[str]:
  return LEARNERS.names()
