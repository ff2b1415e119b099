"""TAG's hand-designed simple-spread reference: each agent goes straight to its landmark.

Landmarks are assigned by the permutation of agents to landmarks with the least total distance
(decision: the paper does not say how). Two variants (``assignment``):

- ``initial``, the paper's (TAG Sec. 5: it "assigns and directs each agent to a specific goal along
  the shortest path from their initial position"): the assignment is made once, at the episode's
  first step, from the initial positions, and kept; the agents carry it as a recurrent state.
- ``replan`` (the default, ours): the assignment is recomputed at every step. While agents head
  straight for their landmarks it does not change; it does where two paths cross or agents
  collide and are pushed off their line, so it is at least as good and usually better.

Movement is a velocity controller towards ``speed_gain * offset`` (the shortest path: a straight line).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from gymnasium import spaces

from hmarl.learner import AgentIO, Learner, UpdateContext, UpdateResult
from hmarl.spec import EnvSpec


ASSIGNMENTS = ("replan", "initial")


@dataclass
class HeuristicConfig:
    """Options of the simple-spread heuristic."""

    speed_gain: float = 2.0
    """Desired velocity per unit of distance to the landmark."""
    deadband: float = 0.05
    """Velocity error below which a discrete agent does not push."""
    assignment: str = "replan"
    """Which landmark each agent heads for: ``replan`` (the least-total-distance assignment, every
    step) or ``initial`` (made once from the initial positions, TAG Sec. 5's heuristic)."""

    def __post_init__(self):
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"unknown assignment {self.assignment!r}; available: {', '.join(ASSIGNMENTS)}")


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
        #: ``assignment: initial`` keeps each agent's landmark through the episode
        self.recurrent = config.assignment == "initial"
        self.first, self.count, self.velocity = landmarks.start, n, velocity.start
        self.register_buffer("permutations", torch.tensor(list(itertools.permutations(range(n)))))
        self.space = io.action_space

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = self._offsets(obs)
        return self._steer(obs, offsets, self._assign(offsets)), torch.zeros(obs.shape[:-1], device=obs.device)

    # -- assignment: initial carries each agent's landmark (+ 1; 0 before the first step) as its state
    def initial_state(self, num_envs: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Zeros ``[B, N]``: no agent assigned yet."""
        return torch.zeros(num_envs, self.count, device=device)

    def act_recurrent(self, obs: torch.Tensor, state: torch.Tensor,
                      deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`act` towards the landmarks assigned at the episode's first step (``state``)."""
        offsets = self._offsets(obs)
        target = torch.where(state > 0, state.long() - 1, self._assign(offsets))
        action = self._steer(obs, offsets, target)
        return action, torch.zeros(obs.shape[:-1], device=obs.device), (target + 1).to(state.dtype)

    def _offsets(self, obs: torch.Tensor) -> torch.Tensor:
        """Each agent's offsets to the landmarks ``[B, N, L, 2]``."""
        return obs[..., self.first:self.first + 2 * self.count].reshape(*obs.shape[:-1], self.count, 2)

    def _assign(self, offsets: torch.Tensor) -> torch.Tensor:
        """Each agent's landmark ``[B, N]``: the permutation with the least total distance."""
        distance = offsets.norm(dim=-1)  # [B, agent, landmark]
        agents = torch.arange(self.count, device=offsets.device)
        total = distance[:, agents, self.permutations].sum(-1)  # [B, P]
        return self.permutations[total.argmin(-1)]

    def _steer(self, obs: torch.Tensor, offsets: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The action that moves each agent straight towards its ``target`` landmark."""
        offset = offsets.gather(2, target[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
        error = self.config.speed_gain * offset - obs[..., self.velocity:self.velocity + 2]
        return self._command(error)

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
