r"""Runs a config file's sweep: every point of `get_sweep(arg)` in its own workdir.

    python -m experiments.sweep --config=experiments/configs/omniglot_sweep.py[:runlocal] \
        --workdir=ROOT [--parallel=N] [--dry_run] [--only=REGEX] [--config.KEY=VALUE ...]
    python -m experiments.sweep ... --emit=slurm|tpu|commands   # write the job array instead

Each point runs `python -m experiments.meta_train --config=FILE:ARG
--workdir=ROOT/<name> --config.KEY=VALUE ...` (`fsl_jax.train.sweeps`: names,
config arguments) with its output in ROOT/<name>/sweep.log; `--config.KEY=VALUE`
given here goes to every point. Points run N at a time, the CPU cores this
process may use split into N contiguous sets, one per running point
(sched_setaffinity; XLA's CPU thread pool sizes itself to the cores a process
may use; on a GPU host each point sees every GPU, so run one at a time there
or give the sweep one GPU per job with --emit). All points share a persistent XLA compilation cache
(ROOT/xla_cache; every compilation is cached, so seeds of one shape compile
once). A finished point (its results.jsonl holds the final evaluation of the
config it would run now) is skipped; an interrupted one resumes from its
checkpoint (the binary does this when rerun with the same workdir), so a killed
sweep rerun with the same command finishes without repeating work. A point
that fails is reported with its log and the others go on; the exit status is
1 when any failed. SIGTERM / Ctrl-C stop the running points at their next step
with a checkpoint (exit 143). One progress line per point started, finished,
skipped or failed, with an ETA from the points finished so far.

`--emit` writes, instead of running, ROOT/sweep.slurm (a Slurm job array,
task i runs this command with --point=i, which skips a finished point),
ROOT/sweep_tpu.sh (a TPU VM launcher: each point in turn on every worker of a
pod, `gcloud ... ssh --worker=all`, as one multi-host job) or
ROOT/sweep_commands.txt (one command per line for the points not finished).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from absl import app, flags

from experiments import common
from fsl_jax.train import sweeps
from fsl_jax.train.metrics import log

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file with a get_sweep(arg): FILE[:arg].")
flags.DEFINE_string("workdir", None, "Root folder: one workdir per point, sweep.json, xla_cache.")
flags.DEFINE_integer("parallel", 1, "Points run at once; the cores are split between them.")
flags.DEFINE_bool("dry_run", False, "Print every point's state and command; run nothing.")
flags.DEFINE_string("only", "", "Run only the points whose name matches this regex (re.search).")
flags.DEFINE_enum("emit", None, ["slurm", "tpu", "commands"],
                  "Write a job array for another machine instead of running.")
flags.DEFINE_integer("point", None, "Run only the point of this index (0-based; what the "
                     "emitted job arrays call), in the foreground.")
flags.DEFINE_string("binary", "experiments.meta_train",
                    "The module each point runs (python -m BINARY ...), with any leading "
                    "arguments, e.g. 'fsl_jax.data.testing experiments.meta_train'.")
flags.DEFINE_string("xla_cache", "", "Persistent XLA compilation cache ('' = ROOT/xla_cache).")
flags.mark_flags_as_required(["config", "workdir"])

CONFIG_OVERRIDE = re.compile(r"^--config\.[A-Za-z_][\w.]*=")
EXIT_PREEMPTED = 143


def _hms(seconds: float) -> str:
  s = max(0, int(seconds))
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def child_env(root: str) -> dict:
  """The points' environment: the shared compilation cache, every compilation cached."""
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(FLAGS.xla_cache or
                                                     os.path.join(root, "xla_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def core_sets(parallel: int) -> list[list[int]]:
  """This process's cores in `parallel` contiguous sets (sets repeat when cores are fewer)."""
  try:
    cores = sorted(os.sched_getaffinity(0))
  except AttributeError:  # not Linux: no affinity, XLA uses every core in each point
    return [[] for _ in range(parallel)]
  if parallel >= len(cores):
    return [[cores[i % len(cores)]] for i in range(parallel)]
  bounds = [round(i * len(cores) / parallel) for i in range(parallel + 1)]
  return [cores[bounds[i]:bounds[i + 1]] for i in range(parallel)]


def command(point: sweeps.Point, root: str, python: str = sys.executable) -> list[str]:
  return [python, "-m", *FLAGS.binary.split(), *point.argv(root)]


def last_error(path: str) -> str:
  """The log's last 'error: ...' or otherwise last non-empty line."""
  try:
    with open(path, errors="replace") as f:
      lines = [l.strip() for l in f if l.strip()]
  except OSError:
    return ""
  errors = [l for l in lines if l.startswith("error:") or "Error" in l.split(" ", 1)[0]]
  return (errors or lines or [""])[-1][:300]


def cache_order(points: list[sweeps.Point]) -> list[sweeps.Point]:
  """Points that differ only in `seed` compile the same programs: the first of each such
  group runs first, the others after, when its compilations are in the shared cache."""
  rank, seen = {}, {}
  for p in points:
    shape = json.dumps({k: v for k, v in p.overrides.items() if k != "seed"}, sort_keys=True,
                       default=str)
    rank[p.index] = seen.get(shape, 0)
    seen[shape] = rank[p.index] + 1
  return sorted(points, key=lambda p: rank[p.index])  # stable: sweep order within a rank


class Runner:
  """Runs points as subprocesses, `parallel` at a time, one progress line per event."""

  def __init__(self, points, root: str, parallel: int, total: int):
    self.todo, self.root, self.total = list(points), root, total
    self.slots = core_sets(parallel)
    self.free = list(range(parallel))
    self.running = {}  # Popen -> (point, slot, start time, log file)
    self.durations, self.failed, self.interrupted, self.not_started = [], [], [], []
    self.stop = None
    self.env = child_env(root)

  def _signal(self, signum, frame):
    del frame
    self.stop = signal.Signals(signum).name

  def eta(self) -> str:
    if not self.durations:
      return "?"
    mean = sum(self.durations) / len(self.durations)
    now = time.time()
    left = sum(max(mean - (now - t0), 0) for _, _, t0, _ in self.running.values())
    return _hms((left + mean * len(self.todo)) / len(self.slots))

  def start(self, point: sweeps.Point) -> None:
    slot = self.free.pop(0)
    cores = self.slots[slot]
    path = point.log(self.root)
    os.makedirs(point.workdir(self.root), exist_ok=True)
    cmd = command(point, self.root)
    logf = open(path, "a")
    logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
    logf.flush()
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                            preexec_fn=preexec)
    self.running[proc] = (point, slot, time.time(), logf)
    where = f"cores {','.join(map(str, cores))}; " if cores else ""
    log("started  %d/%d %s (%slog %s)", point.index + 1, self.total, point.name, where, path)

  def reap(self, proc, rc: int) -> None:
    point, slot, t0, logf = self.running.pop(proc)
    logf.close()
    self.free.append(slot)
    took = time.time() - t0
    path = point.log(self.root)
    left = f"{len(self.running)} running, {len(self.todo)} to start"
    if rc == 0:
      self.durations.append(took)
      res = sweeps.final_result(point.workdir(self.root))
      acc = (f"accuracy {100 * res['accuracy']:.2f} ± {100 * res['ci95']:.2f}%, "
             if res else "")
      log("finished %d/%d %s: %sin %s; %s, ETA %s", point.index + 1, self.total, point.name, acc,
          _hms(took), left, self.eta())
    elif self.stop and sweeps.point_state(point, self.root)[0] == "finished":
      self.durations.append(took)  # stopped after writing its result: done
      log("finished %d/%d %s: its result was written before the stop (exit %d)",
          point.index + 1, self.total, point.name, rc)
    elif rc in (EXIT_PREEMPTED, -signal.SIGTERM, -signal.SIGINT) and self.stop:
      self.interrupted.append(point)
      log("stopped  %d/%d %s after %s (exit %d); rerun the same command to resume it",
          point.index + 1, self.total, point.name, _hms(took), rc)
    else:
      self.failed.append((point, path))
      log("FAILED   %d/%d %s: exit %d after %s; log %s: %s", point.index + 1, self.total,
          point.name, rc, _hms(took), path, last_error(path))

  def run(self) -> int:
    old = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
    forwarded = set()
    try:
      while self.todo or self.running:
        if self.stop:
          for proc in self.running:
            if proc not in forwarded:  # the point checkpoints and exits 143
              proc.send_signal(signal.SIGTERM)
              forwarded.add(proc)
          self.not_started += self.todo
          self.todo = []
        while self.todo and self.free and not self.stop:
          self.start(self.todo.pop(0))
        for proc in list(self.running):
          rc = proc.poll()
          if rc is not None:
            self.reap(proc, rc)
        time.sleep(0.2)
    finally:
      for s, handler in old.items():
        signal.signal(s, handler)
    return EXIT_PREEMPTED if self.stop else (1 if self.failed else 0)


# ------------------------------------------------------------------ emit

def _self_argv(root: str) -> list[str]:
  """This sweep's own arguments, to rerun it elsewhere for one --point."""
  argv = ["-m", "experiments.sweep", f"--config={FLAGS.config}", f"--workdir={root}"]
  if FLAGS.binary != "experiments.meta_train":
    argv.append(f"--binary={FLAGS.binary}")
  if FLAGS.xla_cache:
    argv.append(f"--xla_cache={FLAGS.xla_cache}")
  return argv + [f for f in SHARED_FLAGS]


def emit(kind: str, points, selected, root: str, states) -> str:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(root.rstrip("/")) or "sweep")
  own = shlex.join(_self_argv(root))
  header = (f"# {len(selected)} of {len(points)} points of {FLAGS.config}, written by "
            f"experiments.sweep --emit={kind}.\n# Rerunning skips finished points and resumes "
            "interrupted ones (ROOT must be one shared filesystem for every host).\n")
  if kind == "commands":
    env = child_env(root)
    prefix = (f"JAX_COMPILATION_CACHE_DIR={shlex.quote(env['JAX_COMPILATION_CACHE_DIR'])} "
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 ")
    lines = [prefix + shlex.join(command(p, root, "python")) for p in selected
             if states[p.index][0] != "finished"]
    path = os.path.join(root, "sweep_commands.txt")
    text = "".join(l + "\n" for l in lines)
    done = len(selected) - len(lines)
    if done:
      log("%d finished point(s) left out of %s", done, path)
  elif kind == "slurm":
    indices = ",".join(str(p.index) for p in selected)
    throttle = f"%{FLAGS.parallel}" if FLAGS.parallel > 1 else ""
    text = (
        "#!/bin/bash\n" + header +
        "# Submit: sbatch [--gres=gpu:1 --cpus-per-task=8 --time=4:00:00 ...] "
        f"{os.path.join(root, 'sweep.slurm')}\n"
        f"#SBATCH --job-name={name}\n"
        f"#SBATCH --array={indices}{throttle}\n"
        f"#SBATCH --output={os.path.join(root, 'slurm-%A_%a.out')}\n"
        "#SBATCH --requeue\n"
        "#SBATCH --signal=B:TERM@120\n"
        "# (SIGTERM two minutes before the time limit: the point checkpoints and exits 143;\n"
        "#  resubmitting, or a requeue, resumes it.)\n"
        "set -euo pipefail\n"
        f"cd \"${{FSL_JAX_REPO:-{repo}}}\"\n"
        f"exec \"${{PYTHON:-python}}\" {own} --point=\"$SLURM_ARRAY_TASK_ID\"\n")
    path = os.path.join(root, "sweep.slurm")
  else:  # tpu
    lines = []
    for p in selected:
      remote = (f"cd \"${{FSL_JAX_REPO:-$HOME/fsl_jax}}\" && FSL_JAX_DISTRIBUTED=1 "
                f"\"${{PYTHON:-python3}}\" {own} --point={p.index}")
      lines.append(f"run {p.index} {shlex.quote(remote)}  # {p.name}")
    text = (
        "#!/bin/bash\n" + header +
        "# Each point runs on every worker of the TPU VM pod at once (--worker=all), one job\n"
        "# over the pod (jax.distributed.initialize via FSL_JAX_DISTRIBUTED=1), points in turn.\n"
        "# Needs TPU_NAME and ZONE (and PROJECT) set; the repository at $FSL_JAX_REPO\n"
        "# (default ~/fsl_jax) on every worker, ROOT on a filesystem all workers share.\n"
        "set -uo pipefail\n"
        ": \"${TPU_NAME:?set TPU_NAME}\" \"${ZONE:?set ZONE}\"\n"
        "failed=0\n"
        "run() {\n"
        "  echo \"point $1\"\n"
        "  gcloud compute tpus tpu-vm ssh \"$TPU_NAME\" --zone=\"$ZONE\" "
        "${PROJECT:+--project=\"$PROJECT\"} --worker=all --command=\"$2\" || "
        "{ echo \"point $1 failed\"; failed=1; }\n"
        "}\n" + "".join(l + "\n" for l in lines) + "exit $failed\n")
    path = os.path.join(root, "sweep_tpu.sh")
  with open(path, "w") as f:
    f.write(text)
  if kind != "commands":
    os.chmod(path, 0o755)
  return path


# ------------------------------------------------------------------ main

SHARED_FLAGS: list[str] = []


def parse_flags(argv):
  """absl flags, with every --config.KEY=VALUE kept aside for the points."""
  SHARED_FLAGS[:] = [a for a in argv[1:] if CONFIG_OVERRIDE.match(a)]
  return common.parse_flags([a for a in argv if a == argv[0] or not CONFIG_OVERRIDE.match(a)])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; overrides are --config.KEY=VALUE.")
  # No common.setup(): this process runs no JAX (each point initialises its own,
  # jax.distributed included), so it starts in a second and holds no device.
  if FLAGS.parallel < 1:
    raise ValueError(f"--parallel={FLAGS.parallel}: run at least 1 point at a time.")
  root = os.path.abspath(FLAGS.workdir)
  points = sweeps.load_points(FLAGS.config, SHARED_FLAGS)
  try:
    only = re.compile(FLAGS.only)
  except re.error as e:
    raise ValueError(f"--only={FLAGS.only!r} is not a regular expression ({e}).") from None
  selected = [p for p in points if only.search(p.name)]
  if FLAGS.point is not None:
    if not 0 <= FLAGS.point < len(points):
      raise ValueError(f"--point={FLAGS.point}: the sweep has points 0..{len(points) - 1}.")
    selected = [p for p in selected if p.index == FLAGS.point]
  if not selected:
    which = f" and --point={FLAGS.point}" if FLAGS.point is not None else ""
    raise ValueError(f"--only={FLAGS.only!r}{which} matches none of the {len(points)} points "
                     f"({', '.join(p.name for p in points[:4])}, ...).")
  # Every point's config is built (a bad key or value fails here, before anything runs).
  states = {}
  for p in selected:
    try:
      states[p.index] = sweeps.point_state(p, root, sweeps.point_config(p))
    except Exception as e:  # pylint: disable=broad-except  (flags and config-file errors)
      msg = common.one_line(e).replace("\\n", " ").replace("\\'", "'")
      msg = msg.strip("'\"") if msg[:1] in "'\"" else msg
      raise ValueError(f"point {p.index} ({p.name}) does not build its config: "
                       f"{type(e).__name__}: {msg} (its flags: {' '.join(p.flags)})") from None

  if FLAGS.dry_run:
    for p in selected:
      print(f"{p.index}\t{p.name}\t{states[p.index][1]}\t"
            f"{shlex.join(command(p, root, 'python'))}", flush=True)
    return 0
  manifest = sweeps.write_manifest(root, FLAGS.config, FLAGS.binary, SHARED_FLAGS, points)
  if FLAGS.emit:
    path = emit(FLAGS.emit, points, selected, root, states)
    print(path, flush=True)
    return 0

  todo = []
  for p in selected:
    state, what = states[p.index]
    if state == "finished":
      log("skipped  %d/%d %s: %s", p.index + 1, len(points), p.name, what)
    else:
      todo.append(p)
  todo = cache_order(todo)
  log("sweep %s: %d point(s), %d to run, %d at a time; manifest %s", FLAGS.config,
      len(selected), len(todo), min(FLAGS.parallel, max(len(todo), 1)), manifest)
  runner = Runner(todo, root, min(FLAGS.parallel, max(len(todo), 1)), len(points))
  rc = runner.run()
  done = len(todo) - len(runner.failed) - len(runner.interrupted) - len(runner.not_started)
  log("sweep: %d finished now, %d already finished, %d failed, %d stopped, %d not started%s",
      done, len(selected) - len(todo), len(runner.failed), len(runner.interrupted),
      len(runner.not_started), "; rerun the same command to go on" if rc == EXIT_PREEMPTED
      else "")
  for point, path in runner.failed:
    log("failed: %s (log %s)", point.name, path)
  if rc == 0:
    log("table: python -m experiments.results --workdir=%s", root)
  return rc


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=parse_flags)
