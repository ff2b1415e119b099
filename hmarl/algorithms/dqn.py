"""Double DQN for the agents of one level (Mnih et al. 2015; van Hasselt et al. 2016).

Read beside CleanRL's dqn.py: the same algorithm, batched over the level's agents,
with the double-DQN target (the online network picks, the target network values):

.. math::
    y = r + \\gamma (1 - d)\\, Q'\\big(s', \\arg\\max_a Q(s', a)\\big), \\qquad
    L = \\ell\\big(Q(s, a) - y\\big)

with ``ell`` the Huber or the squared error, averaged over the (row, agent) pairs whose
transition counts (the rollout's ``mask``). Each agent i has its own Q-network (stacked
weights) unless ``share_params``. Exploration is epsilon-greedy, epsilon decaying linearly
with the share of training done (``progress``, given to ``update``), or over a number of env
steps (``exploration_steps``, EPyMARL's ``epsilon_anneal_time``).

Schedule, per env step of each copy (as TD3): a rollout of T steps of B copies takes
``updates_per_step * T * B`` gradient steps once ``learning_starts`` env steps are stored;
the target network follows every ``target_network_frequency`` of them.

HRL-CG uses it for discrete workers; ``q_values`` is differentiable so a manager
can take a soft-max over it.

Shapes: obs ``[B, N, obs_dim]``; actions ``int64 [B, N]``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gymnasium import spaces

from hmarl.algorithms.offpolicy import (OffPolicyConfig, ReplayLearner, adam, epsilon_greedy, flatten_steps,
                                       linear_schedule, soft_update, weighted_mean)
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, UpdateContext
from hmarl.nn import AgentMLP

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


@dataclass
class DQNConfig(OffPolicyConfig):
    """Double-DQN hyperparameters, named as in CleanRL's dqn.py."""

    learning_rate: float = 1e-4
    buffer_size: int = 100_000
    tau: float = 1.0
    target_network_frequency: int = 500
    """Gradient steps between two target network updates."""
    start_e: float = 1.0
    """Exploration epsilon at the start of training."""
    end_e: float = 0.05
    """Exploration epsilon at the end of the decay and after."""
    exploration_fraction: float = 0.5
    """Share of training (``progress``) over which epsilon decays linearly from start_e to end_e."""
    exploration_steps: int = 0
    """If > 0, epsilon decays over this many env steps (all copies together, as EPyMARL's
    ``epsilon_anneal_time``) instead of over ``exploration_fraction`` of training: the same
    exploration whatever the run's length."""
    learning_starts: int = 1_000
    """Env steps (all copies count, agents do not) stored before learning starts."""
    ignore_obs_dims: list[int] = ()
    """Observation dims the network does not read (HRL-CG's worker: the env's context)."""

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.target_network_frequency >= 1,
             f"target_network_frequency must be >= 1, got {self.target_network_frequency}"),
            (0 <= self.end_e <= 1 and 0 <= self.start_e <= 1,
             f"start_e and end_e must be in [0, 1], got {self.start_e}, {self.end_e}"),
            (0 <= self.exploration_fraction <= 1,
             f"exploration_fraction must be in [0, 1], got {self.exploration_fraction}"),
            (self.exploration_steps >= 0, f"exploration_steps must be >= 0, got {self.exploration_steps}"),
            (self.learning_starts >= 0, f"learning_starts must be >= 0, got {self.learning_starts}")]


class DQN(ReplayLearner):
    """Double DQN with epsilon-greedy exploration for all agents of a level at once."""

    config_class = DQNConfig
    acts_on = "discrete_actions"  # an argmax over actions: at level 0, the env's (algorithms.system_requires)

    def __init__(self, io: AgentIO, config: DQNConfig):
        super().__init__(io, config.buffer_size, config.ignore_obs_dims)
        self.config = c = config
        space = io.action_space
        if not isinstance(space, spaces.Discrete):
            # one line that says what to change: Q-learning takes an argmax over a finite action set
            hint = ("use td3 for a Box one, or continuous_actions: false on an env that has discrete actions"
                    if isinstance(space, spaces.Box) else "for one action per child, make the level joint (joint: true)")
            raise ValueError(f"{type(self).__name__} needs a Discrete action space, got {space}; {hint}")
        self.n_actions = int(space.n)
        self.q_network = AgentMLP(io.n_agents, self.in_dim, c.hidden_sizes, self.n_actions, "relu", 1.0,
                                  c.share_params)
        self.target_network = copy.deepcopy(self.q_network).requires_grad_(False)
        self.optimizer = adam(self.q_network.parameters(), c.learning_rate)

    # -- policy ----------------------------------------------------------------------------
    def q_values(self, obs: Tensor) -> Tensor:
        """``[..., N, obs_dim]`` -> ``[..., N, K]``, differentiable."""
        return self.q_network(self.features(obs))

    def epsilon(self, progress: float | None = None) -> float:
        """CleanRL's linear schedule over the share of training (the latest progress by default),
        or, with ``exploration_steps``, over the env steps stored so far (``progress`` unused)."""
        c = self.config
        if c.exploration_steps:
            return linear_schedule(c.start_e, c.end_e, c.exploration_steps, self.env_steps)
        progress = self.progress if progress is None else progress
        return linear_schedule(c.start_e, c.end_e, c.exploration_fraction, progress)

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Epsilon-greedy ``int64 [B, N]`` (greedy if deterministic), log-prob zeros ``[B, N]``."""
        with torch.no_grad():
            q_values = self.q_values(obs)
        action = q_values.argmax(-1) if deterministic else epsilon_greedy(q_values, self.epsilon())
        return action, obs.new_zeros(obs.shape[:2])

    # -- learning --------------------------------------------------------------------------
    def transitions(self, rollout: Rollout, ctx: UpdateContext | None = None) -> dict[str, Tensor]:
        """The replay rows of a rollout, each ``[T*B, N, ...]`` (terminated ``[T*B, 1]`` float)."""
        return {"obs": flatten_steps(rollout.obs),
                "action": flatten_steps(rollout.action),
                "reward": flatten_steps(rollout.reward) * self.config.reward_scale,
                "next_obs": flatten_steps(self.next_obs(rollout)),
                "terminated": flatten_steps(rollout.terminated).float().unsqueeze(-1)}

    def td_target(self, batch: dict[str, Tensor]) -> Tensor:
        """Double-DQN target ``[M, N]``: the online network's argmax valued by the target network."""
        with torch.no_grad():
            best = self.q_values(batch["next_obs"]).argmax(-1, keepdim=True)
            next_q = self.target_network(self.features(batch["next_obs"])).gather(-1, best).squeeze(-1)
            return batch["reward"] + self.config.gamma * (1.0 - batch["terminated"]) * next_q

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """TD loss of the stored actions over the transitions that count (``batch["weight"]``),
        and their mean Q."""
        target = self.td_target(batch)
        q = self.q_values(batch["obs"]).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
        loss = F.smooth_l1_loss if self.config.huber_loss else F.mse_loss
        weight = batch["weight"]
        return weighted_mean(loss(q, target, reduction="none"), weight), weighted_mean(q.detach(), weight)

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One TD step on ``batch``; the target network follows every ``target_network_frequency``."""
        c = self.config
        q_loss, q_mean = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % c.target_network_frequency == 0:
            soft_update(self.target_network, self.q_network, c.tau)
        return {"q_loss": q_loss.detach(), "q": q_mean}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def warmed_up(self) -> bool:
        """Once ``learning_starts`` env steps are stored (and a minibatch)."""
        return super().warmed_up() and self.env_steps >= self.config.learning_starts

    def after_learning(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        if stats:
            stats["epsilon"] = torch.tensor(self.epsilon(), device=stats["q_loss"].device)
        return stats
