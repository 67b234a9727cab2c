"""Sweeps (fsl_jax.train.sweeps, experiments.sweep), the results table and the plots.

The end-to-end test runs experiments/configs/omniglot_sweep.py:runlocal (ProtoNet
and MAML x 1/5 shots x 2 seeds) on the synthetic Omniglot of
`fsl_jax.data.testing`, stops it after the first point finished, reruns the same
command and checks that nothing finished is run again; then tabulates and plots it.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from fsl_jax.train import sweeps

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = "experiments/configs/omniglot_sweep.py"
MOCK = "--binary=fsl_jax.data.testing experiments.meta_train"
# The tiniest runs: 4 steps, each checkpointed, a validation at the end, 4 test episodes.
TINY = ["--config.train.steps=4", "--config.log_every=1", "--config.checkpoint_every=1",
        "--config.val_every=4", "--config.val_episodes=4", "--config.eval.episodes=4"]


def binary(module, *args, env=None, check=True):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, **(env or {})}, timeout=900)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} exit {proc.returncode}:\n{proc.stderr[-3000:]}")
  return proc


def events(stderr: str, what: str) -> list[str]:
  """The point names of the sweep's progress lines `HH:MM:SS what  i/N NAME...`."""
  return re.findall(rf"^\S+ {what} +\d+/\d+ (\S+?)[: ]", stderr, re.M)


# ------------------------------------------------------------------ library

def test_product_zip_and_names():
  points = sweeps.product({"arg.learner": ["protonet", "maml"]}, train__shots=[1, 5],
                          seed=range(2))
  assert len(points) == 8
  assert points[0] == {"arg.learner": "protonet", "train.shots": 1, "seed": 0}
  assert points[1] == {"arg.learner": "protonet", "train.shots": 1, "seed": 1}  # last fastest
  assert points[-1] == {"arg.learner": "maml", "train.shots": 5, "seed": 1}
  zipped = sweeps.zip_(train__shots=[1, 5], eval__shots=[1, 5])
  assert zipped == [{"train.shots": 1, "eval.shots": 1}, {"train.shots": 5, "eval.shots": 5}]
  assert len(sweeps.product(zipped, seed=[0, 1, 2])) == 6
  with pytest.raises(ValueError, match="one length"):
    sweeps.zip_(seed=[0, 1], lr=[0.1])
  with pytest.raises(TypeError, match="list of values"):
    sweeps.product(learner="maml")
  with pytest.raises(ValueError, match="set each key once"):
    sweeps.product(zipped, train__shots=[1])

  # Names: from the point's own keys (leaves when unique), deterministic, filesystem-safe.
  assert sweeps.point_name(points[0]) == "learner=protonet,shots=1,seed=0"
  assert sweeps.point_name(zipped[1]) == "train.shots=5,eval.shots=5"
  assert sweeps.point_name({"optimizer.learning_rate": 1e-4, "flag": True}) == \
      "learning_rate=0.0001,flag=true"
  odd = {"train.augment": "flip_lr|crop(28, padding=3)"}
  name = sweeps.point_name(odd)
  assert name == sweeps.point_name(dict(odd)) and re.fullmatch(r"[A-Za-z0-9._+=,-]+", name)
  assert name != sweeps.point_name({"train.augment": "flip_lr|crop(28, padding=4)"})
  assert len(sweeps.point_name({"k": "x" * 500})) <= sweeps.MAX_NAME
  assert sweeps.point_name({}) == "base"


def test_parse_arg_and_summaries():
  a = sweeps.parse_arg("runlocal, learner=maml,shots=5", learner="protonet", shots=1,
                       runlocal=False)
  assert (a.learner, a.shots, a.runlocal) == ("maml", 5, True)
  assert sweeps.parse_arg(None, learner="protonet").learner == "protonet"
  with pytest.raises(ValueError, match="Unknown config argument 'lerner'"):
    sweeps.parse_arg("lerner=maml", learner="protonet")
  with pytest.raises(ValueError, match="Config argument shots takes an integer"):
    sweeps.parse_arg("shots=five", shots=1)
  s = sweeps.summarize([0.5, 0.7])
  assert s["n"] == 2 and s["mean"] == pytest.approx(0.6)
  assert s["std"] == pytest.approx(0.141421, 1e-5)
  assert s["ci95"] == pytest.approx(12.7062 * 0.141421 / 2 ** 0.5, 1e-4)  # t(0.975, 1 dof)
  assert sweeps.summarize([0.5])["std"] == 0.0


def test_omniglot_sweep_points_build_each_learners_config():
  points = sweeps.load_points(SWEEP + ":runlocal", ["--config.train.steps=2"])
  assert [p.name for p in points[:2]] == ["learner=protonet,shots=1,seed=0",
                                          "learner=protonet,shots=1,seed=1"]
  assert len({p.name for p in points}) == 8
  assert sweeps.varied_keys(points) == ["arg.learner", "arg.shots", "seed"]
  maml5 = points[7]
  assert maml5.config_spec == SWEEP + ":runlocal,learner=maml,shots=5"
  assert maml5.flags == ["--config.seed=1", "--config.train.steps=2"]
  c = sweeps.point_config(maml5)
  assert (c.learner, c.train.shots, c.eval.shots, c.seed, c.train.steps) == ("maml", 5, 5, 1, 2)
  assert c.learner_kwargs.inner_lr == 0.4 and c.model_kwargs.hidden == 8  # MAML's runlocal
  p = sweeps.point_config(points[0])
  assert p.learner == "protonet" and "inner_lr" not in p.learner_kwargs
  with pytest.raises(ValueError, match="set by the sweep's points"):
    sweeps.load_points(SWEEP, ["--config.seed=3"])


# ------------------------------------------------------------------ the binary

def test_dry_run_only_emit(tmp_path):
  root = tmp_path / "sweep"
  base = [f"--config={SWEEP}:runlocal", f"--workdir={root}", *TINY]
  dry = binary("experiments.sweep", *base, "--dry_run", "--only=maml")
  lines = dry.stdout.splitlines()
  assert [l.split("\t")[1] for l in lines] == [
      f"learner=maml,shots={k},seed={s}" for k in (1, 5) for s in (0, 1)]
  assert all(l.split("\t")[2] == "new" and "-m experiments.meta_train" in l for l in lines)
  assert not root.exists()  # a dry run writes nothing

  cmds = pathlib.Path(binary("experiments.sweep", *base, "--emit=commands").stdout.strip())
  lines = cmds.read_text().splitlines()
  assert len(lines) == 8 and all("-m experiments.meta_train" in l for l in lines)
  assert f"--workdir={root}/learner=protonet,shots=5,seed=1" in lines[3]
  assert "--config.train.steps=4" in lines[0] and "JAX_COMPILATION_CACHE_DIR=" in lines[0]
  manifest = json.loads((root / "sweep.json").read_text())
  assert manifest["varied"] == ["learner", "shots", "seed"] and len(manifest["points"]) == 8

  slurm = pathlib.Path(binary("experiments.sweep", *base, "--emit=slurm", "--parallel=3",
                              "--only=shots=5").stdout.strip())
  text = slurm.read_text()
  assert "#SBATCH --array=2,3,6,7%3" in text
  assert '--point="$SLURM_ARRAY_TASK_ID"' in text and "--config.eval.episodes=4" in text
  tpu = pathlib.Path(binary("experiments.sweep", *base, "--emit=tpu").stdout.strip())
  text = tpu.read_text()
  assert "--worker=all --command=" in text and len(re.findall(r"^run \d ", text, re.M)) == 8
  assert "--point=7" in text and "FSL_JAX_DISTRIBUTED=1" in text
  for script in (slurm, tpu):
    subprocess.run(["bash", "-n", str(script)], check=True)  # valid shell

  bad = binary("experiments.sweep", *base, "--only=nothing", check=False)
  assert bad.returncode == 2 and "matches none of the 8 points" in bad.stderr
  bad = binary("experiments.sweep", *base, "--config.train.stepz=2", "--dry_run", check=False)
  assert bad.returncode == 2 and "stepz" in bad.stderr and "does not build its config" in bad.stderr


def test_failed_points_are_reported_and_the_others_run(tmp_path):
  # A stand-in binary (no JAX): seed 1 fails; each point records the cores it may use.
  (tmp_path / "fake_binary.py").write_text(
      "import os, sys\n"
      "print('cores', sorted(os.sched_getaffinity(0)), os.environ['JAX_COMPILATION_CACHE_DIR'])\n"
      "if '--config.seed=1' in sys.argv:\n"
      "  print('error: seed 1 fails on purpose', file=sys.stderr)\n"
      "  sys.exit(2)\n")
  root = tmp_path / "sweep"
  proc = binary("experiments.sweep", f"--config={SWEEP}:runlocal", f"--workdir={root}",
                "--binary=fake_binary", "--parallel=2",
                env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, check=False)
  assert proc.returncode == 1, proc.stderr
  failed = events(proc.stderr, "FAILED")
  assert sorted(failed) == sorted(n for n in (sweeps.point_name(
      {"arg.learner": l, "arg.shots": k, "seed": 1}) for l in ("protonet", "maml")
      for k in (1, 5)))
  assert len(events(proc.stderr, "finished")) == 4
  for name in failed:
    log = root / name / "sweep.log"
    assert f"log {log}: error: seed 1 fails on purpose" in proc.stderr
  # Seeds of one config start after its first (the compilation cache is warm by then).
  assert [n.endswith("seed=0") for n in events(proc.stderr, "started")] == [True] * 4 + [False] * 4
  ncores = len(os.sched_getaffinity(0))
  for name in events(proc.stderr, "finished"):
    log = (root / name / "sweep.log").read_text()
    cores = json.loads(re.search(r"cores (\[.*?\])", log).group(1))
    assert len(cores) in (max(ncores // 2, 1), (ncores + 1) // 2)  # half the cores each
    assert str(root / "xla_cache") in log


# ------------------------------------------------------------------ end to end

def test_omniglot_sweep_killed_rerun_table_and_plots(tmp_path):
  root = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "experiments.sweep", f"--config={SWEEP}:runlocal",
         f"--workdir={root}", "--parallel=2", MOCK, *TINY]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  names = [sweeps.point_name(p) for p in sweeps.product(
      {"arg.learner": ["protonet", "maml"], "arg.shots": [1, 5]}, seed=range(2))]
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if re.match(r"^\S+ finished ", line):
      break
  # One point is done; stop the sweep while another is mid-training (checkpointed at step
  # 1..2 of 4: two more steps, their checkpoints, a validation and the test still to go).
  mid = []
  while not mid and proc.poll() is None:
    mid = [n for n in names if 0 < max(sweeps.checkpoint_steps(str(root / n)) or [0]) <= 2]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=600)
  first = "".join(seen) + rest
  assert proc.returncode == 143, first[-3000:]
  done = [n for n in names if (root / n / "results.jsonl").exists()]
  assert set(events(first, "finished")) == set(done) and 0 < len(done) < 8
  assert "rerun the same command" in first
  stopped = events(first, "stopped")
  assert mid and set(mid) <= set(stopped), (mid, stopped)
  before = {n: (root / n / "results.jsonl").read_text() for n in done}
  mtimes = {n: (root / n / "results.jsonl").stat().st_mtime_ns for n in done}
  with_ckpt = [n for n in stopped if sweeps.checkpoint_steps(str(root / n))]

  second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert second.returncode == 0, second.stderr[-3000:]
  assert sorted(events(second.stderr, "skipped")) == sorted(done)
  assert not set(events(second.stderr, "started")) & set(done)
  assert len(events(second.stderr, "finished")) == 8 - len(done)
  for n in done:  # untouched
    assert (root / n / "results.jsonl").read_text() == before[n]
    assert (root / n / "results.jsonl").stat().st_mtime_ns == mtimes[n]
  for n in with_ckpt:  # an interrupted point resumed from its checkpoint
    assert "Resumed from step" in (root / n / "sweep.log").read_text()
  assert set(mid) <= set(with_ckpt)
  for n in names:  # one final evaluation each: no point was evaluated twice
    assert len((root / n / "results.jsonl").read_text().splitlines()) == 1
  assert any((root / "xla_cache").iterdir())
  dry = binary("experiments.sweep", *cmd[3:], "--dry_run")
  assert all("\tfinished at step 4, accuracy" in l for l in dry.stdout.splitlines())

  rows = [json.loads(l) for l in
          binary("experiments.results", f"--workdir={root}", "--format=json").stdout.splitlines()]
  assert sorted((r["learner"], r["shots"], r["seed"]) for r in rows) == sorted(
      (l, k, s) for l in ("protonet", "maml") for k in (1, 5) for s in (0, 1))
  assert all(0 <= r["accuracy"] <= 1 and r["ci95"] > 0 and r["episodes"] == 4 for r in rows)
  md = binary("experiments.results", f"--workdir={root}").stdout.splitlines()
  assert md[0].startswith("| learner | shots | seed | accuracy (%) | 95% CI |") and len(md) == 10
  assert (root / "table.md").read_text().splitlines() == md
  grouped = [json.loads(l) for l in binary(
      "experiments.results", f"--workdir={root}", "--format=json",
      "--group_by=learner,shots").stdout.splitlines()]
  assert len(grouped) == 4 and all(g["runs"] == 2 and g["ci_over"] == "runs" for g in grouped)
  g = next(g for g in grouped if (g["learner"], g["shots"]) == ("maml", 5))
  accs = [r["accuracy"] for r in rows if (r["learner"], r["shots"]) == ("maml", 5)]
  assert g["accuracy"] == pytest.approx(sum(accs) / 2, abs=1e-6)

  out = binary("experiments.plot", "shots", f"--workdir={root}").stdout.split()
  out += binary("experiments.plot", "curves", f"--workdir={root}").stdout.split()
  assert sorted(pathlib.Path(p).name for p in out) == [
      "accuracy_vs_shots.png", "accuracy_vs_shots.svg", "learning_curves.png",
      "learning_curves.svg"]
  for p in map(pathlib.Path, out):
    assert p.parent == root and p.stat().st_size > 2000
    head = p.read_bytes()[:400]
    assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in head


def test_speed_chart(tmp_path):
  bench = tmp_path / "scaling.jsonl"
  bench.write_text("compiling...\n" + "".join(json.dumps(
      {"algo": a, "devices": d, "episodes_per_s": 10.0 * d * (1 if a == "protonet" else 0.3)}
  ) + "\n" for a in ("protonet", "maml") for d in (1, 2, 4)))
  out = binary("experiments.plot", "speed", f"--input={bench}", "--x=devices").stdout.split()
  assert [pathlib.Path(p).name for p in out] == ["scaling_speed.png", "scaling_speed.svg"]
  svg = pathlib.Path(out[1]).read_text()
  assert "protonet" in svg and "maml" in svg  # one line each, in the legend
  bars = binary("experiments.plot", "speed", f"--input={bench}", f"--out={tmp_path / 'bars'}")
  assert all(pathlib.Path(p).stat().st_size > 2000 for p in bars.stdout.split())


def test_scaling_benchmark_prints_rows_and_draws_its_chart(tmp_path):
  # benchmarks/scaling.py times meta_step.py per device count and hands its
  # rows to `experiments.plot speed` (imported, the two binaries' --out flags
  # clashed: the H200 run of 2026-12-04 lost its chart to that).
  proc = subprocess.run(
      [sys.executable, "benchmarks/scaling.py", "--devices=1", f"--out={tmp_path}", "--",
       "--ways=2", "--shots=1", "--queries=1", "--meta_batch=1", "--steps=1", "--classes=4",
       "--per_class=2"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert lines[0]["num_devices"] == 1 and lines[0]["episodes_per_s"] > 0
  assert lines[0]["simulated"] and lines[0]["speedup"] == 1.0
  wrote = lines[-1]["wrote"]
  assert [pathlib.Path(p).name for p in wrote] == ["scaling.jsonl", "scaling_speed.png",
                                                   "scaling_speed.svg"]
  assert all(pathlib.Path(p).stat().st_size > 300 for p in wrote)
