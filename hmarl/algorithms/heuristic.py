"""TAG's hand-designed simple-spread reference: each agent goes straight to its landmark.

Decision (spec): landmarks are assigned by the permutation with the least total
distance. The assignment is recomputed at every step rather than stored at
reset: while agents head straight for their landmarks it does not change, and
it needs no per-episode state. Movement is a velocity controller towards
``speed_gain * offset``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from gymnasium import spaces

from hmarl.learner import AgentIO, Learner, UpdateContext, UpdateResult
from hmarl.spec import EnvSpec


@dataclass
class HeuristicConfig:
    """Options of the simple-spread heuristic."""

    speed_gain: float = 2.0
    """Desired velocity per unit of distance to the landmark."""
    deadband: float = 0.05
    """Velocity error below which a discrete agent does not push."""


class SpreadHeuristic(Learner):
    """Fixed policy over all agents of a flat level on a simple-spread env; learns nothing."""

    config_class = HeuristicConfig
    requires = ("obs_slices.landmarks", "obs_slices.velocity")  # of the env (algorithms.system_requires)

    @classmethod
    def build(cls, io: AgentIO, config: HeuristicConfig, env: EnvSpec) -> "SpreadHeuristic":
        return cls(io, config, env)

    def __init__(self, io: AgentIO, config: HeuristicConfig, env: EnvSpec):
        super().__init__(io)
        landmarks = env.require("obs_slices.landmarks", "the heuristic")
        velocity = env.require("obs_slices.velocity", "the heuristic")
        n = (landmarks.stop - landmarks.start) // 2
        if io.n_agents != n or io.obs_dim != env.obs_dim:
            raise ValueError("the heuristic is a flat policy: one agent per env agent, no commands")
        if n > 7:
            raise ValueError(f"the heuristic enumerates assignments; {n} agents is too many (max 7)")
        self.config = config
        self.first, self.count, self.velocity = landmarks.start, n, velocity.start
        self.register_buffer("permutations", torch.tensor(list(itertools.permutations(range(n)))))
        self.space = io.action_space

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.count
        offsets = obs[..., self.first:self.first + 2 * n].reshape(*obs.shape[:-1], n, 2)  # [B, N, L, 2]
        distance = offsets.norm(dim=-1)  # [B, agent, landmark]
        agents = torch.arange(n, device=obs.device)
        total = distance[:, agents, self.permutations].sum(-1)  # [B, P]
        target = self.permutations[total.argmin(-1)]  # [B, N]
        offset = offsets.gather(2, target[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
        error = self.config.speed_gain * offset - obs[..., self.velocity:self.velocity + 2]
        return self._command(error), torch.zeros(obs.shape[:-1], device=obs.device)

    def _command(self, error: torch.Tensor) -> torch.Tensor:
        push = error.abs() > self.config.deadband
        if isinstance(self.space, spaces.Box):
            if self.space.shape[0] == 2:  # VMAS: a force in [-1, 1]^2
                return error.clamp(-1.0, 1.0)
            # MPE: [no-op, left, right, down, up] in [0, 1]; x = a2 - a1, y = a4 - a3
            x, y = error.clamp(-1.0, 1.0).unbind(-1)
            return torch.stack([torch.zeros_like(x), (-x).clamp(min=0), x.clamp(min=0),
                                (-y).clamp(min=0), y.clamp(min=0)], dim=-1)
        digit = torch.where(push, torch.where(error < 0, 1, 2), 0)  # 0 stay, 1 negative, 2 positive
        if self.space.n == 9:  # VMAS: flat index over (x, y) in {stay, -, +}^2
            return digit[..., 0] * 3 + digit[..., 1]
        # MPE Discrete(5): [no-op, left, right, down, up], along the larger error
        along_x = error[..., 0].abs() >= error[..., 1].abs()
        x_action = torch.where(digit[..., 0] == 0, 0, digit[..., 0])
        y_action = torch.where(digit[..., 1] == 0, 0, digit[..., 1] + 2)
        return torch.where(along_x, x_action, y_action)

    def update(self, rollout, ctx: UpdateContext) -> UpdateResult:
        return UpdateResult()
