"""The off-policy template: one replay learner that TD3, DQN (and QMIX), A-QMIX and ALMA's
allocator share, their common options and exploration schedules.

:class:`ReplayLearner` runs the schedule (``update``: store the rollout, then
``updates_per_step`` gradient steps per transition once warmed up); a learner fills in
``gradient_step`` and, where it differs, the hooks ``store_rollout``, ``transitions``,
``warmed_up``, ``new_transitions`` and ``after_learning``. :class:`EpisodeTargetLearner`
adds target updates counted in finished episodes (ALMA's unit).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from hmarl.buffers import ReplayBuffer, Rollout
from hmarl.algorithms.hrl_cg.goals import goal_transition
from hmarl.learner import AgentIO, Learner, UpdateContext, UpdateResult
from hmarl.spec import Tensor


@dataclass
class OffPolicyConfig:
    """Options every replay-based learner shares (TD3, DQN); each redefines its defaults."""

    learning_rate: float = 3e-4
    """Adam step size."""
    gamma: float = 0.99
    """Discount factor."""
    buffer_size: int = 200_000
    """Replay capacity in rows; a row is one env copy's step for all N agents of the level."""
    batch_size: int = 128
    """Rows per gradient step."""
    tau: float = 5e-3
    """Target networks' update rate at each target update (1: copy)."""
    huber_loss: bool = True
    """Huber (smooth L1) critic loss instead of the squared error."""
    hidden_sizes: list[int] = (256, 256)
    """Hidden layer widths of the networks (ReLU)."""
    share_params: bool = True
    """One set of networks for all agents of the level instead of one each."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before they are stored."""
    updates_per_step: float = 1.0
    """Gradient steps per transition of each env copy: an update from ``n`` transitions takes
    ``gradient_steps(n)`` = round(n * this) of them. TD3 and DQN count a rollout of T steps of
    B copies as n = T * B (at the bottom level: one per env step of each copy), A-QMIX and
    the allocator as n = T; fractions take fewer steps than transitions."""

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs; subclasses add theirs."""
        return [(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
                (0 <= self.gamma <= 1, f"gamma must be in [0, 1], got {self.gamma}"),
                (self.buffer_size >= 1, f"buffer_size must be >= 1, got {self.buffer_size}"),
                (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                (self.batch_size <= self.buffer_size,
                 f"batch_size ({self.batch_size}) must not exceed buffer_size ({self.buffer_size})"),
                (0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}"),
                (self.reward_scale > 0, f"reward_scale must be > 0, got {self.reward_scale}"),
                (self.updates_per_step >= 0, f"updates_per_step must be >= 0, got {self.updates_per_step}"),
                (len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
                 f"hidden_sizes must be a non-empty list of positive widths, got {list(self.hidden_sizes)}")]

    def gradient_steps(self, transitions: int) -> int:
        """Gradient steps owed for ``transitions`` new transitions (``updates_per_step`` each)."""
        return round(transitions * self.updates_per_step)

    def __post_init__(self):
        for ok, message in self.checks():
            if not ok:
                raise ValueError(message)
        self.hidden_sizes = list(self.hidden_sizes)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel: one pass over each parameter per step, where the default
    on CPU runs about ten elementwise ops per parameter (3x slower at 256-wide layers)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def linear_schedule(start: float, end: float, fraction: float, progress: float) -> float:
    """From ``start`` to ``end`` linearly over the first ``fraction`` of training, then ``end``
    (exploration rates of the off-policy learners; ``progress`` in [0, 1])."""
    if fraction == 0:
        return end
    return start + (end - start) * min(progress / fraction, 1.0)


def epsilon_greedy(q_values: Tensor, epsilon: float) -> Tensor:
    """The greedy action of ``q_values [..., K]``, replaced by a uniform one with probability ``epsilon``."""
    greedy = q_values.argmax(-1)
    explore = torch.rand(greedy.shape, device=greedy.device) < epsilon
    return torch.where(explore, torch.randint_like(greedy, q_values.shape[-1]), greedy)


class ReplayLearner(Learner):
    """A learner with a replay, the training progress (exploration schedules) and counts of
    gradient steps (target updates) and of env steps stored; all travel with ``state_dict``,
    so a resumed run continues exactly.

    ``ignore_obs_dims`` are observation dims its networks do not read (:meth:`features`), e.g.
    the env's context for an HRL-CG worker ``pi_w(s, g)``. ``stride`` is how many env steps one
    step of its level lasts (1 at the bottom; the manager's period above it): schedules given in
    env steps divide by it. A worker of relative goals bootstraps under the carried goal
    (:meth:`carry_goals`).
    """

    def __init__(self, io: AgentIO, buffer_size: int, ignore_obs_dims: Sequence[int] = ()):
        super().__init__(io)
        self.replay = ReplayBuffer(buffer_size)
        #: the latest ``progress`` given to ``update``: drives exploration in ``act``
        self.progress = 0.0
        #: gradient steps taken so far: drives the target network updates
        self.gradient_steps = 0
        #: env steps (all copies) whose transitions reached :meth:`store`, masked ones included
        self.env_steps = 0
        ignored = sorted(set(ignore_obs_dims))
        if any(not 0 <= d < io.obs_dim for d in ignored):
            raise ValueError(f"ignore_obs_dims {ignored} must lie in the {io.obs_dim} observation dims")
        if len(ignored) == io.obs_dim:
            raise ValueError(f"ignore_obs_dims {ignored} leaves the networks nothing to read")
        kept = [d for d in range(io.obs_dim) if d not in ignored]
        self.register_buffer("obs_index", torch.tensor(kept) if ignored else None)
        #: the goal dims of relative goals this level receives (empty: none; see carry_goals)
        self.register_buffer("carried_goal_index", torch.zeros(0, dtype=torch.long))
        #: the context of the update in progress (:meth:`within`), for losses that read another
        #: level (HRL-CG's manager differentiates through the worker's critic); None outside one
        self._update_ctx: UpdateContext | None = None

    @property
    def in_dim(self) -> int:
        """Input size of the networks: the observation less ``ignore_obs_dims``."""
        return self.io.obs_dim if self.obs_index is None else len(self.obs_index)

    def features(self, obs: Tensor) -> Tensor:
        """``[..., obs_dim]`` -> ``[..., in_dim]``: what the networks read of an observation."""
        return obs if self.obs_index is None else obs.index_select(-1, self.obs_index)

    def carry_goals(self, goal_index: Sequence[int]) -> None:
        """This level's commands are relative goals on ``goal_index`` of its children's observation,
        carried between decisions by ``h(s, g, s') = s + g - s'`` (HRL-CG Eq. 6): a transition's
        next observation holds ``h``, not the command that follows a period's end (:meth:`next_obs`)."""
        goal_dim = self.io.obs_dim - self.io.child_obs_dim
        if self.io.group != 1:
            raise ValueError(f"relative goals are relabelled from the goal dims of the worker's own env agent, so "
                             f"the workers need one env agent each (group_size 1), not {self.io.group}")
        if goal_dim != len(goal_index):
            raise ValueError(f"the commands have {goal_dim} dims but the goals live on {len(goal_index)}")
        self.carried_goal_index = torch.as_tensor(list(goal_index), device=self.carried_goal_index.device)

    def next_obs(self, rollout: Rollout) -> Tensor:
        """The observation each transition bootstraps from, ``[T, B, N, obs_dim]``.

        ``rollout.next_obs()``, except that with carried goals its command part is
        ``h(s_t, g_t, s_{t+1}) = s_t + g_t - s_{t+1}`` at every step: at the end of a meta
        period the value target keeps the goal the worker pursued, not the manager's next one.
        """
        following = rollout.next_obs()
        if not self.carried_goal_index.numel():
            return following
        d = self.io.child_obs_dim
        goal = goal_transition(rollout.obs[..., :d], rollout.obs[..., d:], following[..., :d],
                               self.carried_goal_index)
        return torch.cat([following[..., :d], goal], dim=-1)

    def store(self, rows: dict[str, Tensor], mask: Tensor | None) -> None:
        """Add replay rows ``[M, N, ...]`` (one env copy's step, all N agents), each with its
        ``weight`` ``[M, N]``: 1 where the agent's transition counts (``mask``, None: all), 0 where
        it does not. Rows where no agent counts are left out: one boolean index per rollout,
        the only host sync of an insertion.
        """
        m, n = rows["obs"].shape[:2]
        self.env_steps += m * self.stride
        if mask is None:
            weight = rows["obs"].new_ones(m, n)
        else:
            keep = mask.any(-1)
            rows = {key: value[keep] for key, value in rows.items()}
            weight = mask[keep].to(rows["obs"].dtype)
        self.replay.add(**rows, weight=weight)

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One gradient step on a minibatch of replay rows; its metrics, as tensors."""
        raise NotImplementedError

    def learn(self, steps: int, batch_size: int) -> dict[str, Tensor]:
        """``steps`` gradient steps on minibatches of ``batch_size`` replay rows; the metrics of
        the last one ({} if none), left as tensors: the caller reads them once per update, so
        the steps themselves never wait on a host sync."""
        metrics: dict[str, Tensor] = {}
        for batch in self.replay.batches(steps, batch_size):
            metrics = self.gradient_step(batch)
        return metrics

    @contextlib.contextmanager
    def within(self, ctx: UpdateContext):
        """Take gradient steps in the context ``ctx``, as :meth:`update` does around its own;
        tests and the bench's update-bound limit call :meth:`gradient_step` in it."""
        self._update_ctx = ctx
        try:
            yield self
        finally:
            self._update_ctx = None

    # -- the template: ``update`` stores the rollout, then learns once warmed up -------------
    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        """One schedule for every replay learner: record ``progress`` (exploration), store the
        rollout (:meth:`store_rollout`), and once :meth:`warmed_up` take
        ``config.gradient_steps(n)`` steps on minibatches of ``config.batch_size`` rows, ``n``
        the rollout's :meth:`new_transitions`; :meth:`after_learning` then sees their metrics
        (target updates by episodes, logged exploration rates)."""
        c = self.config
        self.progress = ctx.progress
        self.store_rollout(rollout, ctx)
        if not self.warmed_up():
            return UpdateResult()
        with self.within(ctx):
            stats = self.learn(c.gradient_steps(self.new_transitions(rollout)), c.batch_size)
        return UpdateResult(self.after_learning(stats))

    def store_rollout(self, rollout: Rollout, ctx: UpdateContext) -> None:
        """Add the rollout's transitions to the replay; default: :meth:`transitions`, one row per
        env copy's step, the rollout's masked transitions left out."""
        mask = None if rollout.mask is None else flatten_steps(rollout.mask)
        self.store(self.transitions(rollout, ctx), mask)

    def transitions(self, rollout: Rollout, ctx: UpdateContext | None = None) -> dict[str, Tensor]:
        """The replay rows ``[T*B, N, ...]`` of a rollout."""
        raise NotImplementedError

    def warmed_up(self) -> bool:
        """Whether the replay is ready to learn from (default: it holds a minibatch)."""
        return len(self.replay) >= self.config.batch_size

    def new_transitions(self, rollout: Rollout) -> int:
        """The transitions a rollout counts for the schedule (default ``T * B``: one per step of each copy)."""
        return rollout.obs.shape[0] * rollout.obs.shape[1]

    def after_learning(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """What follows the gradient steps of an update; returns the metrics (default: as they are)."""
        return stats

    def get_extra_state(self) -> dict[str, Any]:
        """Progress, counters and replay, saved with ``state_dict`` so a resume is exact."""
        return {"progress": self.progress, "gradient_steps": self.gradient_steps, "env_steps": self.env_steps,
                "replay": self.replay.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        self.progress, self.gradient_steps = float(state["progress"]), int(state["gradient_steps"])
        self.env_steps = int(state["env_steps"])
        self.replay.load_state_dict(state["replay"])


def weighted_mean(x: Tensor, weight: Tensor) -> Tensor:
    """``sum(w x) / sum(w)`` over all elements (the plain mean when every weight is 1).

    Shapes: ``x`` and ``weight`` broadcast together (replay rows ``[M, N]``)."""
    return (x * weight).sum() / weight.expand_as(x).sum().clamp(min=1.0)


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


class EpisodeTargetLearner(ReplayLearner):
    """A replay learner whose target networks follow the online ones every so many finished
    episodes, the paper's unit (ALMA's appendix D: "copy live params to target params every
    _ episodes"). Episodes are counted over all B copies: every copy whose episode ends in a
    rollout counts one (``rollout.done``), so B copies that end together count B, as
    pymarl's parallel runner adds its ``batch_size_run`` episodes. The counts travel with
    ``state_dict``."""

    def __init__(self, io: AgentIO, buffer_size: int):
        super().__init__(io, buffer_size)
        #: finished episodes in the rollouts given to ``update`` so far, all copies together
        self.episodes = 0
        #: ``episodes`` at the last target update
        self.target_episodes = 0

    def count_episodes(self, rollout: Rollout) -> None:
        """Add the rollout's finished episodes (one sync per update, not per step)."""
        self.episodes += int(rollout.done.sum())

    def target_update_due(self, interval: int) -> bool:
        """Whether ``interval`` episodes have finished since the last target update; if so the
        caller updates its targets now and the count restarts from here."""
        if self.episodes - self.target_episodes < interval:
            return False
        self.target_episodes = self.episodes
        return True

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "episodes": self.episodes, "target_episodes": self.target_episodes}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.episodes, self.target_episodes = int(state["episodes"]), int(state["target_episodes"])
