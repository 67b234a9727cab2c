r"""Figures of sweeps, runs and benchmarks (matplotlib, Agg), each as PNG and SVG.

    python -m experiments.plot shots  --workdir=ROOT [--x=shots] [--series=learner]
    python -m experiments.plot curves --workdir=ROOT | --workdir=WD1 --workdir=WD2 ...
    python -m experiments.plot speed  --input=bench.jsonl [--y=episodes_per_s] [--x=devices]
                                      [--label=algo,model]

shots: accuracy against shots, one line per learner (the varied keys other
  than x and seed, `--series`), each point the mean over seeds with its 95%
  CI as bars (over seeds when there are several, else over episodes; the
  numbers of `experiments.results --group_by`); ROOT/accuracy_vs_shots.*.
curves: training loss, training accuracy and validation accuracy (its 95% CI
  shaded) against step from each workdir's metrics.jsonl; a sweep root stands
  for all its points; learning_curves.* in the first --workdir.
speed: one JSON object per line (what the benchmarks print), --y against --x
  as lines per label, or without --x a bar per line; BENCH_speed.* beside
  the first --input.
`--out=DIR` writes elsewhere. The SVGs carry no date, so a figure redrawn
from the same numbers is the same file.
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags

from experiments import common
from fsl_jax.train import sweeps

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("workdir", [], "shots: the sweep root; curves: workdirs or sweep roots.")
flags.DEFINE_multi_string("input", [], "speed: files of benchmark JSON lines.")
flags.DEFINE_string("out", "", "Folder for the figures ('' = beside the data).")
flags.DEFINE_string("x", "", "shots: the x key (default shots); speed: the x key (default none: "
                    "bars).")
flags.DEFINE_list("series", [], "shots: keys telling lines apart (default: the varied keys "
                  "but x and seed).")
flags.DEFINE_list("y", [], "speed: the value keys (default: the first of "
                  "episodes_per_s, tasks_per_s, images_per_s, steps_per_s, tokens_per_s).")
flags.DEFINE_list("label", [], "speed: keys naming a row (default: the text keys that vary).")
flags.DEFINE_string("title", "", "Figure title.")

NAME_KEYS = ("name", "algo", "learner", "model", "backbone", "impl", "devices")
SPEED_KEYS = ("episodes_per_s", "tasks_per_s", "images_per_s", "steps_per_s", "tokens_per_s")
CURVES = (("loss", "training loss", None), ("accuracy", "training accuracy", None),
          ("val_accuracy", "validation accuracy", "val_ci95"))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  matplotlib.rcParams["svg.hashsalt"] = "fsl_jax"  # stable ids: same numbers, same SVG
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save(fig, base: str) -> list[str]:
  """BASE.png and BASE.svg; returns the paths."""
  os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
  paths = [base + ".png", base + ".svg"]
  fig.savefig(paths[0], dpi=150, bbox_inches="tight")
  fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
  _pyplot().close(fig)
  return paths


def _text(v) -> str:
  return sweeps.value_text(v) if v is not None else "?"


# ------------------------------------------------------------------ shots

def accuracy_vs_shots(root: str, out_dir: str, x: str = "shots", series: list[str] = (),
                      title: str = "") -> list[str]:
  rows, keys, missing = sweeps.collect(root)
  if not rows:
    raise ValueError(f"No results under {root}: run the sweep first.")
  if x not in rows[0]:
    raise ValueError(f"--x={x}: the results have no such key; use one of {', '.join(keys)}.")
  series = list(series) or [k for k in keys if k not in (x, "seed")]
  points = sweeps.group(rows, series + [x])
  lines = {}
  for p in points:
    lines.setdefault(tuple(_text(p.get(k)) for k in series), []).append(p)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, members in lines.items():
    members.sort(key=lambda p: p[x])
    ci = [0 if math.isnan(p["ci95"]) else 100 * p["ci95"] for p in members]
    ax.errorbar([p[x] for p in members], [100 * p["accuracy"] for p in members], yerr=ci,
                marker="o", capsize=4,
                label=", ".join(f"{k}={v}" for k, v in zip(series, label)) or None)
  xs = sorted({p[x] for p in points})
  if all(isinstance(v, (int, float)) for v in xs):
    ax.set_xticks(xs)
  ax.set_xlabel(x)
  lo, hi = ax.get_ylim()
  ax.set_ylim(max(lo, 0), min(hi, 100))  # a CI of a few seeds can reach past 0 or 100%
  ax.set_ylabel("accuracy (%), 95% CI")
  ax.set_title(title or f"{os.path.basename(root.rstrip('/'))}: accuracy against {x}")
  if series:
    ax.legend()
  ax.grid(alpha=0.3)
  if missing:
    print(f"{len(missing)} point(s) without results left out: {', '.join(missing)}",
          file=sys.stderr)
  return save(fig, os.path.join(out_dir or root, f"accuracy_vs_{x}"))


# ------------------------------------------------------------------ curves

def run_dirs(workdirs: list[str]) -> list[tuple[str, str]]:
  """(label, workdir) of each run with a metrics.jsonl; a sweep root stands for its points."""
  runs = []
  for wd in workdirs:
    wd = os.path.abspath(wd)
    if os.path.exists(os.path.join(wd, "metrics.jsonl")):
      runs.append((os.path.basename(wd.rstrip("/")), wd))
      continue
    found, _ = sweeps.discover(wd)
    runs += [(r["name"], r["workdir"]) for r in found
             if os.path.exists(os.path.join(r["workdir"], "metrics.jsonl"))]
  return runs


def learning_curves(workdirs: list[str], out_dir: str = "", title: str = "") -> list[str]:
  runs = run_dirs(workdirs)
  if not runs:
    raise ValueError(f"No metrics.jsonl in {', '.join(workdirs)} (or in the points of a sweep "
                     "there); train first.")
  data = {label: sweeps.read_jsonl(os.path.join(wd, "metrics.jsonl")) for label, wd in runs}
  panels = [c for c in CURVES if any(c[0] in r for rows in data.values() for r in rows)]
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
  for ax, (key, name, ci_key) in zip(axes[0], panels):
    for label, rows in data.items():
      rows = [r for r in rows if key in r]
      if not rows:
        continue
      steps = [r["step"] for r in rows]
      ys = [r[key] for r in rows]
      (line,) = ax.plot(steps, ys, marker="." if len(rows) < 30 else None, label=label)
      if ci_key and all(ci_key in r for r in rows) and len(rows) < 3:
        ax.errorbar(steps, ys, yerr=[r[ci_key] for r in rows], fmt="none", capsize=3,
                    color=line.get_color())
      elif ci_key and all(ci_key in r for r in rows):
        ax.fill_between(steps, [y - r[ci_key] for y, r in zip(ys, rows)],
                        [y + r[ci_key] for y, r in zip(ys, rows)], color=line.get_color(),
                        alpha=0.2)
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  if len(runs) <= 12:
    axes[0][-1].legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return save(fig, os.path.join(out_dir or os.path.abspath(workdirs[0]), "learning_curves"))


# ------------------------------------------------------------------ speed

def speed_chart(rows: list[dict], base: str, y: list[str] = (), x: str = "",
                label: list[str] = (), title: str = "") -> list[str]:
  """y against x per label (lines), or one bar group per row without x."""
  if not rows:
    raise ValueError("No benchmark rows to plot.")
  y = list(y) or [next((k for k in SPEED_KEYS if any(k in r for r in rows)), "")]
  if not y[0]:
    raise ValueError(f"No speed key in the rows; name one with --y (keys: "
                     f"{', '.join(sorted({k for r in rows for k in r}))}).")
  if not label:
    text = {k for r in rows for k, v in r.items() if isinstance(v, str) and k != x}
    label = ([k for k in sorted(text) if len({r.get(k) for r in rows}) > 1] or
             [k for k in NAME_KEYS if k in text][:2] or sorted(text)[:1])
  name = lambda r: ", ".join(_text(r.get(k)) for k in label) or "run"
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  if x:
    for key in y:
      lines = {}
      for r in rows:
        if key in r and x in r:
          lines.setdefault(name(r), []).append((r[x], r[key]))
      for lab, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=lab if len(y) == 1 else f"{lab}: {key}")
    ax.set_xlabel(x)
    ax.set_ylabel(y[0] if len(y) == 1 else "per second")
    ax.legend(fontsize=8)
  else:
    width = 0.8 / len(y)
    for j, key in enumerate(y):
      ax.barh([i + j * width for i in range(len(rows))], [r.get(key, 0) or 0 for r in rows],
              height=width, label=key)
    ax.set_yticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_yticklabels([name(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(y[0] if len(y) == 1 else "per second")
    if len(y) > 1:
      ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  ax.set_title(title or ("speed" if len(y) > 1 else y[0]))
  return save(fig, base)


def read_bench(paths: list[str]) -> list[dict]:
  """The JSON objects of the lines of each file (other lines skipped: logs in between)."""
  rows = []
  for path in paths:
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line.startswith("{"):
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError:
            pass
  return rows


def main(argv):
  kinds = ("shots", "curves", "speed")
  if len(argv) != 2 or argv[1] not in kinds:
    raise app.UsageError(f"Name one figure: python -m experiments.plot {'|'.join(kinds)} ... "
                         "(see --help).")
  kind = argv[1]
  if kind in ("shots", "curves") and not FLAGS.workdir:
    raise app.UsageError(f"{kind} needs --workdir.")
  if kind == "shots":
    paths = accuracy_vs_shots(os.path.abspath(FLAGS.workdir[0]), FLAGS.out, FLAGS.x or "shots",
                              FLAGS.series, FLAGS.title)
  elif kind == "curves":
    paths = learning_curves(FLAGS.workdir, FLAGS.out, FLAGS.title)
  else:
    if not FLAGS.input:
      raise app.UsageError("speed needs --input=FILE (benchmark JSON lines).")
    first = os.path.abspath(FLAGS.input[0])
    stem = os.path.splitext(os.path.basename(first))[0]
    base = os.path.join(FLAGS.out or os.path.dirname(first), f"{stem}_speed")
    paths = speed_chart(read_bench(FLAGS.input), base, FLAGS.y, FLAGS.x, FLAGS.label,
                        FLAGS.title)
  for p in paths:
    print(p)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
