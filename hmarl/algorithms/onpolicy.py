"""What every on-policy learner of hmarl shares: GAE, PPO's clipped losses, running return
statistics, and one PPO update (Schulman et al. 2017) that PPO, MAPPO and graph PPO fill in.

.. math::
    L = \\mathbb{E}_t\\big[-\\min(\\rho_t \\hat A_t, \\mathrm{clip}(\\rho_t, 1-\\epsilon, 1+\\epsilon) \\hat A_t)
        + c_v (V(o_t) - \\hat R_t)^2 - c_e \\mathcal H[\\pi(\\cdot|o_t)]\\big]

:class:`OnPolicyLearner` runs the loop: ``update_epochs`` passes over the rollout, each in
``num_minibatches`` shuffled minibatches of rows, a gradient step on
``pg_loss - ent_coef * entropy + vf_coef * v_loss`` with clipped gradients, and target-KL
early stopping. A learner fills in three hooks, the way a torch-geometric layer fills in
``message``/``aggregate``/``update``:

- :meth:`~OnPolicyLearner.training_batch`: the rollout as rows to sample minibatches from
  (transitions, or whole BPTT chunks for a recurrent policy), the metrics measured on it and
  what the learner publishes for the level below (its advantages);
- :meth:`~OnPolicyLearner.losses`: PPO's terms on one minibatch, per agent ``[N]`` (each
  agent clipped and stopped on its own) or for the whole level (scalars);
- :meth:`~OnPolicyLearner.clip_gradients` (default: per agent).

Shapes: rollouts ``[T, B, N, ...]``; the rows of a training batch ``[M, ...]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hmarl.buffers import Rollout
from hmarl.learner import Learner, UpdateContext, UpdateResult
from hmarl.nn import clip_grad_norm_per_agent


@dataclass
class TrainingBatch:
    """A rollout made ready for PPO's epochs (:meth:`OnPolicyLearner.training_batch`).

    ``rows``: every tensor ``[M, ...]``, a minibatch is a random set of rows (a transition, or a
    chunk of a recurrent policy's sequence); ``metrics``: scalars measured on the rollout
    before any step (logged with the losses); ``outputs``: what the learner publishes for the
    level below (its ``publishes``).
    """

    rows: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


class OnPolicyLearner(Learner):
    """PPO's update loop; subclasses give the batch, the losses and (optionally) the gradient clip.

    Reads from ``self.config``: ``learning_rate``, ``anneal_lr``, ``update_epochs``,
    ``num_minibatches``, ``ent_coef``, ``vf_coef``, ``max_grad_norm``, ``target_kl`` (the
    fields of :class:`hmarl.algorithms.ppo.PPOConfig`); steps ``self.optimizer``.
    """

    on_policy = True
    publishes = frozenset({"advantages"})
    optimizer: torch.optim.Optimizer

    def training_batch(self, rollout: Rollout) -> TrainingBatch:
        """The rollout as rows, with its metrics and the published outputs (see :class:`TrainingBatch`)."""
        raise NotImplementedError

    def losses(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PPO's terms on a minibatch of rows: at least ``pg_loss``, ``v_loss``, ``entropy`` and
        ``approx_kl``, each ``[N]`` (per agent) or a scalar (the whole level); every term is logged
        (its mean over agents) from the last minibatch."""
        raise NotImplementedError

    def clip_gradients(self) -> None:
        """Clip the gradients to ``max_grad_norm``, each agent's apart (stacked parameters)."""
        clip_grad_norm_per_agent(self.parameters(), self.config.max_grad_norm)

    def stopped(self, active: torch.Tensor) -> None:
        """Called after each epoch under ``target_kl``: ``active`` (like ``approx_kl``) is 0 where
        the agents stopped. Nothing by default."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        """PPO's epochs of minibatch steps on :meth:`training_batch`'s rows; publishes its ``outputs``.

        Under ``target_kl``, an entry of ``approx_kl`` (an agent, or the level) above it after an
        epoch stops: its later losses are multiplied by 0 and the epochs end once all stopped.
        """
        c = self.config
        if c.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = (1.0 - ctx.progress) * c.learning_rate
        batch = self.training_batch(rollout)
        first = next(iter(batch.rows.values()))
        batch_size = first.shape[0]
        minibatch_size = max(1, batch_size // c.num_minibatches)
        active = None  # the entries of the losses still learning (None: all)
        for _ in range(c.update_epochs):
            order = torch.randperm(batch_size, device=first.device)
            for start in range(0, batch_size, minibatch_size):
                mb = order[start:start + minibatch_size]
                # index_select: 2-5x faster on the CPU than indexing with a tensor, the same rows
                terms = self.losses({key: value.index_select(0, mb) for key, value in batch.rows.items()})
                loss = terms["pg_loss"] - c.ent_coef * terms["entropy"] + c.vf_coef * terms["v_loss"]
                loss = (loss if active is None else loss * active).sum()
                self.optimizer.zero_grad()
                loss.backward()
                self.clip_gradients()
                self.optimizer.step()
            if c.target_kl is not None:
                keep = terms["approx_kl"] <= c.target_kl
                active = keep.float() if active is None else active * keep
                self.stopped(active)
                if not bool(active.any()):
                    break
        metrics = {**{key: value.mean().detach() for key, value in terms.items()}, **batch.metrics}
        return UpdateResult(metrics, batch.outputs)


#: below this many classes torch's CPU log_softmax over the last dim runs a scalar loop per row
#: (about 140 ns a row of 9 with torch 2.13's AVX-512 kernels); over the first dim of the transposed
#: rows it vectorises across rows instead, with the same values to float32 rounding (bitwise with
#: AVX-512 kernels; with AVX2 ones some row lengths differ in the last bit, as the two kernels add
#: a row in another order: tests/algorithms/test_ppo.py checks it on the machine it runs on)
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


def sample_categorical(log_p: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """An action from log-probabilities ``[..., k]`` by Gumbel-max (``argmax(log p - log E)``,
    ``E ~ Exp(1)``, samples from p; the mode when ``deterministic``), and its log-probability ``[...]``."""
    scores = log_p if deterministic else log_p - torch.empty_like(log_p).exponential_().log()
    action = scores.argmax(-1)
    return action, log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def sample_normal(mean: torch.Tensor, std: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """An action from ``N(mean, std)`` (the mean when ``deterministic``) and its log-probability."""
    action = mean if deterministic else mean + std * torch.randn_like(mean)
    return action, normal_log_prob(mean, std, action)


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


def episode_starts(done: torch.Tensor) -> torch.Tensor:
    """Where a recurrent state resets inside a rollout: step ``t`` starts an episode when step
    ``t - 1`` ended one. False at ``t = 0``: the stored state a sequence starts from is already
    reset (and zeroing it again where it is would change nothing).

    Shapes: ``[T, B]`` -> ``[T, B]``.
    """
    return torch.cat([torch.zeros_like(done[:1]), done[:-1]])


def chunked(x: torch.Tensor, length: int) -> torch.Tensor:
    """Each copy's steps cut into chunks of ``length`` (the last padded with zeros, or False, past
    ``T``), one row per chunk and copy, chunk-major.

    Shapes: ``[T, B, ...]`` -> ``[C * B, length, ...]`` with ``C = ceil(T / length)``.
    """
    steps = x.shape[0]
    chunks = -(-steps // length)
    if chunks * length != steps:
        x = torch.cat([x, x.new_zeros(chunks * length - steps, *x.shape[1:])])
    return x.unflatten(0, (chunks, length)).transpose(1, 2).flatten(0, 1)


def sequence_rows(fields: dict[str, torch.Tensor], rollout: Rollout, length: int) -> dict[str, torch.Tensor]:
    """A recurrent learner's training rows: ``fields`` ``[T, B, ...]`` cut into :func:`chunked`
    sequences ``[S, length, ...]`` (padded steps must carry weight 0 in ``fields``), with the
    ``state`` each chunk starts from ``[S, ...]`` (``Rollout.state``), where the state resets
    (``reset`` ``[S, length]``, :func:`episode_starts`) and, under a holding termination, where it
    advances (``advance``, ``Rollout.decision``). Minibatches are then whole chunks: truncated
    BPTT over ``length`` steps from the states stored when acting."""
    rows = {key: chunked(value, length) for key, value in fields.items()}
    rows["reset"] = chunked(episode_starts(rollout.done), length)
    if rollout.decision is not None:
        rows["advance"] = chunked(rollout.decision, length)
    rows["state"] = rollout.state[::length].flatten(0, 1)
    return rows


def time_major(mb: dict[str, torch.Tensor], *keys: str) -> list[torch.Tensor | None]:
    """The ``keys`` of a minibatch of :func:`sequence_rows` as ``[length, S, ...]`` (None when absent)."""
    return [mb[key].transpose(0, 1) if key in mb else None for key in keys]


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
