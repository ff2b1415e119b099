"""Reward rules: which reward a level's agents learn from.

What a level passes *up* is always the sum of its children's rewards over its
period (TAG's phi). What its agents *learn* from is a rule, so that reward
schemes are an ablation switch rather than a fork of the code.

Shapes: rules map the children's summed reward ``[B, N]`` to ``[B, N]``.
"""
from __future__ import annotations

import torch


class RewardRule:
    """Base rule; ``step_reward`` is called once per step of the level."""

    def step_reward(self, children_reward: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SumUp(RewardRule):
    """TAG: an agent learns from the sum of its children's rewards."""

    def step_reward(self, children_reward: torch.Tensor) -> torch.Tensor:
        return children_reward


REWARD_RULES = {"sum_up": SumUp}
