"""Multi-process (multi-host) runs: start-up, global arrays, process-0 writes.

A job over several hosts runs the same command on every host (a TPU pod's
workers, a Slurm array's tasks, or processes started by hand). Each process
calls `initialize(...)` before anything touches a device; afterwards
`jax.devices()` lists every process's devices, the training mesh spans all of
them, and the jitted step runs as one program.

    initialize()                                     # auto: TPU pod / Slurm / OpenMPI / env
    initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # plain clusters, localhost

The harness and the meta-trainer use the rest:
  * `put(tree, sharding)` builds global arrays from each process's local data
    (`jax.make_array_from_process_local_data`): with a replicated sharding
    every process passes the whole value; with P('data') each passes its own
    rows, `local_rows(sharding, n)`. One process: `jax.device_put`.
  * `to_local(tree)`: a replicated global array's local copy, so evaluation
    and host code run on each process's own devices.
  * `any_process(flag)`: a preemption signal that reached one process stops
    them all at the same step.
  * `is_primary()`: only process 0 writes metrics, TensorBoard, config.json
    and results.jsonl; orbax checkpoints are written by all processes
    together.

On CPU (tests, laptops) processes talk through gloo, so a two-process run on
localhost exercises the same code as a pod.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

# Environments whose launcher starts one process per host; jax.distributed's
# own cluster detection then fills in the coordinator and ranks.
_CLUSTER_HINTS = (
    ("TPU pod", lambda e: "," in e.get("TPU_WORKER_HOSTNAMES", "")),
    ("Slurm", lambda e: int(e.get("SLURM_NTASKS", e.get("SLURM_NPROCS", "1")) or 1) > 1),
    ("OpenMPI", lambda e: int(e.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1),
)


def detect_cluster(environ=None) -> str | None:
  """The multi-process launcher this process runs under ('TPU pod', 'Slurm', ...), or None."""
  environ = os.environ if environ is None else environ
  for name, test in _CLUSTER_HINTS:
    try:
      if test(environ):
        return name
    except ValueError:
      continue
  return None


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               mode: str = "auto", environ=None) -> str | None:
  """Starts jax.distributed when asked or detected; returns how (None: one process).

  `mode`: 'auto' (explicit arguments, FSL_JAX_DISTRIBUTED=1 or a detected
  TPU pod / Slurm / OpenMPI job), 'on' (always; JAX detects the cluster) or
  'off'. With `coordinator` ('host:port' of process 0), `num_processes` and
  `process_id` are required.
  """
  environ = os.environ if environ is None else environ
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed={mode!r}: use auto, on or off.")
  explicit = bool(coordinator) or num_processes > 0 or process_id >= 0
  if explicit:
    if not (coordinator and num_processes > 0 and 0 <= process_id < num_processes):
      raise ValueError(
          "--coordinator, --num_processes and --process_id go together: e.g. "
          "--coordinator=HOST0:1234 --num_processes=2 --process_id=0 on the first process and "
          f"--process_id=1 on the second (got {coordinator!r}, {num_processes}, {process_id}).")
    if ":" not in coordinator:
      raise ValueError(f"--coordinator={coordinator!r} must be HOST:PORT of process 0.")
  if mode == "off":
    if explicit:
      raise ValueError("--distributed=off contradicts --coordinator/--num_processes/"
                       "--process_id; drop one of them.")
    return None
  how = ("flags" if explicit else "on" if mode == "on"
         else "FSL_JAX_DISTRIBUTED=1" if environ.get("FSL_JAX_DISTRIBUTED") == "1"
         else detect_cluster(environ))
  if how is None:
    return None
  # CPU processes need a collectives backend to run one program together.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  return how


def is_primary() -> bool:
  return jax.process_index() == 0


def multi_process() -> bool:
  return jax.process_count() > 1


def local_rows(sharding, n: int) -> slice:
  """The rows [lo, hi) of an n-row array that `sharding` places on this process's devices.

  They must be contiguous (true of a 1-D mesh over `jax.devices()`, which
  lists devices process by process).
  """
  if not multi_process():
    return slice(0, n)
  spans = {(idx[0].start or 0, n if idx[0].stop is None else idx[0].stop)
           for idx in sharding.addressable_devices_indices_map((n,)).values()}
  lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != hi - lo and len(spans) > 1:
    raise ValueError(f"this process's rows of the {n}-row batch are not contiguous: {spans}")
  return slice(lo, hi)


def put(tree: Any, sharding) -> Any:
  """Global arrays from process-local data (every leaf with `sharding`, or a matching tree)."""
  if not multi_process():
    return jax.device_put(tree, sharding)
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: _global(x, sharding), tree)
  return jax.tree.map(_global, tree, sharding)


def _global(x, sharding):
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(x)
    data = _global(np.asarray(jax.random.key_data(x)), sharding)
    return jax.random.wrap_key_data(data, impl=impl)
  return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def to_local(tree: Any) -> Any:
  """Each replicated global array as this process's copy (one process: unchanged)."""
  if not multi_process():
    return tree

  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError(f"to_local needs a replicated array, not one sharded as {x.sharding}")
      return x.addressable_data(0)
    return x

  return jax.tree.map(local, tree)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (one process: `flag`)."""
  if not multi_process():
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
  return bool(np.asarray(flags).any())
