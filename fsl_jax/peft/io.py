"""Save and load small tuned pytrees (prompts, LoRA factors, adapters) alone.

One safetensors file: tensors keyed by their '/'-joined path, and a JSON
`meta` string (method, base model name and config, spec) in the header, so a
loader can check the base before applying the weights.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from fsl_jax.peft import freeze


def save_tree(path: str, tree: Any, meta: dict | None = None) -> None:
  flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in freeze.flatten_with_paths(tree).items()}
  tmp = f"{path}.tmp"
  save_file(flat, tmp, metadata={"meta": json.dumps(meta or {})})
  os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  """Rebuilds nested dicts; path components that are all digits become lists."""
  root: dict = {}
  for key, value in flat.items():
    node = root
    parts = key.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value

  def listify(node):
    if not isinstance(node, dict):
      return node
    node = {k: listify(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
      return [node[str(i)] for i in range(len(node))]
    return node

  return listify(root)


def load_tree(path: str) -> tuple[dict, dict]:
  """Returns (nested tree of numpy arrays, meta dict)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No tuned-weights file at {path}.")
  with safe_open(path, framework="numpy") as f:
    meta = json.loads((f.metadata() or {}).get("meta", "{}"))
  return unflatten(load_file(path)), meta
