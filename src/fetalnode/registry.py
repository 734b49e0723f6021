"""Named entries of one seam: output writers, destination kinds, applications (mercure's ``@handler_for``).

Every registry loads its built-ins the same way: the modules named in ``builtins`` register their entries
when imported, and they are imported on the first lookup (:meth:`Registry.get`, :meth:`~Registry.find`,
:meth:`~Registry.names`). A module of ``node.plugins`` registers more the same way, by being imported.
The registry names its built-in modules, it does not import them: no module imports the registry that
imports it back.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

from fetalnode.errors import ConfigError

T = TypeVar("T")

# The built-in applications, one package each (``applications/<name>/``): its ``application`` module registers
# the application, ``writers`` its output writers, ``findings`` the reader of its report. Adding a built-in
# application is its folder and one line here; a plugin (``node.plugins``) registers itself on import instead.
BUILTIN_APPLICATIONS = (
    "fetalnode.applications.fetal_head",
    "fetalnode.applications.labour_progress",
    "fetalnode.applications.view_router",
)


def builtin_modules(module: str) -> tuple[str, ...]:
    """The module ``module`` of each built-in application (``"writers"``: the writers of all of them)."""
    return tuple(f"{package}.{module}" for package in BUILTIN_APPLICATIONS)


class Registry(Generic[T]):
    """Entries by name; registering a different entry under a taken name is a configuration error."""

    def __init__(self, what: str, builtins: Sequence[str] = ()) -> None:
        self.what = what
        self.builtins = tuple(builtins)
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def load_builtins(self) -> None:
        """Import the built-in modules once (they register their entries)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for module in self.builtins:
                importlib.import_module(module)
            self._loaded = True

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] != entry:
            raise ConfigError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def registered(self, name: str) -> T | None:
        """The entry ``name`` as registered so far, without loading the built-ins (for registering)."""
        return self._entries.get(name)

    def get(self, name: str, setting: str) -> T:
        """The entry ``name``, or a ConfigError naming the ``setting`` that asked for it."""
        self.load_builtins()
        if name not in self._entries:
            raise ConfigError(f"{setting}: unknown {self.what} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def find(self, name: str) -> T | None:
        """The entry ``name``, or ``None``."""
        self.load_builtins()
        return self._entries.get(name)

    def names(self) -> list[str]:
        self.load_builtins()
        return sorted(self._entries)

    def remove(self, name: str) -> None:
        """Forget the entry ``name`` (a test's own registration)."""
        self._entries.pop(name, None)

    @contextmanager
    def scoped(self) -> Iterator[None]:
        """Whatever is registered inside the block is forgotten after it (tests); built-ins are loaded first,
        so they stay."""
        self.load_builtins()
        before = dict(self._entries)
        try:
            yield
        finally:
            self._entries.clear()
            self._entries.update(before)
