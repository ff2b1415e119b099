"""Learners and the hierarchy families built from them.

Importing this package (``import hmarl`` does) registers the families' parts in the core's
registries (:mod:`hmarl.registry`): HRL-CG's ``goal_distance`` reward and ``relative_goal``
channel, HiMPo's ``upper_advantage`` reward and ``dynamic``/``episode`` groupings, ALMA's
``subtask`` reward and ``on_subtask_change`` termination; each is imported on its first lookup.

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
from hmarl.registry import CHANNELS, GROUPINGS, REWARD_RULES, TERMINATIONS, Registry

if TYPE_CHECKING:
    from hmarl.hierarchy import Hierarchy
    from hmarl.learner import Learner


@dataclass(frozen=True)
class Family:
    """How a family builds its hierarchy: ``build(env, levels, learner_options, **options)``,
    where ``options`` are top-level config keys, the fields of ``options`` (a dataclass)."""

    build: Callable[..., Hierarchy]
    options: type | None = None
    requires: Callable[..., tuple[str, ...]] | None = None
    """``requires(levels, **options)``: the facts (``hmarl.spec.FACTS``) the family needs of an env
    whatever its learners; None: none."""


#: ``levels[*].learner`` name -> (module of hmarl.algorithms, class): the learners' one table
_LEARNER_TABLE = {
    "ppo": ("ppo", "PPO"), "mappo": ("ppo", "MAPPO"), "td3": ("td3", "TD3"), "dqn": ("dqn", "DQN"),
    "goal_manager": ("hrl_cg.goal_manager", "GoalManager"), "heuristic": ("heuristic", "SpreadHeuristic"),
    "graph_ppo": ("himpo.graph_ppo", "GraphPPO"), "aqmix": ("alma.aqmix", "AQMIX"), "allocator": ("alma.allocator", "Allocator"),
    "heuristic_allocator": ("alma.allocator", "HeuristicAllocator"), "qmix": ("qmix", "QMIX"),
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


def _deferred_requires(module: str) -> Callable[..., tuple[str, ...]]:
    """``module``'s ``requires`` (none if it has no such function), imported when it is called."""
    def requires(*args: Any, **kwargs: Any) -> tuple[str, ...]:
        found = getattr(importlib.import_module(module), "requires", None)
        return tuple(found(*args, **kwargs)) if found is not None else ()

    return requires


def system_requires(family: str, levels: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, str]:
    """The facts of an env (``hmarl.spec.FACTS``) a system needs -> who needs each, derived from
    what its family and its levels' learners declare: the family's ``requires(levels, **options)``,
    each learner class's ``requires`` (facts about the env at any level) and, for the learner of
    level 0, which acts on the env itself, its ``acts_on`` (``discrete_actions`` or
    ``continuous_actions``; None: either). Learners the registry does not know (HRL-CG's ``auto``)
    declare nothing."""
    needs: dict[str, str] = {}
    found = FAMILIES.get(family)
    if found is not None and found.requires is not None:
        for fact in found.requires(levels, **options):
            needs.setdefault(fact, f"{family}")
    for index, entry in enumerate(levels if isinstance(levels, list) else []):
        name = entry.get("learner") if isinstance(entry, dict) else None
        cls = LEARNERS.get(name) if isinstance(name, str) else None
        if cls is None:
            continue
        declared = list(getattr(cls, "requires", ()))
        if index == 0 and getattr(cls, "acts_on", None):
            declared.append(cls.acts_on)
        for fact in declared:
            needs.setdefault(fact, f"level {index} ({name})")
    return needs


def _family(name: str, options: bool) -> Callable[[], Family]:
    """The loader of the family ``hmarl.algorithms.<name>`` (its ``family`` module for a package): its ``build``, and its ``Options``
    dataclass if ``options`` (the config keys are checked against its fields, so it is imported)."""
    module = f"hmarl.algorithms.{name}" + (".family" if name in _PACKAGED else "")

    def load() -> Family:
        if not options:
            return Family(_deferred_build(module), requires=_deferred_requires(module))
        imported = importlib.import_module(module)
        return Family(imported.build, imported.Options, getattr(imported, "requires", None))

    return load


#: the families that are packages (``hmarl.algorithms.<name>.family`` builds them); ``flat`` is a module
_PACKAGED = ("tag", "hrl_cg", "himpo", "alma")
FAMILIES: Registry[Family] = Registry("family")
for _name, _options in [("tag", False), ("flat", False), ("hrl_cg", True), ("himpo", True), ("alma", True)]:
    FAMILIES.add_lazy(_name, _family(_name, _options))

# The families' parts, by the names a level's YAML gives (the core registries hold the core's own).
REWARD_RULES.add_lazy("goal_distance", attribute("hmarl.algorithms.hrl_cg.goals", "GoalDistance"))
REWARD_RULES.add_lazy("upper_advantage", attribute("hmarl.algorithms.himpo.rewards", "UpperAdvantage"))
REWARD_RULES.add_lazy("subtask", attribute("hmarl.algorithms.alma.subtasks", "SubtaskReward"))
TERMINATIONS.add_lazy("on_subtask_change", attribute("hmarl.algorithms.alma.subtasks", "OnSubtaskChange"))
GROUPINGS.add_lazy("dynamic", attribute("hmarl.algorithms.himpo.graphs", "dynamic"))
GROUPINGS.add_lazy("episode", attribute("hmarl.algorithms.himpo.graphs", "episode"))
CHANNELS.add_lazy("relative_goal", attribute("hmarl.algorithms.hrl_cg.goals", "RelativeGoal"))

_NAMES = {  # what the package exports: the family modules, every learner class (from the table), Learner
    **{name: f"hmarl.algorithms.{name}" for name in FAMILIES},
    **{cls: f"hmarl.algorithms.{module}" for module, cls in _LEARNER_TABLE.values()},
    "Learner": "hmarl.learner",
}
__getattr__ = module_getattr(__name__, _NAMES, globals())
__dir__ = module_dir(_NAMES, globals())
del _name, _module, _class, _options
