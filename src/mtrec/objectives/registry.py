"""A registry of named classes, for the objectives and the weighting strategies chosen by config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by name; ``kind`` names what they are in errors (``objective``, ``weighting``)."""

    def __init__(self, kind: str, error: type[ValueError]) -> None:
        self.kind = kind
        self.error = error
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make the class buildable by ``name``."""

        def add(cls: type[T]) -> type[T]:
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; the error names the registered ones."""
        if name not in self._classes:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]
