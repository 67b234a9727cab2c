r"""Markdown table of a workdir's evaluation results (WORKDIR/results.jsonl).

    python benchmarks/results_table.py --workdir=workdirs/cpu60

One row per (protocol, ways, shots): accuracy ± 95% CI or the Lake error rate.
The latest entry of each wins.
"""

import json
import pathlib

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir with results.jsonl.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  rows = {}
  for line in (pathlib.Path(FLAGS.workdir) / "results.jsonl").read_text().splitlines():
    r = json.loads(line)
    key = (r.get("protocol", "episodes"), r.get("split"), r.get("ways"), r.get("shots"))
    rows[key] = r
  print("| protocol | split | ways | shots | result | episodes/runs | step |")
  print("|---|---|---|---|---|---|---|")
  for (proto, split, ways, shots), r in sorted(rows.items(), key=lambda kv: str(kv[0])):
    if proto == "lake_one_shot":
      print(f"| Lake 20-way within-alphabet | evaluation | 20 | 1 | error {100 * r['error_rate']:.1f}% "
            f"| {r['runs']} runs | {r['step']} |")
    else:
      print(f"| N-way K-shot | {split} | {ways} | {shots} | {100 * r['accuracy']:.2f} ± "
            f"{100 * r['ci95']:.2f}% | {r['episodes']} | {r['step']} |")


if __name__ == "__main__":
  app.run(main)
