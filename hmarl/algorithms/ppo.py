"""PPO and MAPPO for the agents of one level (Schulman et al. 2017; Yu et al. 2022).

Read beside CleanRL's ppo.py: the same objective, batched over the level's agents.

.. math::
    L = \\sum_i \\mathbb{E}_t\\big[-\\min(\\rho^i_t \\hat A^i_t,
        \\mathrm{clip}(\\rho^i_t, 1-\\epsilon, 1+\\epsilon) \\hat A^i_t)
        + c_v (V^i(o_t) - \\hat R^i_t)^2 - c_e \\mathcal H[\\pi^i(\\cdot|o^i_t)]\\big]

Each agent i has its own actor and critic (stacked weights) unless
``share_params``; MAPPO's critic sees all the level's agents' observations
(``centralized_critic``) and outputs one value per agent, and on an upper level
MAPPO acts with one head per child (see :class:`MAPPO`). Every expectation is a
mean over the transitions that count (``Rollout.mask``). Gradient clipping and
target-KL early stopping are per agent, so independent learners stay independent.

Shapes: obs ``[B, N, obs_dim]``; actions as in :class:`hmarl.learner.Learner`;
log-probabilities ``[B, N]``, or ``[B, N, group]`` with one head per child.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gymnasium import spaces

from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, Learner, UpdateContext, UpdateResult
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
    transitions_per_update: int | None = None
    """Transitions of this level (steps x env copies) collected before each update, rounded up
    to whole rollouts; None: every rollout (TAG Appendix A's buffer size: PPO 2,048, MAPPO
    10,000). Not ``buffer_size``, which off-policy learners use for their replay capacity."""
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
                  (self.transitions_per_update is None or self.transitions_per_update > 0,
                   "transitions_per_update must be > 0 or null"),
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
    on_policy = True
    publishes = frozenset({"advantages"})

    def __init__(self, io: AgentIO, config: PPOConfig):
        super().__init__(io)
        self.config = c = config
        self.transitions_per_update = c.transitions_per_update
        n, space = io.n_agents, io.action_space
        self.discrete = not isinstance(space, spaces.Box)
        #: one policy head per child slot, fed that slot and the command (MAPPO's upper levels)
        self.per_child = self.acts_per_child(io)
        #: policy samples per agent and step: its children's heads, or one
        self.samples = io.group if self.per_child else 1
        if isinstance(space, spaces.Discrete):
            self.heads, self.k = 1, int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            if len(set(space.nvec.tolist())) != 1:
                raise ValueError("PPO's MultiDiscrete heads must have one size")
            self.heads, self.k = len(space.nvec) // self.samples, int(space.nvec[0])
        out_dim = self.heads * self.k if self.discrete else int(space.shape[0]) // self.samples
        actor_in = io.child_dim + io.obs_dim - io.child_obs_dim if self.per_child else io.obs_dim
        self.actor = AgentMLP(n, actor_in, c.hidden_sizes, out_dim, c.activation,
                              c.actor_out_gain, c.share_params)
        if not self.discrete:
            self.log_std = torch.nn.Parameter(torch.zeros(self.actor.n_nets, out_dim))
        # Per child, an agent's own observation already holds all its children: its critic is
        # centralised over them. Otherwise a centralised critic reads all the level's agents.
        self.critic_over_level = c.centralized_critic and not self.per_child
        if self.critic_over_level:
            self.critic = AgentMLP(1, n * io.obs_dim, c.hidden_sizes, n, c.activation, c.critic_out_gain)
        else:
            self.critic = AgentMLP(n, io.obs_dim, c.hidden_sizes, 1, c.activation, c.critic_out_gain,
                                   c.share_params)
        self.return_norm = RunningNorm(n)
        # foreach: one call per step for all parameters instead of a Python loop over them (the CPU
        # default); the same arithmetic, bit for bit
        self.optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate, eps=1e-5, foreach=True)

    @staticmethod
    def acts_per_child(io: AgentIO) -> bool:
        """Whether the agents act with one head per child (PPO: never; one head over the observation)."""
        return False

    # -- policy and value ------------------------------------------------------------------
    def _actor_out(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, obs_dim]`` -> ``[..., N, samples, out]``."""
        if not self.per_child:
            return self.actor(obs).unsqueeze(-2)
        io = self.io
        slots = obs[..., :io.child_obs_dim].unflatten(-1, (io.group, io.child_dim))
        command = obs[..., None, io.child_obs_dim:].expand(*slots.shape[:-1], -1)
        # Children become rows of their agent's batch: [..., G, N, in] through the stacked nets.
        return self.actor(torch.cat([slots, command], -1).transpose(-2, -3)).transpose(-2, -3)

    def _log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[..., N, samples, heads, k]`` of a discrete policy."""
        return log_softmax(self._actor_out(obs).unflatten(-1, (self.heads, self.k)))

    def _std(self) -> torch.Tensor:
        """``[n_nets, 1, act_dim]``: broadcasts over the samples of each agent."""
        return self.log_std.exp().unsqueeze(-2)

    def _per_agent(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., N, samples]`` -> ``[..., N]`` for one sample per agent, else unchanged."""
        return x.squeeze(-1) if self.samples == 1 else x

    def _level_action(self, action: torch.Tensor) -> torch.Tensor:
        """``[..., N, samples, heads or act_dim]`` -> the level's action (see :class:`Learner`)."""
        action = action.flatten(-2)
        return action.squeeze(-1) if isinstance(self.io.action_space, spaces.Discrete) else action

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions as :class:`Learner` says; log-probabilities ``[B, N]``, or ``[B, N, group]`` per child."""
        with torch.no_grad():
            if self.discrete:
                log_p = self._log_probs(obs)
                # Gumbel-max: argmax(log p - log E), E ~ Exp(1), samples from p.
                scores = log_p if deterministic else log_p - torch.empty_like(log_p).exponential_().log()
                action = scores.argmax(-1)
                log_prob = log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)
                return self._level_action(action), self._per_agent(log_prob)
            mean = self._actor_out(obs)
            std = self._std()
            action = mean if deterministic else mean + std * torch.randn_like(mean)
            return self._level_action(action), self._per_agent(normal_log_prob(mean, std, action))

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy ``[M, N]`` (``[M, N, group]`` per child) of stored actions
        under the current policy."""
        if self.discrete:
            log_p = self._log_probs(obs)
            index = action.reshape(*log_p.shape[:-1], 1)
            log_prob = log_p.gather(-1, index).squeeze(-1).sum(-1)
            entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
            return self._per_agent(log_prob), self._per_agent(entropy)
        mean = self._actor_out(obs)
        std = self._std().expand_as(mean)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum(-1)
        log_prob = normal_log_prob(mean, std, action.reshape(mean.shape))
        return self._per_agent(log_prob), self._per_agent(entropy)

    def critic_output(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's raw output ``[..., N]`` (standardised if ``normalize_value``)."""
        if self.critic_over_level:
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

    def training_batch(self, rollout: Rollout) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The rollout flattened over steps and copies, with what the losses need, and the
        critic's ``explained_variance`` on it (in return units, before any update).

        ``values`` is the critic's old output (standardised if ``normalize_value``): the
        centre of the value clip window. ``returns`` are the value targets on the same scale,
        ``weight`` the transitions that count (``Rollout.weights``). Updates the return statistics.

        Shapes: ``[T * B, N, ...]`` each (``M = T * B`` samples); the metric a scalar.
        """
        advantages, values = self.advantages(rollout)
        returns = advantages + values
        weight = rollout.weights()
        stats = {"explained_variance": explained_variance(returns, values, weight)}
        if self.config.normalize_value:
            # The clip window is centred on the critic's own old output: standardise the old values
            # with the stats they were de-standardised with (those used when acting), before this
            # rollout updates them; the targets use the updated stats (MAPPO's ValueNorm).
            values = self.return_norm.normalize(values)
            self.return_norm.update(returns.flatten(0, 1), weight.flatten(0, 1))
            returns = self.return_norm.normalize(returns)
        batch = dict(obs=rollout.obs, action=rollout.action, log_prob=rollout.log_prob, advantages=advantages,
                     returns=returns, values=values, weight=weight)
        return {key: value.flatten(0, 1) for key, value in batch.items()}, stats

    def losses(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PPO's terms on a minibatch of :meth:`training_batch`, each a weighted mean per agent ``[N]``
        over the samples that count (0 for an agent with none)."""
        c = self.config
        weight = mb["weight"]
        advantages = standardize(mb["advantages"], weight) if c.norm_adv else mb["advantages"]
        new_log_prob, entropy = self.evaluate(mb["obs"], mb["action"])
        policy_weight = weight
        if self.per_child:
            # Each child head is one sample of its agent, with its own ratio and the agent's
            # advantage (the children share the agent's reward): [M, N, G] -> [M * G, N].
            policy_weight = self._child_weights(mb["obs"], weight)
            advantages = advantages.unsqueeze(-1).expand_as(new_log_prob)
            as_samples = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731
            new_log_prob, entropy, old_log_prob, advantages, policy_weight = map(
                as_samples, (new_log_prob, entropy, mb["log_prob"], advantages, policy_weight))
        else:
            old_log_prob = mb["log_prob"]
        pg_loss, approx_kl, clipfrac = clipped_surrogate(new_log_prob, old_log_prob, advantages, c.clip_coef)
        v_loss = clipped_value_loss(self.critic_output(mb["obs"]), mb["values"], mb["returns"], c.clip_coef,
                                    c.clip_vloss)
        policy = dict(pg_loss=pg_loss, entropy=entropy, approx_kl=approx_kl, clipfrac=clipfrac)
        return {"v_loss": weighted_mean(v_loss, weight),
                **{key: weighted_mean(value, policy_weight) for key, value in policy.items()}}

    def _child_weights(self, obs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``[M, N]`` sample weights -> ``[M, N, group]``: 0 also for an empty child slot
        (``presence`` flag 0), whose head's action goes nowhere."""
        io = self.io
        if not io.presence:
            return weight.unsqueeze(-1).expand(*weight.shape, io.group)
        present = obs[..., :io.child_obs_dim].unflatten(-1, (io.group, io.child_dim))[..., -1]
        return weight.unsqueeze(-1) * present

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        """PPO's epochs of minibatch steps on the rollout; publishes its GAE ``advantages`` ``[T, B, N]``
        (``[T, B, N, children]`` with one value per child) for the level below."""
        c = self.config
        if c.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = (1.0 - ctx.progress) * c.learning_rate
        batch, stats = self.training_batch(rollout)
        batch_size = batch["obs"].shape[0]
        minibatch_size = max(1, batch_size // c.num_minibatches)
        active = torch.ones(self.io.n_agents, device=batch["obs"].device)
        for _ in range(c.update_epochs):
            order = torch.randperm(batch_size, device=active.device)
            for start in range(0, batch_size, minibatch_size):
                mb = order[start:start + minibatch_size]
                # index_select: 2-5x faster on the CPU than indexing with a tensor, the same rows
                terms = self.losses({key: value.index_select(0, mb) for key, value in batch.items()})
                loss = ((terms["pg_loss"] - c.ent_coef * terms["entropy"] + c.vf_coef * terms["v_loss"])
                        * active).sum()
                self.optimizer.zero_grad()
                loss.backward()
                clip_grad_norm_per_agent(self.parameters(), c.max_grad_norm)
                self.optimizer.step()
            if c.target_kl is not None:
                active = active * (terms["approx_kl"] <= c.target_kl)
                self._freeze_momentum(active)
                if not bool(active.any()):
                    break
        metrics = {**{key: value.mean().detach() for key, value in terms.items()}, **stats}
        return UpdateResult(metrics, {"advantages": batch["advantages"].unflatten(0, rollout.obs.shape[:2])})

    def _freeze_momentum(self, active: torch.Tensor) -> None:
        """Agents stopped by target_kl: zero their Adam momentum so masked steps move nothing."""
        for p in self.parameters():
            state = self.optimizer.state.get(p)
            if state and p.shape[0] == active.shape[0]:
                state["exp_avg"].mul_(active.view(-1, *([1] * (p.dim() - 1))))


#: below this many classes torch's CPU log_softmax over the last dim runs a scalar loop per row
#: (about 140 ns a row of 9 with torch 2.13's AVX-512 kernels); over the first dim of the transposed
#: rows it vectorises across rows instead, with the same values (bitwise, forward and backward:
#: tests/algorithms/test_ppo.py checks it on the machine it runs on)
_SHORT_ROWS = 16
#: below this many rows the transposition costs more than it saves
_FEW_ROWS = 512


class _ShortRowLogSoftmax(torch.autograd.Function):
    """log_softmax over the last dim computed on the transposed rows ``[k, R]``. Its output and its
    input's gradient are handed over contiguous, so that what reads them (an entropy's sum over
    the classes, a bias gradient's sum over the rows) adds in the order it would after torch's."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        out = logits.reshape(-1, logits.shape[-1]).t().log_softmax(0)  # [k, R]
        ctx.save_for_backward(out)
        ctx.shape = logits.shape
        return out.t().contiguous().view(logits.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, = ctx.saved_tensors
        grad = torch._log_softmax_backward_data(grad.reshape(-1, out.shape[0]).t(), out, 0, out.dtype)
        return grad.t().contiguous().view(ctx.shape)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.log_softmax(-1)``; on the CPU, many short rows go through the transposed rows (see
    ``_SHORT_ROWS``), 3-8x faster from a few hundred rows on.

    Shapes: ``[..., k]`` -> ``[..., k]``.
    """
    k = logits.shape[-1]
    if logits.device.type != "cpu" or k >= _SHORT_ROWS or logits.numel() < _FEW_ROWS * k:
        return logits.log_softmax(-1)
    if not (torch.is_grad_enabled() and logits.requires_grad):  # acting: no graph to record
        return logits.reshape(-1, k).t().log_softmax(0).t().contiguous().view(logits.shape)
    return _ShortRowLogSoftmax.apply(logits)


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


def weighted_sum(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_m w_m x_m`` over dim 0; samples with ``w = 0`` add exactly 0, whatever their value
    (a masked sample's huge or infinite term cannot turn the sum into inf or NaN).

    Shapes: x, weight ``[M, ...]`` -> ``[...]``.
    """
    return torch.where(weight > 0, x, 0.0).mul(weight).sum(0)


def weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_m w_m x_m / sum_m w_m`` over dim 0; 0 for a column without weight.

    Shapes: x, weight ``[M, ...]`` -> ``[...]``.
    """
    return weighted_sum(x, weight) / weight.sum(0).clamp(min=1)


def explained_variance(returns: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` pooled over every sample with ``weight > 0`` (CleanRL's metric):
    1 for a perfect critic, 0 for one that predicts the mean, negative for worse; 0 when the
    returns do not vary (undefined there).

    Shapes: returns, values, weight ``[...]`` -> a scalar.
    """
    weight, count = weight.flatten(), weight.sum().clamp(min=1)

    def variance(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten()
        mean = weighted_sum(x, weight) / count
        return weighted_sum((x - mean).pow(2), weight) / count

    var_returns = variance(returns)
    return torch.where(var_returns > 0, 1 - variance(returns - values) / var_returns, 0.0)


def standardize(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / (std + 1e-8)`` per column, mean and (unbiased) std over the samples with
    ``weight > 0`` (all when None), as CleanRL standardises advantages per minibatch.

    Shapes: x, weight ``[M, ...]`` -> ``[M, ...]``.
    """
    weight = torch.ones_like(x) if weight is None else weight
    count = weight.sum(0)
    mean = weighted_sum(x, weight) / count.clamp(min=1)
    var = weighted_sum((x - mean).pow(2), weight) / (count - 1).clamp(min=1)
    return (x - mean) / (var.sqrt() + 1e-8)


def clipped_surrogate(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: the negated clipped surrogate ``max(-A rho, -A clip(rho, 1-eps, 1+eps))``, the
    approximate KL ``(rho - 1) - log rho`` and whether ``rho`` was clipped.

    Shapes: every input ``[M, ...]``; outputs alike.
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = (ratio - 1) - log_ratio
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    return pg_loss, approx_kl, clipfrac


def clipped_value_loss(new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor,
                       clip_coef: float, clip_vloss: bool) -> torch.Tensor:
    """Per sample: ``1/2 max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)`` (``1/2 (v - R)^2``
    without ``clip_vloss``), all on the critic's output scale.

    Shapes: every input ``[M, ...]``; output alike.
    """
    if not clip_vloss:
        return 0.5 * (new_value - returns).pow(2)
    v_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max((new_value - returns).pow(2), (v_clipped - returns).pow(2))


def clipped_losses(new_log_prob, old_log_prob, advantages, new_value, old_value, returns,
                   clip_coef: float, clip_vloss: bool, norm_adv: bool, mask: torch.Tensor | None = None):
    """PPO's per-sample terms: clipped surrogate, (clipped) value loss, approximate KL, clip indicator.

    Advantages are standardised per column over the minibatch when ``norm_adv`` (over
    the samples where ``mask`` is true, if given). Shapes: every input ``[M, ...]``; outputs alike.
    """
    if norm_adv:
        advantages = standardize(advantages, None if mask is None else mask.to(advantages.dtype))
    pg_loss, approx_kl, clipfrac = clipped_surrogate(new_log_prob, old_log_prob, advantages, clip_coef)
    return pg_loss, clipped_value_loss(new_value, old_value, returns, clip_coef, clip_vloss), approx_kl, clipfrac


class RunningNorm(torch.nn.Module):
    """Running per-agent mean and variance of returns (parallel-variance updates, Chan et al.),
    with a count per agent: masked samples are left out of an agent's statistics."""

    def __init__(self, n_agents: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_agents))
        self.register_buffer("var", torch.ones(n_agents))
        self.register_buffer("count", torch.zeros(n_agents))

    def update(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """``x``: ``[M, N]`` samples; ``weight`` ``[M, N]`` 0/1, the samples that count (None: all)."""
        weight = torch.ones_like(x) if weight is None else weight
        m = weight.sum(0)
        batch_mean = weighted_sum(x, weight) / m.clamp(min=1)
        batch_var = weighted_sum((x - batch_mean).pow(2), weight) / m.clamp(min=1)
        total = self.count + m
        delta = batch_mean - self.mean
        seen = total > 0  # an agent that never had a valid sample keeps mean 0, var 1
        share = torch.where(seen, m / total.clamp(min=1), 0.0)
        var = (self.var * self.count + batch_var * m + delta.pow(2) * self.count * share) / total.clamp(min=1)
        self.mean += delta * share
        self.var.copy_(torch.where(seen, var, self.var))
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``."""
        return (x - self.mean) / (self.var.sqrt() + 1e-8)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x * std + mean``."""
        return x * (self.var.sqrt() + 1e-8) + self.mean


class MAPPO(PPO):
    """PPO with a centralized critic (Yu et al. 2022; TAG's MAPPO agents, Appendix A).

    On a flat level (one child per agent) the level's agents are the MAPPO agents: one actor
    each over its observation, a critic over all of them. An agent that owns several children
    and acts for each (continuous children, or discrete ones with ``joint: false``) is a MAPPO
    system of its own, whose MAPPO agents are its children: one head per child, fed that
    child's slot and the agent's command and shared by the children (MAPPO's parameter
    sharing), each with its own PPO ratio and the agent's advantage; one value per agent from
    a critic over all its children's slots (its whole observation). TAG's MAPPO-PPO top thus
    acts 24 -> 2 per child on simple spread, with a critic over 4 x 24.
    """

    config_class = MAPPOConfig

    @staticmethod
    def acts_per_child(io: AgentIO) -> bool:
        """A head per child unless the agent has one child or acts on its children's joint action."""
        return io.group > 1 and not isinstance(io.action_space, spaces.Discrete)
