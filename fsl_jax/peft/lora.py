"""LoRA as a pure transform of a params pytree (Hu et al., 2021).

Our models are pure functions of explicit params, so LoRA needs no module
changes. `init` returns a static `LoraSpec` (which kernels, which column
slices, the scale) and a pytree of factors (the only trainable arrays).
`merge(params, factors, spec)` returns base params with `W + (alpha/r) A @ B`
added, to a column slice of W when the spec names one (e.g. the q and v thirds
of GPT-2's fused `c_attn`). Call `merge` inside the loss so gradients reach A
and B only; call it once after training to export merged inference weights.

    spec, factors = lora.init(key, base, {r"attn/c_attn/kernel": [(0, 768), (1536, 2304)]},
                              rank=8, alpha=16)
    loss = lambda f: model_loss(lora.merge(base, f, spec), batch)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fsl_jax.peft import freeze

# Maps a path regex to None (the whole kernel) or column slices (start, stop)
# of the kernel's last axis, each with its own factors.
Targets = dict[str, Sequence[tuple[int, int]] | None]


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Static LoRA structure: hashable, so it can be a jit static argument."""
  slices: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]
  rank: int
  alpha: float

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def to_json(self) -> dict:
    return {"slices": [[p, [list(s) for s in sl]] for p, sl in self.slices],
            "rank": self.rank, "alpha": self.alpha}

  @classmethod
  def from_json(cls, d: dict) -> "LoraSpec":
    return cls(tuple((p, tuple(tuple(s) for s in sl)) for p, sl in d["slices"]),
               int(d["rank"]), float(d["alpha"]))


def init(key: jax.Array, params: Any, targets: Targets, rank: int = 8,
         alpha: float = 16.0, dtype=jnp.float32) -> tuple[LoraSpec, dict]:
  """A is Gaussian (std 1/rank), B is zero: `merge` equals the base at init."""
  flat = freeze.flatten_with_paths(params)
  slices, factors = [], {}
  for path, w in flat.items():
    for pattern, cols in targets.items():
      if not re.search(pattern, path):
        continue
      if w.ndim != 2:
        raise ValueError(f"LoRA target {path!r} has shape {w.shape}; expected a 2-D kernel.")
      cols = tuple(tuple(c) for c in cols) if cols is not None else ((0, w.shape[1]),)
      a, b = [], []
      for lo, hi in cols:
        if not 0 <= lo < hi <= w.shape[1]:
          raise ValueError(f"LoRA slice {(lo, hi)} out of range for {path!r} {w.shape}.")
        key, sub = jax.random.split(key)
        a.append(jax.random.normal(sub, (w.shape[0], rank), dtype) / rank)
        b.append(jnp.zeros((rank, hi - lo), dtype))
      slices.append((path, cols))
      factors[path] = {"a": a, "b": b}
      break
  if not factors:
    raise ValueError(f"No LoRA target matched any of {list(targets)}; "
                     f"param paths look like {list(flat)[:5]}.")
  return LoraSpec(tuple(slices), int(rank), float(alpha)), factors


def merge(params: Any, factors: dict, spec: LoraSpec) -> Any:
  """Base params with the LoRA deltas added (a new pytree; base untouched)."""
  cols = dict(spec.slices)

  def add(path, w):
    p = freeze.path_str(path)
    if p not in cols:
      return w
    w32 = w.astype(jnp.float32)
    for (lo, hi), a, b in zip(cols[p], factors[p]["a"], factors[p]["b"]):
      delta = a.astype(jnp.float32) @ b.astype(jnp.float32)
      w32 = w32.at[:, lo:hi].add(spec.scale * delta)
    return w32.astype(w.dtype)

  return jax.tree_util.tree_map_with_path(add, params)
