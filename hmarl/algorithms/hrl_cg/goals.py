"""Relative goals (HIRO / HRL-CG): a goal is a desired change of some observation dims.

A manager acting at ``s_t`` with goal ``g`` wants the goal dims to reach ``s_t + g``.
Between its decisions the goal is re-expressed from where the worker now is,
``h(s, g, s') = s + g - s'`` (Kreidieh et al. 2020, Eq. 6), so the absolute target
stays fixed; the worker's intrinsic reward is ``-||s + g - s'||`` (Eq. 5).

Shapes: ``s``, ``s'`` ``[..., obs_dim]`` (goal dims picked by ``index``), ``g`` ``[..., goal_dim]``.
"""
from __future__ import annotations

import torch
from gymnasium import spaces

from hmarl.rewards import LevelStep, RewardRule
from hmarl.spec import EnvSpec, Tensor, slice_dims
from hmarl.strategies import EnvRead, EnvView, Raw


def goal_transition(s: torch.Tensor, g: torch.Tensor, s_next: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``h(s, g, s') = s + g - s'`` on the goal dims."""
    return s[..., index] + g - s_next[..., index]


def goal_distance(s: torch.Tensor, g: torch.Tensor, s_next: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``||s + g - s'||_2`` on the goal dims: ``[...]``."""
    return (s[..., index] + g - s_next[..., index]).norm(dim=-1)


def goal_states(env: EnvView, which: str, index: Tensor) -> Tensor:
    """``[B, N, goal_dim]``: each agent's goal state, the mean goal dims ``index`` of the env agents
    under it, in the observations the step began from (``which="obs"``) or ended with (``"final_obs"``)."""
    entries = env.start if which == "obs" else env.end
    return env.mean(entries[which][..., index])


class RelativeGoal(Raw):
    """HRL-CG / HIRO: the command is a goal relative to the agent's goal state ``s`` on the env's goal
    dims ``index`` (its ``obs_slices["position"]``); between two commands it follows ``h(s, g, s') = s + g - s'`` (Kreidieh et al. 2020,
    Eq. 6), so the absolute target stays fixed.

    An agent's goal state is the mean of the goal dims of the env agents' observations under it
    (:meth:`EnvView.mean`): directly above the env with one env agent each, that agent's own goal dims
    (HRL-CG); above a level of teams or clusters (HiMPo's sub-managers), the team's mean position.
    Without ``env`` (a bare call) the goal dims are read in the first child's observation."""

    requires = ("obs_slices.position",)
    carries = True
    reads_env = (EnvRead("obs"),)

    def __init__(self, space: spaces.Box, index: list[int]):
        super().__init__(space)
        if not isinstance(space, spaces.Box) or space.shape[0] != len(index):
            raise ValueError(f"relative goals live on the {len(index)} goal dims {list(index)}; "
                             f"the level above must send box({len(index)}, range) commands")
        self.index = list(index)
        self._index: Tensor | None = None

    def carry(self, features: Tensor, child_obs: Tensor, next_child_obs: Tensor, env: EnvView | None = None) -> Tensor:
        if self._index is None or self._index.device != features.device:
            self._index = torch.as_tensor(self.index, device=features.device)
        if env is None:
            return goal_transition(child_obs, features, next_child_obs, self._index)
        return goal_states(env, "obs", self._index) + features - goal_states(env, "final_obs", self._index)

    def __repr__(self) -> str:
        return f"RelativeGoal(dims {self.index})"


class GoalDistance(RewardRule):
    """HRL-CG: a worker learns from ``-||s + g - s'||`` on the env's goal dims (Eq. 5), its
    ``obs_slices["position"]``.

    ``s`` is the agent's goal state (:func:`~hmarl.algorithms.hrl_cg.goals.goal_states`): the mean goal dims of
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
