"""The shared training harness: exact resume after kill -9 for the text binaries,
compile-once, damaged checkpoints, and bad config values / workdirs refused with
one line, exit code 2 and the checkpoint intact."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_binaries import CONFIG, last_json, metrics, run, train_args

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _one_line_error(proc, *needles):
  """Exit code 2 and exactly one stderr line `error: ...` containing every needle."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  return errors[0]


def _steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


def _without_rates(rows):
  return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]


# ------------------------------------------------------------ kill -9, resume

def _text_data(tmp_path):
  from test_prompt_tune import _tiny_data  # pylint: disable=import-outside-toplevel
  return _tiny_data(tmp_path)


def _kill_and_resume(tmp_path, module, args, kill_at):
  """Uninterrupted run vs. one killed with SIGKILL once `kill_at` is logged, then rerun."""
  full = last_json(run(module, *args(tmp_path / "a"), mock=False))
  cmd = [sys.executable, "-m", module, *args(tmp_path / "b")]
  proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if kill_at in line:
      proc.send_signal(signal.SIGKILL)
      break
  proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL
  assert _steps(tmp_path / "b")  # it was killed after a checkpoint
  resumed = run(module, *args(tmp_path / "b"), mock=False)
  assert "Resumed from step" in resumed.stderr
  assert last_json(resumed) == full
  assert _without_rates(metrics(tmp_path / "b")) == _without_rates(metrics(tmp_path / "a"))
  results = lambda wd: [json.loads(l) for l in (wd / "results.jsonl").read_text().splitlines()]
  assert results(tmp_path / "b") == results(tmp_path / "a") == [{**full, "step": full["steps"]}]
  return full


def test_prompt_tune_killed_and_rerun_equals_uninterrupted(tmp_path):
  data, tok = _text_data(tmp_path)
  config = ROOT / "experiments/configs/prompt_tune_dialogue.py"
  args = lambda wd: [f"--config={config}:runlocal", f"--workdir={wd}", f"--config.data={data}",
                     f"--config.tokenizer={tok}", "--config.method=lora", "--config.num_steps=12",
                     "--config.max_len=48", "--config.prompt_len=40", "--config.max_new_tokens=6",
                     "--config.dropout=0.1"]
  full = _kill_and_resume(tmp_path, "experiments.prompt_tune", args, " step 8/12 ")
  assert full["steps"] == 12 and full["final_train_loss"] > 0


def test_adapter_tune_killed_and_rerun_equals_uninterrupted(tmp_path):
  pairs = tmp_path / "pairs.tsv"
  words = ["red", "blue", "green", "cat", "dog", "house", "tree", "sun"]
  rng = np.random.default_rng(0)
  with open(pairs, "w") as f:
    for _ in range(60):
      s = " ".join(rng.choice(words, 4))
      f.write(f"{s}\t{s[::-1]}\n")
  config = ROOT / "experiments/configs/adapter_mt_en_sw.py"
  args = lambda wd: [f"--config={config}:runlocal", f"--workdir={wd}",
                     f"--config.train={pairs}@0:50", f"--config.test={pairs}@50:",
                     "--config.steps=12"]
  full = _kill_and_resume(tmp_path, "experiments.adapter_tune", args, " step 8/12 ")
  assert full["steps"] == 12 and full["final_loss"] > 0


# ------------------------------------------------------------ compile once

class _Compiles(logging.Handler):
  """Counts JAX's 'Compiling jit(NAME) ...' records (jax.log_compiles) per NAME."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.names = []

  def emit(self, record):
    msg = record.getMessage()
    if msg.startswith("Compiling jit("):
      self.names.append(msg[len("Compiling jit("):].split(")", 1)[0])


def test_step_and_evaluator_compile_once(tmp_path, monkeypatch):
  """8 steps with a validation every 2, a profile of steps 2-3 and, on the step
  loop, jax.transfer_guard('disallow'): the step compiles once (validations
  included), the loop makes no implicit transfer, the trace is written."""
  from experiments.configs import protonet_omniglot  # pylint: disable=import-outside-toplevel
  from fsl_jax.data import testing  # pylint: disable=import-outside-toplevel
  from fsl_jax.train import loop, meta_trainer  # pylint: disable=import-outside-toplevel
  config = protonet_omniglot.get_config("runlocal")
  config.train.steps, config.val_every, config.log_every = 8, 2, 2
  config.profile_steps = "1:3"
  monkeypatch.setenv(loop.TRANSFER_GUARD_ENV, "disallow")
  compiles = _Compiles()
  pxla = logging.getLogger("jax._src.interpreters.pxla")  # where jax logs each lowering
  level = pxla.level
  pxla.addHandler(compiles)
  pxla.setLevel(logging.WARNING)
  try:
    with testing.mock_omniglot(train_classes=20, test_classes=10), jax.log_compiles():
      run_ = meta_trainer.MetaTraining(config, str(tmp_path))
      run_.run()
  finally:
    pxla.removeHandler(compiles)
    pxla.setLevel(level)
  validations = [r for r in metrics(tmp_path) if "val_accuracy" in r]
  assert len(validations) == 4
  assert compiles.names.count("harness_step") == 1, compiles.names
  assert run_.harness.step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert run_.val_evaluator.compiled._cache_size() == 1  # pylint: disable=protected-access
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


# ------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A runlocal ProtoNet workdir with checkpoints 3 and 6, and its printed result."""
  wd = tmp_path_factory.mktemp("trained") / "wd"
  res = last_json(run("experiments.meta_train", *train_args(wd, "--config.val_every=0")))
  assert _steps(wd) == [3, 6]
  return wd, res


def _copy(src, dst):
  subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
  return dst


def _truncate_state(workdir, step):
  for path in (pathlib.Path(workdir) / "checkpoints" / str(step) / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])


def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(trained, tmp_path):
  wd, res = trained
  copy = _copy(wd, tmp_path / "wd")
  (copy / "results.jsonl").unlink()
  _truncate_state(copy, 6)
  again = run("experiments.meta_train", *train_args(copy, "--config.val_every=0"))
  assert "checkpoint step 6" in again.stderr and "unreadable" in again.stderr
  assert "Resumed from step 3" in again.stderr
  assert last_json(again) == res  # steps 4-6 redone exactly
  assert (copy / "checkpoints" / "6.unreadable").is_dir()  # moved aside, not deleted
  assert _steps(copy) == [3, 6]

  ev = run("experiments.evaluate", f"--workdir={copy}", "--episodes=20")
  assert last_json(ev) == res

  for step in _steps(copy):
    _truncate_state(copy, step)
  none = run("experiments.evaluate", f"--workdir={copy}", check=False)
  _one_line_error(none, "No readable checkpoint in", str(copy / "checkpoints"))
  none = run("experiments.meta_train", *train_args(copy, "--config.val_every=0"), check=False)
  _one_line_error(none, "No readable checkpoint in", str(copy / "checkpoints"))


# ------------------------------------------------------------ bad input

@pytest.mark.parametrize("flags,needles", [
    (["--config.train.steps=4"], ["train.steps=4 is below the step of the latest checkpoint",
                                  "--config.train.steps=6"]),
    (["--config.train.steps=-3"], ["train.steps=-3 must be at least 1"]),
    (["--config.keep_checkpoints=0"], ["keep_checkpoints=0 must be at least 1"]),
    (["--config.log_every=0"], ["log_every=0 must be at least 1"]),
    (["--config.checkpoint_every=0"], ["checkpoint_every=0 must be at least 1"]),
    (["--config.eval.episodes=0"], ["eval.episodes=0 must be an integer of at least 1"]),
    (["--config.val_episodes=-1", "--config.val_every=2"], ["val_episodes=-1"]),
    (["--config.train.ways=five"], ["--config.train.ways=five", "invalid literal"]),
    (["--config.train.ways=1"], ["train.ways=1 must be an integer of at least 2"]),
    (["--config.shots=5"], ["--config.eval.shots or --config.train.shots"]),
    (["--config.learner=protonett"], ["Unknown learner 'protonett'; did you mean 'protonet'"]),
    (["--config.optimizer.name=adamm"], ["Unknown optimizer 'adamm'; did you mean 'adam'"]),
    (["--config.data.name=omniglott"], ["Unknown dataset 'omniglott'; did you mean 'omniglot'"]),
    (["--config.train.shots=2"], ["Cannot resume", "train.shots: 1 -> 2"]),
])
def test_bad_config_values_leave_the_checkpoint_intact(trained, tmp_path, flags, needles):
  wd, _ = trained
  before = _steps(wd)
  proc = run("experiments.meta_train", *train_args(wd, "--config.val_every=0", *flags),
             check=False)
  _one_line_error(proc, *needles)
  assert "Loaded" not in proc.stderr  # refused before any data loads
  assert _steps(wd) == before


def test_unknown_config_variant(tmp_path):
  proc = run("experiments.meta_train", "--config=experiments/configs/protonet_omniglot.py:bogus",
             f"--workdir={tmp_path}", check=False)
  _one_line_error(proc, "Unknown variant 'bogus'; use runlocal, demo or cpu60")


def test_bad_workdirs_are_refused_before_data_loads(trained, tmp_path):
  wd, _ = trained
  a_file = tmp_path / "file"
  a_file.write_text("x")
  proc = run("experiments.meta_train", *train_args(a_file), check=False)
  _one_line_error(proc, "is a file, not a directory")
  for episodes in ("0", "-5"):
    proc = run("experiments.evaluate", f"--workdir={wd}", f"--episodes={episodes}", check=False)
    _one_line_error(proc, f"--episodes={episodes} must be at least 1")

  # Another binary's workdir.
  other = tmp_path / "other"
  data, tok = _text_data(tmp_path)
  config = ROOT / "experiments/configs/prompt_tune_dialogue.py"
  run("experiments.prompt_tune", f"--config={config}:runlocal", f"--workdir={other}",
      f"--config.data={data}", f"--config.tokenizer={tok}", "--config.num_steps=3", mock=False)
  proc = run("experiments.evaluate", f"--workdir={other}", check=False)
  _one_line_error(proc, "holds a checkpoint of experiments.prompt_tune", "meta-learners only")
  proc = run("experiments.meta_train", *train_args(other), check=False)
  _one_line_error(proc, "holds a checkpoint of prompt_tune, not meta_train")
  # A changed training key refuses to resume the text binaries too.
  proc = run("experiments.prompt_tune", f"--config={config}:runlocal", f"--workdir={other}",
             f"--config.data={data}", f"--config.tokenizer={tok}", "--config.num_steps=3",
             "--config.optimizer.learning_rate=0.5", mock=False, check=False)
  _one_line_error(proc, "Cannot resume", "optimizer.learning_rate: 0.0 -> 0.5")


def test_read_only_workdir_is_refused(trained, tmp_path):
  # Root writes through any permission bits, so a chmod-ed copy is unwritable
  # only for other users; sysfs takes no new files from anyone, root included.
  wd, _ = trained
  unwritable = ["/sys"]
  if os.geteuid() != 0:
    ro = _copy(wd, tmp_path / "ro")
    for path in [ro, *ro.rglob("*")]:
      path.chmod(0o555 if path.is_dir() else 0o444)
    unwritable.append(str(ro))
  for path in unwritable:
    for cmd in (["experiments.meta_train", *train_args(path, "--config.val_every=0")],
                ["experiments.evaluate", f"--workdir={path}"]):
      proc = run(*cmd, check=False)
      _one_line_error(proc, f"--workdir={path} is not writable")
