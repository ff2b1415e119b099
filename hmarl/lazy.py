"""Names and registry entries bound on first use, so that importing a package costs only what
its caller uses.

``python -m hmarl --help`` and ``print_config`` need neither torch (about 1.2 s to import)
nor torch-geometric (1.4 s more), VMAS, PettingZoo or MPE2. The package ``__init__`` files
(``hmarl``, ``hmarl.nn``, ``hmarl.algorithms``, ``hmarl.envs``) and the registries
(``algorithms.LEARNERS``, ``algorithms.FAMILIES``, ``envs.ENVS``) therefore say where each
of their names lives and import it when it is first looked up. This module imports nothing
but the standard library.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

V = TypeVar("V")


def module_getattr(package: str, names: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package``, whose globals are ``namespace``.

    ``names`` maps each name the package exports to the module that defines it; a name
    mapped to ``f"{package}.{name}"`` is that submodule itself. The first access imports the
    module and binds the name in ``namespace``, so that later accesses are plain lookups.
    """
    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(module)
        value = imported if module == f"{package}.{name}" else getattr(imported, name)
        namespace[name] = value
        return value

    return __getattr__


def module_dir(names: dict[str, str], namespace: dict[str, Any]) -> Callable[[], list[str]]:
    """The matching module ``__dir__``: the names bound so far and those still to import."""
    return lambda: sorted({*namespace, *names})


class _Pending:
    """A registry entry not loaded yet: ``load()`` returns its value or registers it itself."""

    __slots__ = ("load",)

    def __init__(self, load: Callable[[], Any]):
        self.load = load


class LazyRegistry(MutableMapping[str, V]):
    """A dict of names whose values may be imported on first lookup (:meth:`add_lazy`).

    Membership, iteration and ``len`` see every name without importing anything (names in
    the order they were added); ``registry[name]`` (and ``get``, ``items``, ``values``)
    imports what it returns. Assigning a name replaces its entry, loaded or not.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Any] = {}

    def add_lazy(self, name: str, load: Callable[[], V]) -> None:
        """Make ``name`` known now and its value ``load()``'s, called on the first lookup. ``load``
        may instead assign ``registry[name]`` itself (an env module registering its constructor)."""
        self._entries[name] = _Pending(load)

    def pending(self, name: str) -> bool:
        """Whether ``name`` is known but not loaded yet."""
        return isinstance(self._entries.get(name), _Pending)

    def __getitem__(self, name: str) -> V:
        entry = self._entries[name]
        if isinstance(entry, _Pending):
            value = entry.load()
            if self._entries.get(name) is entry:  # the loader did not register the value itself
                self._entries[name] = value
            entry = self._entries[name]
        return entry

    def __setitem__(self, name: str, value: V) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:  # Mapping's default would load the entry
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:  # MutableMapping's default pops (and so loads) every entry
        """Forget every entry, loaded or not."""
        self._entries.clear()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name!r}: <not loaded>" if isinstance(entry, _Pending) else f"{name!r}: {entry!r}"
                          for name, entry in self._entries.items())
        return f"{type(self).__name__}({{{shown}}})"


def attribute(module: str, name: str) -> Callable[[], Any]:
    """A loader for :meth:`LazyRegistry.add_lazy`: ``name`` of ``module``, importing it."""
    return lambda: getattr(importlib.import_module(module), name)
