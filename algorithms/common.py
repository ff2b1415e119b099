"""Building a hierarchy from YAML level entries and the registry of learners."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hmarl.config import from_dict
from hmarl.hierarchy import Hierarchy, LevelSpec, build_hierarchy
from hmarl.learner import AgentIO, Learner
from hmarl.spec import MultiAgentEnv


@dataclass(frozen=True)
class Family:
    """How a family builds its hierarchy: ``build(env, levels, learner_options, **options)``,
    where ``options`` are top-level config keys, the fields of ``options`` (a dataclass)."""

    build: Callable[..., Hierarchy]
    options: type | None = None


def learner_factory(shared_options: dict[str, dict[str, Any]], env: MultiAgentEnv):
    """Resolve ``spec.learner``; its options are ``shared_options[name]`` updated by the level's own."""
    from algorithms import LEARNERS

    def make(spec: LevelSpec, io: AgentIO, index: int) -> Learner:
        if spec.learner not in LEARNERS:
            raise ValueError(f"level {index}: unknown learner {spec.learner!r}; "
                             f"available: {', '.join(LEARNERS)}")
        cls = LEARNERS[spec.learner]
        options = {**shared_options.get(spec.learner, {}), **spec.options}
        config = from_dict(cls.config_class, options, f"level {index} {spec.learner} options")
        return cls.build(io, config, env.spec)

    return make


def build_levels(env: MultiAgentEnv, levels: list[dict[str, Any]],
                 learner_options: dict[str, dict[str, Any]]) -> Hierarchy:
    """A hierarchy from YAML level entries (bottom-up) and the shared learner options."""
    if not isinstance(levels, list) or not all(isinstance(e, dict) for e in levels):
        raise ValueError("levels must be a list of level entries (mappings), bottom-up")
    specs = [from_dict(LevelSpec, entry, f"level {i}") for i, entry in enumerate(levels)]
    return build_hierarchy(env, specs, learner_factory(learner_options, env))
