"""Learners and the hierarchy families built from them.

``LEARNERS`` maps the names used in ``levels[*].learner`` to learner classes;
``FAMILIES`` maps ``family`` to how a ``Hierarchy`` is built (and its top-level options).
"""
from __future__ import annotations

from hmarl.algorithms import alma, flat, himpo, hrl_cg, tag
from hmarl.algorithms.allocator import Allocator, HeuristicAllocator
from hmarl.algorithms.aqmix import AQMIX
from hmarl.algorithms.common import Family
from hmarl.algorithms.dqn import DQN
from hmarl.algorithms.graph_ppo import GraphPPO
from hmarl.algorithms.heuristic import SpreadHeuristic
from hmarl.algorithms.ppo import MAPPO, PPO
from hmarl.algorithms.qmix import QMIX
from hmarl.algorithms.hrl_cg import GoalManager
from hmarl.algorithms.td3 import TD3
from hmarl.learner import Learner

LEARNERS: dict[str, type[Learner]] = {"ppo": PPO, "mappo": MAPPO, "td3": TD3, "dqn": DQN,
                                      "goal_manager": GoalManager, "heuristic": SpreadHeuristic,
                                      "graph_ppo": GraphPPO, "aqmix": AQMIX, "allocator": Allocator,
                                      "heuristic_allocator": HeuristicAllocator, "qmix": QMIX}

FAMILIES: dict[str, Family] = {"tag": Family(tag.build), "flat": Family(flat.build),
                               "hrl_cg": Family(hrl_cg.build, hrl_cg.Options),
                               "himpo": Family(himpo.build, himpo.Options),
                               "alma": Family(alma.build, alma.Options)}
