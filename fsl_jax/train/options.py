"""Plain-data helpers shared by the harness, the sweep driver and the evaluators.

No JAX here: `experiments.sweep` imports this and starts in a second.
"""

from __future__ import annotations

from typing import Any


def flatten(d: dict, prefix: str = "") -> dict:
  """{'a.b.c': value} of nested dicts (a config's JSON)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def coerce(text: str, default: Any, what: str) -> Any:
  """`text` typed like `default` (bool, int, float, else str); `what` names it in errors."""
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"{what} is a bool; got {text!r}, use true or false.")
    return text.lower() in ("true", "1")
  if isinstance(default, (int, float)):
    try:
      return type(default)(text)
    except ValueError:
      kind = "an integer" if isinstance(default, int) else "a number"
      raise ValueError(f"{what} takes {kind}; got {text!r}.") from None
  return text
