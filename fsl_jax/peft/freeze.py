"""Freezing by path patterns, compiled into optax masks.

Paths are '/'-joined dict keys of a params pytree, e.g.
'h_0/attn/c_attn/kernel'. Patterns are Python regular expressions matched with
`re.search`, so 'lora' selects every leaf with 'lora' in its path.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import jax
import optax


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


def match_mask(tree: Any, patterns: Iterable[str] | str) -> Any:
  """A bool pytree: True where a leaf's path matches any pattern."""
  if isinstance(patterns, str):
    patterns = [patterns]
  regexes = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(r.search(path_str(p)) for r in regexes), tree)


def masked_optimizer(tx: optax.GradientTransformation, trainable_mask: Any
                     ) -> optax.GradientTransformation:
  """Applies `tx` to trainable leaves and zeroes updates of frozen ones."""
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask)
  return optax.multi_transform(
      {"train": tx, "freeze": optax.set_to_zero()}, labels)


def count_params(tree: Any, mask: Any | None = None) -> int:
  leaves = jax.tree.leaves(tree)
  if mask is None:
    return int(sum(x.size for x in leaves))
  return int(sum(x.size for x, m in zip(leaves, jax.tree.leaves(mask)) if m))
