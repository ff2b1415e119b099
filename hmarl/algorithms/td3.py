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
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from hmarl.algorithms.offpolicy import OffPolicyConfig, ReplayLearner, adam, flatten_steps, soft_update, weighted_mean
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, UpdateContext
from hmarl.nn import AgentMLP

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


class StackedMLP(nn.Module):
    """``heads`` ReLU MLPs for every agent of a level (one set for all with ``share_params``),
    evaluated in one batched call: each layer's weights are stacked ``[heads * n_nets, in, out]``,
    head h of agent i at ``h * n_nets + i``, as :class:`hmarl.nn.AgentMLP` stacks agents.

    TD3's twin critics are two heads: both critics cost one ``baddbmm`` (and one autograd node)
    per layer instead of two ``addmm``s, and the actor's loss runs the first head alone.
    Initialised as AgentMLP: orthogonal, gain sqrt(2) on the hidden layers and 1 on the output,
    head by head.

    Shapes: input ``[..., N, in]`` -> ``[heads, ..., N, out]``.
    """

    def __init__(self, heads: int, n_agents: int, in_dim: int, hidden_sizes: list[int], out_dim: int,
                 share_params: bool):
        super().__init__()
        self.heads, self.n_nets = heads, 1 if share_params else n_agents
        sizes = [in_dim, *hidden_sizes, out_dim]
        gains = [math.sqrt(2.0)] * len(hidden_sizes) + [1.0]
        # head by head, then layer by layer, then agent by agent: the draws of ``heads``
        # AgentMLPs built one after the other
        drawn = [[[nn.init.orthogonal_(torch.empty(fan_out, fan_in), gain).T for _ in range(self.n_nets)]
                  for fan_in, fan_out, gain in zip(sizes[:-1], sizes[1:], gains)] for _ in range(heads)]
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([w for head in drawn for w in head[layer]]))
                                        for layer in range(len(gains)))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(heads * self.n_nets, 1, fan_out))
                                       for fan_out in sizes[1:])

    def forward(self, x: Tensor, heads: int | None = None, detach: bool = False) -> Tensor:
        """The first ``heads`` heads (all by default); ``detach``: their weights as constants,
        so the output's gradient reaches ``x`` only (an actor's loss through frozen critics)."""
        k = (self.heads if heads is None else heads) * self.n_nets
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        if self.n_nets == 1:  # every agent's rows through the one net
            x = x.reshape(1, -1, d).expand(k, -1, -1)
        else:  # [N, M, in], repeated for each head
            x = x.reshape(-1, n, d).transpose(0, 1).repeat(k // self.n_nets, 1, 1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if k < w.shape[0]:  # slicing only when needed: a full slice would still cost a backward copy
                w, b = w[:k], b[:k]
            if detach:
                w, b = w.detach(), b.detach()
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        if self.n_nets == 1:
            return x.view(k, *lead, n, -1)
        x = x.view(k // self.n_nets, n, -1, x.shape[-1]).transpose(1, 2)  # [heads, M, N, out]
        return x.reshape(k // self.n_nets, *lead, n, -1)


def stack_twin_critics(module: nn.Module, state: dict[str, Tensor], prefix: str, *args) -> None:
    """Load a state dict saved with separate critics ``qf1``/``qf2`` (and their targets), the
    layout before the critics were stacked, into ``critics`` (``critics_target``): head 1 is qf1,
    head 2 is qf2. Saved models load; a training checkpoint of that layout does not resume, since
    its critic optimizer's state holds two parameters per layer where there is now one."""
    for old, new in (("qf{}.", "critics."), ("qf{}_target.", "critics_target.")):
        first = [key for key in state if key.startswith(prefix + old.format(1))]
        for key in first:
            name = key[len(prefix + old.format(1)):]
            state[prefix + new + name] = torch.cat([state.pop(key), state.pop(prefix + old.format(2) + name)])


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
    acts_on = "continuous_actions"  # a deterministic actor: at level 0, the env's (algorithms.system_requires)

    def __init__(self, io: AgentIO, config: TD3Config):
        super().__init__(io, config.buffer_size, config.ignore_obs_dims)
        self.config = c = config
        space = io.action_space
        if not isinstance(space, spaces.Box):
            raise ValueError(f"TD3 needs a Box (continuous) action space, got {space}; "
                             "use learner: dqn for a Discrete one (the system iql)")
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
        #: Q1 and Q2, the two heads of one stacked network
        self.critics = StackedMLP(2, n, self.in_dim + act_dim, c.hidden_sizes, 1, c.share_params)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critics_target = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), c.learning_rate)
        self.critic_optimizer = adam(self.critics.parameters(), c.learning_rate)
        self.register_load_state_dict_pre_hook(stack_twin_critics)
        #: env steps acted (not deterministic) so far, all copies: drives the random warm-up
        self.acted = 0
        self._actor_loss: Tensor | None = None  # the latest, reported until the next actor step

    def optimizers(self) -> list[torch.optim.Optimizer]:
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

    def q_value(self, obs: Tensor, action: Tensor, detach: bool = False) -> Tensor:
        """The first critic ``Q1(obs, action)`` ``[..., N]``, differentiable; with ``detach`` in
        its inputs only (the critic's weights as constants: an actor's loss)."""
        return self.critics(torch.cat([self.features(obs), action], -1), heads=1, detach=detach)[0, ..., 0]

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
    def transitions(self, rollout: Rollout, ctx: UpdateContext | None = None) -> dict[str, Tensor]:
        """The replay rows of a rollout, each ``[T*B, N, ...]`` (terminated ``[T*B, 1]`` float).

        Subclasses add fields (a manager: from the level below, ``ctx.below``).
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
            next_q = self.critics_target(torch.cat([next_obs, next_action], -1)).amin(0).squeeze(-1)
            return batch["reward"] + c.gamma * (1.0 - batch["terminated"]) * next_q

    def critic_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Sum of both critics' losses against :meth:`critic_target` over the transitions that
        count (``batch["weight"]``), and Q1's mean."""
        target = self.critic_target(batch)
        q = self.critics(torch.cat([self.features(batch["obs"]), batch["action"]], -1)).squeeze(-1)  # [2, M, N]
        loss = F.smooth_l1_loss if self.config.huber_loss else F.mse_loss
        weight = batch["weight"]
        error = loss(q, target.expand_as(q), reduction="none").sum(0)
        return weighted_mean(error, weight), weighted_mean(q[0].detach(), weight)

    def actor_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """``-Q1(s, pi(s))`` averaged over the transitions that count, the critics frozen (their
        weights constants: no gradient reaches them); subclasses add terms."""
        return -weighted_mean(self.q_value(batch["obs"], self.policy(batch["obs"]), detach=True), batch["weight"])

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One critic step on ``batch``; every ``policy_delay``-th also an actor step on it and a
        soft update of the targets. The latest actor loss is reported until the next actor step."""
        c = self.config
        q_loss, q1_mean = self.critic_loss(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % c.policy_delay == 0:
            actor_loss = self.actor_loss(batch)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            self._actor_loss = actor_loss.detach()
            soft_update(self.actor_target, self.actor, c.tau)
            soft_update(self.critics_target, self.critics, c.tau)
        actor_loss = self._actor_loss if self._actor_loss is not None else q_loss.new_zeros(())
        return {"q_loss": q_loss.detach(), "actor_loss": actor_loss, "q1": q1_mean}

