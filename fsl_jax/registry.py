"""Components chosen by name: one small registry type for every kind.

    DATASETS = Registry("dataset")

    @DATASETS.register("omniglot")
    def load_omniglot_split(data_cfg, split): ...

    DATASETS.get("omniglt")  # UnknownName: Unknown dataset 'omniglt'; did you mean 'omniglot'? ...

A registry maps a name to a factory (any callable). Registering a name twice
is refused (two modules would otherwise silently shadow each other); an
unknown name is refused with the closest registered names.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UnknownName(ValueError):
  """A name that no component registered (the message names the close ones)."""


class Registry:
  """name -> factory, with 'did you mean' on lookups and no duplicates."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, Callable[..., Any]] = {}

  def register(self, name: str, factory: Callable[..., Any] | None = None):
    """`@reg.register("name")` on a factory, or `reg.register("name", factory)`."""
    def add(f: F) -> F:
      if name in self._items and self._items[name] is not f:
        raise ValueError(f"The {self.kind} {name!r} is already registered "
                         f"(by {_origin(self._items[name])}); pick another name.")
      self._items[name] = f
      return f
    return add if factory is None else add(factory)

  def get(self, name: str) -> Callable[..., Any]:
    """The factory registered as `name`."""
    try:
      return self._items[name]
    except KeyError:
      raise UnknownName(self.unknown_message(name)) from None

  def build(self, name: str, *args, **kwargs) -> Any:
    """`get(name)(*args, **kwargs)`; an unexpected option names the factory's options."""
    factory = self.get(name)
    try:
      params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature (some builtins): let the call say
      params = None
    if params is not None and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
      unknown = sorted(k for k in kwargs if k not in params)
      if unknown:
        raise ValueError(f"The {self.kind} {name!r} takes no option {', '.join(unknown)}; its "
                         f"options: {', '.join(k for k in params if k not in ('self', 'cls', 'parent'))}.")
    return factory(*args, **kwargs)

  def unknown_message(self, name: str) -> str:
    close = difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"Unknown {self.kind} {name!r}; {hint}registered: {', '.join(self.names())}."

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())


def _origin(f) -> str:
  return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"
