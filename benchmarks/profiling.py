"""Per-operation time of one call, ours (a `jax.profiler` trace) and PyTorch's (`torch.profiler`).

Shared by benchmarks/backbone_forward.py and benchmarks/backbones.py
(`--profile`): each XLA thunk is timed by its HLO instruction and classed
from the optimised HLO (convolution, matmul, reduction, elementwise, data
movement...); PyTorch's by aten op (self CPU time).
"""

import json
import os

import jax


def hlo_kinds(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: kind} from an optimised HLO module's text."""
  import re  # pylint: disable=g-import-not-at-top
  line_re = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
  op_re = re.compile(r"(?<![\w\-])([a-z][a-z0-9\-]*)\(")
  ops, calls, comp, comp_ops = {}, {}, None, {}
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and " = " not in line:
      comp = head.group(1)
      comp_ops.setdefault(comp, set())
      continue
    m = line_re.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op = op_re.search(rest)
    opcode = op.group(1) if op else "?"
    ops[name] = opcode
    if comp is not None:
      comp_ops[comp].add(opcode)
    c = re.search(r"calls=%?([\w.\-]+)", rest)
    if c:
      calls[name] = c.group(1)

  def inner(comp_name, seen=()):
    found = set(comp_ops.get(comp_name, ()))
    return found

  kinds = {}
  for name, opcode in ops.items():
    if opcode == "convolution":
      kind = "convolution"
    elif opcode == "dot":
      kind = "matmul"
    elif opcode == "fusion":
      body = inner(calls.get(name, ""))
      kind = ("convolution (fused)" if "convolution" in body else
              "matmul (fused)" if "dot" in body else
              "reduction (fused)" if body & {"reduce", "reduce-window"} else
              "elementwise (fused)")
    elif opcode in ("reduce", "reduce-window", "select-and-scatter"):
      kind = "reduction"
    elif opcode in ("copy", "transpose"):
      kind = "layout (copy/transpose)"
    elif opcode in ("concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
                    "broadcast", "reshape", "bitcast"):
      kind = "data movement"
    elif opcode == "custom-call":
      kind = "custom call"
    else:
      kind = "other"
    kinds[name] = kind
  return kinds


def jax_profile(fn, compiled_text: str) -> dict:
  """{kind: ms} and the top instructions of one profiled call of `fn`."""
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  kinds = hlo_kinds(compiled_text)
  d = tempfile.mkdtemp(prefix="fsl_jax_profile_")
  with jax.profiler.trace(d, create_perfetto_trace=True):
    fn()
  path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
  trace = json.load(gzip.open(path))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      per_op[e["name"]] = per_op.get(e["name"], 0.0) + e.get("dur", 0.0) / 1e3
  by_kind: dict[str, float] = {}
  for name, ms in per_op.items():
    by_kind[kinds[name]] = by_kind.get(kinds[name], 0.0) + ms
  top = sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
  return {"ms_by_kind": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
          "ms_total_ops": round(sum(per_op.values()), 1),
          "top_ops": [[n, kinds[n], round(ms, 1)] for n, ms in top]}


def torch_profile(fn) -> dict:
  """{aten op: self CPU ms} of one profiled call of `fn` (the 15 largest)."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    fn()
  rows = [(e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]
  rows.sort(key=lambda kv: -kv[1])
  return {"ms_total_ops": round(sum(ms for _, ms in rows), 1),
          "top_ops": [[k, round(ms, 1)] for k, ms in rows[:15]]}
