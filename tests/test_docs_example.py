"""The new-learner example of docs/learners.md runs as written."""

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks():
  text = (ROOT / "docs" / "learners.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, re.S)


def test_cavia_example_trains_and_evaluates(tmp_path):
  learner_code, config_code = _blocks()
  assert len(learner_code.strip().splitlines()) <= 75  # "a page of code"
  (tmp_path / "cavia.py").write_text(learner_code)
  (tmp_path / "cavia_omniglot.py").write_text(config_code)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tmp_path)}
  wd = tmp_path / "wd"

  def run(*args):
    proc = subprocess.run([sys.executable, "-m", "fsl_jax.data.testing", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

  res = run("experiments.meta_train", f"--config={tmp_path}/cavia_omniglot.py:runlocal",
            f"--workdir={wd}", "--config.val_every=0")
  assert (res["ways"], res["shots"], res["episodes"]) == (5, 1, 20)
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
  ev = run("experiments.evaluate", f"--workdir={wd}", "--episodes=20")
  assert ev["accuracy"] == res["accuracy"]  # same checkpoint, same episodes
  # A learner option changed for evaluation only is used and recorded.
  run("experiments.evaluate", f"--workdir={wd}", "--episodes=20", "--learner_kwarg=inner_steps=1")
  last = json.loads((wd / "results.jsonl").read_text().splitlines()[-1])
  assert last["learner_kwargs"] == ["inner_steps=1"] and last["episodes"] == 20
