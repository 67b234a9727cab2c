"""Run hygiene of the training harness (fsl_jax/train/loop.py) on a toy step:
jax_threefry_partitionable forced on and recorded, a step loop without
implicit host<->device transfers (FSL_JAX_TRANSFER_GUARD), the run key's
stream folded in inside the step, and profile_steps=A:B checked before
anything runs. The runlocal ProtoNet run under the guard, with a trace and a
compile count, is tests/test_harness.py::test_step_and_evaluator_compile_once.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fsl_jax.train import builders, loop
from fsl_jax.train.checkpoint import Checkpointer


def _config(steps=4, **keys):
  c = ml_collections.ConfigDict()
  c.train = ml_collections.ConfigDict({"steps": steps})
  c.log_every, c.checkpoint_every, c.profile_steps = 1, 2, ""
  for k, v in keys.items():
    c[k] = v
  return c


def _harness(tmp_path, config=None, rng=0):
  config = config or _config()
  return loop.Harness(config, str(tmp_path / "wd"), binary="toy",
                      loop=loop.LoopConfig.from_config(config), rng=rng)


def _step(state, batch, inputs):
  """A toy step: its metric `x` is the batch's sum (host batches) or uniform(key)."""
  x = jnp.sum(batch["x"]) if isinstance(batch, dict) else jax.random.uniform(batch)
  return {**state, "w": state["w"] + x * inputs}, {"x": x}


def _state():
  return {"w": jnp.zeros((), jnp.float32), "step": jnp.zeros((), jnp.int32)}


def _logged(tmp_path, key):
  rows = [json.loads(l) for l in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
  return [r[key] for r in rows]


# ------------------------------------------------------------ threefry

def test_threefry_partitionable_is_turned_on_and_recorded(tmp_path):
  jax.config.update("jax_threefry_partitionable", False)
  try:
    harness = _harness(tmp_path)
    assert jax.config.jax_threefry_partitionable
    # The run key of seed 0 as every run has drawn it (with the flag off:
    # [2718843009, 1272950319], other episodes for the same seed).
    np.testing.assert_array_equal(builders.run_key(0), [928981903, 3453687069])
  finally:
    jax.config.update("jax_threefry_partitionable", True)
  assert harness.meta["jax"] == {"version": jax.__version__, "threefry_partitionable": True}
  harness.train(_state(), _step, inputs=jnp.float32(1.0))
  meta = Checkpointer(str(tmp_path / "wd" / "checkpoints")).restore_meta()
  assert meta["jax"]["threefry_partitionable"] is True


# ------------------------------------------------------------ transfer guard

def test_key_stream_and_host_batches_under_the_transfer_guard(tmp_path, monkeypatch):
  monkeypatch.setenv(loop.TRANSFER_GUARD_ENV, "disallow")
  # Without batches, step s draws fold_in(rng, s - 1), folded in inside the step.
  harness = _harness(tmp_path / "key", rng=7)
  final = harness.train(_state(), _step, inputs=jnp.float32(1.0))
  want = [float(jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(7), s)))
          for s in range(4)]
  assert _logged(tmp_path / "key", "x") == want
  assert int(final["step"]) == 4 and float(final["w"]) == pytest.approx(sum(want), rel=1e-6)
  assert harness.step_fn._cache_size() == 1  # pylint: disable=protected-access

  # Host batches (numpy) go to the device explicitly, so the guard lets them through.
  harness = _harness(tmp_path / "host")
  batches = lambda s: {"x": np.full((3,), s, np.float32)}
  final = harness.train(_state(), _step, inputs=jnp.float32(2.0), batches=batches)
  assert _logged(tmp_path / "host", "x") == [0.0, 3.0, 6.0, 9.0]
  assert float(final["w"]) == 36.0


def test_transfer_guard_fails_an_implicit_transfer(tmp_path, monkeypatch):
  # numpy `inputs` are copied to the device at every step: the guard reports it.
  monkeypatch.setenv(loop.TRANSFER_GUARD_ENV, "disallow")
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    _harness(tmp_path / "a").train(_state(), _step, inputs=np.float32(1.0))
  monkeypatch.delenv(loop.TRANSFER_GUARD_ENV)
  final = _harness(tmp_path / "b").train(_state(), _step, inputs=np.float32(1.0))
  assert int(final["step"]) == 4


def test_bad_transfer_guard_level_is_refused(tmp_path, monkeypatch):
  monkeypatch.setenv(loop.TRANSFER_GUARD_ENV, "strict")
  with pytest.raises(loop.ConfigError, match="FSL_JAX_TRANSFER_GUARD='strict': use one of "
                     "allow, log, disallow"):
    _harness(tmp_path)
  assert not (tmp_path / "wd").exists()  # refused before the workdir is made


# ------------------------------------------------------------ profile_steps

@pytest.mark.parametrize("value,want", [("", None), ("0:1", (0, 1)), (" 3 : 5 ", (3, 5)),
                                        ("1:6", (1, 6))])
def test_profile_steps_values(value, want):
  assert loop.LoopConfig.from_config(_config(steps=6, profile_steps=value)).profile_steps == want


@pytest.mark.parametrize("value,needle", [
    ("10", "profile_steps='10' is not A:B"),
    ("a:b", "profile_steps='a:b' is not A:B"),
    ("-1:2", "profile_steps='-1:2' is not A:B"),
    ("3:3", "B=3 must be above A=3"),
    ("4:2", "B=2 must be above A=4"),
    ("2:7", "ends after the run's last step (train.steps=6)"),
])
def test_bad_profile_steps_name_the_fix(value, needle):
  with pytest.raises(loop.ConfigError) as err:
    loop.LoopConfig.from_config(_config(steps=6, profile_steps=value))
  assert needle in str(err.value)
  assert "set --config.profile_steps=A:B with 0 <= A < B <= 6 (train.steps)" in str(err.value)


def test_profile_steps_may_change_on_resume():
  assert loop.config_changes({"profile_steps": ""}, {"profile_steps": "2:4"}, ()) == []
  assert loop.config_changes({}, {"profile_steps": ""}, ()) == []  # a checkpoint from before
