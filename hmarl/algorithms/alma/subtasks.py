"""ALMA's subtasks in a hierarchy (Iqbal et al. 2022): the allocator re-decides when a copy's active
subtasks change (:class:`OnSubtaskChange`), and an agent assigned subtask ``k`` learns from subtask
``k``'s reward (:class:`SubtaskReward`). Both read the env's ``EnvSpec.entities``."""
from __future__ import annotations

import torch

from hmarl.rewards import LevelStep, RewardRule
from hmarl.spec import EnvSpec, Tensor, TimeStep
from hmarl.strategies import EnvRead, Moment, Termination


class OnSubtaskChange(Termination):
    """ALMA: a new allocation every ``k`` steps, at each episode's start, and at once when the
    copy's active subtasks change (a subtask finished)."""

    holds = True
    requires = ("entities",)
    reads = ("active_subtasks",)

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"decide_every must be >= 1, got {k}")
        self.k = k

    def start(self, ts: TimeStep) -> dict[str, Tensor]:
        return {"active": ts.info["active_subtasks"]}

    def decide(self, now: Moment) -> Tensor:
        active = now.ts.info["active_subtasks"]
        changed = (active != now.memory["active"]).any(-1)
        now.memory["active"] = active
        return (now.age % self.k == 0) | now.fresh | changed

    def __repr__(self) -> str:
        return f"OnSubtaskChange({self.k})"


#: Terminations by the name a level's ``termination`` key gives; register new ones here.


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


