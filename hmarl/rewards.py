"""Reward rules: which reward a level's agents learn from.

What a level passes *up* is always the sum of its children's rewards over its
period (TAG's phi). What its agents *learn* from is a rule, so that reward
schemes are an ablation switch rather than a fork of the code.

Shapes: every field of :class:`LevelStep` is ``[B, N, ...]``; rules return ``[B, N]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hmarl.buffers import Rollout
from hmarl.goals import goal_distance
from hmarl.learner import UpdateContext
from hmarl.registry import Registry
from hmarl.spec import EnvSpec, Tensor, slice_dims
from hmarl.strategies import EnvRead, EnvView, goal_states


@dataclass
class LevelStep:
    """One step of a level, as a reward rule sees it."""

    children_reward: torch.Tensor
    """Sum of the children's rewards over the step ``[B, N]``."""
    child_obs: torch.Tensor
    """The children's messages before the step ``[B, N, child_obs_dim]``."""
    next_child_obs: torch.Tensor
    """... and after it, before any reset ``[B, N, child_obs_dim]``."""
    command: torch.Tensor | None
    """The command the agents held (one-hot or raw) ``[B, N, k]``; None at the top."""
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    """What the level below reported with this step (the env's ``info`` at the bottom)."""
    env: EnvView | None = None
    """What the step read of the env below all levels: the entries the rule's ``reads_env`` names,
    and which env agents are under each agent (None when the rule reads none)."""


class RewardRule:
    """Base rule; built for the level's agents over ``below``; called once per step.

    A rule that ``needs`` outputs of the level above (e.g. its ``advantages``), which exist only
    once that level has updated, completes the stored rewards in :meth:`relabel`: the
    Hierarchy's top-down update calls it with what the level above published. The build
    checks ``needs <= upper learner's publishes``.
    """

    needs: frozenset[str] = frozenset()
    #: what the rule reads of the env below all levels (``step.env``): the Levels between pass these
    #: entries up (:class:`~hmarl.strategies.EnvRead`), so the rule works at any depth. Such a rule is
    #: built with the env's spec as ``below`` (the facts it reads are the env's).
    reads_env: tuple[EnvRead, ...] = ()

    def __init__(self, below: EnvSpec, group_size: int):
        self.below = below
        self.group_size = group_size

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        raise NotImplementedError

    def check_command(self, command) -> None:
        """Fail at build time if the level above sends commands this rule cannot read."""

    def relabel(self, rollout: Rollout, ctx: UpdateContext) -> Tensor:
        """The rewards ``[T, B, N]`` to learn from, given what the level above published
        (``ctx.above``); only rules with ``needs`` are asked."""
        return rollout.reward


class SumUp(RewardRule):
    """TAG: an agent learns from the sum of its children's rewards."""

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        return step.children_reward


class GoalDistance(RewardRule):
    """HRL-CG: a worker learns from ``-||s + g - s'||`` on the env's goal dims (Eq. 5), its
    ``obs_slices["position"]``.

    ``s`` is the agent's goal state (:func:`~hmarl.strategies.goal_states`): the mean goal dims of
    the env agents under it, which directly above the env with one env agent each is its own, and
    above a level of teams or clusters (a HiMPo level) the team's mean position.
    """

    reads_env = (EnvRead("obs"),)

    def __init__(self, below: EnvSpec, group_size: int):
        super().__init__(below, group_size)
        self.index = torch.as_tensor(slice_dims(below.require("obs_slices.position", "the goal_distance reward")),
                                     device=below.device)

    def check_command(self, command) -> None:
        dims = len(self.index)
        if command is None or getattr(command, "shape", None) != (dims,) or getattr(command, "n", None) is not None:
            raise ValueError(f"goal_distance needs a level above that sends goals on the {dims} goal dims "
                             f"{self.index.tolist()} of {self.below.name}: command box({dims}, bound)")

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        if step.command is None:
            raise ValueError("goal_distance needs a level above that sends goals")
        if step.env is None:
            return -goal_distance(step.child_obs, step.command, step.next_child_obs, self.index)
        s, s_next = goal_states(step.env, "obs", self.index), goal_states(step.env, "final_obs", self.index)
        return -(s + step.command - s_next).norm(dim=-1)


class UpperAdvantage(RewardRule):
    """HiMPo: a unit learns from its superior's advantage for the command it was given,
    divided by the superior's period (Eq. 5), plus ``env_reward_coef`` times its
    children's env reward (HiMPo's FL ablation for workers; the local cluster reward of
    sub-managers, ``local_reward_coef``).

    The superior's advantages are ``[T_up, B, N_up]`` (one per superior, shared by its
    children) or ``[T_up, B, N_up, group]`` (one per child, from a critic that values
    each (superior, child) pair).
    """

    needs = frozenset({"advantages"})

    def __init__(self, below: EnvSpec, group_size: int, env_reward_coef: float = 0.0):
        super().__init__(below, group_size)
        self.env_reward_coef = env_reward_coef

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        return self.env_reward_coef * step.children_reward

    def relabel(self, rollout: Rollout, ctx: UpdateContext) -> Tensor:
        """The stored reward ``[T, B, N]`` + the superior's advantage of each step's period / period."""
        above = ctx.above
        return self.add_advantage(rollout.reward, above.outputs["advantages"], above.parent, above.slot,
                                  above.stride)

    @staticmethod
    def add_advantage(reward: Tensor, upper_advantage: Tensor, parent: Tensor, slot: Tensor,
                      period: int) -> Tensor:
        """``reward [T, B, N]`` + the superior's advantage of each step's period / period.

        ``parent`` is each unit's superior and ``slot`` its place among that superior's
        children: ``[N]`` (fixed children) or ``[T_up, B, N]`` (children regrouped per step).
        """
        if upper_advantage.dim() == 3:
            upper_advantage, slot = upper_advantage.unsqueeze(-1), torch.zeros_like(slot)
        t_up, b, _, group = upper_advantage.shape
        index = (parent * group + slot).expand(t_up, b, -1)
        per_unit = upper_advantage.flatten(2).gather(2, index)
        return reward + per_unit.repeat_interleave(period, dim=0) / period


class SubtaskReward(RewardRule):
    """ALMA: a unit assigned to subtask ``k`` learns from subtask ``k``'s reward, at any level.

    The assignment is the level above's command, a one-hot over the env's ``S`` subtasks;
    the rewards are the env's ``info["subtask_rewards"]`` (``EnvSpec.entities``), summed over
    the agent's step: ``[B, S]``, or ``[B, U, S]`` (one row per env agent) when they depend on who
    works on a subtask; then subtask ``k`` is worth the best reward of the env agents under the
    agents assigned ``k`` (simple spread: minus the distance of the landmark's nearest such env
    agent), and every agent on ``k`` gets that. An agent of a higher level (a team of env agents,
    say) is assigned a subtask as a whole: all the env agents under it work on it.
    """

    reads_env = (EnvRead("subtask_rewards", summed=True),)

    def __init__(self, below: EnvSpec, group_size: int):
        super().__init__(below, group_size)
        self.n_subtasks = below.require("entities", "the subtask reward").n_subtasks

    def check_command(self, command) -> None:
        if command is None or getattr(command, "n", None) != self.n_subtasks:
            raise ValueError(f"the subtask reward needs a level above that assigns one of the "
                             f"{self.n_subtasks} subtasks: command discrete({self.n_subtasks})")

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        rewards, assigned = step.env.end["subtask_rewards"], step.command > 0.5  # [B, (U,) S], [B, N, S]
        if rewards.dim() == 3:
            assigned = step.env.per_env_agent(assigned)  # [B, U, S]: each env agent its agent's subtask
            best = torch.where(assigned, rewards, float("-inf")).amax(1)  # [B, S]
            rewards = torch.where(assigned.any(1), best, 0.0)  # a subtask nobody works on pays no one
        return (step.command * rewards.unsqueeze(1)).sum(-1)


REWARD_RULES = Registry("reward", {
    "sum_up": SumUp, "goal_distance": GoalDistance, "upper_advantage": UpperAdvantage, "subtask": SubtaskReward})
"""Reward rules by the name a level's ``reward`` gives; register new ones here."""
