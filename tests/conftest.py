"""Shared test fixtures.

Tests that read the real data in ../shared take the `shared_dir` fixture: it
skips when FSL_JAX_SHARED is unset, and fails instead when
FSL_JAX_REQUIRE_SHARED=1 (as in CI), so CI can never silently skip them.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

# Tests run on CPU with tiny shapes; keep XLA from grabbing every core twice
# over when pytest-xdist runs two workers.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile far more than they run, so two XLA CPU options trade a slower
# run of tiny programs for shorter compilations (the programs tested are the
# ones that train: XLA's HLO passes -- fusion, layout -- still run):
# - LLVM's optimisations at level 0: about a third off (13.9 -> 8.8 s for the
#   MAML runlocal step);
# - the older elemental fusion emitters instead of XLA:CPU's MLIR fusion
#   emitters (--xla_cpu_use_fusion_emitters=false): MAML's vmapped and looped
#   train steps 11.8-15.7 -> 6.4-8.0 s, and tests/test_backbones.py,
#   test_layers.py and test_metric_learners.py together 139 -> 89 s (-n 2) on
#   the 2-core CPU (2026-12-03).
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

_CACHE = "JAX_COMPILATION_CACHE_DIR"
_DATA_CACHE = "FSL_JAX_CACHE_DIR"


def pytest_configure(config):
  # Decoded-array caches (fsl_jax.data.cache) of the test run go to a
  # temporary folder, never to the user's ~/.cache/fsl_jax.
  if _DATA_CACHE not in os.environ:
    os.environ[_DATA_CACHE] = tempfile.mkdtemp(prefix="fsl_jax_data_cache_")
    config._fsl_jax_data_cache = os.environ[_DATA_CACHE]  # pylint: disable=protected-access
  # One persistent XLA compilation cache per test run, shared by the xdist
  # workers (started after this, they inherit the variable) and the binaries'
  # subprocesses: many tests compile the same programs (the runlocal configs)
  # in fresh processes. Programs still run; only their compilation is reused.
  if _CACHE not in os.environ:
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="fsl_jax_xla_cache_")
    config._fsl_jax_cache = os.environ[_CACHE]  # pylint: disable=protected-access
  # Every compilation, not only those over JAX's default 1 s: at the test
  # shapes most compile in under a second and are compiled again by the next
  # process (a rerun after a kill, a binary's subprocess). tests/test_binaries.py
  # and test_harness.py: 218 -> 187 s (-n 2, 2-core CPU, 2026-12-03).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
  for attr in ("_fsl_jax_cache", "_fsl_jax_data_cache"):
    cache = getattr(config, attr, None)
    if cache:
      shutil.rmtree(cache, ignore_errors=True)


def _shared_root():
  root = os.environ.get("FSL_JAX_SHARED")
  required = os.environ.get("FSL_JAX_REQUIRE_SHARED") == "1"
  if not root:
    if required:
      pytest.fail("FSL_JAX_REQUIRE_SHARED=1 but FSL_JAX_SHARED is unset.")
    pytest.skip("FSL_JAX_SHARED not set: real-data test skipped.")
  path = pathlib.Path(root).resolve()
  if not path.is_dir():
    msg = f"FSL_JAX_SHARED={root} is not a directory."
    if required:
      pytest.fail(msg)
    pytest.skip(msg)
  return path


@pytest.fixture
def shared_dir() -> pathlib.Path:
  """The ../shared folder (FSL_JAX_SHARED); has data/ and tfds/."""
  return _shared_root()


_EMITTERS = "--xla_cpu_use_fusion_emitters"


class ProductionXla:
  """XLA:CPU as users compile: the default (MLIR) fusion emitters, not the tests' faster-compiling
  elemental ones (see the top of this file).

  For tests of bit-exact (or 1e-6) agreement between two programs that compute the same numbers
  in another arrangement -- the host and device episode paths, one and two devices: that
  agreement is what users rely on, under their compiler; the elemental emitters round some
  fused elementwise chains differently in the two programs (measured 2026-12-03: one ulp in
  3.7% of color-jittered pixels, 2.7e-6 on one of 16 parameters after two MAML steps on two
  devices). `here` says whether this process already compiles so; otherwise `rerun()` runs the
  calling test again in a subprocess that does, and `env()` is the environment for binaries.
  """

  def __init__(self, nodeid: str):
    self.nodeid = nodeid

  @property
  def here(self) -> bool:
    return f"{_EMITTERS}=false" not in os.environ.get("XLA_FLAGS", "")

  def env(self, *extra_flags: str) -> dict:
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_EMITTERS)
            and not any(f.split("=")[0] == e.split("=")[0] for e in extra_flags)]
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": " ".join(kept + [f"{_EMITTERS}=true", *extra_flags])}

  def rerun(self, *extra_flags: str) -> None:
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           self.nodeid], cwd=root, capture_output=True, text=True, timeout=900,
                          env=self.env(*extra_flags))
    assert proc.returncode == 0 and "1 passed" in proc.stdout, (
        proc.stdout[-3000:] + proc.stderr[-3000:])


@pytest.fixture
def production_xla(request) -> ProductionXla:
  return ProductionXla(request.node.nodeid)
