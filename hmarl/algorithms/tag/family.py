"""TAG (Paolo et al. 2025): a stack of LevelEnvs of PPO/MAPPO agents, any depth.

A TAG system is its list of levels, bottom-up (``hmarl/configs/algorithms/tag_*.yaml``):
which learner each level uses, how many units below each agent controls, how
often it acts (``period``), what it tells each child (``command``), and the
communication function that shapes the messages it sends up.
"""
from __future__ import annotations

from typing import Any

from hmarl.algorithms.build import build_levels
from hmarl.hierarchy import Hierarchy
from hmarl.spec import MultiAgentEnv


def build(env: MultiAgentEnv, levels: list[dict[str, Any]],
          learner_options: dict[str, dict[str, Any]]) -> Hierarchy:
    """A TAG stack of two or more levels, each an env for the one above (LevelEnv)."""
    if len(levels) < 2:
        raise ValueError("a TAG hierarchy has at least two levels; use family: flat for one")
    return build_levels(env, levels, learner_options)


def requires(levels: list[dict[str, Any]], **options: Any) -> tuple[str, ...]:
    """What TAG needs of an env: its upper levels group env agents into teams, so two or more."""
    return ("several_agents",)
