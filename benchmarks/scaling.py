r"""Meta-training throughput against the number of devices: JSON lines and a plot.

    python benchmarks/scaling.py --devices=1,2,4 --out=/tmp/scaling       # simulated CPU devices
    python benchmarks/scaling.py --devices=1,2,4,8 --real --out=/tmp/gpu  # a host's GPUs / TPU cores
    python benchmarks/scaling.py --devices=1,2 -- --algo=maml --meta_batch=8 --steps=5

Each device count runs `benchmarks/meta_step.py` (the jitted training step
of `experiments.meta_train`, episodes sampled inside it) in its own process,
the meta-batch sharded over the devices as training shards it. On CPU the
devices are simulated (`--cpu_devices`): the same cores split into N XLA
devices, so the line measures what sharding costs on one machine, not a
speed-up. With `--real`, the first N of the machine's devices
(`--devices` of meta_step.py).

Prints one JSON line per count (meta_step.py's, plus `speedup` and
`efficiency` against the smallest count) and, with `--out`, writes them to
OUT/scaling.jsonl and the chart OUT/scaling_speed.{png,svg} (episodes/s
against devices, `experiments.plot speed`). Arguments after `--` go to
meta_step.py (the learner, backbone, shapes; by default a Conv4 ProtoNet,
Omniglot-shaped 20-way 1-shot, meta-batch 8).
"""

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", ["1", "2", "4"], "Device counts to time.")
flags.DEFINE_bool("real", False, "Use the machine's own devices (else simulated CPU devices).")
flags.DEFINE_string("out", "", "Directory for scaling.jsonl and the chart ('' none).")
flags.DEFINE_integer("timeout", 1800, "Seconds allowed per device count.")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = ["--algo=protonet", "--model=conv4", "--ways=20", "--shots=1", "--queries=5",
           "--meta_batch=8", "--steps=20"]


def run_one(devices: int, real: bool, extra: list[str], timeout: int) -> dict:
  passed = {a.split("=", 1)[0] for a in extra}
  args = [a for a in DEFAULT if a.split("=", 1)[0] not in passed] + list(extra)
  args.append(f"--devices={devices}" if real else f"--cpu_devices={devices}")
  env = dict(os.environ)
  if not real:
    env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, os.path.join(HERE, "meta_step.py"), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"meta_step.py with {devices} devices failed ({proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  row["simulated"] = not real
  return row


def main(argv):
  extra = argv[1:]  # after `--`
  counts = sorted({int(d) for d in FLAGS.devices})
  if not counts or counts[0] < 1:
    raise app.UsageError(f"--devices={FLAGS.devices}: give positive device counts, e.g. 1,2,4.")
  rows = []
  for n in counts:
    row = run_one(n, FLAGS.real, extra, FLAGS.timeout)
    base = rows[0] if rows else row
    row["speedup"] = round(row["episodes_per_s"] / base["episodes_per_s"], 3)
    row["efficiency"] = round(row["speedup"] * base["num_devices"] / row["num_devices"], 3)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.abspath(os.path.join(FLAGS.out, "scaling.jsonl"))  # the plot runs in ROOT
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    # The chart by the plotting binary (its flags would clash with these if imported).
    kind = "simulated CPU devices" if not FLAGS.real else rows[0]["devices"].split("x ", 1)[-1]
    proc = subprocess.run([sys.executable, "-m", "experiments.plot", "speed", f"--input={path}",
                           "--y=episodes_per_s", "--x=num_devices", "--label=algo,model",
                           f"--title=episodes/s against devices ({kind})"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
      raise RuntimeError(f"experiments.plot failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(json.dumps({"wrote": [path, *proc.stdout.split()]}), flush=True)


if __name__ == "__main__":
  app.run(main)
