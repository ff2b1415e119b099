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

from hmarl.algorithms.onpolicy import (OnPolicyLearner, RunningNorm, TrainingBatch, clipped_surrogate,
                                       clipped_value_loss, episode_starts, explained_variance, gae, log_softmax,
                                       normal_log_prob, sample_categorical, sample_normal, sequence_rows,
                                       standardize, time_major, weighted_mean)
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO
from hmarl.nn import AgentGRU, AgentMLP


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
    recurrent: bool | str = False
    """``gru``: a GRU of ``rnn_hidden`` units under the actor's and the critic's MLPs (one per agent,
    or shared with ``share_params``); each copy's hidden state is carried through its episode
    (zeroed where one starts, advanced only where the agents act) and trained by truncated
    BPTT over chunks of ``bptt_chunk`` steps from the states stored when acting. ``false``:
    feed-forward."""
    rnn_hidden: int = 64
    """Hidden units of the GRU (with ``recurrent: gru``)."""
    bptt_chunk: int = 16
    """Steps of this level per BPTT chunk (with ``recurrent: gru``); a minibatch is whole chunks of
    every copy (at most the rollout; the last chunk is padded)."""
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
                  (self.target_kl is None or self.target_kl > 0, "target_kl must be > 0 or null"),
                  (self.recurrent in (False, None, "gru"), f"recurrent must be false or gru, got {self.recurrent!r}"),
                  (self.rnn_hidden >= 1, "rnn_hidden must be >= 1"),
                  (self.bptt_chunk >= 1, "bptt_chunk must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.hidden_sizes = list(self.hidden_sizes)


@dataclass
class MAPPOConfig(PPOConfig):
    """MAPPO: PPO with a centralized critic; TAG's MAPPO networks use ReLU."""

    activation: str = "relu"
    centralized_critic: bool = True


class PPO(OnPolicyLearner):
    """Clipped-surrogate PPO with GAE for all agents of a level at once (the update:
    :class:`~hmarl.algorithms.onpolicy.OnPolicyLearner`; per agent: its terms, gradient clip
    and target-KL stop)."""

    config_class = PPOConfig

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
        #: a GRU under each MLP (``recurrent: gru``), whose MLPs then read its state
        self.recurrent = c.recurrent == "gru"
        self.actor = AgentMLP(n, c.rnn_hidden if self.recurrent else actor_in, c.hidden_sizes, out_dim,
                              c.activation, c.actor_out_gain, c.share_params)
        if not self.discrete:
            self.log_std = torch.nn.Parameter(torch.zeros(self.actor.n_nets, out_dim))
        # Per child, an agent's own observation already holds all its children: its critic is
        # centralised over them. Otherwise a centralised critic reads all the level's agents.
        self.critic_over_level = c.centralized_critic and not self.per_child
        critic_in = n * io.obs_dim if self.critic_over_level else io.obs_dim
        if self.critic_over_level:
            self.critic = AgentMLP(1, c.rnn_hidden if self.recurrent else critic_in, c.hidden_sizes, n,
                                   c.activation, c.critic_out_gain)
        else:
            self.critic = AgentMLP(n, c.rnn_hidden if self.recurrent else critic_in, c.hidden_sizes, 1,
                                   c.activation, c.critic_out_gain, c.share_params)
        if self.recurrent:
            # one state per agent (per child head) for the actor, per critic for the critic
            self.actor_rnn = AgentGRU(n, actor_in, c.rnn_hidden, c.share_params)
            self.critic_rnn = AgentGRU(self.critic.n_agents, critic_in, c.rnn_hidden,
                                       c.share_params and not self.critic_over_level)
            self._actor_layout = (io.group, n) if self.per_child else (n,)
        self.return_norm = RunningNorm(n)
        # foreach: one call per step for all parameters instead of a Python loop over them (the CPU
        # default); the same arithmetic, bit for bit
        self.optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate, eps=1e-5, foreach=True)

    @staticmethod
    def acts_per_child(io: AgentIO) -> bool:
        """Whether the agents act with one head per child (PPO: never; one head over the observation)."""
        return False

    # -- policy and value ------------------------------------------------------------------
    def _actor_input(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, obs_dim]`` -> the actor's input ``[..., N, in]``, or per child ``[..., G, N, in]``."""
        if not self.per_child:
            return obs
        io = self.io
        slots = obs[..., :io.child_obs_dim].unflatten(-1, (io.group, io.child_dim))
        command = obs[..., None, io.child_obs_dim:].expand(*slots.shape[:-1], -1)
        # Children become rows of their agent's batch: [..., G, N, in] through the stacked nets.
        return torch.cat([slots, command], -1).transpose(-2, -3)

    def _actor_head(self, x: torch.Tensor) -> torch.Tensor:
        """The actor's MLP on its input (or on the GRU's state): -> ``[..., N, samples, out]``."""
        if not self.per_child:
            return self.actor(x).unsqueeze(-2)
        return self.actor(x).transpose(-2, -3)

    def _actor_out(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, obs_dim]`` -> ``[..., N, samples, out]`` (feed-forward)."""
        return self._actor_head(self._actor_input(obs))

    def _log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[..., N, samples, heads, k]`` of a discrete policy."""
        return self._log_probs_of(self._actor_out(obs))

    def _log_probs_of(self, out: torch.Tensor) -> torch.Tensor:
        return log_softmax(out.unflatten(-1, (self.heads, self.k)))

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
            return self._sample(self._actor_out(obs), deterministic)

    def _sample(self, out: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """An action and its log-probability from the actor's output ``[B, N, samples, out]``."""
        if self.discrete:
            action, log_prob = sample_categorical(self._log_probs_of(out), deterministic)
            return self._level_action(action), self._per_agent(log_prob.sum(-1))
        action, log_prob = sample_normal(out, self._std(), deterministic)
        return self._level_action(action), self._per_agent(log_prob)

    # -- recurrent state: [B, actor rows + critic rows, rnn_hidden] ------------------------
    def initial_state(self, num_envs: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Zeros ``[B, N * samples + critics, rnn_hidden]``: the actor's state per agent (per child
        head), then the critic's (per agent, or one over the level)."""
        rows = self.io.n_agents * self.samples + self.critic.n_agents
        return torch.zeros(num_envs, rows, self.config.rnn_hidden, device=device)

    def _split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., rows, H]`` -> the actor's ``[..., N, H]`` (``[..., G, N, H]`` per child) and the critic's."""
        actor_rows = self.io.n_agents * self.samples
        return state[..., :actor_rows, :].unflatten(-2, self._actor_layout), state[..., actor_rows:, :]

    def act_recurrent(self, obs: torch.Tensor, state: torch.Tensor,
                      deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`act` from the GRUs' ``state`` (:meth:`initial_state`); both GRUs advance one step."""
        with torch.no_grad():
            actor_h, critic_h = self._split_state(state)
            actor_h = self.actor_rnn(self._actor_input(obs), actor_h)
            critic_h = self.critic_rnn(self._critic_input(obs), critic_h)
            action, log_prob = self._sample(self._actor_head(actor_h), deterministic)
            return action, log_prob, torch.cat([actor_h.flatten(-3, -2) if self.per_child else actor_h, critic_h], -2)

    def _sequence_outputs(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's and the critic's outputs on a minibatch of chunks (:func:`sequence_rows`), by
        BPTT from each chunk's stored state: ``[S * length, N, samples, out]`` and ``[S * length, N]``."""
        obs, reset, advance = time_major(mb, "obs", "reset", "advance")
        actor_h, critic_h = self._split_state(mb["state"])
        actor_h, _ = self.actor_rnn.sequence(self._actor_input(obs), actor_h, reset, advance)
        critic_h, _ = self.critic_rnn.sequence(self._critic_input(obs), critic_h, reset, advance)
        rows = lambda x: x.transpose(0, 1).flatten(0, 1)  # noqa: E731  [length, S, ...] -> [S * length, ...]
        return self._actor_head(rows(actor_h)), self._critic_head(rows(critic_h))

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy ``[M, N]`` (``[M, N, group]`` per child) of stored actions
        under the current (feed-forward) policy."""
        return self._evaluate_out(self._actor_out(obs), action)

    def _evaluate_out(self, out: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`evaluate` from the actor's output ``[M, N, samples, out]``."""
        if self.discrete:
            log_p = self._log_probs_of(out)
            index = action.reshape(*log_p.shape[:-1], 1)
            log_prob = log_p.gather(-1, index).squeeze(-1).sum(-1)
            entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
            return self._per_agent(log_prob), self._per_agent(entropy)
        mean = out
        std = self._std().expand_as(mean)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum(-1)
        log_prob = normal_log_prob(mean, std, action.reshape(mean.shape))
        return self._per_agent(log_prob), self._per_agent(entropy)

    def _critic_input(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, obs_dim]`` -> ``[..., N, obs_dim]``, or ``[..., 1, N * obs_dim]`` over the level."""
        return obs.flatten(-2).unsqueeze(-2) if self.critic_over_level else obs

    def _critic_head(self, x: torch.Tensor) -> torch.Tensor:
        """The critic's MLP on its input (or on the GRU's state): -> ``[..., N]``."""
        return self.critic(x).squeeze(-2) if self.critic_over_level else self.critic(x).squeeze(-1)

    def critic_output(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's raw output ``[..., N]`` (standardised if ``normalize_value``; feed-forward)."""
        return self._critic_head(self._critic_input(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, obs_dim]`` -> ``[..., N]`` in return units."""
        out = self.critic_output(obs)
        return self.return_norm.denormalize(out) if self.config.normalize_value else out

    # -- learning --------------------------------------------------------------------------
    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the rollout; bootstraps through truncations with the final observation."""
        with torch.no_grad():
            if self.recurrent:
                values, next_values = self._recurrent_values(rollout)
            else:
                values, next_values = self.value(rollout.obs), self.value(rollout.next_obs())
            advantages = gae(rollout.reward, values, next_values, rollout.terminated,
                             rollout.done, self.config.gamma, self.config.gae_lambda)
        return advantages, values

    def _recurrent_values(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """A recurrent critic's values ``[T, B, N]`` of each step and of the observation after it (one
        more GRU step from the state carried out of each step), in return units: one pass over the
        rollout from its first stored state."""
        critic_h = self._split_state(rollout.state[0])[1]
        outputs, carried = self.critic_rnn.sequence(self._critic_input(rollout.obs), critic_h,
                                                    episode_starts(rollout.done), rollout.decision)
        following = self.critic_rnn(self._critic_input(rollout.next_obs()), carried)
        values, next_values = self._critic_head(outputs), self._critic_head(following)
        if self.config.normalize_value:
            values, next_values = self.return_norm.denormalize(values), self.return_norm.denormalize(next_values)
        return values, next_values

    def training_batch(self, rollout: Rollout) -> TrainingBatch:
        """The rollout flattened over steps and copies, with what the losses need; the critic's
        ``explained_variance`` on it (in return units, before any update); the GAE ``advantages``
        ``[T, B, N]`` (``[T, B, N, children]`` with one value per child) published for the level below.

        ``values`` is the critic's old output (standardised if ``normalize_value``): the
        centre of the value clip window. ``returns`` are the value targets on the same scale,
        ``weight`` the transitions that count (``Rollout.weights``). Updates the return statistics.

        Shapes: rows ``[T * B, N, ...]`` each (``M = T * B`` samples); the metric a scalar.
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
        if self.recurrent:  # rows: whole chunks of every copy
            rows = sequence_rows(batch, rollout, min(self.config.bptt_chunk, rollout.obs.shape[0]))
        else:
            rows = {key: value.flatten(0, 1) for key, value in batch.items()}
        return TrainingBatch(rows, stats, {"advantages": advantages})

    def losses(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PPO's terms on a minibatch of :meth:`training_batch`, each a weighted mean per agent ``[N]``
        over the samples that count (0 for an agent with none)."""
        c = self.config
        if self.recurrent:  # chunks [S, length, ...]: run the GRUs, then every step is a sample
            actor_out, critic_out = self._sequence_outputs(mb)
            mb = {key: mb[key].flatten(0, 1) for key in ("obs", "action", "log_prob", "advantages", "returns",
                                                         "values", "weight")}
        weight = mb["weight"]
        advantages = standardize(mb["advantages"], weight) if c.norm_adv else mb["advantages"]
        if self.recurrent:
            new_log_prob, entropy = self._evaluate_out(actor_out, mb["action"])
            new_value = critic_out
        else:
            new_log_prob, entropy = self.evaluate(mb["obs"], mb["action"])
            new_value = self.critic_output(mb["obs"])
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
        v_loss = clipped_value_loss(new_value, mb["values"], mb["returns"], c.clip_coef, c.clip_vloss)
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

    def stopped(self, active: torch.Tensor) -> None:
        """Agents stopped by target_kl: zero their Adam momentum so masked steps move nothing."""
        for p in self.parameters():
            state = self.optimizer.state.get(p)
            if state and p.shape[0] == active.shape[0]:
                state["exp_avg"].mul_(active.view(-1, *([1] * (p.dim() - 1))))


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
