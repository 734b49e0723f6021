"""Named entries of one seam: output writers, destination kinds, applications (mercure's ``@handler_for``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fetalnode.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; registering a different entry under a taken name is a configuration error."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] != entry:
            raise ConfigError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str, setting: str) -> T:
        """The entry ``name``, or a ConfigError naming the ``setting`` that asked for it."""
        if name not in self._entries:
            raise ConfigError(f"{setting}: unknown {self.what} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def find(self, name: str) -> T | None:
        """The entry ``name``, or ``None``."""
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)
