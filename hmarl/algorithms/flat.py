"""Flat baselines: one level over the env (I-PPO, MAPPO, PPO over the joint action, the heuristic)."""
from __future__ import annotations

from typing import Any

from hmarl.algorithms.build import build_levels
from hmarl.hierarchy import Hierarchy
from hmarl.spec import MultiAgentEnv


def build(env: MultiAgentEnv, levels: list[dict[str, Any]],
          learner_options: dict[str, dict[str, Any]]) -> Hierarchy:
    """A one-level hierarchy: every env agent (or the joint agent) learns from the env reward."""
    if len(levels) != 1:
        raise ValueError(f"a flat system has exactly one level, got {len(levels)}; use family: tag")
    return build_levels(env, levels, learner_options)
