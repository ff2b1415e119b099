"""Learners and the hierarchy families built from them.

``LEARNERS`` maps the names used in ``levels[*].learner`` to learner classes;
``FAMILIES`` maps ``family`` to the function that builds a ``Hierarchy``.
"""
from __future__ import annotations

from typing import Callable

from algorithms import flat, tag
from algorithms.heuristic import SpreadHeuristic
from algorithms.ppo import MAPPO, PPO
from hmarl.hierarchy import Hierarchy
from hmarl.learner import Learner

LEARNERS: dict[str, type[Learner]] = {"ppo": PPO, "mappo": MAPPO, "heuristic": SpreadHeuristic}

FAMILIES: dict[str, Callable[..., Hierarchy]] = {"tag": tag.build, "flat": flat.build}
