"""Atomic, resumable checkpoints on top of orbax `CheckpointManager`.

A checkpoint holds one pytree `state` (params, optimizer state, step, RNG key
data, ...) and a small JSON `meta` dict (model name, config, architecture) so a
reader can refuse a checkpoint of another architecture before restoring it.
Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never leaves a half-written "latest" checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves `{state, meta}` every `save_every` steps, keeping the last `keep`."""

  def __init__(self, directory: str, save_every: int = 1000, keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = int(save_every)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self):
    return list(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return self.save_every > 0 and step % self.save_every == 0

  def save(self, step: int, state: Any, meta: dict | None = None,
           force: bool = False) -> bool:
    if not force and not self.should_save(step):
      return False
    if step in self._mngr.all_steps():
      return False
    state = jax.device_get(state)
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(meta or {})), force=True)
    self._mngr.wait_until_finished()
    return True

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    out = self._mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores `(state, meta)` with the structure/dtypes of `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def restore_raw(self, step: int | None = None) -> Any:
    """The saved `state` tree as stored, without a target (for evaluation)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    return self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]

  def close(self):
    self._mngr.close()
