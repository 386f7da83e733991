"""One small registry shape for every axis that varies (methods, energies; solvers and architectures keep theirs).

A `Registry` maps names to entries, refuses duplicates, and imports every module of its package the first time
it is read, so adding an entry is one new file in that package (its `register` decorator runs on import).
Entries registered from user code (the same decorator, anywhere) are found the same way.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (`what`: "method", "energy") discovered from the modules of `package`."""

    def __init__(self, what: str, package: str, config_field: str, *, instantiate: bool = True):
        self.what = what
        self.instantiate = instantiate  # store an instance of each class (stateless entries) or the class
        self.package = package
        self.config_field = config_field
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: add `cls` (or an instance of it) under `cls.name`; a second entry with that name is
        refused."""
        name = cls.name
        if name in self._entries:
            raise ValueError(f"A {self.what} named {name!r} is already registered.")
        self._entries[name] = cls() if self.instantiate else cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that register temporarily)."""
        self._entries.pop(name, None)

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_") and module.name != "base":
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise _unknown(self, name) from None

    def entries(self) -> list[T]:
        return [self._entries[name] for name in self.names()]

    def table(self, columns: dict[str, Callable[[T], str]]) -> str:
        """A markdown table with one row per entry: its name, then each column's text (pipes escaped)."""
        header = f"| `{self.config_field}` | " + " | ".join(columns) + " |"
        lines = [header, "|---" * (len(columns) + 1) + "|"]
        for entry in self.entries():
            cells = (cell(entry).replace("|", "\\|") for cell in columns.values())
            lines.append(f"| `{entry.name}` | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _unknown(registry: Registry, name: str) -> Exception:
    from .errors import ConfigurationError

    return ConfigurationError(
        f"`{registry.config_field}`={name!r} is not a registered {registry.what}; choose one of {registry.names()} "
        f"(or register one: see README, 'Extending')."
    )
