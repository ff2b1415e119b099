"""The interface a level's learner implements."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    env_slots: int = 0
    """Env agents under each agent, as slots (the group sizes of this level and those below multiplied),
    where the children's messages are not the env agents' observations; 0 where they are (every level
    below has one unit per agent, in order, and sends its children's observations up as they are). A
    learner that ``reads_env`` ``obs`` then finds, after the ``obs_dim`` features, for each slot the
    env agent's observation followed by a one-hot of which env agent it is (zeros: an empty slot):
    ``env_slots * (env obs_dim + env n_agents)`` features (:meth:`env_dim`)."""

    def env_dim(self, env: EnvSpec) -> int:
        """Features of the env block that follows ``obs_dim`` for a learner that reads the env's observations."""
        return self.env_slots * (env.obs_dim + env.n_agents)

    @property
    def child_dim(self) -> int:
        """Features per child slot: message, position, presence flag."""
        return self.child_obs_dim // self.group


@dataclass(frozen=True)
class Published:
    """What a level leaves for the level below once it has updated.

    ``outputs``: the learner's published tensors, named as in its ``publishes`` (HiMPo's
    ``{"advantages": [T_up, B, N_up] or [T_up, B, N_up, group]}``). ``parent``/``slot``: each
    unit below's agent and its place among that agent's children, ``[N_below]`` (fixed) or
    ``[T_up, B, N_below]`` (regrouped per step). ``stride``: steps of the level below per step
    of this level.
    """

    outputs: dict[str, torch.Tensor]
    parent: torch.Tensor
    slot: torch.Tensor
    stride: int


@dataclass(frozen=True)
class UpdateContext:
    """Everything a learner's update may read besides its own rollout: the one channel between levels.

    ``progress`` in [0, 1) is the share of training done; ``above`` what the level above published
    in this update (levels update top-down), None at the top; ``below`` the level below's rollout
    of the same env steps and ``below_learner`` its learner (read-only: HRL-CG's connected
    gradient differentiates through the worker's critic), None at the bottom or when the level
    below is not updating now.
    """

    progress: float = 0.0
    above: Published | None = None
    below: Rollout | None = None
    below_learner: "Learner | None" = None


@dataclass
class UpdateResult:
    """What an update returns: scalar ``metrics`` to log and the ``outputs`` the learner publishes
    for the level below (keys: its ``publishes``)."""

    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


class Learner(nn.Module):
    """The policy of a level's agents, evaluated for all of them in one call, and its update.

    Shapes:
        ``act``: obs ``[B, N, obs_dim]`` -> action ``[B, N]`` (Discrete),
        ``[B, N, heads]`` (MultiDiscrete) or ``[B, N, act_dim]`` (Box), and log-prob ``[B, N]``.
    """

    #: the dataclass of this learner's options
    config_class: type
    #: names of the outputs every update publishes for the level below (``UpdateResult.outputs``),
    #: which reward rules there declare as ``needs``
    publishes: frozenset[str] = frozenset()
    #: learns from each rollout alone, bootstrapping from its last observation: that observation
    #: then carries the command the level above gives next (drawn before anyone updates)
    on_policy = False
    #: transitions of this level (its steps x env copies) to collect before each update; the
    #: Hierarchy rounds it up to whole rollouts. None: update after every rollout.
    transitions_per_update: int | None = None
    #: env steps per step of this learner's level (set by the Hierarchy), for schedules that
    #: count env steps, such as off-policy warm-ups
    stride: int = 1
    #: what the learner reads of the env below all levels (:class:`~hmarl.strategies.EnvRead`; only
    #: ``obs`` for now): where ``io.env_slots`` is set, its level appends the env agents' observations
    #: to its agents' (see :class:`AgentIO`) and every Level between passes them up
    reads_env: tuple = ()
    #: the policy carries a hidden state through each episode (:meth:`act_recurrent`): the Level
    #: holds one per env copy, zeroes a copy's where its episode starts, advances it only for the
    #: copies that act, and stores the state each step started from (``Rollout.state``)
    recurrent: bool = False

    def __init__(self, io: AgentIO):
        super().__init__()
        self.io = io

    @classmethod
    def build(cls, io: AgentIO, config, env: EnvSpec) -> "Learner":
        """Construct for a level; learners that need facts about the real env override this."""
        return cls(io, config)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions of all agents and their log-probabilities, without gradients; ``deterministic``
        (evaluation) takes the most likely action."""
        raise NotImplementedError

    def initial_state(self, num_envs: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """A recurrent policy's state at an episode's start, zeros ``[B, ...]`` (the first dim the
        copies; the rest the learner's own)."""
        raise NotImplementedError(f"{type(self).__name__} is not recurrent")

    def act_recurrent(self, obs: torch.Tensor, state: torch.Tensor,
                      deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`act` of a recurrent policy from ``state`` (:meth:`initial_state`'s shape, zeros
        where an episode starts): actions, log-probabilities and the next state."""
        raise NotImplementedError(f"{type(self).__name__} is not recurrent")

    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        """Learn from a full rollout; ``ctx`` holds the training progress and what the levels
        above and below offer (:class:`UpdateContext`)."""
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer this learner steps, in a fixed order (checkpoints save and restore them)."""
        return []
