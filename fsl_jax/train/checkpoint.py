"""Atomic, resumable checkpoints on top of orbax `CheckpointManager`.

A checkpoint holds one pytree `state` (params, optimizer state, step, ...)
and a small JSON `meta` dict (which binary wrote it, its config, the
architecture) so a reader can refuse a checkpoint of another kind before
restoring it. Orbax writes each step into a temporary directory and renames
it when complete, so an interrupted save never leaves a half-written "latest"
checkpoint. A checkpoint damaged afterwards (a truncated copy, a full disk) is
moved aside to `STEP.unreadable` with a warning and the newest readable one is
used instead; nothing is deleted.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp

from fsl_jax.train import metrics as metrics_lib


class CheckpointError(ValueError):
  """No readable checkpoint where one was expected (the message names the directory)."""


class Checkpointer:
  """Saves `{state, meta}` every `save_every` steps, keeping the last `keep`."""

  def __init__(self, directory: str, save_every: int = 1000, keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = int(save_every)
    self._keep = int(keep)
    self._mngr = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return self.save_every > 0 and step % self.save_every == 0

  def save(self, step: int, state: Any, meta: dict | None = None, force: bool = False) -> bool:
    if not force and not self.should_save(step):
      return False
    if step in self._mngr.all_steps():
      return False
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(state)):
      state = jax.device_get(state)  # else: global arrays, written by every process together
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})), force=True)
    self._mngr.wait_until_finished()
    return True

  # ------------------------------------------------------------ reading

  def _readable(self, read: Callable[[int], Any], step: int | None, quarantine: bool):
    """(step, read(step)) for `step`, or the newest readable step when None."""
    if step is not None:
      if step not in self.all_steps():
        raise CheckpointError(f"No checkpoint of step {step} in {self.directory}; it has "
                              f"steps {self.all_steps()}.")
      return step, read(step)
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    errors = []
    for s in reversed(steps):
      try:
        return s, read(s)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
        errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        where = self._move_aside(s) if quarantine else None
        metrics_lib.log("warning: checkpoint step %d in %s is unreadable (%s)%s; trying an "
                        "older one.", s, self.directory, errors[-1],
                        f", moved to {where}" if where else "")
    raise CheckpointError(
        f"No readable checkpoint in {self.directory} ({'; '.join(errors)}). Move that directory "
        "away to start over, or restore it from a backup.")

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst, n = src + ".unreadable", 1
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.unreadable{n}"
    self._mngr.close()
    os.replace(src, dst)
    self._mngr = self._open()
    return dst

  def restore_meta(self, step: int | None = None) -> dict:
    """The `meta` of `step` (default: the newest checkpoint whose meta reads)."""
    return dict(self._readable(self._read_meta, step, quarantine=False)[1])

  def _read_meta(self, step: int) -> dict:
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """(state, meta, step) with the structure/dtypes of `target`.

    Without `step`, the newest readable checkpoint; unreadable newer ones are
    moved aside with a warning (a run resumed from the older one would
    otherwise never overwrite them).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

    def read(s):
      out = self._mngr.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      return out["state"], dict(out["meta"])

    s, (state, meta) = self._readable(read, step, quarantine=step is None)
    return state, meta, s

  def restore_raw(self, step: int | None = None) -> tuple[Any, dict, int]:
    """(state as stored, meta, step) without a target (for evaluation).

    The arrays land on this process's first device, whatever devices or
    processes wrote them (a multi-host run's checkpoint reads on a laptop).
    """
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def read(s):
      stored = self._mngr.item_metadata(s)["state"]
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
          if hasattr(m, "shape") and hasattr(m, "dtype") else m, stored)
      out = self._mngr.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      return out["state"], dict(out["meta"])

    s, (state, meta) = self._readable(read, step, quarantine=False)
    return state, meta, s

  def close(self):
    self._mngr.close()
