"""Names and registry entries bound on first use, so that importing a package costs only what
its caller uses.

``python -m hmarl --help`` and ``print_config`` need neither torch (about 1.2 s to import)
nor torch-geometric (1.4 s more), VMAS, PettingZoo or MPE2. The package ``__init__`` files
(``hmarl``, ``hmarl.nn``, ``hmarl.algorithms``, ``hmarl.envs``) and the registries
(:class:`hmarl.registry.Registry`: ``algorithms.LEARNERS``, ``algorithms.FAMILIES``,
``envs.ENVS``) therefore say where each of their names lives and import it when it is first
looked up. This module imports nothing but the standard library.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


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


def attribute(module: str, name: str) -> Callable[[], Any]:
    """A loader for :meth:`hmarl.registry.Registry.add_lazy`: ``name`` of ``module``, importing it."""
    return lambda: getattr(importlib.import_module(module), name)
