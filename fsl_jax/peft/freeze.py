"""Params pytrees by path, and parameter counts.

Paths are '/'-joined dict keys of a params pytree, e.g.
'h_0/attn/c_attn/kernel'.
"""

from __future__ import annotations

from typing import Any

import jax


def path_str(path) -> str:
  parts = []
  for k in path:
    if hasattr(k, "key"):
      parts.append(str(k.key))
    elif hasattr(k, "idx"):
      parts.append(str(k.idx))
    elif hasattr(k, "name"):
      parts.append(str(k.name))
    else:
      parts.append(str(k))
  return "/".join(parts)


def flatten_with_paths(tree: Any) -> dict[str, Any]:
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def count_params(tree: Any) -> int:
  """Scalars in all the leaves of `tree`."""
  return int(sum(x.size for x in jax.tree.leaves(tree)))
