"""Start-up shared by the binaries: logging, distributed init, readable errors."""

import functools
import os
import sys

from absl import logging


def setup():
  # Our progress goes to stderr via fsl_jax.train.metrics.log; keep library INFO quiet.
  logging.set_verbosity(os.environ.get("FSL_JAX_LOG_LEVEL", "warning"))
  if os.environ.get("FSL_JAX_DISTRIBUTED") == "1":  # multi-host: TPU pods, multi-node GPU
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()


def friendly(main):
  """Reports expected user errors (bad data, config, missing checkpoint) in one line."""
  from fsl_jax.data.sources import DataError  # pylint: disable=g-import-not-at-top

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (DataError, FileNotFoundError, ValueError, KeyError) as err:
      if os.environ.get("FSL_JAX_TRACEBACK") == "1":
        raise
      print(f"error: {err}", file=sys.stderr)
      sys.exit(2)

  return wrapped


def parse_flags(argv):
  """absl flag parsing that reports an unknown --config.key in one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as err:
    bad = [a.split("=", 1)[0][2:] for a in argv if a.startswith("--config.")]
    msg = str(err).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"error: unknown config key among {bad}: {msg}. Check the spelling against the "
          "config file (keys are case-sensitive); new keys cannot be added from the command line.",
          file=sys.stderr)
    sys.exit(2)
