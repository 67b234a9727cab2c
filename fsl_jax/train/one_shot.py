"""Evaluating a checkpoint on Lake et al.'s 20-way one-shot runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.data import lake_runs
from fsl_jax.train import loop, restore


def evaluate_runs(workdir: str, runs_dir: str, step: int | None = None) -> dict:
  workdir = loop.check_writable_dir(workdir)  # the result is recorded there
  config = restore.load_config(workdir)
  runs = lake_runs.read_runs(runs_dir, int(config.data.get("image_size", 28)))
  _, learner, variables, step = restore.load_for_eval(workdir, step)
  predict = jax.jit(learner.predict)
  errors = []
  for run in runs:
    n = len(run.train_x)
    episode = {"support_x": jnp.asarray(run.train_x), "support_y": jnp.arange(n),
               "query_x": jnp.asarray(run.test_x), "query_y": jnp.asarray(run.test_y),
               "classes": jnp.arange(n)}
    logits = predict(variables, episode, jax.random.PRNGKey(0))
    errors.append(float(np.mean(np.asarray(jnp.argmax(logits, -1)) != run.test_y)))
  result = {"error_rate": round(float(np.mean(errors)), 6), "runs": len(runs),
            "per_run": [round(e, 4) for e in errors], "step": step}
  loop.append_result(workdir, {"protocol": "lake_one_shot", **result})
  return result
