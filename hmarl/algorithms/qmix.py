"""QMIX: monotonic value function factorisation (Rashid et al. 2018), over the agents of a level.

Read beside the QMIX paper (Section 4, Figure 2) and EPyMARL's Q-learner (Papoudakis et al.
2021). Every agent i has a utility Q_i(o_i, u), the agent networks of hmarl's double DQN
(:class:`~hmarl.algorithms.dqn.DQN`: one stacked MLP per agent, or one for all with
``share_params``). A mixing network whose weights are produced from the state s by
hypernetworks, and made non-negative by an absolute value, combines the utilities of the
chosen actions into the team value:

.. math::
    Q_{tot}(\\mathbf{u}, s) = W_2^\\top\\, \\mathrm{ELU}\\big(W_1^\\top \\mathbf{Q} + b_1\\big) + b_2,
    \\qquad W_1 = |h_1(s)| \\in \\mathbb{R}^{N \\times D},\\quad W_2 = |h_2(s)| \\in \\mathbb{R}^{D},

with ``Q = (Q_1(o_1, u_1), ..., Q_N(o_N, u_N))``, ``b_1`` a linear map of s and ``b_2`` a
two-layer one (ReLU between; the paper's V(s)). ``h_1`` and ``h_2`` are one linear layer
(the paper) or two with a ReLU between (``hypernet_layers: 2``, EPyMARL's default). Non-
negative weights and the increasing ELU give ``dQ_tot/dQ_i >= 0`` (Eq. 5), so each agent's
greedy action makes up the greedy joint action (Eq. 4): acting stays decentralised, each
agent epsilon-greedy on its own Q_i as in DQN.

Only Q_tot is trained, by double-Q TD learning with target agent networks and a target mixer
(EPyMARL's ``double_q``: the online agents pick the next actions, the target agents and the
target mixer value them):

.. math::
    y = r + \\gamma (1 - d)\\, Q'_{tot}\\big(\\{Q'_i(o'_i, \\arg\\max_u Q_i(o'_i, u))\\}_i,\\, s'\\big),
    \\qquad L = \\ell\\big(Q_{tot}(\\mathbf{u}, s) - y\\big)

with ``ell`` the squared error (QMIX's, EPyMARL's) or the Huber one, averaged over the replay rows.

Decisions where our setting differs from the paper, or where it leaves a choice:

* **The state s** is the concatenation of the N agents' observations of the env copy,
  ``[o_1, ..., o_N]`` (less ``ignore_obs_dims``). The env API has a global state
  (``TimeStep.state``), but a level's rollout does not carry it: levels store what their
  agents observe, which is what lets a mixer sit on any level. It is the state EPyMARL's
  gym wrapper gives QMIX on LBF (its ``get_state`` concatenates the observations), and on
  the envs here little is lost: LBF (full sight) and SaveTheCity observe the whole grid, and
  MPE's own state is exactly this concatenation.
* **The team reward r** is the mean of the agents' rewards (those whose transition counts):
  the return hmarl logs (:class:`~hmarl.run.monitor.EpisodeMonitor` averages over agents) and what
  flat A-QMIX trains on, equal to the shared reward where every agent receives it. EPyMARL's
  gym wrapper sums them, N times this: a rescaling of Q_tot, which ``reward_scale`` gives.
* A time limit is not terminal: the target bootstraps from the final observation of a
  truncated episode (as DQN's). EPyMARL's gym wrapper reports no ``episode_limit``, so there
  the time limit ends the bootstrap.
* **Masks** (``rollout.mask``: dead agents, steps of an episode already over) are honoured as
  DQN honours them, per agent: a masked agent's utility enters the mix as 0, its observation
  enters the state as zeros and its reward leaves the mean, so nothing of it reaches the
  loss; a row where no agent counts is not stored. The mix at s' leaves out the same agents.
* Transition replay of (obs, action, reward, next_obs, terminated) rows sampled uniformly, not
  EPyMARL's batches of whole episodes: the agents are feed-forward (EPyMARL's ``use_rnn:
  false``), so single steps suffice.
* Schedules are DQN's: ``updates_per_step`` gradient steps per env step of each copy once
  ``learning_starts`` env steps are stored; the targets (agents and mixer together) follow
  every ``target_network_frequency`` gradient steps (EPyMARL counts its training steps, one per
  episode); epsilon decays over ``exploration_steps`` env steps (EPyMARL's
  ``epsilon_anneal_time``) or over ``exploration_fraction`` of training.
* Adam, and the gradient's global norm clipped to ``max_grad_norm`` (EPyMARL's q-learner and
  ``grad_norm_clip``). No agent-id one-hot in the agents' input (EPyMARL's ``obs_agent_id``):
  a shared network tells agents apart by their observations; ``share_params: false`` gives
  each agent its own network.

Shapes: obs ``[B, N, obs_dim]``; actions ``int64 [B, N]``; the mixer: utilities ``[..., N]``
and state ``[..., N * in_dim]`` -> Q_tot ``[...]``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hmarl.algorithms.offpolicy import adam, soft_update, weighted_mean
from hmarl.algorithms.dqn import DQN, DQNConfig
from hmarl.learner import AgentIO

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


@dataclass
class QMIXConfig(DQNConfig):
    """QMIX hyperparameters: DQN's, with EPyMARL's values (``default.yaml``, ``qmix.yaml``) as defaults."""

    learning_rate: float = 5e-4
    """Adam step size (EPyMARL's lr)."""
    huber_loss: bool = False
    """Huber (smooth L1) TD loss instead of QMIX's squared error."""
    hidden_sizes: list[int] = (64,)
    """Hidden layer widths of the agent networks (ReLU; EPyMARL's hidden_dim 64)."""
    target_network_frequency: int = 200
    """Gradient steps between two target updates of the agents and the mixer (EPyMARL's 200)."""
    exploration_steps: int = 50_000
    """Env steps over which epsilon decays from start_e to end_e (EPyMARL's epsilon_anneal_time)."""
    mixing_embed_dim: int = 32
    """Width D of the mixing network's hidden layer (QMIX's, EPyMARL's 32)."""
    hypernet_layers: int = 2
    """Layers of the hypernetworks h_1, h_2 of the weights: 1 (the paper) or 2 (EPyMARL)."""
    hypernet_embed: int = 64
    """Hidden width of two-layer hypernetworks (EPyMARL's 64)."""
    max_grad_norm: float = 10.0
    """The gradient's global norm (agents and mixer) is clipped to this (EPyMARL's grad_norm_clip)."""

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.mixing_embed_dim >= 1, f"mixing_embed_dim must be >= 1, got {self.mixing_embed_dim}"),
            (self.hypernet_layers in (1, 2), f"hypernet_layers must be 1 or 2, got {self.hypernet_layers}"),
            (self.hypernet_embed >= 1, f"hypernet_embed must be >= 1, got {self.hypernet_embed}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")]


class QMixer(nn.Module):
    """QMIX's mixing network: ``Q_tot = W_2^T ELU(W_1^T Q + b_1) + b_2`` with
    ``W_1 = |h_1(s)|``, ``W_2 = |h_2(s)|``, ``b_1`` linear in s, ``b_2`` a two-layer MLP of s.

    Shapes: ``q [..., N]``, ``state [..., state_dim]`` -> ``[...]``.
    """

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 2,
                 hypernet_embed: int = 64):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim

        def hypernet(out_dim: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out_dim)
            return nn.Sequential(nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, out_dim))

        self.hyper_w1 = hypernet(n_agents * embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = hypernet(embed_dim)
        self.hyper_b2 = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, q: Tensor, state: Tensor) -> Tensor:
        # abs, not a clamp: every weight keeps a gradient, and Q_tot is monotonic in every Q_i
        w1 = self.hyper_w1(state).abs().unflatten(-1, (self.n_agents, self.embed_dim))  # [..., N, D]
        hidden = F.elu((q.unsqueeze(-2) @ w1).squeeze(-2) + self.hyper_b1(state))  # [..., D]
        w2 = self.hyper_w2(state).abs()  # [..., D]
        return (hidden * w2).sum(-1) + self.hyper_b2(state).squeeze(-1)


class QMIX(DQN):
    """QMIX for all agents of a level: DQN's agent networks, replay and exploration, one
    monotonic mix of their utilities trained on the team reward."""

    config_class = QMIXConfig

    def __init__(self, io: AgentIO, config: QMIXConfig):
        super().__init__(io, config)
        c = config
        self.mixer = QMixer(io.n_agents, io.n_agents * self.in_dim, c.mixing_embed_dim, c.hypernet_layers,
                            c.hypernet_embed)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)
        self.params = [*self.q_network.parameters(), *self.mixer.parameters()]
        self.optimizer = adam(self.params, c.learning_rate)  # one step moves the agents and the mixer

    # -- the mix ---------------------------------------------------------------------------
    def state(self, obs: Tensor, weight: Tensor) -> Tensor:
        """The mixer's state ``[..., N * in_dim]``: the agents' observations side by side, those
        of agents whose transition does not count zeroed (``obs [..., N, obs_dim]``, ``weight [..., N]``)."""
        return (self.features(obs) * weight.unsqueeze(-1)).flatten(-2)

    def team_reward(self, reward: Tensor, weight: Tensor) -> Tensor:
        """``[M]``: the mean reward of the agents whose transition counts (``reward, weight [M, N]``)."""
        return (reward * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)

    def q_tot(self, obs: Tensor, action: Tensor, weight: Tensor) -> Tensor:
        """``[M]``: the mixed utilities of the joint ``action`` ``[M, N]``, differentiable."""
        q = self.q_values(obs).gather(-1, action.unsqueeze(-1)).squeeze(-1)  # [M, N]
        return self.mixer(q * weight, self.state(obs, weight))

    # -- learning --------------------------------------------------------------------------
    def td_target(self, batch: dict[str, Tensor]) -> Tensor:
        """``[M]``: team reward plus the target mix of the target agents' values of the online
        agents' greedy next actions (double Q)."""
        with torch.no_grad():
            next_obs, weight = batch["next_obs"], batch["weight"]
            best = self.q_values(next_obs).argmax(-1, keepdim=True)
            next_q = self.target_network(self.features(next_obs)).gather(-1, best).squeeze(-1)  # [M, N]
            next_tot = self.target_mixer(next_q * weight, self.state(next_obs, weight))
            not_terminal = 1.0 - batch["terminated"].squeeze(-1)
            return self.team_reward(batch["reward"], weight) + self.config.gamma * not_terminal * next_tot

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """TD loss of the stored joint actions over the rows where some agent counts, and their mean Q_tot."""
        q_tot = self.q_tot(batch["obs"], batch["action"], batch["weight"])
        target = self.td_target(batch)
        error = (F.smooth_l1_loss if self.config.huber_loss else F.mse_loss)(q_tot, target, reduction="none")
        row = batch["weight"].amax(-1)  # stored rows all count; a hand-made batch may hold empty ones
        return weighted_mean(error, row), weighted_mean(q_tot.detach(), row)

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One TD step of the agents and the mixer (gradient norm clipped); both targets follow
        every ``target_network_frequency`` steps."""
        c = self.config
        q_loss, q_tot = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % c.target_network_frequency == 0:
            soft_update(self.target_network, self.q_network, c.tau)
            soft_update(self.target_mixer, self.mixer, c.tau)
        return {"q_loss": q_loss.detach(), "q_tot": q_tot, "grad_norm": grad_norm}
