"""Sweeps beside configs: points as override dicts, their names, configs and state.

A config file may define `get_sweep(arg)` next to `get_config(arg)` (as in
big_vision): a list of override dicts, one per run ("point"), usually built
with `product` and `zip_`:

    def get_sweep(arg=None):
      return sweeps.product({"arg.learner": ["protonet", "maml"], "train.shots": [1, 5]},
                            seed=range(2))

A key is a dotted config path (`seed`, `train.shots`, `learner_kwargs.inner_lr`),
passed to the binary as `--config.KEY=VALUE`, or `arg.NAME`: NAME=VALUE joins
the config file's argument (`--config=FILE:runlocal,learner=maml`), for
what changes the config's structure (another learner's recipe) rather than
one value; `parse_arg` reads such arguments in `get_config`. Keyword axes
spell the dots of a path as `__` (`train__shots=[1, 5]`).

Each point runs in WORKDIR/<name>, its name built from its own overrides
alone (`learner=maml,shots=1,seed=0`), so adding points to a sweep never
renames the others. `experiments.sweep` runs the points (`point_state` tells
a finished one), `experiments.results` tabulates them and `experiments.plot`
draws them (`collect`, `group`). Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import socket
import tempfile
import types
from typing import Any, Iterable

from fsl_jax.train import options

ARG_PREFIX = "arg."
MANIFEST = "sweep.json"
LOG = "sweep.log"
NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME = 120


# ------------------------------------------------------------ definitions

def _axes(parts: tuple, axes: dict) -> list[list[dict]]:
  """Each part (a sweep, i.e. a list of dicts, or a dict of axes) and keyword axis as a sweep."""
  sweeps = []
  named = {}
  for part in parts:
    if isinstance(part, dict):
      named.update(part)
    elif isinstance(part, (list, tuple)) and all(isinstance(p, dict) for p in part):
      sweeps.append([dict(p) for p in part])
    else:
      raise TypeError(f"A sweep part is a dict of axes {{key: [values]}} or a list of override "
                      f"dicts; got {type(part).__name__}.")
  named.update({k.replace("__", "."): v for k, v in axes.items()})
  for key, values in named.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
      raise TypeError(f"Axis {key!r} must be a list of values, got {values!r}; write "
                      f"{key}=[{values!r}] for one value.")
    sweeps.append([{key: v} for v in values])
  return sweeps


def _merge(dicts: Iterable[dict]) -> dict:
  out = {}
  for d in dicts:
    both = sorted(set(out) & set(d))
    if both:
      raise ValueError(f"Key(s) {both} are set by two axes of one sweep; set each key once.")
    out.update(d)
  return out


def product(*parts, **axes) -> list[dict]:
  """Every combination of the axes, the first axis varying slowest.

  product({"arg.learner": ["protonet", "maml"]}, train__shots=[1, 5], seed=range(2))
  -> 8 dicts, {"arg.learner": "protonet", "train.shots": 1, "seed": 0} first. A part
  may also be a sweep (a list of dicts, e.g. a `zip_`), combined as one axis.
  """
  return [_merge(combo) for combo in itertools.product(*_axes(parts, axes))]


def zip_(*parts, **axes) -> list[dict]:
  """The axes side by side: the i-th point takes every axis's i-th value (equal lengths)."""
  sweeps = _axes(parts, axes)
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) > 1:
    raise ValueError(f"zip_ needs axes of one length; got lengths {lengths}.")
  return [_merge(combo) for combo in zip(*sweeps)]


def parse_arg(arg: str | None, **defaults) -> types.SimpleNamespace:
  """A config file's argument 'runlocal,learner=maml,shots=5' as a namespace.

  Each name must be one of `defaults`, whose value gives its type; a bare
  word sets a boolean to True. For `get_config(arg)` of a config with a sweep.
  """
  values = dict(defaults)
  for word in filter(None, (w.strip() for w in (arg or "").split(","))):
    key, eq, text = (s.strip() for s in word.partition("="))
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; use comma-separated "
                       f"words from {', '.join(sorted(defaults))} (NAME or NAME=VALUE).")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"Config argument {key!r} takes a value: {key}=VALUE.")
      values[key] = True
    else:
      values[key] = options.coerce(text, default, f"Config argument {key}")
  return types.SimpleNamespace(**values)


# ------------------------------------------------------------ names, flags

def value_text(value: Any) -> str:
  """A value as the binary's command line spells it (what config_flags parses)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def _name_text(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "-".join(_name_text(v) for v in value)
  return value_text(value)


def display_key(key: str) -> str:
  """'arg.learner' -> 'learner' (the argument's name); config paths unchanged."""
  return key[len(ARG_PREFIX):] if key.startswith(ARG_PREFIX) else key


def short_keys(keys: Iterable[str]) -> dict[str, str]:
  """{key: its last dotted part where no other key ends the same, else the whole path}."""
  keys = list(keys)
  leaf = {k: display_key(k).rsplit(".", 1)[-1] for k in keys}
  count = {}
  for v in leaf.values():
    count[v] = count.get(v, 0) + 1
  return {k: leaf[k] if count[leaf[k]] == 1 else display_key(k) for k in keys}


def point_name(overrides: dict) -> str:
  """The point's directory name, from its overrides alone: 'learner=maml,shots=1,seed=0'.

  Deterministic and filesystem-safe: characters outside [A-Za-z0-9._+-] in a
  value become '-', and such a name, or one longer than 120 characters, ends
  with a hash of the overrides so no two points share it.
  """
  if not overrides:
    return "base"
  short = short_keys(overrides)
  items, changed = [], False
  for key, value in overrides.items():
    text = _name_text(value)
    safe = NAME_CHARS.sub("-", text) or "-"
    changed |= safe != text
    items.append(f"{short[key]}={safe}")
  name = ",".join(items)
  if changed or len(name) > MAX_NAME:
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode())
    name = f"{name[:MAX_NAME - 14]},hash={digest.hexdigest()[:8]}"
  return name


@dataclasses.dataclass
class Point:
  """One run of a sweep: WORKDIR/name, trained with `config_spec` and `flags`."""
  index: int
  name: str
  overrides: dict          # the sweep's dict, keys as written
  config_spec: str         # FILE[:arg] with the point's arg.* keys added
  flags: list[str]         # --config.KEY=VALUE of the point's config keys, then the shared ones

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.name)

  def log(self, root: str) -> str:
    """WORKDIR/sweep.log, the point's output (per host in a multi-host job)."""
    if os.environ.get("FSL_JAX_DISTRIBUTED") == "1":
      return os.path.join(self.workdir(root), f"sweep.{socket.gethostname()}.log")
    return os.path.join(self.workdir(root), LOG)

  def argv(self, root: str) -> list[str]:
    """The binary's arguments (after `python -m BINARY`)."""
    return [f"--config={self.config_spec}", f"--workdir={self.workdir(root)}", *self.flags]


def split_spec(spec: str) -> tuple[str, str]:
  """'FILE[:arg]' -> (FILE, arg)."""
  path, _, arg = spec.partition(":")
  return path, arg


def load_module(path: str) -> types.ModuleType:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={path}: no such config file.")
  spec = importlib.util.spec_from_file_location("_fsl_jax_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_points(spec: str, shared_flags: Iterable[str] = ()) -> list[Point]:
  """The points of the config file's `get_sweep(arg)`, with flags shared by all of them."""
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(arg); add one returning a list of override "
                     "dicts (fsl_jax.train.sweeps.product / zip_).")
  raw = module.get_sweep(arg or None)
  if not isinstance(raw, (list, tuple)) or not all(isinstance(d, dict) for d in raw) or not raw:
    raise ValueError(f"{path}: get_sweep({arg!r}) must return a non-empty list of dicts.")
  shared_flags = list(shared_flags)
  shared_keys = {f.split("=", 1)[0][len("--config."):] for f in shared_flags}
  points, seen = [], {}
  for i, overrides in enumerate(raw):
    arg_words = [arg] if arg else []
    flags = []
    for key, value in overrides.items():
      if key.startswith(ARG_PREFIX):
        text = value_text(value)
        if "," in text or ":" in text or "=" in text:
          raise ValueError(f"{key}={text!r}: a config argument's value cannot hold ',', ':' "
                           "or '='.")
        arg_words.append(f"{display_key(key)}={text}")
      else:
        if key in shared_keys:
          raise ValueError(f"--config.{key} is set by the sweep's points; drop it from the "
                           "command line or from get_sweep.")
        flags.append(f"--config.{key}={value_text(value)}")
    name = point_name(overrides)
    if name in seen:
      raise ValueError(f"Points {seen[name]} and {i} of {path} are both {name!r}; every point "
                       "needs its own overrides.")
    seen[name] = i
    config_spec = path + (":" + ",".join(arg_words) if arg_words else "")
    points.append(Point(i, name, dict(overrides), config_spec, flags + shared_flags))
  return points


def varied_keys(points: list[Point]) -> list[str]:
  """The override keys whose values differ between points, in first-seen order."""
  keys = list(dict.fromkeys(k for p in points for k in p.overrides))
  missing = object()
  return [k for k in keys
          if len({json.dumps(p.overrides.get(k, missing), default=repr) for p in points}) > 1]


# ------------------------------------------------------------ configs, state

def point_config(point: Point):
  """The ConfigDict the binary will run with: the same config_flags parse of the same argv."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["sweep", f"--config={point.config_spec}", *point.flags]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv, lock_config=True)
  values(argv)
  return values.config


def config_json(config) -> dict:
  """The config as the harness writes it to WORKDIR/config.json."""
  return json.loads(config.to_json_best_effort())


def read_jsonl(path: str) -> list[dict]:
  """The JSON objects of a file's lines; none when it is missing, a line cut short (a run
  killed while writing it) skipped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        pass
  return rows


def read_json(path: str) -> dict | None:
  """A JSON file's object, or None when it is missing or cut short."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def final_result(workdir: str, config: dict | None = None) -> dict | None:
  """The training binary's own evaluation in WORKDIR/results.jsonl: the last row at the
  config's final step on its eval split, ways and shots (not the rows `experiments.evaluate`
  appends with other settings); without a config, the last row with an accuracy."""
  rows = [r for r in read_jsonl(os.path.join(workdir, "results.jsonl")) if "accuracy" in r]
  if config:
    ev, steps = config.get("eval", {}), config.get("train", {}).get("steps")
    same = lambda r: all(r.get(k) == ev.get(k) for k in ("split", "ways", "shots"))
    rows = [r for r in rows if r.get("step") == steps and same(r) and "dataset" not in r]
  return rows[-1] if rows else None


def point_state(point: Point, root: str, config=None) -> tuple[str, str]:
  """('finished' | 'partial' | 'new', a few words) for the point's workdir.

  Finished: results.jsonl holds the evaluation at the config's last step
  (train.steps) and config.json is the config the point runs with now. A
  point whose config changed since is run again: the binary resumes it (and
  only evaluates again when nothing but eval.* changed) or refuses the
  workdir, naming the changed keys.
  """
  workdir = point.workdir(root)
  want = config_json(config if config is not None else point_config(point))
  have = read_json(os.path.join(workdir, "config.json"))
  result = final_result(workdir, want)
  if result is not None and have == want:
    return "finished", f"finished at step {result['step']}, accuracy {result['accuracy']:.4f}"
  steps = checkpoint_steps(workdir)
  if not steps and have is None:
    return "new", "new"
  what = f"resumes from step {steps[-1]}" if steps else "restarts (no checkpoint yet)"
  if have is not None and have != want:
    what += " (its config changed since: the binary resumes or names the changed keys)"
  return "partial", what


# ------------------------------------------------------------ manifest

def write_manifest(root: str, spec: str, binary: str, shared_flags: list[str],
                   points: list[Point]) -> str:
  """ROOT/sweep.json: the sweep's definition, read by `experiments.results` and `plot`."""
  varied = varied_keys(points)
  short = short_keys(dict.fromkeys(k for p in points for k in p.overrides))
  manifest = {
      "config": spec, "binary": binary, "shared_flags": shared_flags,
      "varied": [short[k] for k in varied],
      "points": [{"index": p.index, "name": p.name, "config": p.config_spec, "flags": p.flags,
                  "overrides": {short[k]: v for k, v in p.overrides.items()}}
                 for p in points],
  }
  path = os.path.join(root, MANIFEST)
  os.makedirs(root, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MANIFEST}.")  # every host of a pod writes it
  with os.fdopen(fd, "w") as f:
    json.dump(manifest, f, indent=1, default=str)
  os.replace(tmp, path)
  return path


def _flat(d: dict) -> dict:
  """A config's keys, lists as their JSON text (hashable, comparable)."""
  return {k: json.dumps(v) if isinstance(v, list) else v
          for k, v in options.flatten(d).items()}


# Config keys that never tell runs apart in a table (where data lives, how often it logs).
_NOT_VARIED = ("data.data_dir", "data.cache_dir", "data.download", "log_every",
               "checkpoint_every", "keep_checkpoints", "profile_steps")


def discover(root: str) -> tuple[list[dict], list[str]]:
  """([{name, workdir, keys: {key: value}}], varied keys) of the runs under ROOT.

  From ROOT/sweep.json when a sweep wrote one; otherwise every folder under
  ROOT holding a config.json (or ROOT itself), keyed by the config values that
  differ between them (keys only some runs have, another learner's own kwargs,
  follow from those and are left out).
  """
  path = os.path.join(root, MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      manifest = json.load(f)
    runs = [{"name": p["name"], "workdir": os.path.join(root, p["name"]),
             "keys": p["overrides"]} for p in manifest["points"]]
    return runs, list(manifest["varied"])
  dirs = sorted(os.path.dirname(os.path.join(dp, "config.json")) for dp, _, files in os.walk(root)
                if "config.json" in files)
  configs = {d: _flat(read_json(os.path.join(d, "config.json")) or {}) for d in dirs}
  keys = list(dict.fromkeys(k for c in configs.values() for k in c))
  # Keys every run has (not another learner's own kwargs) whose values differ.
  varied = [k for k in keys if not k.startswith(_NOT_VARIED)
            and all(k in c for c in configs.values())
            and len({json.dumps(c[k], default=str) for c in configs.values()}) > 1]
  short = short_keys(varied)
  runs = [{"name": os.path.relpath(d, root), "workdir": d,
           "keys": {short[k]: configs[d].get(k) for k in varied}} for d in dirs]
  return runs, [short[k] for k in varied]


# ------------------------------------------------------------ statistics

def t_quantile(df: int, q: float = 0.975) -> float:
  """Student's t quantile (scipy, a JAX dependency); 1.96 for large df."""
  try:
    from scipy import stats  # pylint: disable=g-import-not-at-top
    return float(stats.t.ppf(q, df))
  except ImportError:
    return 1.96


def summarize(values: list[float]) -> dict:
  """n, mean, sample std and the 95% CI of the mean (Student's t over n - 1 dof)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return {"n": n, "mean": mean, "std": 0.0, "ci95": float("nan")}
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  return {"n": n, "mean": mean, "std": std, "ci95": t_quantile(n - 1) * std / math.sqrt(n)}


# ------------------------------------------------------------ results

def collect(root: str) -> tuple[list[dict], list[str], list[str]]:
  """(one row per point with a result, the varied keys, the names of points without one).

  A row: the point's varied keys, accuracy, ci95, episodes, split, ways,
  shots (the evaluation's, unless a varied key is so named), step, point
  (its name), workdir.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--workdir={root} is not a folder.")
  runs, keys = discover(root)
  rows, missing = [], []
  for run in runs:
    res = final_result(run["workdir"], read_json(os.path.join(run["workdir"], "config.json")))
    if res is None:
      missing.append(run["name"])
      continue
    row = {k: run["keys"].get(k) for k in keys}
    for k in ("split", "ways", "shots"):
      row.setdefault(k, res.get(k))
    row.update({"accuracy": res["accuracy"], "ci95": res["ci95"], "episodes": res["episodes"],
                "step": res.get("step"), "point": run["name"], "workdir": run["workdir"]})
    rows.append(row)
  return rows, keys, missing


def group(rows: list[dict], by: list[str]) -> list[dict]:
  """One row per value of `by`: mean, std and 95% CI of the points' accuracies."""
  groups = {}
  for r in rows:
    groups.setdefault(tuple(json.dumps(r.get(k), default=str) for k in by), []).append(r)
  out = []
  for members in groups.values():
    s = summarize([m["accuracy"] for m in members])
    one = s["n"] == 1
    out.append({
        **{k: members[0].get(k) for k in by}, "runs": s["n"], "accuracy": round(s["mean"], 6),
        "std": round(s["std"], 6),
        "ci95": members[0]["ci95"] if one else round(s["ci95"], 6),
        "ci_over": "episodes" if one else "runs",
        "episode_ci95": round(sum(m["ci95"] for m in members) / s["n"], 6),
        "episodes": members[0]["episodes"] if len({m["episodes"] for m in members}) == 1 else None,
        "points": [m["point"] for m in members]})
  return out
