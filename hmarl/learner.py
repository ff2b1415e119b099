"""The interface a level's learner implements."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from gymnasium import spaces
from torch import nn

from hmarl.buffers import Rollout
from hmarl.spec import EnvSpec


@dataclass(frozen=True)
class AgentIO:
    """What the agents of one level observe and emit.

    ``obs_dim`` = children's messages (``child_obs_dim``) + the command from above.
    The children's part is ``group`` slots of ``child_dim`` features each:
    ``[message, position (position_dim), present (1 if presence)]``.
    ``action_space`` is per agent: Discrete (a joint action over its children),
    MultiDiscrete (one head per child) or Box (children's continuous actions, concatenated).
    """

    n_agents: int
    obs_dim: int
    child_obs_dim: int
    action_space: spaces.Discrete | spaces.MultiDiscrete | spaces.Box
    group: int = 1
    """Child slots per agent."""
    position_dim: int = 0
    """Size of the position each child slot carries (0: none)."""
    presence: bool = False
    """Each child slot ends with a 1/0 flag: a child is there (children regrouped per copy)."""

    @property
    def child_dim(self) -> int:
        """Features per child slot: message, position, presence flag."""
        return self.child_obs_dim // self.group


class Learner(nn.Module):
    """The policy of a level's agents, evaluated for all of them in one call, and its update.

    Shapes:
        ``act``: obs ``[B, N, obs_dim]`` -> action ``[B, N]`` (Discrete),
        ``[B, N, heads]`` (MultiDiscrete) or ``[B, N, act_dim]`` (Box), and log-prob ``[B, N]``.
    """

    #: the dataclass of this learner's options
    config_class: type
    #: learners that estimate advantages keep the last update's in ``last_advantages``
    #: (``[T, B, N]`` or ``[T, B, N, children]``), for ``upper_advantage`` rewards below
    estimates_advantages = False
    #: transitions of this level (its steps x env copies) to collect before each update; the
    #: Hierarchy rounds it up to whole rollouts. None: update after every rollout.
    transitions_per_update: int | None = None
    #: env steps per step of this learner's level (set by the Hierarchy), for schedules that
    #: count env steps, such as off-policy warm-ups
    stride: int = 1

    def __init__(self, io: AgentIO):
        super().__init__()
        self.io = io
        self.last_advantages: torch.Tensor | None = None

    @classmethod
    def build(cls, io: AgentIO, config, env: EnvSpec) -> "Learner":
        """Construct for a level; learners that need facts about the real env override this."""
        return cls(io, config)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions of all agents and their log-probabilities, without gradients; ``deterministic``
        (evaluation) takes the most likely action."""
        raise NotImplementedError

    def update(self, rollout: Rollout, progress: float, below: Rollout | None = None) -> dict[str, torch.Tensor]:
        """Learn from a full rollout; ``progress`` in [0, 1) is the share of training done.

        ``below`` is the level below's rollout of the same env steps (read-only), for
        cross-level terms such as HRL-CG's connected gradient; None at the bottom.
        """
        raise NotImplementedError
