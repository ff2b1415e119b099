"""TD3 for the agents of one level (Fujimoto et al. 2018): twin critics, delayed actor, target smoothing.

Read beside CleanRL's td3_continuous_action.py: the same algorithm, batched over the level's agents.

.. math::
    y = r + \\gamma (1 - d) \\min_{j=1,2} Q'_j\\big(s', \\mathrm{clip}(\\pi'(s') + \\epsilon,
        a_{low}, a_{high})\\big), \\quad
        \\epsilon = \\mathrm{clip}(\\mathcal N(0, \\sigma), -c, c) \\cdot \\tfrac{a_{high} - a_{low}}{2}

    L_Q = \\sum_j \\ell(Q_j(s, a) - y), \\qquad L_\\pi = -\\mathbb E\\, Q_1(s, \\pi(s))

with ``ell`` the Huber or the squared error, averaged over the (row, agent) pairs whose
transition counts (the rollout's ``mask``). Each agent i has its own actor and critics
(stacked weights) unless ``share_params``. Transitions go to a replay of rows ``[N, ...]``
(one env copy's step, all N agents).

Schedule, per env step of each copy: a rollout of T steps of B copies takes
``updates_per_step * T * B`` critic steps, and the actor and the targets learn every
``policy_delay``-th of them; a level above the env counts its own steps (one per decision
of each copy). The first ``random_steps`` env steps act uniformly at random.

Defaults are HRL-CG's (Section 6.2): (256, 256) ReLU, Adam 3e-4, tau 5e-3, replay 200k,
Huber critic loss, 10k random env steps, exploration noise 0.1, critic every env step,
actor and targets every 2.

Shapes: obs ``[B, N, obs_dim]``; actions ``[B, N, act_dim]`` in the Box of each agent.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from algorithms.common import OffPolicyConfig, ReplayLearner, adam, weighted_mean
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO
from hmarl.nn import AgentMLP

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


def flatten_steps(x: Tensor) -> Tensor:
    """``[T, B, ...]`` -> ``[T*B, ...]``: the rows a replay stores."""
    return x.reshape(-1, *x.shape[2:])


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """``target <- tau * source + (1 - tau) * target``, parameter by parameter."""
    with torch.no_grad():
        target_params, source_params = list(target.parameters()), list(source.parameters())
        if tau == 1.0:
            torch._foreach_copy_(target_params, source_params)
        else:
            torch._foreach_lerp_(target_params, source_params, tau)


@dataclass
class TD3Config(OffPolicyConfig):
    """TD3 hyperparameters, named as in CleanRL; defaults are HRL-CG's (Fujimoto et al. settings)."""

    policy_delay: int = 2
    """The actor and the targets learn once every this many critic steps."""
    target_noise: float = 0.2
    """Std of the target policy smoothing noise, in half-ranges of the action box."""
    target_noise_clip: float = 0.5
    """Clip of the target policy smoothing noise, in half-ranges of the action box."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise, in half-ranges of the action box."""
    random_steps: int = 10_000
    """Uniform random actions for the first this many env steps (all copies count, agents do not;
    a manager deciding every k env steps acts at random for random_steps / k decisions per copy)."""
    ignore_obs_dims: list[int] = ()
    """Observation dims the networks do not read (HRL-CG's worker: the env's context)."""

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.policy_delay >= 1, f"policy_delay must be >= 1, got {self.policy_delay}"),
            (self.target_noise >= 0, f"target_noise must be >= 0, got {self.target_noise}"),
            (self.target_noise_clip >= 0, f"target_noise_clip must be >= 0, got {self.target_noise_clip}"),
            (self.exploration_noise >= 0, f"exploration_noise must be >= 0, got {self.exploration_noise}"),
            (self.random_steps >= 0, f"random_steps must be >= 0, got {self.random_steps}")]


class TD3(ReplayLearner):
    """Twin-delayed DDPG for all agents of a level at once, learning from a replay."""

    config_class = TD3Config

    def __init__(self, io: AgentIO, config: TD3Config):
        super().__init__(io, config.buffer_size, config.ignore_obs_dims)
        self.config = c = config
        space = io.action_space
        if not isinstance(space, spaces.Box):
            raise ValueError(f"TD3 needs a Box (continuous) action space, got {space}; "
                             "use dqn for a Discrete one")
        if len(space.shape) != 1:
            raise ValueError(f"TD3 needs a flat Box action space (act_dim,), got shape {space.shape}")
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ValueError(f"TD3 needs a bounded Box action space, got {space}")
        n, act_dim = io.n_agents, int(space.shape[0])
        self.act_dim = act_dim
        low = torch.as_tensor(space.low, dtype=torch.float32)
        high = torch.as_tensor(space.high, dtype=torch.float32)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)
        self.actor = AgentMLP(n, self.in_dim, c.hidden_sizes, act_dim, "relu", 1.0, c.share_params)
        self.qf1 = AgentMLP(n, self.in_dim + act_dim, c.hidden_sizes, 1, "relu", 1.0, c.share_params)
        self.qf2 = AgentMLP(n, self.in_dim + act_dim, c.hidden_sizes, 1, "relu", 1.0, c.share_params)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.qf1_target = copy.deepcopy(self.qf1).requires_grad_(False)
        self.qf2_target = copy.deepcopy(self.qf2).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), c.learning_rate)
        self.critic_optimizer = adam([*self.qf1.parameters(), *self.qf2.parameters()], c.learning_rate)
        #: env steps acted (not deterministic) so far, all copies: drives the random warm-up
        self.acted = 0
        self._actor_loss: Tensor | None = None  # the latest, reported until the next actor step

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Both optimizers, for checkpoints (``Hierarchy.optimizers`` reads this list)."""
        return [self.actor_optimizer, self.critic_optimizer]

    def get_extra_state(self) -> dict[str, Any]:
        """The replay learner's state and the warm-up counter, saved with ``state_dict``."""
        return {**super().get_extra_state(), "acted": self.acted}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        super().set_extra_state(state)
        self.acted = int(state["acted"])

    # -- policy and value ------------------------------------------------------------------
    def _scale(self, raw: Tensor) -> Tensor:
        return torch.tanh(raw) * self.action_scale + self.action_bias

    def policy(self, obs: Tensor) -> Tensor:
        """Deterministic, differentiable actor output ``[..., N, act_dim]``: tanh scaled to the box."""
        return self._scale(self.actor(self.features(obs)))

    def q_value(self, obs: Tensor, action: Tensor) -> Tensor:
        """The first critic ``Q1(obs, action)`` ``[..., N]``, differentiable."""
        return self.qf1(torch.cat([self.features(obs), action], -1)).squeeze(-1)

    def _clip(self, action: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low)

    @property
    def warming_up(self) -> bool:
        """Acting uniformly at random: fewer than ``random_steps`` env steps acted so far."""
        return self.acted < self.config.random_steps

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Uniform in the box during warm-up, else actor + Gaussian noise (none if deterministic)."""
        b, n = obs.shape[:2]
        with torch.no_grad():
            if deterministic:
                action = self.policy(obs)
            else:
                if self.warming_up:
                    action = self.action_low + torch.rand(b, n, self.act_dim, device=obs.device) * (
                        self.action_high - self.action_low)
                else:
                    action = self.policy(obs)
                    noise = torch.randn_like(action) * (self.action_scale * self.config.exploration_noise)
                    action = self._clip(action + noise)
                self.acted += b * self.stride
        return action, obs.new_zeros(b, n)

    # -- learning --------------------------------------------------------------------------
    def transitions(self, rollout: Rollout, below: Rollout | None = None) -> dict[str, Tensor]:
        """The replay rows of a rollout, each ``[T*B, N, ...]`` (terminated ``[T*B, 1]`` float).

        Subclasses add fields (a manager: from the level below, ``below``).
        """
        return {"obs": flatten_steps(rollout.obs),
                "action": flatten_steps(rollout.action),
                "reward": flatten_steps(rollout.reward) * self.config.reward_scale,
                "next_obs": flatten_steps(self.next_obs(rollout)),
                "terminated": flatten_steps(rollout.terminated).float().unsqueeze(-1)}

    def critic_target(self, batch: dict[str, Tensor]) -> Tensor:
        """Clipped double-Q target with target policy smoothing, ``[M, N]``, no gradient."""
        c = self.config
        with torch.no_grad():
            next_obs = self.features(batch["next_obs"])
            next_action = self._scale(self.actor_target(next_obs))
            noise = (torch.randn_like(next_action) * c.target_noise).clamp(-c.target_noise_clip,
                                                                          c.target_noise_clip)
            next_action = self._clip(next_action + noise * self.action_scale)
            next_in = torch.cat([next_obs, next_action], -1)
            next_q = torch.minimum(self.qf1_target(next_in), self.qf2_target(next_in)).squeeze(-1)
            return batch["reward"] + c.gamma * (1.0 - batch["terminated"]) * next_q

    def critic_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Sum of both critics' losses against :meth:`critic_target` over the transitions that
        count (``batch["weight"]``), and Q1's mean."""
        target = self.critic_target(batch)
        inputs = torch.cat([self.features(batch["obs"]), batch["action"]], -1)
        q1, q2 = self.qf1(inputs).squeeze(-1), self.qf2(inputs).squeeze(-1)
        loss = F.smooth_l1_loss if self.config.huber_loss else F.mse_loss
        weight = batch["weight"]
        error = loss(q1, target, reduction="none") + loss(q2, target, reduction="none")
        return weighted_mean(error, weight), weighted_mean(q1.detach(), weight)

    def actor_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """``-Q1(s, pi(s))`` averaged over the transitions that count; subclasses add terms."""
        return -weighted_mean(self.q_value(batch["obs"], self.policy(batch["obs"])), batch["weight"])

    def update(self, rollout: Rollout, progress: float, below: Rollout | None = None) -> dict[str, Tensor]:
        """Store the rollout (its masked transitions left out), then ``gradient_steps(T * B)``
        critic steps once the replay holds a batch; the actor and targets every ``policy_delay``."""
        c = self.config
        self.progress = progress
        mask = None if rollout.mask is None else flatten_steps(rollout.mask)
        self.store(self.transitions(rollout, below), mask)
        if len(self.replay) < c.batch_size:
            return {}
        q_loss = q1_mean = None
        t, b = rollout.obs.shape[:2]
        for _ in range(c.gradient_steps(t * b)):
            batch = self.replay.sample(c.batch_size)
            q_loss, q1_mean = self.critic_loss(batch)
            self.critic_optimizer.zero_grad()
            q_loss.backward()
            self.critic_optimizer.step()
            self.gradient_steps += 1
            if self.gradient_steps % c.policy_delay == 0:
                # The critics are frozen: the actor's gradient flows through them, not into them.
                self.qf1.requires_grad_(False)
                self.qf2.requires_grad_(False)
                try:
                    actor_loss = self.actor_loss(batch)
                    self.actor_optimizer.zero_grad()
                    actor_loss.backward()
                    self.actor_optimizer.step()
                finally:
                    self.qf1.requires_grad_(True)
                    self.qf2.requires_grad_(True)
                self._actor_loss = actor_loss.detach()
                soft_update(self.actor_target, self.actor, c.tau)
                soft_update(self.qf1_target, self.qf1, c.tau)
                soft_update(self.qf2_target, self.qf2, c.tau)
        if q_loss is None:
            return {}
        actor_loss = self._actor_loss if self._actor_loss is not None else q_loss.new_zeros(())
        return {"q_loss": q_loss.detach(), "actor_loss": actor_loss, "q1": q1_mean}
