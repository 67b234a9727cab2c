"""Shared test fixtures.

Tests that read the real data in ../shared take the `shared_dir` fixture: it
skips when FSL_JAX_SHARED is unset, and fails instead when
FSL_JAX_REQUIRE_SHARED=1 (as in CI), so CI can never silently skip them.
"""

import os
import pathlib

import pytest

# Tests run on CPU with tiny shapes; keep XLA from grabbing every core twice
# over when pytest-xdist runs two workers.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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
