"""HiMPo (Marzi et al. 2025): feudal hierarchies with message passing and advantage rewards.

Manager -> sub-managers -> workers (three levels) or manager -> workers (two), every
level a :class:`~algorithms.himpo.graph_ppo.GraphPPO`:

- workers act every env step on their observation, their position and their goal,
  exchanging messages with their ``knn`` nearest workers;
- sub-managers act every ``alpha`` steps; each owns a balanced cluster of workers
  by position, recomputed whenever they act (``grouping: dynamic``; ``episode``
  keeps an episode's first clusters: the SG ablation; ``static``: by agent index),
  pools its workers' messages and talks to the other sub-managers (complete graph);
- the manager acts every ``K * alpha`` steps over the sub-managers.

Goals are ``goal_dim`` numbers in [-1, 1] on each parent -> child edge (Gaussian
PPO). Rewards (Eq. 5): the manager learns from the env reward summed over agents
and its period; each unit below from its superior's advantage for the goal it was
given divided by the superior's period (``upper_advantage``), sub-managers plus
``local_reward_coef`` times their cluster's env reward (0: the NL ablation), workers
plus ``worker_env_reward_coef`` times their own (1: the FL ablation).
GAE lambda is 0.95 for workers and 0 for the levels above (``levels[i].options``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hmarl.algorithms.build import build_levels
from hmarl.strategies import GROUPINGS
from hmarl.hierarchy import Hierarchy
from hmarl.spec import MultiAgentEnv


@dataclass
class Options:
    """Family-level keys of a HiMPo run (top-level config keys)."""

    sub_managers: int = 2
    """Sub-managers M of a three-level hierarchy (at most the number of agents)."""
    alpha: int = 5
    """Env steps between two decisions of the level right above the workers."""
    manager_k: int = 2
    """The manager acts once every ``manager_k`` sub-manager decisions (three levels)."""
    goal_dim: int = 4
    """Size of the goal on each parent -> child edge."""
    grouping: str = "dynamic"
    """How sub-managers get their workers: ``dynamic``, ``episode`` (SG) or ``static``."""
    local_reward_coef: float = 1.0
    """Weight of a sub-manager's cluster env reward next to the manager's advantage (0: NL)."""
    worker_env_reward_coef: float = 0.0
    """Weight of a worker's own env reward next to its sub-manager's advantage (1: FL)."""

    def __post_init__(self):
        checks = [(self.sub_managers >= 1, f"sub_managers must be >= 1, got {self.sub_managers}"),
                  (self.alpha >= 1, f"alpha must be >= 1, got {self.alpha}"),
                  (self.manager_k >= 1, f"manager_k must be >= 1, got {self.manager_k}"),
                  (self.goal_dim >= 1, f"goal_dim must be >= 1, got {self.goal_dim}"),
                  (self.grouping in GROUPINGS,
                   f"unknown grouping {self.grouping!r}; available: {', '.join(GROUPINGS)}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def build(env: MultiAgentEnv, levels: list[dict[str, Any]], learner_options: dict[str, dict[str, Any]],
          **options: Any) -> Hierarchy:
    """Workers, (sub-managers,) manager from ``levels`` (bottom-up) with the structure filled in."""
    o = Options(**options)
    if len(levels) not in (2, 3):
        raise ValueError(f"a HiMPo hierarchy has 2 levels (workers, manager) or 3 (workers, "
                         f"sub-managers, manager), got {len(levels)}")
    spec = env.spec
    has_positions = spec.positions is not None
    workers, *middle, manager = (copy.deepcopy(dict(level)) for level in levels)
    goal = f"box({o.goal_dim})"
    workers.update(reward="upper_advantage", reward_options={"env_reward_coef": o.worker_env_reward_coef},
                   positions=has_positions)
    if not has_positions and workers.get("options", {}).get("graph", "knn") == "knn":
        workers.setdefault("options", {})["graph"] = "complete"  # no positions: workers talk to all
    manager.update(group_size="all", command=goal, period=o.manager_k if middle else o.alpha)
    if middle:
        if o.grouping != "static" and not has_positions:
            raise ValueError(f"grouping {o.grouping} clusters workers by position, but {spec.name} has no "
                             f"positions; set grouping: static (clusters by agent index)")
        middle[0].update(groups=o.sub_managers, grouping=o.grouping, command=goal, period=o.alpha,
                         joint=False, reward="upper_advantage",
                         reward_options={"env_reward_coef": o.local_reward_coef})
    return build_levels(env, [workers, *middle, manager], learner_options)


def requires(levels: list[dict[str, Any]], grouping: str = "dynamic", **options: Any) -> tuple[str, ...]:
    """What HiMPo needs of an env: with sub-managers, several agents to cluster, and positions to
    cluster them by unless ``grouping: static``."""
    if len(levels) != 3:
        return ()
    return ("several_agents",) + (("positions",) if grouping != "static" else ())
