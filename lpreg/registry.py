"""A tiny name -> object registry, used only on the axes lpreg ablates.

Each registry mirrors one Hydra config group one-to-one (``tests/test_config.py`` checks it):
regularizers (``regularizer=``), tasks (``task=``), rollout engines (``rollout=``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict filled by a decorator; refuses duplicates and lists the valid keys in its errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise KeyError(f"unknown {self.kind} {name!r}; valid choices: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def entries(self) -> list[T]:
        """The registered objects in registration order."""
        return list(self._items.values())
