"""The one training harness every binary runs on.

A trainer hands the harness a pure step and its initial state:

    harness = loop.Harness(config, workdir, binary="meta_train",
                           loop=loop.LoopConfig.from_config(config, steps="train.steps"),
                           resumable=("eval.",))        # before any data loads
    ...                                                  # load data, build the step
    state = harness.train(init_state, step, inputs=..., batches=..., validate=...)
    harness.finish(result)                               # results.jsonl

`step(state, batch, inputs) -> (state, metrics)` is jitted once with the
state donated. `state` is a dict with an int32 "step" entry, which the
harness increments; `inputs` are arrays passed to every step but never
donated or checkpointed (the split's images, a frozen base model); `batch` is
`batches(step)` (host data) or, without `batches`, the key
`fold_in(rng, step)`. Metrics are scalars, averaged over the steps since
the last log line; their running sums live in the checkpointed state, so a
resumed run logs exactly what an uninterrupted one does.

The harness owns everything around the step: the config-value checks
(naming the real keys), a workdir check before any data loads, resuming from
the newest readable checkpoint after refusing another binary's or a changed
config's (an allow-list of keys that may change), SIGTERM/SIGINT ->
checkpoint and exit 143, metrics.jsonl + TensorBoard, the progress line with
an ETA on stderr, periodic checkpoints and validation, and the final result
appended to results.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from fsl_jax.train import metrics as metrics_lib
from fsl_jax.train.checkpoint import Checkpointer


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


# ------------------------------------------------------------------ config

def get_key(config, dotted: str, default=None):
  """config["a.b.c"] for a ConfigDict / dict, or `default` when absent."""
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return default
  return node


def _int_key(config, key: str, low: int, what: str, default=None) -> int:
  value = get_key(config, key, default)
  if value is None:
    raise ConfigError(f"The config has no {key}; set --config.{key}={what}.")
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"{key}={value!r} must be an integer; set --config.{key}={what}.")
  if value < low:
    raise ConfigError(f"{key}={value} must be at least {low}; set --config.{key}={what}.")
  return value


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How long to train and how often to log, checkpoint and validate."""
  steps: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int = 3
  val_every: int = 0
  steps_key: str = "train.steps"

  @classmethod
  def from_config(cls, config, steps: str = "train.steps") -> "LoopConfig":
    """Reads and checks the keys; `steps` names this binary's step-count key."""
    return cls(
        steps=_int_key(config, steps, 1, "N (training steps, at least 1)"),
        log_every=_int_key(config, "log_every", 1, "N (log every N steps)"),
        checkpoint_every=_int_key(config, "checkpoint_every", 1, "N (checkpoint every N steps)"),
        keep_checkpoints=_int_key(config, "keep_checkpoints", 1, "N (checkpoints kept, >= 1)", 3),
        val_every=_int_key(config, "val_every", 0, "N (validate every N steps, 0: never)", 0),
        steps_key=steps)


def config_dict(config) -> dict:
  """A ConfigDict as plain JSON values (what checkpoints and config.json hold)."""
  return json.loads(config.to_json_best_effort())


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# Keys that never change a run's trajectory: how often it logs, checkpoints
# and validates, where it finds its data.
ALWAYS_RESUMABLE = ("log_every", "checkpoint_every", "keep_checkpoints", "val_every",
                    "val_episodes", "data.data_dir", "data.download", "data.cache_dir")


def config_changes(saved: dict, current: dict, resumable: Iterable[str]) -> list[str]:
  """'key: old -> new' for every key that differs and may not change on resume."""
  allowed = tuple(ALWAYS_RESUMABLE) + tuple(resumable)
  old, new = _flat(saved), _flat(current)
  keys = sorted(k for k in set(old) | set(new)
                if old.get(k) != new.get(k) and not k.startswith(allowed))
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


# ----------------------------------------------------------------- workdir

def check_writable_dir(path: str, flag: str = "--workdir") -> str:
  """abspath(path), created; refuses a file or a directory this process cannot write."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"{flag}={path} is a file, not a directory; pass a directory.")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
      pass
  except OSError as e:
    raise ConfigError(f"{flag}={path} is not writable ({e.strerror}); pass a directory you "
                      "can write to.") from None
  return path


def append_result(workdir: str, result: dict) -> None:
  with open(os.path.join(workdir, "results.jsonl"), "a") as f:
    f.write(json.dumps(result) + "\n")


# ------------------------------------------------------------- preemption

class _Preemption:
  """Turns SIGTERM and SIGINT into a flag so the loop can checkpoint and exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None
    self._old = {}
    for sig in self.SIGNALS:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


# ------------------------------------------------------------------ the loop

StepFn = Callable[[Any, Any, Any], tuple[Any, dict]]


class Harness:
  """Resume, preemption, logging, checkpoints, validation and results for one run."""

  def __init__(self, config, workdir: str, *, binary: str, loop: LoopConfig,
               resumable: Iterable[str] = (), meta: dict | None = None, rng: Any = 0):
    self.config, self.binary, self.loop = config, binary, loop
    self.workdir = check_writable_dir(workdir)
    # Without host batches, step s gets fold_in(rng, s): rng is a key or an int seed.
    self.rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    self.meta = {"binary": binary, "config": config_dict(config), **(meta or {})}
    self.ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), loop.checkpoint_every,
                             loop.keep_checkpoints)
    self.start = 0
    if self.ckpt.latest_step() is not None:
      self._check_resumable(tuple(resumable))
    self.step_fn = None  # the jitted step, once train() built it

  def _check_resumable(self, resumable) -> None:
    saved = self.ckpt.restore_meta()
    other = saved.get("binary", "meta_train")
    if other != self.binary:
      raise ConfigError(f"{self.workdir} holds a checkpoint of {other}, not {self.binary}; "
                        "use another --workdir.")
    changes = config_changes(saved.get("config", {}), self.meta["config"], resumable)
    if changes:
      raise ConfigError(
          f"Cannot resume {self.workdir}: the config differs from the one it was trained with "
          f"({', '.join(changes[:6])}). Rerun with the original config (see "
          f"{self.workdir}/config.json) or use a new --workdir.")
    last = self.ckpt.latest_step()
    if last > self.loop.steps:
      raise ConfigError(
          f"{self.loop.steps_key}={self.loop.steps} is below the step of the latest checkpoint "
          f"in {self.ckpt.directory} ({last}); set --config.{self.loop.steps_key}={last} or "
          "more, or use a new --workdir.")

  # ------------------------------------------------------------ training

  def _metric_zeros(self, step, state, batch, inputs):
    _, shapes = jax.eval_shape(step, state, batch, inputs)
    return {k: jnp.zeros((), jnp.float32) for k in shapes}

  def train(self, init_state: dict, step: StepFn, *, inputs: Any = None,
            batches: Callable[[int], Any] | None = None,
            validate: Callable[[Any], dict] | None = None, state_sharding=None,
            items_per_step: float = 0, items: str = "examples") -> Any:
    """Runs steps (resuming) up to loop.steps; returns the final state."""
    loop = self.loop
    batch_at = batches or (lambda s: jax.random.fold_in(self.rng, s))
    zeros = self._metric_zeros(step, init_state, batch_at(0), inputs)
    carry = {"state": init_state, "metric_sums": zeros,
             "metric_count": jnp.zeros((), jnp.int32)}
    if self.ckpt.latest_step() is not None:
      carry, _, _ = self.ckpt.restore(carry)
      self.start = int(carry["state"]["step"])
      metrics_lib.log("Resumed from step %d in %s", self.start, self.ckpt.directory)
    if state_sharding is not None:
      carry = jax.device_put(carry, state_sharding)
    with open(os.path.join(self.workdir, "config.json"), "w") as f:
      json.dump(self.meta["config"], f, indent=2)

    def wrapped(carry, batch, inputs):
      state, metrics = step(carry["state"], batch, inputs)
      state = {**state, "step": carry["state"]["step"] + 1}
      sums = {k: carry["metric_sums"][k] + jnp.asarray(v, jnp.float32)
              for k, v in metrics.items()}
      return {"state": state, "metric_sums": sums, "metric_count": carry["metric_count"] + 1}

    self.step_fn = jax.jit(wrapped, donate_argnums=0,
                           **({"out_shardings": state_sharding} if state_sharding else {}))
    writer = metrics_lib.MetricWriter(self.workdir, resume_step=self.start)
    progress = metrics_lib.Progress(self.start, loop.steps)
    preempt = _Preemption()
    try:
      for s in range(self.start + 1, loop.steps + 1):
        carry = self.step_fn(carry, batch_at(s - 1), inputs)
        if s % loop.log_every == 0 or s == loop.steps:
          n = int(carry["metric_count"])
          row = {k: float(v) / n for k, v in carry["metric_sums"].items()}
          carry = {**carry, "metric_sums": jax.tree.map(jnp.zeros_like, carry["metric_sums"]),
                   "metric_count": jnp.zeros_like(carry["metric_count"])}
          rate = progress.rate(s)
          if items_per_step:
            row[f"{items}_per_s"] = rate * items_per_step
          else:
            row["steps_per_s"] = rate
          writer.write(s, row)
          metrics_lib.log("step %d/%d %s  ETA %s", s, loop.steps,
                          "  ".join(f"{k} {v:.4g}" for k, v in row.items()), progress.eta(s))
        # Checkpoint before validating: validation may compile, and a SIGTERM
        # sent to the whole process group also kills the compiler (ptxas) and
        # fails the compilation; the state is saved and intact either way.
        self.ckpt.save(s, carry, self.meta, force=s == loop.steps)
        if validate and loop.val_every and s % loop.val_every == 0 and not preempt.requested:
          try:
            row = validate(carry["state"])
          except Exception:  # pylint: disable=broad-except
            if not preempt.requested:
              raise
            metrics_lib.log("%s during validation at step %d: skipped it.", preempt.requested, s)
          else:
            writer.write(s, row)
            metrics_lib.log("step %d %s", s, "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
        if preempt.requested:
          self.ckpt.save(s, carry, self.meta, force=True)
          metrics_lib.log("%s: saved step %d; rerun the same command to resume.",
                          preempt.requested, s)
          raise SystemExit(143)
    finally:
      preempt.restore()
      writer.close()
      self.ckpt.close()
    return carry["state"]

  def last_metric(self, key: str) -> float | None:
    """The last logged value of `key` (a mean over the last log interval), if any."""
    value = None
    with open(os.path.join(self.workdir, "metrics.jsonl")) as f:
      for line in f:
        value = json.loads(line).get(key, value)
    return value

  def finish(self, result: dict) -> dict:
    """Appends `result` (with the final step) to results.jsonl and returns it."""
    append_result(self.workdir, {**result, "step": self.loop.steps})
    return result
