"""ALMA's allocator: amortized Q-learning over subtask allocations (Iqbal et al. 2022, Sec. 4.1).

An allocation gives each of the N agents one active subtask: S**N choices, too many
to enumerate. A proposal network samples allocations agent by agent; a critic
``Q(s, alloc)`` scores them; the allocator takes the best of ``n_proposals``::

    u_k = sum of the embeddings of subtask k's entities                 # subtask embeddings
    for agent i = 0 .. N-1:                                             # autoregressive
        p(a_i = k) = softmax_k(e_i . u_k / sqrt(d)),  inactive k masked
        u_{a_i} += f([u_{a_i}, e_i])                                    # later agents see earlier choices
    alloc* = argmax over n_proposals samples of Q(s, alloc)

Learning (meta-transitions between two decision points, reward = the team reward per
step of the segment, i.e. the agents' mean): ``y = r + gamma (1 - term) Q'(s', alloc*(s'))``
with ``alloc*`` picked by the online networks and valued by the target critic, the
critic trained on Pop-Art-normalised targets (:class:`PopArt`); the proposal network
imitates the best of its own samples: ``L_prop = -log p(alloc*(s)) - c_H H``.

The allocator sees the world through the first agent's observation (the entity rows
of the env's ``EnvSpec.entities``; full observability). Its level sits over all
agents (``group_size: all``, ``joint: false``) and re-decides with ``decide_every``
(``action_length``), at episode starts and when a subtask finishes.

At any depth: the allocator's units are its children, whatever level they are. Above a level
of teams (TAG agents over groups of env agents, say), a unit is a team: its subtask is the one
its command names (the team works on it as a whole), and its entity is the mean of the entity
rows of the env agents under it, as the first of them sees them; the subtask entities are the
env's. It reads those rows in the env agents' observations, which its level appends to its
own where the children's messages are not them (``reads_env``; ``AgentIO.env_slots``).

Shapes: obs ``[B, 1, N * child_dim (+ env block)]``; action ``[B, 1, N]`` int64 (a subtask per unit).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from gymnasium import spaces
from torch import nn

from hmarl.algorithms.offpolicy import EpisodeTargetLearner, OffPolicyConfig, linear_schedule
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, Learner, UpdateContext, UpdateResult
from hmarl.spec import EnvSpec, subtask_membership
from hmarl.strategies import EnvRead

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


@dataclass
class AllocatorConfig(OffPolicyConfig):
    """Allocator hyperparameters; defaults from ALMA's reference settings where it has them."""

    learning_rate: float = 5e-4
    """RMSprop step size (paper: 5e-4)."""
    buffer_size: int = 50_000
    """Meta-transitions kept (a row is one copy's segment between two decisions)."""
    batch_size: int = 32
    max_grad_norm: float = 10.0
    """Gradient norm limit (paper: 10)."""
    hidden_sizes: list[int] = (128,)
    embedding: int = 128
    """Entity and subtask embedding size (the attention dim)."""
    heads: int = 4
    """Attention heads of the critic."""
    n_proposals: int = 32
    """Allocations sampled per decision and scored by the critic (paper: 32)."""
    target_update_episodes: int = 50
    """Finished episodes, all copies together, between two copies of the critic into its
    target (paper's code: 50; see :class:`~algorithms.aqmix.EpisodeTargetLearner`)."""
    prop_alloc_eps_start: float = 1.0
    prop_alloc_eps_end: float = 0.05
    prop_alloc_eps_fraction: float = 0.2
    """With probability prop_alloc_eps take an unscored proposal; it decays linearly over
    this share of training (paper's code: 1.0 -> 0.05 over 20%)."""
    alloc_eps_start: float = 1.0
    alloc_eps_end: float = 0.0
    alloc_eps_fraction: float = 0.05
    """Then each agent independently gets a uniformly random active subtask with probability
    alloc_eps (1.0 -> 0 over 5%)."""
    entropy_coef: float = 0.01
    """Entropy bonus of the proposal loss."""
    learning_starts: int = 500
    """Meta-transitions in the replay before learning starts."""
    popart: bool = True
    """Normalise the critic's targets with Pop-Art (the paper's appendix; van Hasselt et al. 2016)."""
    popart_beta: float = 1e-3
    """Step size of Pop-Art's running mean and second moment of the targets (per gradient step)."""

    def checks(self) -> list[tuple[bool, str]]:
        fractions = (self.prop_alloc_eps_fraction, self.alloc_eps_fraction)
        return super().checks() + [
            (self.n_proposals >= 1, f"n_proposals must be >= 1, got {self.n_proposals}"),
            (self.embedding % self.heads == 0, f"embedding ({self.embedding}) must divide into {self.heads} heads"),
            (self.target_update_episodes >= 1, "target_update_episodes must be >= 1"),
            (all(0 <= f <= 1 for f in fractions), "exploration fractions must be in [0, 1]"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.learning_starts >= 0, "learning_starts must be >= 0"),
            (0 < self.popart_beta <= 1, f"popart_beta must be in (0, 1], got {self.popart_beta}")]


class EntityView(nn.Module):
    """Reads the entity rows, their subtask membership and the active subtasks from obs.

    Directly above the env's agents (``io.env_slots == 0``) the units are the env agents and the
    rows are the first child's observation. Higher up (``env_slots`` env agents under the allocator,
    appended to its observation), unit ``j``'s entity is the mean of the agent rows of the env agents
    in its slots, and the other entities follow: ``[G units, E - U other entities]``.
    """

    def __init__(self, io: AgentIO, env: EnvSpec):
        super().__init__()
        entities = env.require("entities", "the allocator").in_observation("the allocator", env.name)
        self.n_agents, self.n_subtasks = io.group, entities.n_subtasks
        self.entity_dim = entities.entity_dim
        self.first, self.n_entities = entities.first, entities.n_entities
        self.finished = entities.finished_feature  # None: subtasks never finish (simple spread)
        of_entity = list(entities.subtask_of_entity)
        self.env_slots, self.n_env_agents, self.env_obs_dim = io.env_slots, env.n_agents, env.obs_dim
        self.obs_dim = io.obs_dim
        if self.env_slots:  # the units' entities replace the env agents'
            if any(k != -1 for k in of_entity[:env.n_agents]):
                raise ValueError(f"the allocator above a level of teams averages the env agents' entities, the first "
                                 f"{env.n_agents} of {env.name}'s, but some of them belong to subtasks")
            of_entity = [-1] * io.group + of_entity[env.n_agents:]
            self.n_entities -= env.n_agents - io.group
        member = subtask_membership(of_entity, self.n_subtasks).float()
        self.register_buffer("membership", member, persistent=False)  # [E, S]
        self.child_dim = io.child_dim

    def rows(self, obs: Tensor) -> Tensor:
        """The entity rows ``[..., E, F]`` (see the class docstring)."""
        if not self.env_slots:
            first_agent = obs[..., 0, :self.child_dim]
            rows = first_agent[..., self.first:self.first + self.n_entities * self.entity_dim]
            return rows.unflatten(-1, (self.n_entities, self.entity_dim))
        block = obs[..., 0, self.obs_dim:].unflatten(-1, (self.env_slots, self.env_obs_dim + self.n_env_agents))
        env_entities = self.n_entities - self.n_agents + self.n_env_agents
        seen = block[..., 0, self.first:self.first + env_entities * self.entity_dim]  # the first env agent's view
        rows = seen.unflatten(-1, (env_entities, self.entity_dim))
        who = block[..., self.env_obs_dim:].unflatten(-2, (self.n_agents, -1)).sum(-2)  # [..., G, U]: unit j has u
        units = who @ rows[..., :self.n_env_agents, :] / who.sum(-1, keepdim=True).clamp(min=1)
        return torch.cat([units, rows[..., self.n_env_agents:, :]], dim=-2)

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs ``[..., 1, N * child_dim (+ env block)]`` -> entities ``[..., E, F]``, active subtasks ``[..., S]`` bool."""
        entities = self.rows(obs)
        if self.finished is None:
            return entities, torch.ones(*entities.shape[:-2], self.n_subtasks, dtype=torch.bool, device=obs.device)
        unfinished = (entities[..., self.finished] < 0.5).float()  # [..., E]
        active = (unfinished.unsqueeze(-1) * self.membership).sum(-2) > 0
        return entities, active


class ProposalNetwork(nn.Module):
    """Samples allocations agent by agent (see the module docstring)."""

    def __init__(self, view: EntityView, c: AllocatorConfig):
        super().__init__()
        d = c.embedding
        self.view, self.scale = view, 1.0 / math.sqrt(d)
        self.encode = nn.Sequential(nn.Linear(view.entity_dim, d), nn.ReLU(), nn.Linear(d, d))
        self.residual = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, entities: Tensor, active: Tensor, n_samples: int,
                given: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sample ``n_samples`` allocations (or score ``given`` ones ``[..., n, N]``).

        Agent i's logits are ``u_k . e_i / sqrt(d)``, with ``u_k`` subtask k's embedding after
        the updates ``delta_j`` of the agents j < i that chose k, so they are computed as

        .. math::
            \\frac{1}{\\sqrt d}\\Big(u^0_k \\cdot e_i + \\sum_{j < i,\\ a_j = k} \\delta_j \\cdot e_i\\Big),

        from the state's ``u^0 . e`` and one dot product per earlier update: no sample carries
        the S subtask embeddings. Likewise the agent's half of the residual's first layer is
        applied once per state, not once per sample.

        Returns allocations ``[..., n, N]``, each agent's log-probability of its choice
        ``[..., n, N]`` and the summed per-agent entropies ``[..., n]``.
        """
        n_agents = self.view.n_agents
        embedded = self.encode(entities)  # [..., E, d]
        agents = embedded[..., :n_agents, :]  # [..., N, d]
        subtask = torch.einsum("...ed,es->...sd", embedded, self.view.membership)  # u^0: [..., S, d]
        base = (agents @ subtask.transpose(-1, -2) * self.scale).unsqueeze(-3)  # [..., 1, N, S]
        first, last = self.residual[0], self.residual[2]
        half = first.weight.shape[1] // 2
        agent_part = nn.functional.linear(agents, first.weight[:, half:], first.bias).unsqueeze(-2)  # [..., N, 1, d]
        inactive = ~active.unsqueeze(-2)  # [..., 1, S]
        lead = (*base.shape[:-3], n_samples)
        # chosen == k as a one-hot: the values of F.one_hot(chosen, S) * dot, without one_hot's
        # two reductions and host reads (its range checks) per earlier agent
        subtasks = torch.arange(base.shape[-1], device=base.device)
        choices, updates, log_probs, entropy = [], [], [], 0.0
        for i in range(n_agents):  # autoregressive over agents (N is small), batched otherwise
            logits = base[..., i, :].expand(*lead, base.shape[-1])  # [..., n, S]
            for chosen, delta in zip(choices, updates):
                dot = (delta * agents[..., i, :].unsqueeze(-2)).sum(-1, keepdim=True) * self.scale  # [..., n, 1]
                logits = logits + (chosen.unsqueeze(-1) == subtasks) * dot
            log_p = logits.masked_fill(inactive, -1e9).log_softmax(-1)
            if given is None:  # Categorical(logits=log_p).sample(), without building the distribution
                choice = torch.multinomial(log_p.exp().reshape(-1, log_p.shape[-1]), 1).view(lead)
            else:
                choice = given[..., i]
            log_probs.append(log_p.gather(-1, choice.unsqueeze(-1)).squeeze(-1))
            entropy = entropy - (log_p.exp() * log_p).sum(-1)
            # the chosen subtask's embedding now: u^0 plus the earlier agents' updates to it
            picked = subtask.gather(-2, choice.unsqueeze(-1).expand(*lead, subtask.shape[-1]))  # [..., n, d]
            for chosen, delta in zip(choices, updates):
                picked = picked + (chosen == choice).unsqueeze(-1) * delta
            hidden = torch.relu(nn.functional.linear(picked, first.weight[:, :half]) + agent_part[..., i, :, :])
            updates.append(last(hidden))
            choices.append(choice)
        return torch.stack(choices, -1), torch.stack(log_probs, -1), entropy


class PopArt(nn.Module):
    """An output layer with Pop-Art (van Hasselt et al. 2016, "Learning values across many
    orders of magnitude"): Adaptively Rescaling Targets while Preserving Outputs.

    The layer gives a normalised value n(h) = w . h + b; the value is sigma n(h) + mu, where
    mu and nu are running first and second moments of the targets y. ``update(y)`` first
    moves the statistics (ART), with step beta,

    .. math::
        \\mu' = (1 - \\beta)\\mu + \\beta\\,\\overline{y},\\quad
        \\nu' = (1 - \\beta)\\nu + \\beta\\,\\overline{y^2},\\quad
        \\sigma' = \\sqrt{\\nu' - \\mu'^2},

    then rescales the layer (POP) so that every output is preserved,
    sigma' n'(h) + mu' = sigma n(h) + mu:

    .. math::
        w' = \\frac{\\sigma}{\\sigma'} w,\\qquad b' = \\frac{\\sigma b + \\mu - \\mu'}{\\sigma'}.

    The network then learns n against the normalised target (y - mu') / sigma'. The
    statistics start at mu = 0, nu = 1 (sigma = 1: the plain layer).

    Shapes: h ``[..., width]`` -> n ``[...]``; y any shape.
    """

    SIGMA_MIN = 1e-4
    """sigma never falls below this (targets that are all equal would divide by zero)."""

    def __init__(self, width: int, beta: float):
        super().__init__()
        self.linear = nn.Linear(width, 1)
        self.beta = beta
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("nu", torch.ones(()))

    @property
    def sigma(self) -> Tensor:
        """The targets' running standard deviation, at least ``SIGMA_MIN``."""
        return (self.nu - self.mu.square()).clamp(min=self.SIGMA_MIN ** 2).sqrt()

    def forward(self, h: Tensor) -> Tensor:
        """The normalised value n(h)."""
        return self.linear(h).squeeze(-1)

    def denormalize(self, n: Tensor) -> Tensor:
        """sigma n + mu."""
        return self.sigma * n + self.mu

    def normalize(self, y: Tensor) -> Tensor:
        """(y - mu) / sigma."""
        return (y - self.mu) / self.sigma

    @torch.no_grad()
    def update(self, y: Tensor) -> None:
        """ART then POP (see the class docstring), from a batch of targets ``y``."""
        mu, sigma = self.mu.clone(), self.sigma
        self.mu.lerp_(y.mean(), self.beta)
        self.nu.lerp_(y.square().mean(), self.beta)
        new_sigma = self.sigma
        self.linear.weight.mul_(sigma / new_sigma)
        self.linear.bias.mul_(sigma).add_(mu - self.mu).div_(new_sigma)


class AllocationCritic(nn.Module):
    """``Q(s, alloc)``: attention over the entities, each agent embedded with its subtask."""

    def __init__(self, view: EntityView, c: AllocatorConfig):
        super().__init__()
        d = c.embedding
        self.view = view
        self.encode = nn.Linear(view.entity_dim, d)
        self.assigned = nn.Embedding(view.n_subtasks, d)
        self.member = nn.Linear(view.n_subtasks, d, bias=False)
        self.attention = nn.MultiheadAttention(d, c.heads, batch_first=True)
        layers, width = [], d
        for hidden in c.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.head = nn.Sequential(*layers)
        self.value = PopArt(width, c.popart_beta)

    def forward(self, entities: Tensor, alloc: Tensor, normalized: bool = False) -> Tensor:
        """entities ``[..., E, F]``, alloc ``[..., n, N]`` -> Q ``[..., n]`` (Pop-Art's n if ``normalized``).

        The tokens are the entities' embeddings, agent i's plus its subtask's; the value reads
        the mean over tokens of ``relu(attention + token)``. Many allocations of one state (the
        proposals) go through :meth:`shared_tokens`, one through the attention module itself.
        """
        h = self.encode(entities) + self.member(self.view.membership)  # [..., E, d]
        n, e, agents = alloc.shape[-2], h.shape[-2], self.view.n_agents
        if n * e > agents * self.view.n_subtasks + e - agents:
            tokens = self.shared_tokens(h, alloc)
        else:
            h = h.unsqueeze(-3).expand(*h.shape[:-2], n, *h.shape[-2:])  # [..., n, E, d]
            h = torch.cat([h[..., :agents, :] + self.assigned(alloc), h[..., agents:, :]], dim=-2)
            flat = h.reshape(-1, *h.shape[-2:])
            attended, _ = self.attention(flat, flat, flat, need_weights=False)
            tokens = torch.relu(attended + flat).view(h.shape)
        q = self.value(self.head(tokens.mean(-2))).view(alloc.shape[:-1])
        return q if normalized else self.value.denormalize(q)

    def shared_tokens(self, h: Tensor, alloc: Tensor) -> Tensor:
        """``relu(attention + token)`` of every token of every allocation, by distinct tokens.

        Each token of an allocation of a state is one of U = N S + (E - N): agent i assigned
        subtask k (``h_i + a_k``), or an entity that is not an agent. Token i of an allocation
        with tokens t_1 .. t_E attends as

        .. math::
            o_i = b^o + \\sum_h \\sum_j \\mathrm{softmax}_j\\Big(\\frac{q_h(t_i) \\cdot k_h(t_j)}{\\sqrt c}\\Big)\\,
                  W^o_h\\, v_h(t_j),

        so the projections, the U x U scores and the projected values ``W^o_h v_h(u)`` are
        computed once per state; an allocation gathers its E x E scores and adds up its weights
        per distinct token before one product with the U projected values. Exactly
        ``nn.MultiheadAttention``'s result, at a fraction of the cost of projecting n E tokens.
        The same product adds ``b^o`` (``b^o / H`` on every projected value: each head's
        weights sum to 1) and the residual token (an extra head: weight 1 on the token itself).

        Shapes: h ``[..., E, d]``, alloc ``[..., n, N]`` -> ``[..., n, E, d]``.
        """
        mha, n_agents, s = self.attention, self.view.n_agents, self.view.n_subtasks
        heads, (e, d), lead = mha.num_heads, h.shape[-2:], alloc.shape[:-1]
        distinct = torch.cat([(h[..., :n_agents, None, :] + self.assigned.weight).flatten(-3, -2),
                              h[..., n_agents:, :]], -2)  # [..., U, d]: agent i as k at i S + k, then the rest
        u = distinct.shape[-2]
        q, k, v = nn.functional.linear(distinct, mha.in_proj_weight, mha.in_proj_bias).unflatten(
            -1, (3, heads, d // heads)).unbind(-3)  # each [..., U, H, c]
        scores = torch.einsum("...uhc,...whc->...huw", q, k).flatten(-2) / math.sqrt(d // heads)  # [..., H, U U]
        values = torch.einsum("...whc,ohc->...hwo", v, mha.out_proj.weight.view(d, heads, d // heads))
        values = torch.cat([values + mha.out_proj.bias / heads, distinct.unsqueeze(-3)], -3)  # [..., H + 1, U, d]
        index = torch.arange(n_agents, device=alloc.device) * s
        ids = torch.cat([alloc + index, (n_agents * s + torch.arange(e - n_agents, device=alloc.device))
                        .expand(*lead, e - n_agents)], -1)  # [..., n, E]: each token's distinct token
        pairs = (ids.unsqueeze(-2) * u + ids.unsqueeze(-1)).flatten(-2)  # [..., n, E(j) E(i)]: (t_i, t_j)
        scores = scores.unsqueeze(-3).expand(*lead[:-1], lead[-1], heads, u * u).gather(
            -1, pairs.unsqueeze(-2).expand(*lead, heads, e * e))
        # softmax over the keys j on the second-to-last dim: torch's CPU softmax is slow over a last dim of E
        weights = scores.view(*lead, heads, e, e).softmax(-2)  # [..., n, H, E(j), E(i)]
        itself = torch.eye(e, dtype=weights.dtype, device=weights.device).expand(*lead, 1, e, e)
        weights = torch.cat([weights, itself], -3).permute(*range(len(lead)), -1, -3, -2)  # [..., n, E(i), H + 1, E(j)]
        per_token = weights.new_zeros(*lead, e, heads + 1, u).scatter_add(
            -1, ids.view(*lead, 1, 1, e).expand(weights.shape), weights)  # [..., n, E(i), H + 1, U]
        tokens = per_token.flatten(-2).flatten(-3, -2) @ values.flatten(-3, -2)  # [..., n E, d]
        return torch.relu(tokens).view(*lead, e, d)


def uniform_active(active: Tensor, shape: torch.Size) -> Tensor:
    """A uniformly random active subtask for every agent, ``[..., N]`` from ``active [..., S]``:
    ``Categorical(logits=where(active, 0, -1e9)).sample()`` op for op (the same draws from the
    same RNG state), without the distribution's argument validation (a host read per call)."""
    logits = torch.where(active, 0.0, -1e9).unsqueeze(-2).expand(*shape, -1)
    logits = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, True).T.reshape(shape)


class Allocator(EpisodeTargetLearner):
    """Best-of-N amortized Q-learning over allocations, for a level of one allocator."""

    config_class = AllocatorConfig
    requires = ("entities",)  # what it needs of the env (algorithms.system_requires)
    reads_env = (EnvRead("obs"),)  # its entities are rows of the env agents' observations

    def __init__(self, io: AgentIO, config: AllocatorConfig, env: EnvSpec):
        super().__init__(io, config.buffer_size)
        self.config = c = config
        if io.n_agents != 1 or not isinstance(io.action_space, spaces.MultiDiscrete):
            raise ValueError("the allocator is one agent over all units below: group_size: all, joint: false, "
                             "command: discrete(n_subtasks)")
        self.view = EntityView(io, env)
        agent_entities = int((self.view.membership.sum(-1) == 0).sum())
        if agent_entities < io.group or bool(self.view.membership[:io.group].any()):
            raise ValueError(f"the allocator reads agent i from entity i, but {env.name} lists {agent_entities} "
                             f"agent entities for {io.group} agents; it supports at most {agent_entities} agents")
        if io.group > self.view.n_entities or int(io.action_space.nvec[0]) != self.view.n_subtasks:
            raise ValueError(f"the allocator assigns {io.group} agents to {self.view.n_subtasks} subtasks: "
                             f"its command must be discrete({self.view.n_subtasks})")
        self.proposal = ProposalNetwork(self.view, c)
        self.critic = AllocationCritic(self.view, c)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.params = [*self.proposal.parameters(), *self.critic.parameters()]
        # foreach: one call per RMSprop op over all tensors, as A-QMIX's (the same values, bit for bit)
        self.optimizer = torch.optim.RMSprop(self.params, lr=c.learning_rate, foreach=True)

    @classmethod
    def build(cls, io: AgentIO, config: AllocatorConfig, env: EnvSpec) -> "Allocator":
        return cls(io, config, env)

    # -- acting -----------------------------------------------------------------------------
    def best_proposal(self, entities: Tensor, active: Tensor, critic: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """The best of ``n_proposals`` samples under ``critic``: alloc ``[..., N]``, its value, all samples."""
        proposals, _, _ = self.proposal(entities, active, self.config.n_proposals)
        alloc, value = self.best_of(entities, proposals, critic)
        return alloc, value, proposals

    @staticmethod
    def best_of(entities: Tensor, proposals: Tensor, critic: nn.Module) -> tuple[Tensor, Tensor]:
        """The proposal ``[..., n, N]`` that ``critic`` values most, ``[..., N]``, and its value."""
        values = critic(entities, proposals)  # [..., n]
        best = values.argmax(-1, keepdim=True)
        alloc = proposals.gather(-2, best.unsqueeze(-1).expand(*best.shape, proposals.shape[-1])).squeeze(-2)
        return alloc, values.gather(-1, best).squeeze(-1)

    def exploration(self, progress: float | None = None) -> tuple[float, float]:
        """(prop_alloc_eps, alloc_eps) at ``progress`` (the latest by default), each linear over
        its share of training (Sec. 4.3; spec: 1 -> 0.05 over 20%, 1 -> 0 over 5%)."""
        c, p = self.config, self.progress if progress is None else progress
        return (linear_schedule(c.prop_alloc_eps_start, c.prop_alloc_eps_end, c.prop_alloc_eps_fraction, p),
                linear_schedule(c.alloc_eps_start, c.alloc_eps_end, c.alloc_eps_fraction, p))

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        entities, active = self.view(obs)
        if deterministic:
            alloc, _, _ = self.best_proposal(entities, active, self.critic)
            return alloc.unsqueeze(-2), torch.zeros(obs.shape[:2], device=obs.device)
        proposals, _, _ = self.proposal(entities, active, self.config.n_proposals)
        prop_eps, alloc_eps = self.exploration()
        shape = (*proposals.shape[:-2], proposals.shape[-1])  # [..., N]
        # every random draw first, in the order the allocation uses them; the critic draws none
        unscored = torch.rand(shape[:-1], device=obs.device) < prop_eps
        uniform = uniform_active(active, torch.Size(shape))
        random = torch.rand(shape, device=obs.device) < alloc_eps
        alloc = proposals[..., 0, :]
        # Scoring the proposals (most of acting's cost) only matters to an agent that neither
        # exploration replaces; early in training (both epsilons near 1) often none does, and
        # one host read skips the critic: the same allocation either way.
        if bool((~unscored.unsqueeze(-1) & ~random).any()):
            best, _ = self.best_of(entities, proposals, self.critic)
            alloc = torch.where(unscored.unsqueeze(-1), alloc, best)
        alloc = torch.where(random, uniform, alloc)
        return alloc.unsqueeze(-2), torch.zeros(obs.shape[:2], device=obs.device)

    # -- learning ---------------------------------------------------------------------------
    def meta_transitions(self, rollout: Rollout) -> dict[str, Tensor]:
        """Segments from each decision to the next, complete within the rollout.

        A segment from t0 to its next boundary t1 has the reward

        .. math::
            r = \\frac{1}{t_1 - t_0} \\sum_{t=t_0}^{t_1 - 1} \\frac{1}{N} \\sum_{i=1}^{N} r_{t,i},

        the team reward per step: the level's reward is the sum of the rewards of the N env agents
        under it, and an env that gives every agent the team reward R (SaveTheCity) would otherwise
        teach the allocator N R. It ends at the next decision, whose observation (or the
        final one, if the episode ended) is ``s'``.
        """
        decision, done = rollout.decision, rollout.done
        steps = decision.shape[0]
        # boundaries: decisions, and the end of a copy's episode at the rollout's last step
        boundary = torch.cat([decision, done[-1:]], dim=0)  # [T + 1, B]
        index = torch.arange(steps + 1, device=decision.device).unsqueeze(-1).expand_as(boundary)
        upcoming = torch.where(boundary, index, steps + 1)
        next_boundary = upcoming.flip(0).cummin(0).values.flip(0)[1:]  # first boundary after t: [T, B]
        valid = decision & (next_boundary <= steps)
        cumulative = torch.cat([torch.zeros_like(rollout.reward[:1]), rollout.reward.cumsum(0)], 0)
        reward = cumulative.sum(-1) / self.view.n_env_agents  # [T + 1, B]: the env agents' mean reward
        t0, b = valid.nonzero(as_tuple=True)
        t1 = next_boundary[t0, b]
        next_obs = rollout.next_obs()
        return {"obs": rollout.obs[t0, b], "alloc": rollout.action[t0, b, 0],
                "reward": (reward[t1, b] - reward[t0, b]) / (t1 - t0).float(),
                "next_obs": next_obs[t1 - 1, b], "terminated": rollout.terminated[t1 - 1, b].float()}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Critic TD loss, proposal loss and the batch's mean Q on a batch of meta-transitions.

        With ``popart`` the target statistics move first (ART, preserving the critic's
        outputs: POP) and the TD loss is in normalised units: ``(n(s, a) - (y - mu) / sigma)^2``.
        The target critic is a snapshot of the unnormalised Q (its own statistics, copied with it).
        """
        c = self.config
        entities, active = self.view(batch["obs"])
        with torch.no_grad():
            next_entities, next_active = self.view(batch["next_obs"])
            next_alloc, _, _ = self.best_proposal(next_entities, next_active, self.critic)
            next_value = self.critic_target(next_entities, next_alloc.unsqueeze(-2)).squeeze(-1)
            target = batch["reward"] + c.gamma * (1 - batch["terminated"]) * next_value
            best, _, _ = self.best_proposal(entities, active, self.critic)
        popart = self.critic.value
        if c.popart:
            popart.update(target)
        n = self.critic(entities, batch["alloc"].unsqueeze(-2), normalized=True).squeeze(-1)
        error = nn.functional.smooth_l1_loss if c.huber_loss else nn.functional.mse_loss
        q_loss = error(n, popart.normalize(target))
        _, log_prob, entropy = self.proposal(entities, active, 1, given=best.unsqueeze(-2))
        proposal_loss = -(log_prob.sum(-1) + c.entropy_coef * entropy).mean()
        return q_loss, proposal_loss, popart.denormalize(n).mean().detach()

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One step of the critic and the proposal network on ``batch``, the gradient's norm clipped."""
        q_loss, proposal_loss, q_mean = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        (q_loss + proposal_loss).backward()
        nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        return {"q_loss": q_loss.detach(), "proposal_loss": proposal_loss.detach(), "q_mean": q_mean}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def store_rollout(self, rollout: Rollout, ctx: UpdateContext) -> None:
        """One replay row per allocation decision (:meth:`meta_transitions`); counts finished episodes."""
        if rollout.decision is None:
            raise ValueError("the allocator's level must re-decide by events: set decide_every on it")
        self.count_episodes(rollout)
        self.replay.add(**self.meta_transitions(rollout))

    def warmed_up(self) -> bool:
        return len(self.replay) >= max(self.config.batch_size, self.config.learning_starts)

    def new_transitions(self, rollout: Rollout) -> int:
        """``T``, as A-QMIX: the allocator's schedule follows its agents'."""
        return rollout.obs.shape[0]

    def after_learning(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """The critic's target is copied every ``target_update_episodes`` finished episodes."""
        if self.target_update_due(self.config.target_update_episodes):
            self.critic_target.load_state_dict(self.critic.state_dict())
        return stats


@dataclass
class HeuristicAllocatorConfig:
    """The heuristic allocator has nothing to tune."""


class HeuristicAllocator(Learner):
    """ALMA's heuristic baseline on SaveTheCity: every agent goes to the nearest active building
    where its ability is useful (firefighters and generalists: a burning one; builders: any),
    or to the nearest active one if none is. On envs whose entities have positions but no
    abilities (simple spread's landmarks, LBF's foods) every agent goes to the nearest active
    subtask. Reads the env's ``feature_names``; learns nothing."""

    config_class = HeuristicAllocatorConfig
    requires = ("entities",)  # what it needs of the env (algorithms.system_requires)
    reads_env = (EnvRead("obs"),)  # as the allocator's
    POSITIONS = (("row", "col"), ("x", "y"))
    ABILITIES = ("is_firefighter", "is_builder", "is_generalist", "fire")

    def __init__(self, io: AgentIO, config: HeuristicAllocatorConfig, env: EnvSpec):
        super().__init__(io)
        self.view = EntityView(io, env)
        names = list(env.entities.feature_names)
        where = next((pair for pair in self.POSITIONS if set(pair) <= set(names)), None)
        if where is None:
            raise ValueError(f"the heuristic allocator reads entity positions (features row, col or x, y); "
                             f"{env.name} has {', '.join(names) or 'no feature names'}. Use the learned allocator")
        self.where = [names.index(n) for n in where]
        #: SaveTheCity's abilities, where the env has them (None: nearest active subtask)
        self.index = {n: names.index(n) for n in self.ABILITIES} if set(self.ABILITIES) <= set(names) else None

    @classmethod
    def build(cls, io: AgentIO, config: HeuristicAllocatorConfig, env: EnvSpec) -> "HeuristicAllocator":
        return cls(io, config, env)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        entities, active = self.view(obs)
        i, member, where = self.index, self.view.membership, self.where
        count = member.sum(0).clamp(min=1)  # entities per subtask
        per_subtask = torch.einsum("...ef,es->...sf", entities, member) / count.unsqueeze(-1)  # [..., S, F]
        agents = entities[..., :self.view.n_agents, :]  # [..., N, F]
        distance = (agents[..., :, None, where] - per_subtask[..., None, :, where]).abs().sum(-1)  # [..., N, S]
        score = distance + 1e6 * (~active).unsqueeze(-2)
        if i is not None:
            burning = per_subtask[..., i["fire"]] > 0  # [..., S]
            builder = agents[..., i["is_builder"]] > 0.5  # [..., N]
            useful = builder.unsqueeze(-1) | burning.unsqueeze(-2)
            score = score + 1e3 * (~useful)
        return score.argmin(-1).unsqueeze(-2), torch.zeros(obs.shape[:2], device=obs.device)

    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        return UpdateResult()
