"""Start-up shared by the binaries: logging, distributed init, readable errors.

Every binary runs as `app.run(common.friendly(main), flags_parser=common.parse_flags)`:
a bad flag, config file, config value, input file or checkpoint ends the run
with one line `error: ...` naming the fix and exit code 2 (no traceback;
`FSL_JAX_TRACEBACK=1` shows it). `FSL_JAX_LOG_LEVEL` (default `warning`)
sets absl's log level for library messages; training progress is always
printed on stderr.
"""

import difflib
import functools
import importlib.util
import os
import sys

from absl import flags
from absl import logging

EXIT_USAGE = 2

# Multi-process jobs (fsl_jax.distributed): every binary takes these.
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed.initialize(): auto (on with --coordinator, "
                  "FSL_JAX_DISTRIBUTED=1, or under a TPU pod / Slurm / OpenMPI launcher), on, off.")
flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, for clusters JAX does not "
                    "detect (with --num_processes and --process_id).")
flags.DEFINE_integer("num_processes", 0, "Processes in the job (with --coordinator).")
flags.DEFINE_integer("process_id", -1, "This process's index, 0..num_processes-1 "
                     "(with --coordinator).")


def setup():
  # Our progress goes to stderr via fsl_jax.train.metrics.log; keep library INFO quiet.
  logging.set_verbosity(os.environ.get("FSL_JAX_LOG_LEVEL", "warning"))
  from fsl_jax import distributed  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    how = distributed.initialize(f.coordinator, f.num_processes, f.process_id, f.distributed)
  except ValueError as err:
    fail(one_line(err))
  if how:
    import jax  # pylint: disable=g-import-not-at-top
    logging.warning("jax.distributed (%s): process %d of %d, %d of %d devices local", how,
                    jax.process_index(), jax.process_count(), jax.local_device_count(),
                    jax.device_count())
  # jax_threefry_partitionable on: a seed draws the same keys and episodes on every JAX.
  from fsl_jax.train import loop  # pylint: disable=g-import-not-at-top
  loop.configure_jax()


def one_line(err: BaseException) -> str:
  """The error's message on one line (KeyError's repr quotes dropped)."""
  msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
  if isinstance(err, OSError) and err.filename and str(err.filename) not in str(msg):
    msg = f"{msg}: {err.filename}"
  msg = " ".join(str(msg).split())
  return msg or type(err).__name__


def fail(msg: str):
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _expected_errors() -> tuple:
  """What a user's input can raise: reported in one line, never with a traceback."""
  errors = [ValueError, KeyError, OSError]  # OSError: missing/unreadable/unwritable files
  try:
    from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top
    errors.append(UnidentifiedImageError)
  except ImportError:
    pass
  return tuple(errors)


def friendly(main):
  """Reports expected user errors (bad data, config, files, checkpoints) in one line."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except _expected_errors() as err:
      if os.environ.get("FSL_JAX_TRACEBACK") == "1":
        raise
      fail(one_line(err))

  return wrapped


# ------------------------------------------------------------------ flags

def _config_keys(argv) -> list[str]:
  """The dotted keys of the config file named by --config=PATH[:ARG] (best effort)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  path, _, arg = spec.partition(":")
  try:
    mod_spec = importlib.util.spec_from_file_location("_fsl_jax_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    config = module.get_config(arg or None) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  (the parse error is reported instead)
    return []

  def walk(node, prefix):
    for k in node.keys():
      v = node[k]
      if hasattr(v, "keys"):
        yield from walk(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}"

  return list(walk(config, ""))


def _key_hint(bad: str, keys: list[str]) -> str:
  leaf = bad.rsplit(".", 1)[-1]
  close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
  close = close or difflib.get_close_matches(bad, keys, n=3, cutoff=0.6)
  close = close or [k for k in keys
                    if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)]
  return f" Did you mean {' or '.join('--config.' + k for k in close[:3])}?" if close else ""


def parse_flags(argv):
  """absl flag parsing whose errors (unknown or mistyped --config.key, a config file
  that does not load, an unknown :variant) are one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as err:
    bad = [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]
    keys = _config_keys(argv)
    unknown = [b for b in bad if keys and b not in keys] or bad
    hint = "".join(_key_hint(b, keys) for b in unknown)
    msg = one_line(err).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    fail(f"unknown config key among {['config.' + b for b in unknown]}: {msg}.{hint} Keys are "
         "case-sensitive and new keys cannot be added from the command line.")
  except flags.Error as err:
    text = str(err)
    if "Traceback" in text:  # ml_collections wraps a config file's exception with its traceback
      last = [l.strip() for l in text.splitlines() if l.strip()][-1]
      fail(f"could not load the config file: {last}")
    fail(f"{one_line(err)} (see --helpfull; a --config.KEY takes the type of the config "
         "file's value)")
  except Exception as err:  # pylint: disable=broad-except  (the config file's own code)
    if os.environ.get("FSL_JAX_TRACEBACK") == "1":
      raise
    fail(f"could not load the config: {type(err).__name__}: {one_line(err)}")
