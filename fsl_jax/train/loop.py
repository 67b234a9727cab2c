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
`fold_in(rng, step)` (folded in inside the jitted step, from the state's
step counter). Metrics are scalars, averaged over the steps since the last
log line; their running sums live in the checkpointed state, so a resumed
run logs exactly what an uninterrupted one does.

The harness owns everything around the step: the config-value checks
(naming the real keys), a workdir check before any data loads, resuming from
the newest readable checkpoint after refusing another binary's or a changed
config's (an allow-list of keys that may change), SIGTERM/SIGINT ->
checkpoint and exit 143, metrics.jsonl + TensorBoard, the progress line with
an ETA on stderr, periodic checkpoints and validation, and the final result
appended to results.jsonl.

Run hygiene for batch jobs:
  * `configure_jax()` (called by the harness, the meta-trainer and every
    binary's start-up) turns `jax_threefry_partitionable` on, so an older
    JAX or a user's flag cannot change the episodes a seed draws; the run's
    checkpoint metadata records it with the JAX version.
  * The step loop makes no implicit transfers: host batches go to the
    device with `jax.device_put`, logged metrics come back with
    `jax.device_get`, sums are zeroed by a jitted function. With
    `FSL_JAX_TRANSFER_GUARD=disallow` (any `jax.transfer_guard` level) the
    loop runs under that guard, so an implicit transfer added to the hot
    path fails loudly instead of stalling a TPU job; the host data
    pipeline, validation and checkpoints run outside it.
  * `profile_steps = "A:B"` writes a `jax.profiler` trace of the steps that
    take the step counter from A to B (progress lines `step A+1` .. `step
    B`; `0:N` includes the first step's compilation) to WORKDIR/profile, on
    process 0; view it with TensorBoard's profile plugin or Perfetto.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import tempfile
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from fsl_jax import distributed
from fsl_jax.train import metrics as metrics_lib
from fsl_jax.train import options
from fsl_jax.train.checkpoint import Checkpointer


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


# ------------------------------------------------------------------ jax

def configure_jax() -> dict:
  """Turns `jax_threefry_partitionable` on; returns the facts a run records.

  JAX's default since 0.5.0, and what every key and episode of fsl_jax was
  drawn with: with it off (an older JAX, JAX_THREEFRY_PARTITIONABLE=0, a
  user's config update) `jax.random.split` and the samplers return other
  numbers, so the same seed would draw other episodes. A JAX whose flag is
  gone has only the partitionable generator.
  """
  try:
    was_on = bool(jax.config.jax_threefry_partitionable)
  except AttributeError:
    return {"version": jax.__version__, "threefry_partitionable": True}
  if not was_on:
    metrics_lib.log("jax_threefry_partitionable was off (an older JAX or a flag): turned it on; "
                    "fsl_jax's seeds draw their episodes with it.")
    jax.config.update("jax_threefry_partitionable", True)
  return {"version": jax.__version__, "threefry_partitionable": True}


# The env var that runs the step loop under `jax.transfer_guard(level)`.
TRANSFER_GUARD_ENV = "FSL_JAX_TRANSFER_GUARD"
TRANSFER_GUARD_LEVELS = ("allow", "log", "disallow", "log_explicit", "disallow_explicit")


def transfer_guard_level() -> str:
  """$FSL_JAX_TRANSFER_GUARD, checked ('' when unset)."""
  level = os.environ.get(TRANSFER_GUARD_ENV, "").strip()
  if level and level not in TRANSFER_GUARD_LEVELS:
    raise ConfigError(f"{TRANSFER_GUARD_ENV}={level!r}: use one of "
                      f"{', '.join(TRANSFER_GUARD_LEVELS)}, or unset it.")
  return level


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


def parse_profile_steps(value, steps: int, steps_key: str = "train.steps"
                        ) -> tuple[int, int] | None:
  """profile_steps 'A:B' -> (A, B) with 0 <= A < B <= steps; '' -> None."""
  if value is None or str(value).strip() == "":
    return None
  fix = (f"set --config.profile_steps=A:B with 0 <= A < B <= {steps} ({steps_key}), e.g. "
         "10:12 traces steps 11 and 12, or '' for no trace")
  m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(value))
  if not m:
    raise ConfigError(f"profile_steps={value!r} is not A:B; {fix}.")
  a, b = int(m.group(1)), int(m.group(2))
  if b <= a:
    raise ConfigError(f"profile_steps={value!r}: B={b} must be above A={a}; {fix}.")
  if b > steps:
    raise ConfigError(f"profile_steps={value!r} ends after the run's last step ({steps_key}="
                      f"{steps}); {fix}.")
  return a, b


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How long to train, how often to log, checkpoint and validate, which steps to trace."""
  steps: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int = 3
  val_every: int = 0
  steps_key: str = "train.steps"
  profile_steps: tuple[int, int] | None = None  # (A, B): trace the counter going A -> B

  @classmethod
  def from_config(cls, config, steps: str = "train.steps") -> "LoopConfig":
    """Reads and checks the keys; `steps` names this binary's step-count key."""
    n = _int_key(config, steps, 1, "N (training steps, at least 1)")
    return cls(
        steps=n,
        log_every=_int_key(config, "log_every", 1, "N (log every N steps)"),
        checkpoint_every=_int_key(config, "checkpoint_every", 1, "N (checkpoint every N steps)"),
        keep_checkpoints=_int_key(config, "keep_checkpoints", 1, "N (checkpoints kept, >= 1)", 3),
        val_every=_int_key(config, "val_every", 0, "N (validate every N steps, 0: never)", 0),
        steps_key=steps,
        profile_steps=parse_profile_steps(get_key(config, "profile_steps", ""), n, steps))


def config_dict(config) -> dict:
  """A ConfigDict as plain JSON values (what checkpoints and config.json hold)."""
  return json.loads(config.to_json_best_effort())


# Keys that never change a run's trajectory: how often it logs, checkpoints
# and validates, which steps it traces, where it finds its data.
ALWAYS_RESUMABLE = ("log_every", "checkpoint_every", "keep_checkpoints", "val_every",
                    "val_episodes", "profile_steps", "data.data_dir", "data.download",
                    "data.cache_dir")


def config_changes(saved: dict, current: dict, resumable: Iterable[str]) -> list[str]:
  """'key: old -> new' for every key that differs and may not change on resume."""
  allowed = tuple(ALWAYS_RESUMABLE) + tuple(resumable)
  old, new = options.flatten(saved), options.flatten(current)
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
  if not distributed.is_primary():  # one row per run, not per process
    return
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
    jax_facts = configure_jax()  # before anything draws a key
    self.config, self.binary, self.loop = config, binary, loop
    self.transfer_guard = transfer_guard_level()
    self.workdir = check_writable_dir(workdir)
    # Without host batches, step s gets fold_in(rng, s): rng is a key or an int seed.
    self.rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    self.meta = {"binary": binary, "config": config_dict(config), **(meta or {}),
                 "jax": jax_facts}
    self.ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), loop.checkpoint_every,
                             loop.keep_checkpoints)
    self.start = 0
    if self.ckpt.latest_step() is not None:
      self._check_resumable(tuple(resumable))
    self.step_fn = None  # the jitted step, once train() built it
    self.multi = distributed.multi_process()

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
            batch_sharding=None, items_per_step: float = 0,
            items: str = "examples") -> Any:
    """Runs steps (resuming) up to loop.steps; returns the final state.

    Host batches and the run key go to the device explicitly, with
    `state_sharding` when given (a replicated sharding: the step shards its
    episodes itself) or to the default device. `batch_sharding` (a sharding
    or a tree of them matching a batch) places host batches instead; over
    several processes each process's `batches(s)` then holds only its own
    rows (`distributed.local_rows`) and the global batch is assembled from
    them. The returned state is this process's copy (`distributed.to_local`).
    """
    loop = self.loop
    if batches:
      where = batch_sharding if batch_sharding is not None else state_sharding
      batch_at = lambda s: distributed.put(batches(s), where)
    else:
      rng = distributed.put(self.rng, state_sharding)
      batch_at = lambda s: rng
    zeros = self._metric_zeros(step, init_state, batch_at(0), inputs)  # global shapes
    carry = {"state": init_state, "metric_sums": zeros,
             "metric_count": jnp.zeros((), jnp.int32)}
    if state_sharding is not None:  # restored straight into the shardings (every process)
      carry = distributed.put(carry, state_sharding)
    if self.ckpt.latest_step() is not None:
      carry, _, _ = self.ckpt.restore(carry)
      self.start = int(jax.device_get(distributed.to_local(carry["state"]["step"])))
      metrics_lib.log("Resumed from step %d in %s", self.start, self.ckpt.directory)
    primary = distributed.is_primary()  # only process 0 writes files other than checkpoints
    if primary:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        json.dump(self.meta["config"], f, indent=2)

    def harness_step(carry, batch, inputs):
      if batches is None:  # the run key: step s (counter s - 1 -> s) draws fold_in(rng, s - 1)
        batch = jax.random.fold_in(batch, carry["state"]["step"])
      state, metrics = step(carry["state"], batch, inputs)
      state = {**state, "step": carry["state"]["step"] + 1}
      sums = {k: carry["metric_sums"][k] + jnp.asarray(v, jnp.float32)
              for k, v in metrics.items()}
      return {"state": state, "metric_sums": sums, "metric_count": carry["metric_count"] + 1}

    def zero_metrics(sums, count):
      return jax.tree.map(jnp.zeros_like, sums), jnp.zeros_like(count)

    shardings = {"out_shardings": state_sharding} if state_sharding else {}
    self.step_fn = jax.jit(harness_step, donate_argnums=0, **shardings)
    zero_metrics = jax.jit(zero_metrics, **shardings)  # on device: no host-to-device copy
    guard = ((lambda: jax.transfer_guard(self.transfer_guard)) if self.transfer_guard
             else contextlib.nullcontext)
    profile = loop.profile_steps if jax.process_index() == 0 else None
    if profile and self.start >= profile[1]:
      metrics_lib.log("profile_steps=%d:%d: the run starts at step %d, past it; no trace.",
                      *profile, self.start)
    tracing = False
    writer = metrics_lib.MetricWriter(self.workdir, resume_step=self.start, enabled=primary)
    progress = metrics_lib.Progress(self.start, loop.steps)
    preempt = _Preemption()
    try:
      for s in range(self.start + 1, loop.steps + 1):
        if profile and not tracing and profile[0] <= s - 1 < profile[1]:
          jax.block_until_ready(carry)  # the trace starts with the counter at s - 1
          jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
          tracing, traced_from = True, s
        batch = batch_at(s - 1)  # host data may use jax on the CPU: outside the guard
        with guard():  # the hot path: no implicit transfers
          carry = self.step_fn(carry, batch, inputs)
          if s % loop.log_every == 0 or s == loop.steps:
            sums, n = jax.device_get((carry["metric_sums"], carry["metric_count"]))
            row = {k: float(v) / int(n) for k, v in sums.items()}
            sums, count = zero_metrics(carry["metric_sums"], carry["metric_count"])
            carry = {**carry, "metric_sums": sums, "metric_count": count}
          else:
            row = None
        # Every process stops at the same step: a signal that reached one
        # is shared at the steps that already wait for the device.
        stop = (distributed.any_process(preempt.requested) if row is not None
                or self.ckpt.should_save(s) else False) if self.multi else preempt.requested
        if row is not None:
          rate = progress.rate(s)
          if items_per_step:
            row[f"{items}_per_s"] = rate * items_per_step
          else:
            row["steps_per_s"] = rate
          writer.write(s, row)
          metrics_lib.log("step %d/%d %s  ETA %s", s, loop.steps,
                          "  ".join(f"{k} {v:.4g}" for k, v in row.items()), progress.eta(s))
        if tracing and s == profile[1]:
          jax.block_until_ready(carry)
          jax.profiler.stop_trace()
          tracing = False
          metrics_lib.log("Wrote a profile of steps %d-%d to %s", traced_from, s,
                          os.path.join(self.workdir, "profile"))
        # Checkpoint before validating: validation may compile, and a SIGTERM
        # sent to the whole process group also kills the compiler (ptxas) and
        # fails the compilation; the state is saved and intact either way.
        self.ckpt.save(s, carry, self.meta, force=s == loop.steps)
        if validate and loop.val_every and s % loop.val_every == 0 and not stop:
          try:
            row = validate(distributed.to_local(carry["state"]))
          except Exception:  # pylint: disable=broad-except
            if not preempt.requested or self.multi:
              raise
            metrics_lib.log("%s during validation at step %d: skipped it.", preempt.requested, s)
          else:
            writer.write(s, row)
            metrics_lib.log("step %d %s", s, "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
        if not self.multi:  # a signal during validation stops one process at this step
          stop = preempt.requested
        if stop:
          self.ckpt.save(s, carry, self.meta, force=True)
          metrics_lib.log("%s: saved step %d; rerun the same command to resume.",
                          preempt.requested or "a signal to another process", s)
          raise SystemExit(143)
    finally:
      if tracing:
        jax.profiler.stop_trace()
      preempt.restore()
      writer.close()
      self.ckpt.close()
    return distributed.to_local(carry["state"])

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
