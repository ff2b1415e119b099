"""HRL-CG's manager (Kreidieh et al. 2020): TD3 over relative goals whose actor loss adds the
connected-gradient term of Eq. 14 (see :mod:`hmarl.algorithms.hrl_cg.family` for the equations)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from hmarl.algorithms.dqn import DQN
from hmarl.algorithms.offpolicy import flatten_steps, weighted_mean
from hmarl.algorithms.td3 import TD3, TD3Config
from hmarl.buffers import Rollout
from hmarl.learner import Learner, UpdateContext, UpdateResult
from hmarl.spec import EnvSpec, slice_dims


@dataclass
class GoalManagerConfig(TD3Config):
    """TD3 options of the manager, plus the connected-gradient weight."""

    cg_lambda: float = 0.0
    """Weight of the connected-gradient term (set from the run's ``cg_lambda``)."""
    cg_temperature: float = 1.0
    """Softmax temperature of the expected Q of a discrete (DQN) worker."""


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Use ``module`` in a loss without computing gradients for its parameters."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class GoalManager(TD3):
    """TD3 manager whose actor loss adds the connected gradient through its worker."""

    config_class = GoalManagerConfig

    @property
    def reads_env_observations(self) -> bool:
        """The connected gradient reads the goal dims in its worker's env observation (its children's
        messages): only with ``cg_lambda > 0``. Plain HRL (``cg_lambda: 0``) works above any level: the
        goals' channel and the worker's reward read the env's goal dims through the levels between
        (:class:`~hmarl.algorithms.hrl_cg.goals.RelativeGoal`: a goal for a level of teams moves the team's mean)."""
        return bool(self.config.cg_lambda)

    def __init__(self, io, config: GoalManagerConfig, goal_index: list[int] = ()):
        super().__init__(io, config)
        self.register_buffer("goal_index", torch.as_tensor(list(goal_index), dtype=torch.long))

    @classmethod
    def build(cls, io, config: GoalManagerConfig, env: EnvSpec) -> "GoalManager":
        """A manager of goals on the env's goal dims (``obs_slices["position"]``)."""
        return cls(io, config, slice_dims(env.require("obs_slices.position", "the goal manager")))

    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        """TD3's update; the connected gradient reads the worker's rollout and learner from ``ctx``."""
        if self.config.cg_lambda and ctx.below is None:
            raise RuntimeError("the connected gradient needs the worker level's rollout: the worker must update "
                               "with the manager (give both the same buffer schedule)")
        if self.config.cg_lambda and not isinstance(ctx.below_learner, (TD3, DQN)):
            raise ValueError("the connected gradient needs a td3 or dqn worker, got "
                             f"{type(ctx.below_learner).__name__}")
        return super().update(rollout, ctx)  # its gradient steps run within(ctx): below_learner is the worker

    def transitions(self, rollout: Rollout, ctx: UpdateContext | None = None) -> dict[str, torch.Tensor]:
        """Adds each meta period's worker observations (``period_obs``), the goal dims after
        each worker step (``period_next``) and which worker steps count (``period_valid``: still
        in the episode the goal was set in, and not masked out below).

        Shapes: ``period_obs`` ``[T*B, N, k, obs_dim]``; ``period_next`` ``[T*B, N, k, goal_dim]``;
        ``period_valid`` ``[T*B, N, k]``.
        """
        fields = super().transitions(rollout, ctx)
        if not self.config.cg_lambda:
            return fields
        below = ctx.below
        t_manager = rollout.obs.shape[0]
        t_worker, b, n = below.obs.shape[:3]
        k, dim = t_worker // t_manager, self.io.obs_dim
        per_period = lambda x: x.reshape(t_manager, k, b, n, -1).permute(0, 2, 3, 1, 4)  # noqa: E731
        obs = per_period(below.obs[..., :dim])
        following = per_period(below.next_obs()[..., :dim][..., self.goal_index])
        done = below.done.reshape(t_manager, k, b)
        still = torch.cat([torch.ones_like(done[:, :1]), ~done[:, :-1]], dim=1).cumprod(dim=1)
        valid = still.permute(0, 2, 1).unsqueeze(2).expand(t_manager, b, n, k).float()
        if below.mask is not None:
            valid = valid * per_period(below.weights().unsqueeze(-1)).squeeze(-1)
        fields.update(period_obs=flatten_steps(obs), period_next=flatten_steps(following),
                      period_valid=flatten_steps(valid))
        return fields

    def connected_term(self, batch: dict[str, torch.Tensor], worker: Learner) -> torch.Tensor:
        """``mean_i [r_w(s_i, g_i, s_{i+1}) + Q_w(s_i, sg(g_i), pi_w(s_i, g_i))]`` over the worker
        steps that count (Eq. 14), differentiable in the manager's actor through ``g_i`` only.

        Shapes: ``batch["obs"]`` ``[M, N, obs_dim]``, ``period_obs`` ``[M, N, k, obs_dim]``; a scalar.
        """
        index = self.goal_index
        target = batch["obs"][..., index] + self.policy(batch["obs"])  # s_t + g_t, kept fixed by h
        obs = batch["period_obs"]  # [M, N, k, D]
        goals = target.unsqueeze(-2) - obs[..., index]  # g_{t+i}: h applied i times
        reward = -(target.unsqueeze(-2) - batch["period_next"]).norm(dim=-1) * worker.config.reward_scale
        # The worker's networks read [..., N, D]: the period's steps go before the agents.
        acting = torch.cat([obs, goals], dim=-1).transpose(-3, -2)  # [M, k, N, D + goal]
        with frozen(worker):
            if isinstance(worker, DQN):
                q = worker.q_values(acting)
                # Q_w(s, sg(g), .): with the worker frozen and s data, the detached values.
                value = (torch.softmax(q / self.config.cg_temperature, dim=-1) * q.detach()).sum(-1)
            else:
                judged = torch.cat([obs, goals.detach()], dim=-1).transpose(-3, -2)
                value = worker.q_value(judged, worker.policy(acting))
        per_step = reward + value.transpose(-2, -1)  # [M, N, k]
        return weighted_mean(per_step, batch["period_valid"] * batch["weight"].unsqueeze(-1))

    def actor_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """TD3's actor loss, plus ``cg_lambda`` times the worker's value of the goal (connected gradient)."""
        loss = super().actor_loss(batch)
        if self.config.cg_lambda:
            loss = loss - self.config.cg_lambda * self.connected_term(batch, self._update_ctx.below_learner)
        return loss
