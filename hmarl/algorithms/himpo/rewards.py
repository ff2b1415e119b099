"""HiMPo's reward between levels (Marzi et al. 2025): a unit learns from its superior's advantage
for the goal it was given (:class:`UpperAdvantage`)."""
from __future__ import annotations

import torch

from hmarl.buffers import Rollout
from hmarl.learner import UpdateContext
from hmarl.rewards import LevelStep, RewardRule
from hmarl.spec import EnvSpec, Tensor


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


