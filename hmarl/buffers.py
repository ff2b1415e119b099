"""Rollout storage for on-policy learners: preallocated tensors, written in place."""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class Rollout:
    """A level's transitions of one rollout, ``T`` steps of ``B`` copies.

    Shapes:
        obs, final_obs ``[T, B, N, obs_dim]``; last_obs ``[B, N, obs_dim]``;
        action ``[T, B, N]`` / ``[T, B, N, heads]`` (discrete) or ``[T, B, N, act_dim]``;
        log_prob, reward ``[T, B, N]``; terminated, done ``[T, B]``.
    ``final_obs[t]`` is what the agents saw when copy b's episode ended at t
    (only read where ``done``); ``last_obs`` is what they see after step T-1.
    """

    obs: Tensor
    action: Tensor
    log_prob: Tensor
    reward: Tensor
    terminated: Tensor
    done: Tensor
    final_obs: Tensor
    last_obs: Tensor

    def next_obs(self) -> Tensor:
        """The observation following each step, before any reset: ``[T, B, N, obs_dim]``."""
        following = torch.cat([self.obs[1:], self.last_obs.unsqueeze(0)])
        return torch.where(self.done[..., None, None], self.final_obs, following)


class RolloutBuffer:
    """Holds ``capacity`` steps; tensors are allocated on the first ``add``."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.t = 0
        self._data: dict[str, Tensor] = {}

    @property
    def full(self) -> bool:
        return self.t == self.capacity

    def add(self, **fields: Tensor) -> None:
        if self.t >= self.capacity:
            raise RuntimeError(f"rollout buffer overflow: capacity {self.capacity}")
        if not self._data:
            self._data = {k: torch.empty(self.capacity, *v.shape, dtype=v.dtype, device=v.device)
                          for k, v in fields.items()}
        for key, value in fields.items():
            self._data[key][self.t] = value
        self.t += 1

    def rollout(self, last_obs: Tensor) -> Rollout:
        if not self.full:
            raise RuntimeError(f"rollout read after {self.t} of {self.capacity} steps")
        return Rollout(last_obs=last_obs, **self._data)

    def clear(self) -> None:
        self.t = 0
