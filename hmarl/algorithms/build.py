"""Building a hierarchy from YAML level entries and the registry of learners."""
from __future__ import annotations

from typing import Any

from hmarl.run.config import from_dict
from hmarl.hierarchy import Hierarchy, LevelSpec, build_hierarchy
from hmarl.learner import AgentIO, Learner
from hmarl.spec import MultiAgentEnv


def learner_factory(shared_options: dict[str, dict[str, Any]], env: MultiAgentEnv):
    """Resolve ``spec.learner``; its options are ``shared_options[name]`` updated by the level's own."""
    from hmarl.algorithms import LEARNERS

    def make(spec: LevelSpec, io: AgentIO, index: int) -> Learner:
        cls = LEARNERS.lookup(spec.learner, f"level {index}")
        options = {**shared_options.get(spec.learner, {}), **spec.options}
        config = from_dict(cls.config_class, options, f"level {index} {spec.learner} options")
        try:
            return cls.build(io, config, env.spec)
        except ValueError as error:  # a learner refusing its level (e.g. DQN on a Box): name the level
            where = f"level {index}"
            raise ValueError(str(error) if str(error).startswith(where) else f"{where}: {error}") from None

    return make


def build_levels(env: MultiAgentEnv, levels: list[dict[str, Any]],
                 learner_options: dict[str, dict[str, Any]]) -> Hierarchy:
    """A hierarchy from YAML level entries (bottom-up) and the shared learner options."""
    if not isinstance(levels, list) or not all(isinstance(e, dict) for e in levels):
        raise ValueError("levels must be a list of level entries (mappings), bottom-up")
    specs = [from_dict(LevelSpec, entry, f"level {i}") for i, entry in enumerate(levels)]
    return build_hierarchy(env, specs, learner_factory(learner_options, env))
