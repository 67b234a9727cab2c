"""Metric writers: JSON lines and TensorBoard events (tensorboardX, no TensorFlow)."""

from __future__ import annotations

import json
import os
import sys
import time

from absl import logging


def log(msg: str, *args) -> None:
  """Progress lines on stderr, independent of absl's (noisy) INFO level."""
  print(time.strftime("%H:%M:%S ") + (msg % args if args else msg), file=sys.stderr, flush=True)


class MetricWriter:
  """Appends `{"step": s, ...}` to DIR/metrics.jsonl and TensorBoard scalars.

  On resume from step s, lines logged after s by the interrupted run are
  dropped first, so the file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True,
               enabled: bool = True):
    """`enabled=False` writes nothing (a multi-process run's processes other than 0)."""
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= resume_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
      except ImportError:
        logging.warning("tensorboardX not installed: no TensorBoard events.")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


class Progress:
  """Steps/s and an ETA for log lines."""

  def __init__(self, start_step: int, total_steps: int):
    self.start_step, self.total = start_step, total_steps
    self.t0 = time.time()
    self.last_t, self.last_step = self.t0, start_step

  def rate(self, step: int) -> float:
    now = time.time()
    r = (step - self.last_step) / max(now - self.last_t, 1e-9)
    self.last_t, self.last_step = now, step
    return r

  def eta(self, step: int) -> str:
    done = step - self.start_step
    if done <= 0:
      return "?"
    s = int((time.time() - self.t0) / done * (self.total - step))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
