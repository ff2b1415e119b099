"""Learners and the hierarchy families built from them.

``LEARNERS`` maps the names used in ``levels[*].learner`` to learner classes;
``FAMILIES`` maps ``family`` to how a ``Hierarchy`` is built (and its top-level options).

Both are :class:`hmarl.registry.Registry` objects: every name is known at once (a config is
checked against them), each learner's or family's module is imported when it is looked up.
Importing them all would cost torch and, for ``graph_ppo``, torch-geometric on every
command line, ``print_config`` and the config checks included. Adding an entry
(``LEARNERS["mine"] = MyLearner``) works as on a dict. The classes this package exports
(``PPO``, ``TD3``, ...) and its family modules are imported on first use too.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from hmarl.lazy import attribute, module_dir, module_getattr
from hmarl.registry import Registry

if TYPE_CHECKING:
    from hmarl.hierarchy import Hierarchy
    from hmarl.learner import Learner


@dataclass(frozen=True)
class Family:
    """How a family builds its hierarchy: ``build(env, levels, learner_options, **options)``,
    where ``options`` are top-level config keys, the fields of ``options`` (a dataclass)."""

    build: Callable[..., Hierarchy]
    options: type | None = None


#: ``levels[*].learner`` name -> (module of hmarl.algorithms, class): the learners' one table
_LEARNER_TABLE = {
    "ppo": ("ppo", "PPO"), "mappo": ("ppo", "MAPPO"), "td3": ("td3", "TD3"), "dqn": ("dqn", "DQN"),
    "goal_manager": ("hrl_cg", "GoalManager"), "heuristic": ("heuristic", "SpreadHeuristic"),
    "graph_ppo": ("graph_ppo", "GraphPPO"), "aqmix": ("aqmix", "AQMIX"), "allocator": ("allocator", "Allocator"),
    "heuristic_allocator": ("allocator", "HeuristicAllocator"), "qmix": ("qmix", "QMIX"),
}
LEARNERS: Registry[type[Learner]] = Registry("learner")
for _name, (_module, _class) in _LEARNER_TABLE.items():
    LEARNERS.add_lazy(_name, attribute(f"hmarl.algorithms.{_module}", _class))


def _deferred_build(module: str) -> Callable[..., Hierarchy]:
    """``module``'s ``build``, imported when it is called: checking a config of a family without
    options needs to know only that (``RunConfig.from_config``), not the family's torch code."""
    def build(*args: Any, **kwargs: Any) -> Hierarchy:
        return importlib.import_module(module).build(*args, **kwargs)

    build.__doc__ = f"``{module}.build`` (imported on the first call)."
    return build


def _family(name: str, options: bool) -> Callable[[], Family]:
    """The loader of the family ``hmarl.algorithms.<name>``: its ``build``, and its ``Options``
    dataclass if ``options`` (the config keys are checked against its fields, so it is imported)."""
    module = f"hmarl.algorithms.{name}"

    def load() -> Family:
        if not options:
            return Family(_deferred_build(module))
        imported = importlib.import_module(module)
        return Family(imported.build, imported.Options)

    return load


FAMILIES: Registry[Family] = Registry("family")
for _name, _options in [("tag", False), ("flat", False), ("hrl_cg", True), ("himpo", True), ("alma", True)]:
    FAMILIES.add_lazy(_name, _family(_name, _options))

_NAMES = {  # what the package exports: the family modules, every learner class (from the table), Learner
    **{name: f"hmarl.algorithms.{name}" for name in FAMILIES},
    **{cls: f"hmarl.algorithms.{module}" for module, cls in _LEARNER_TABLE.values()},
    "Learner": "hmarl.learner",
}
__getattr__ = module_getattr(__name__, _NAMES, globals())
__dir__ = module_dir(_NAMES, globals())
del _name, _module, _class, _options
