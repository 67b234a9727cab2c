"""Two processes on localhost train as one: a real multi-process run on CPU (gloo).

Each process is started as a user would start one per host:

    python -m experiments.meta_train --config=... --workdir=W \
        --coordinator=localhost:PORT --num_processes=2 --process_id=I

with one CPU device each; the reference is one process over two devices.
Episodes are gathered per process (`data.placement=host`: each process
gathers the pixels of its own tasks only) or sampled inside the step
(`device`), the meta-gradient is averaged across the processes, process 0
alone writes metrics and results, and orbax checkpoints are written by both.
The ProtoNet job is preempted (SIGTERM to one process) and rerun on the way.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fsl_jax.train.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])}
  env.pop("FSL_JAX_DISTRIBUTED", None)
  return env


def _cmd(config, workdir, args):
  return [sys.executable, "-m", "fsl_jax.data.testing", "experiments.meta_train",
          f"--config={config}", f"--workdir={workdir}", *args]


def _start(config, workdir, args, tmp_path, tag):
  """The two processes of one job, their logs in tmp_path/tag.I.log."""
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(tmp_path / f"{tag}.{i}.log", "w")
    procs.append(subprocess.Popen(
        _cmd(config, workdir, [*args, f"--coordinator=localhost:{port}", "--num_processes=2",
                               f"--process_id={i}"]),
        cwd=ROOT, env=_env(1), stdout=log, stderr=subprocess.STDOUT, text=True))
  return procs


def _wait(procs, tmp_path, tag, codes=(0,)):
  for i, p in enumerate(procs):
    try:
      rc = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert rc in codes, f"process {i} exited {rc}:\n" + \
        (tmp_path / f"{tag}.{i}.log").read_text()[-4000:]


def _metrics(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]


def _final(workdir):
  state, _, step = Checkpointer(workdir / "checkpoints").restore_raw()
  return step, state["state"]["params"]


def _assert_same_run(one, two):
  m1, m2 = _metrics(one), _metrics(two)
  assert [r["step"] for r in m1] == [r["step"] for r in m2]
  for a, b in zip(m1, m2):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} at {a['step']}")
  s1, p1 = _final(one)
  s2, p2 = _final(two)
  assert s1 == s2
  flat1, flat2 = _leaves(p1), _leaves(p2)
  assert flat1.keys() == flat2.keys()
  for k in flat1:
    np.testing.assert_allclose(flat2[k], flat1[k], rtol=1e-5, atol=1e-5, err_msg=k)
  r1 = [json.loads(l) for l in (one / "results.jsonl").read_text().splitlines()]
  r2 = [json.loads(l) for l in (two / "results.jsonl").read_text().splitlines()]
  assert len(r2) == 1, "process 0 alone writes results.jsonl"
  np.testing.assert_allclose(r2[0]["accuracy"], r1[0]["accuracy"], atol=1e-6)


def _leaves(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_leaves(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def test_initialize_arguments_and_cluster_detection():
  from fsl_jax import distributed  # pylint: disable=import-outside-toplevel
  # Nothing asked, nothing detected: one process, jax.distributed untouched.
  assert distributed.initialize(environ={}) is None
  assert distributed.initialize(mode="off", environ={"SLURM_NTASKS": "4"}) is None
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize("localhost:1234", environ={})
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize("localhost:1234", num_processes=2, process_id=2, environ={})
  with pytest.raises(ValueError, match="HOST:PORT"):
    distributed.initialize("localhost", num_processes=2, process_id=0, environ={})
  with pytest.raises(ValueError, match="contradicts"):
    distributed.initialize("h:1", num_processes=2, process_id=0, mode="off", environ={})
  with pytest.raises(ValueError, match="auto, on or off"):
    distributed.initialize(mode="yes", environ={})
  detect = distributed.detect_cluster
  assert detect({}) is None
  assert detect({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}) is None  # one task: one process
  assert detect({"SLURM_NTASKS": "8"}) == "Slurm"
  assert detect({"TPU_WORKER_HOSTNAMES": "10.0.0.1"}) is None         # a single-host TPU VM
  assert detect({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}) == "TPU pod"
  assert detect({"OMPI_COMM_WORLD_SIZE": "2"}) == "OpenMPI"
  assert detect({"SLURM_NTASKS": "many"}) is None


def test_bad_distributed_flags_are_one_line_errors(tmp_path):
  proc = subprocess.run(_cmd(CASES["protonet"][0], tmp_path / "w", ["--coordinator=localhost:1"]),
                        cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --coordinator, --num_processes and --process_id go together")


CASES = {
    # learner config, placement, killed and rerun: ProtoNet gathers each
    # process's tasks on its host and is preempted; MAML samples its episodes
    # inside the step and runs through (its compilations make a third run slow).
    "protonet": ("experiments/configs/protonet_omniglot.py:runlocal", "host", True),
    "maml": ("experiments/configs/maml_omniglot.py:runlocal", "device", False),
}


@pytest.fixture
def started():
  """The test's processes, killed when it ends (a failed one leaves its peer waiting)."""
  procs = []
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_equal_one(tmp_path, name, started):
  config, placement, resume = CASES[name]
  args = [f"--config.data.placement={placement}", "--config.train.steps=24",
          "--config.log_every=2", "--config.checkpoint_every=4", "--config.val_every=8",
          "--config.val_episodes=6", "--config.eval.episodes=10"]
  one = tmp_path / "one"
  proc = subprocess.run(_cmd(config, one, args), cwd=ROOT, env=_env(2), capture_output=True,
                        text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  two = tmp_path / "two"
  if not resume:  # the same job, uninterrupted
    procs = _start(config, two, args, tmp_path, "rerun")
    started.extend(procs)
    _wait(procs, tmp_path, "rerun")
    _assert_same_run(one, two)
    return

  # Two processes, stopped by SIGTERM (a preemption) part-way, then rerun.
  procs = _start(config, two, args, tmp_path, "first")
  started.extend(procs)
  deadline = time.time() + TIMEOUT
  # After the first logged step; the validation at step 8 (a compilation)
  # alone outlasts the poll, so the signal lands mid-run.
  while " step 2/24 " not in (tmp_path / "first.0.log").read_text():
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        (tmp_path / "first.0.log").read_text()[-4000:]
    time.sleep(0.05)
  procs[0].send_signal(signal.SIGTERM)  # one process hears it; both stop at the same step
  _wait(procs, tmp_path, "first", codes=(143,))
  stopped = _final(two)[0]
  assert 2 < stopped < 24
  log1 = (tmp_path / "first.1.log").read_text()
  assert f"saved step {stopped}" in log1, log1[-3000:]
  assert not (two / "results.jsonl").exists()

  procs = _start(config, two, args, tmp_path, "rerun")
  started.extend(procs)
  _wait(procs, tmp_path, "rerun")
  assert f"Resumed from step {stopped}" in (tmp_path / "rerun.1.log").read_text()
  _assert_same_run(one, two)
  # Process 1 printed the same final result as process 0.
  last = [json.loads(l) for l in (tmp_path / "rerun.1.log").read_text().splitlines()
          if l.startswith("{")]
  assert last and last[-1]["accuracy"] == json.loads(
      (two / "results.jsonl").read_text().splitlines()[-1])["accuracy"]
