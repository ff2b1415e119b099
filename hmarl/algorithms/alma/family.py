"""ALMA (Iqbal et al. 2022): an allocator assigning agents to subtasks above A-QMIX agents.

Two levels: the agents (``aqmix``: attention-based QMIX, each agent's attention masked
to the entities of its own subtask, one mixed value per subtask trained on that
subtask's reward: ``reward: subtask``) under one allocator (``allocator``: amortized
Q-learning over allocations; or ``heuristic_allocator``) that gives every agent one
active subtask every ``action_length`` steps, at each episode's start and whenever a
subtask finishes (``decide_every`` on a level of ``period: 1``). The allocation reaches
each agent as a one-hot of its subtask appended to its observation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hmarl.algorithms.build import build_levels
from hmarl.hierarchy import Hierarchy
from hmarl.spec import MultiAgentEnv


@dataclass
class Options:
    """Family-level keys of an ALMA run (top-level config keys)."""

    action_length: int = 5
    """Env steps between two regular allocations (paper: 5 on SaveTheCity)."""

    def __post_init__(self):
        if self.action_length < 1:
            raise ValueError(f"action_length must be >= 1, got {self.action_length}")


def build(env: MultiAgentEnv, levels: list[dict[str, Any]], learner_options: dict[str, dict[str, Any]],
          action_length: int = 5) -> Hierarchy:
    """Agents under an allocator, from ``levels`` (bottom-up) with the structure filled in."""
    Options(action_length)
    entities = env.spec.require("entities", "alma")
    if len(levels) != 2:
        raise ValueError(f"an ALMA hierarchy has two levels (agents, allocator), got {len(levels)}")
    agents, allocator = (copy.deepcopy(dict(level)) for level in levels)
    agents.update(reward="subtask")
    allocator.update(group_size="all", joint=False, command=f"discrete({entities.n_subtasks})", period=1,
                     decide_every=action_length)
    return build_levels(env, [agents, allocator], learner_options)


def requires(levels: list[dict[str, Any]], **options: Any) -> tuple[str, ...]:
    """What ALMA needs of an env: entities and their subtasks to allocate agents to (where an env
    has them behind an option: the runner turns it on and logs it)."""
    return ("entities",)
