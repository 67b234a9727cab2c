r"""One table of a sweep's results: every point's final evaluation, or groups of points.

    python -m experiments.results --workdir=ROOT [--format=md|csv|json|latex]
        [--group_by=learner,shots] [--out=PATH|-]

Reads ROOT/sweep.json (written by `experiments.sweep`) for the points and the
keys they vary, or, without it, every run folder under ROOT (a config.json),
keyed by the config values that differ between them. A point's result is the
training binary's own final evaluation in its results.jsonl (E episodes drawn
from the fixed eval.seed, the same episodes for every checkpoint and point, so
rows are comparable; rows that `experiments.evaluate` appended with other
settings are left out).

One row per point by default: accuracy and its 95% CI over episodes
(1.96 std / sqrt(E)). `--group_by=KEYS` makes one row per value of KEYS,
over the other varied keys (the seeds): mean ± sample std of the points'
accuracies and the 95% CI of that mean (Student's t, n - 1 dof); a group of
one point shows its CI over episodes (column `ci_over`). Columns are named
after the varied keys. `json` is one JSON object per row per line;
csv and json hold fractions, md and latex percentages. The table is printed
and written to ROOT/table[_by_KEYS].{md,csv,jsonl,tex} (`--out`; '-' only
prints).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys

from absl import app, flags

from experiments import common
from fsl_jax.train import sweeps

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep root (ROOT of experiments.sweep) or a folder of runs.")
flags.DEFINE_enum("format", "md", ["md", "csv", "json", "latex"], "Table format.")
flags.DEFINE_list("group_by", [], "Varied keys to keep as rows; the others are averaged over.")
flags.DEFINE_string("out", "", "Where to write the table ('' = ROOT/table[_by_KEYS].EXT, "
                    "'-' = print only).")
flags.mark_flags_as_required(["workdir"])

EXTENSIONS = {"md": "md", "csv": "csv", "json": "jsonl", "latex": "tex"}


def table(root: str, group_by: list[str]) -> tuple[list[dict], list[str], list[str]]:
  """(rows, their key columns, names of points without results): the points or their groups."""
  rows, keys, missing = sweeps.collect(root)
  if not group_by:
    return rows, keys, missing
  known = set(keys) | {"split", "ways", "shots"}
  unknown = [k for k in group_by if k not in known]
  if unknown:
    raise ValueError(f"--group_by={','.join(group_by)}: {unknown} is not a varied key; use some "
                     f"of {', '.join(keys) or '(none vary)'}.")
  return sweeps.group(rows, group_by), list(group_by), missing


# ------------------------------------------------------------------ formats

def _pct(x) -> str:
  return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _cells(row: dict, keys: list[str], grouped: bool) -> tuple[list[str], list[str]]:
  """(header, cells) of the human formats (md, latex)."""
  head = list(keys)
  cells = [sweeps.value_text(row[k]) if row.get(k) is not None else "" for k in keys]
  if grouped:
    head += ["runs", "accuracy (%) mean ± std", "95% CI", "CI over"]
    cells += [str(row["runs"]), f"{_pct(row['accuracy'])} ± {_pct(row['std'])}",
              f"± {_pct(row['ci95'])}", row["ci_over"]]
  else:
    head += ["accuracy (%)", "95% CI", "episodes", "step"]
    cells += [_pct(row["accuracy"]), f"± {_pct(row['ci95'])}", str(row["episodes"]),
              str(row["step"])]
  return head, cells


def _fields(keys: list[str], grouped: bool) -> list[str]:
  extra = (["runs", "accuracy", "std", "ci95", "ci_over", "episode_ci95", "episodes", "points"]
           if grouped else ["accuracy", "ci95", "episodes", "step", "point", "workdir"])
  return list(keys) + [f for f in extra if f not in keys]


def _latex(text: str) -> str:
  for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
               ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$")):
    text = text.replace(a, b)
  return text


def render(rows: list[dict], keys: list[str], fmt: str, grouped: bool) -> str:
  if fmt == "json":
    return "".join(json.dumps({f: r.get(f) for f in _fields(keys, grouped)}) + "\n" for r in rows)
  if fmt == "csv":
    buf = io.StringIO()
    fields = _fields(keys, grouped)
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
      writer.writerow({f: ";".join(r[f]) if isinstance(r.get(f), list) else r.get(f)
                       for f in fields})
    return buf.getvalue()
  head = _cells(rows[0], keys, grouped)[0] if rows else list(keys)
  body = [_cells(r, keys, grouped)[1] for r in rows]
  if fmt == "md":
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in body]
    return "\n".join(lines) + "\n"
  lines = [r"\begin{tabular}{" + "l" * len(keys) + "r" * (len(head) - len(keys)) + "}",
           r"\toprule", " & ".join(_latex(h) for h in head) + r" \\", r"\midrule"]
  lines += [" & ".join(_latex(c) for c in cells) + r" \\" for cells in body]
  lines += [r"\bottomrule", r"\end{tabular}"]
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  root = os.path.abspath(FLAGS.workdir)
  rows, keys, missing = table(root, FLAGS.group_by)
  if missing:
    print(f"{len(missing)} point(s) have no final result yet: {', '.join(missing)}",
          file=sys.stderr)
  if not rows:
    raise ValueError(f"No results under {root}: run the sweep first (experiments.sweep), or "
                     "point --workdir at a folder of finished runs.")
  text = render(rows, keys, FLAGS.format, bool(FLAGS.group_by))
  sys.stdout.write(text)
  sys.stdout.flush()
  out = FLAGS.out
  if out != "-":
    by = f"_by_{'_'.join(FLAGS.group_by)}" if FLAGS.group_by else ""
    out = out or os.path.join(root, f"table{by}.{EXTENSIONS[FLAGS.format]}")
    with open(out, "w") as f:
      f.write(text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
