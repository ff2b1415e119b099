"""PPO and MAPPO for the agents of one level (Schulman et al. 2017; Yu et al. 2022).

Read beside CleanRL's ppo.py: the same objective, batched over the level's agents.

.. math::
    L = \\sum_i \\mathbb{E}_t\\big[-\\min(\\rho^i_t \\hat A^i_t,
        \\mathrm{clip}(\\rho^i_t, 1-\\epsilon, 1+\\epsilon) \\hat A^i_t)
        + c_v (V^i(o_t) - \\hat R^i_t)^2 - c_e \\mathcal H[\\pi^i(\\cdot|o^i_t)]\\big]

Each agent i has its own actor and critic (stacked weights) unless
``share_params``; MAPPO's critic sees all the level's agents' observations
(``centralized_critic``) and outputs one value per agent. Gradient clipping and
target-KL early stopping are per agent, so independent learners stay independent.

Shapes: obs ``[B, N, obs_dim]``; actions as in :class:`hmarl.learner.Learner`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gymnasium import spaces

from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, Learner
from hmarl.nn import AgentMLP, clip_grad_norm_per_agent


@dataclass
class PPOConfig:
    """PPO hyperparameters, named as in CleanRL; defaults are TAG's 2PPO (Appendix A)."""

    learning_rate: float = 1e-3
    """Adam step size."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over training."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 4
    """Minibatches per epoch (over all steps and env copies of the rollout)."""
    update_epochs: int = 4
    """Passes over the rollout per update."""
    norm_adv: bool = True
    """Normalise advantages per minibatch and agent."""
    clip_coef: float = 0.2
    """Surrogate clipping epsilon."""
    clip_vloss: bool = True
    """Clip the value loss around the old values."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient norm limit, per agent."""
    target_kl: float | None = None
    """Stop an agent's epochs once its approximate KL exceeds this (None: never)."""
    hidden_sizes: list[int] = (64, 64)
    """Hidden layer widths of actor and critic."""
    activation: str = "tanh"
    """Hidden activation: tanh (TAG's PPO) or relu (TAG's MAPPO)."""
    share_params: bool = False
    """One actor and one critic for all agents of the level instead of one each."""
    centralized_critic: bool = False
    """The critic sees the concatenated observations of all agents of the level (MAPPO)."""
    actor_out_gain: float = 0.01
    """Orthogonal init gain of the actor's output layer."""
    critic_out_gain: float = 1.0
    """Orthogonal init gain of the critic's output layer."""
    normalize_value: bool = True
    """The critic predicts returns standardised by running per-agent statistics (MAPPO's
    ValueNorm). Without it, value clipping at ``clip_coef`` cannot follow returns of
    VMAS's scale (hundreds), and the critic barely learns."""

    def __post_init__(self):
        checks = [(self.learning_rate > 0, "learning_rate must be > 0"),
                  (0 <= self.gamma <= 1, "gamma must be in [0, 1]"),
                  (0 <= self.gae_lambda <= 1, "gae_lambda must be in [0, 1]"),
                  (self.num_minibatches >= 1, "num_minibatches must be >= 1"),
                  (self.update_epochs >= 1, "update_epochs must be >= 1"),
                  (self.clip_coef > 0, "clip_coef must be > 0"),
                  (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
                  (self.target_kl is None or self.target_kl > 0, "target_kl must be > 0 or null")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.hidden_sizes = list(self.hidden_sizes)


@dataclass
class MAPPOConfig(PPOConfig):
    """MAPPO: PPO with a centralized critic; TAG's MAPPO networks use ReLU."""

    activation: str = "relu"
    centralized_critic: bool = True


class PPO(Learner):
    """Clipped-surrogate PPO with GAE for all agents of a level at once."""

    config_class = PPOConfig
    estimates_advantages = True

    def __init__(self, io: AgentIO, config: PPOConfig):
        super().__init__(io)
        self.config = c = config
        n, space = io.n_agents, io.action_space
        self.discrete = not isinstance(space, spaces.Box)
        if isinstance(space, spaces.Discrete):
            self.heads, self.k = 1, int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            if len(set(space.nvec.tolist())) != 1:
                raise ValueError("PPO's MultiDiscrete heads must have one size")
            self.heads, self.k = len(space.nvec), int(space.nvec[0])
        out_dim = self.heads * self.k if self.discrete else int(space.shape[0])
        self.actor = AgentMLP(n, io.obs_dim, c.hidden_sizes, out_dim, c.activation,
                              c.actor_out_gain, c.share_params)
        if not self.discrete:
            self.log_std = torch.nn.Parameter(torch.zeros(self.actor.n_nets, out_dim))
        if c.centralized_critic:
            self.critic = AgentMLP(1, n * io.obs_dim, c.hidden_sizes, n, c.activation, c.critic_out_gain)
        else:
            self.critic = AgentMLP(n, io.obs_dim, c.hidden_sizes, 1, c.activation, c.critic_out_gain,
                                   c.share_params)
        self.return_norm = RunningNorm(n)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate, eps=1e-5)

    # -- policy and value ------------------------------------------------------------------
    def _log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        logits = self.actor(obs)
        return logits.reshape(*logits.shape[:-1], self.heads, self.k).log_softmax(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.discrete:
                log_p = self._log_probs(obs)
                # Gumbel-max: argmax(log p - log E), E ~ Exp(1), samples from p.
                scores = log_p if deterministic else log_p - torch.empty_like(log_p).exponential_().log()
                action = scores.argmax(-1)
                log_prob = log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)
                return (action.squeeze(-1) if self.heads == 1 else action), log_prob
            mean = self.actor(obs)
            std = self.log_std.exp()
            action = mean if deterministic else mean + std * torch.randn_like(mean)
            return action, normal_log_prob(mean, std, action)

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy ``[M, N]`` of stored actions under the current policy."""
        if self.discrete:
            log_p = self._log_probs(obs)
            index = action.unsqueeze(-1) if self.heads > 1 else action.unsqueeze(-1).unsqueeze(-1)
            log_prob = log_p.gather(-1, index).squeeze(-1).sum(-1)
            entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
            return log_prob, entropy
        mean = self.actor(obs)
        std = self.log_std.exp().expand_as(mean)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum(-1)
        return normal_log_prob(mean, std, action), entropy

    def critic_output(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's raw output ``[..., N]`` (standardised if ``normalize_value``)."""
        if self.config.centralized_critic:
            return self.critic(obs.flatten(-2).unsqueeze(-2)).squeeze(-2)
        return self.critic(obs).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, obs_dim]`` -> ``[..., N]`` in return units."""
        out = self.critic_output(obs)
        return self.return_norm.denormalize(out) if self.config.normalize_value else out

    # -- learning --------------------------------------------------------------------------
    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the rollout; bootstraps through truncations with the final observation."""
        with torch.no_grad():
            values = self.value(rollout.obs)
            advantages = gae(rollout.reward, values, self.value(rollout.next_obs()), rollout.terminated,
                             rollout.done, self.config.gamma, self.config.gae_lambda)
        return advantages, values

    def update(self, rollout: Rollout, progress: float,
               below: Rollout | None = None) -> dict[str, torch.Tensor]:
        c = self.config
        if c.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = (1.0 - progress) * c.learning_rate
        advantages, values = self.advantages(rollout)
        self.last_advantages = advantages
        returns = advantages + values
        if c.normalize_value:
            # Value loss and clipping act on the critic's standardised scale. The clip window is
            # centred on the critic's own old output: standardise the old values with the stats
            # they were de-standardised with (those used when acting), before this rollout updates
            # them; the targets use the updated stats (MAPPO's ValueNorm).
            values = self.return_norm.normalize(values)
            self.return_norm.update(returns.reshape(-1, returns.shape[-1]))
            returns = self.return_norm.normalize(returns)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, B, ...] -> [T*B, ...]
        b_obs, b_actions, b_log_probs = flat(rollout.obs), flat(rollout.action), flat(rollout.log_prob)
        b_advantages, b_returns, b_values = flat(advantages), flat(returns), flat(values)
        batch_size = b_obs.shape[0]
        minibatch_size = max(1, batch_size // c.num_minibatches)
        active = torch.ones(self.io.n_agents, device=b_obs.device)
        for _ in range(c.update_epochs):
            order = torch.randperm(batch_size, device=b_obs.device)
            for start in range(0, batch_size, minibatch_size):
                mb = order[start:start + minibatch_size]
                new_log_prob, entropy = self.evaluate(b_obs[mb], b_actions[mb])
                new_value = self.critic_output(b_obs[mb])
                pg_loss, v_loss, approx_kl, clipfrac = clipped_losses(
                    new_log_prob, b_log_probs[mb], b_advantages[mb], new_value, b_values[mb], b_returns[mb],
                    c.clip_coef, c.clip_vloss, c.norm_adv)
                pg_loss, v_loss, approx_kl, clipfrac = (x.mean(0) for x in (pg_loss, v_loss, approx_kl, clipfrac))
                entropy_loss = entropy.mean(0)
                loss = ((pg_loss - c.ent_coef * entropy_loss + c.vf_coef * v_loss) * active).sum()
                self.optimizer.zero_grad()
                loss.backward()
                clip_grad_norm_per_agent(self.parameters(), c.max_grad_norm)
                self.optimizer.step()
            if c.target_kl is not None:
                active = active * (approx_kl <= c.target_kl)
                self._freeze_momentum(active)
                if not bool(active.any()):
                    break
        return {"pg_loss": pg_loss.mean().detach(), "v_loss": v_loss.mean().detach(),
                "entropy": entropy_loss.mean().detach(), "approx_kl": approx_kl.mean(),
                "clipfrac": clipfrac.mean()}

    def _freeze_momentum(self, active: torch.Tensor) -> None:
        """Agents stopped by target_kl: zero their Adam momentum so masked steps move nothing."""
        for p in self.parameters():
            state = self.optimizer.state.get(p)
            if state and p.shape[0] == active.shape[0]:
                state["exp_avg"].mul_(active.view(-1, *([1] * (p.dim() - 1))))


def normal_log_prob(mean: torch.Tensor, std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last dim."""
    return (-((action - mean) / std).pow(2) / 2 - std.log() - math.log(math.sqrt(2 * math.pi))).sum(-1)


def gae(reward: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        done: torch.Tensor, gamma: float, gae_lambda: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) over a rollout.

    ``next_values`` are the values of the observation after each step before any
    reset, so truncated episodes bootstrap and terminated ones do not.

    Shapes: reward, values, next_values ``[T, B, ...]``; terminated, done ``[T, B]`` -> ``[T, B, ...]``.
    """
    extra = (1,) * (reward.dim() - 2)
    not_terminated = (~terminated).view(*terminated.shape, *extra).float()
    not_done = (~done).view(*done.shape, *extra).float()
    deltas = reward + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(deltas)
    last = torch.zeros_like(deltas[0])
    for t in reversed(range(deltas.shape[0])):
        last = deltas[t] + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages


def clipped_losses(new_log_prob, old_log_prob, advantages, new_value, old_value, returns,
                   clip_coef: float, clip_vloss: bool, norm_adv: bool, mask: torch.Tensor | None = None):
    """PPO's per-sample terms: clipped surrogate, (clipped) value loss, approximate KL, clip indicator.

    Advantages are standardised per column over the minibatch when ``norm_adv`` (over
    the samples where ``mask`` is true, if given). Shapes: every input ``[M, ...]``; outputs alike.
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = (ratio - 1) - log_ratio
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float()
    if norm_adv:
        weight = torch.ones_like(advantages) if mask is None else mask.float()
        count = weight.sum(0).clamp(min=1)
        mean = (advantages * weight).sum(0) / count
        std = (((advantages - mean) * weight).pow(2).sum(0) / (count - 1).clamp(min=1)).sqrt()
        advantages = (advantages - mean) / (std + 1e-8)
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    if clip_vloss:
        v_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns).pow(2), (v_clipped - returns).pow(2))
    else:
        v_loss = 0.5 * (new_value - returns).pow(2)
    return pg_loss, v_loss, approx_kl, clipfrac


class RunningNorm(torch.nn.Module):
    """Running per-agent mean and variance of returns (parallel-variance updates)."""

    def __init__(self, n_agents: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_agents))
        self.register_buffer("var", torch.ones(n_agents))
        self.register_buffer("count", torch.zeros(()))

    def update(self, x: torch.Tensor) -> None:
        """``x``: ``[M, N]`` samples."""
        batch_mean, batch_var, m = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        total = self.count + m
        delta = batch_mean - self.mean
        self.mean += delta * m / total
        self.var.copy_((self.var * self.count + batch_var * m + delta.pow(2) * self.count * m / total) / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``."""
        return (x - self.mean) / (self.var.sqrt() + 1e-8)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x * std + mean``."""
        return x * (self.var.sqrt() + 1e-8) + self.mean


class MAPPO(PPO):
    """PPO with a centralized critic over the level's agents (TAG's MAPPO agents)."""

    config_class = MAPPOConfig
