"""A-QMIX: QMIX with entity-attention agents, the low level of ALMA (Iqbal et al. 2022).

Read beside QMIX (Rashid et al. 2018) and ALMA's low level and code (``flex_qmix.py``,
``q_learner.py``). Every agent i has a utility Q_i(o_i, u) (one network shared by all
agents); a monotonic mixing network combines them into a team value, and only the team
value is trained, by double-Q TD learning:

.. math::
    Q^k_{tot} = f_k\\big(\\{Q_i(o_i, u_i)\\}_{i \\in k}; s\\big),\\quad
    \\frac{\\partial Q^k_{tot}}{\\partial Q_i} \\ge 0,\\qquad
    y^k = r^k + \\gamma (1 - d)\\, Q'^k_{tot}\\big(\\{Q'_i(o'_i, \\arg\\max_u Q_i(o'_i, u))\\}; s'\\big)

With a command from the level above (ALMA's subtask allocation, a one-hot of S subtasks
at the end of the observation) there is one mixed value **per subtask** k, over the
agents assigned to k only, trained on that subtask's reward r^k; each agent attends only
to its subtask's state s^k_{A_k} of Eq. 9 (``mask_subtasks``): the subtask's non-agent
entities and the agents assigned to k; other subtasks' entities and agents are hidden.
Without a command (the flat A-QMIX) there is one Q_tot over all agents, trained on the
mean of the agents' rewards.

Agent network (entity attention, as ALMA's / REFIL's agents): every entity row of the
observation is embedded by an MLP; the agent's query is its own row's embedding with the
command; multi-head attention over the entities (with the mask: those outside s^k_{A_k}
hidden); then an MLP of [own embedding, command, attention output] to the K utilities.

Mixer (QMIX hypernetworks, weights made non-negative by abs): the env state is not stored
in our rollouts, so the mixer reads the entities from the agents' observations (each is a
full entity list, SaveTheCity being fully observed). For subtask k, each member agent
attends over the entities of s^k_{A_k} (the same mask as the agents'), the first layer's
weights of agent i come from its view (QMIX's ``hyper_w_1`` gives one row per agent), and
``b1``, ``w_final`` and ``V`` from the mean of the members' views, as ALMA's mixer pools its
per-agent hypernetwork outputs per subtask. A Q_i enters subtask k's mix multiplied by i's
membership of k, so Q^k_tot depends neither on the utilities of other subtasks' agents nor
on any entity hidden from k. Flat (or without the mask) every entity is visible.

Decisions where our setting differs from the paper:

* Transition replay of (obs, action, reward, next_obs, terminated) instead of the paper's
  episodic replay: the agents are feed-forward (no RNN), so single steps suffice.
* Target networks are copied every ``target_update_episodes`` finished episodes (the
  paper's 200), counted over all B copies (:class:`EpisodeTargetLearner`); the check runs
  after an update's gradient steps, so a copy lands on a rollout boundary.
* ``target_groups``: the target mixes the next step's assignment (``"next"``, read from
  next_obs's command); a subtask that has no agents at the next step bootstraps 0 (its
  agents' share of it ended there, and an empty mix is never trained). ``"current"``
  keeps the step's own groups, as ALMA's released code does.
* The subtask reward r^k is read from the agents' rewards: every agent assigned to k
  carries r^k (the mean over k's agents is taken); a subtask with no agents has no loss.
* Epsilon decays over ``epsilon_anneal_steps`` env steps of all copies together (pymarl's
  ``t_env``; 2M on SaveTheCity), not over a share of training: a shorter run ends with
  epsilon above 0.05, as the paper's schedule would.
* No Pop-Art here (the allocator's critic has it): a mixed value is
  ``|W_f(x)| . elu(...) + V(x)`` from hypernetworks, whose output layers would all need
  POP's rescaling, and within one env the subtask rewards share the env's scale.

Shapes: obs ``[B, N, obs_dim]``; actions ``int64 [B, N]``.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from hmarl.algorithms.offpolicy import (EpisodeTargetLearner, OffPolicyConfig, epsilon_greedy, flatten_steps,
                                       linear_schedule, soft_update)
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, UpdateContext
from hmarl.spec import Entities, EnvSpec, subtask_membership

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""

TARGET_GROUPS = ("next", "current")


@dataclass
class AQMIXConfig(OffPolicyConfig):
    """A-QMIX hyperparameters; defaults from QMIX / ALMA where they have one."""

    learning_rate: float = 5e-4
    """RMSprop step size (the paper's 5e-4)."""
    buffer_size: int = 100_000
    """Replay capacity in rows; a row is one env copy's step for all N agents of the level."""
    batch_size: int = 128
    """Rows per gradient step."""
    tau: float = 1.0
    """Target networks' update rate at each target update (1: a copy, as QMIX)."""
    huber_loss: bool = False
    """Huber (smooth L1) TD loss instead of QMIX's squared error."""
    hidden_sizes: list[int] = (64,)
    """Hidden layer widths of the utility MLP after the attention (ReLU)."""
    optim_alpha: float = 0.99
    """RMSprop smoothing constant (pymarl's optim_alpha)."""
    optim_eps: float = 1e-5
    """RMSprop epsilon (pymarl's optim_eps)."""
    max_grad_norm: float = 10.0
    """The gradient's global norm is clipped to this."""
    target_update_episodes: int = 200
    """Finished episodes, all copies together, between two target network updates (paper: 200)."""
    target_groups: str = "next"
    """Which assignment the target mixes: "next" (next_obs's command) or "current" (ALMA's code)."""
    epsilon_start: float = 1.0
    """Exploration epsilon at the start of training."""
    epsilon_finish: float = 0.05
    """Exploration epsilon at the end of the anneal and after."""
    epsilon_anneal_steps: int = 2_000_000
    """Env steps, all copies together (pymarl's ``t_env``), over which epsilon decays linearly
    from start to finish (ALMA on SaveTheCity: 2M); 0: epsilon_finish from the start."""
    learning_starts: int = 1_000
    """Replay rows (one env copy's step each) before the first gradient step."""
    attention_dim: int = 128
    """Entity embedding and attention width."""
    heads: int = 4
    """Attention heads; must divide attention_dim."""
    mixing_embed_dim: int = 32
    """Width of the mixing network's hidden layer (QMIX's mixing_embed_dim)."""
    hypernet_embed: int = 128
    """Width of the mixer's entity embedding and attention, which feed the hypernetworks
    (the paper's 128 for attention layers)."""
    mask_subtasks: bool = True
    """Agents attend only to their subtask's entities and to the agents assigned to the same
    subtask (Eq. 9; entities of no subtask that are not agents stay visible); needs a command.
    False: ALMA's no-mask ablation, every entity visible."""

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.share_params, "share_params must be true: A-QMIX agents share one attention network"),
            (self.optim_alpha > 0 and self.optim_eps > 0,
             f"optim_alpha and optim_eps must be > 0, got {self.optim_alpha}, {self.optim_eps}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.target_update_episodes >= 1,
             f"target_update_episodes must be >= 1, got {self.target_update_episodes}"),
            (self.target_groups in TARGET_GROUPS,
             f"target_groups must be one of {', '.join(TARGET_GROUPS)}, got {self.target_groups!r}"),
            (0 <= self.epsilon_start <= 1 and 0 <= self.epsilon_finish <= 1,
             f"epsilon_start, epsilon_finish must be in [0, 1], got {self.epsilon_start}, {self.epsilon_finish}"),
            (self.epsilon_anneal_steps >= 0, f"epsilon_anneal_steps must be >= 0, got {self.epsilon_anneal_steps}"),
            (self.learning_starts >= 0, f"learning_starts must be >= 0, got {self.learning_starts}"),
            (self.attention_dim >= 1 and self.heads >= 1 and self.attention_dim % self.heads == 0,
             f"heads ({self.heads}) must divide attention_dim ({self.attention_dim}), both >= 1"),
            (self.mixing_embed_dim >= 1, f"mixing_embed_dim must be >= 1, got {self.mixing_embed_dim}"),
            (self.hypernet_embed >= 1 and self.hypernet_embed % self.heads == 0,
             f"heads ({self.heads}) must divide hypernet_embed ({self.hypernet_embed}), both >= 1")]


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


# -- the agents ----------------------------------------------------------------------------------

class EntityAttention(nn.Module):
    """Multi-head attention of one query over a set of entities; hidden entities get no weight.

    With head h's projections W^q_h, W^k_h, W^v_h (``d = D / H`` rows each) and entity
    embeddings e, head h reads

    .. math::
        o_h = \\sum_e w_{he}\\, W^v_h e = W^v_h \\sum_e w_{he}\\, e,\\qquad
        w_{he} = \\mathrm{softmax}_e \\frac{(W^q_h x) \\cdot W^k_h e}{\\sqrt d}
               = \\mathrm{softmax}_e \\frac{(W^{k\\top}_h W^q_h x) \\cdot e}{\\sqrt d},

    so it is computed that way round: the key projection folded into the query, the value
    projection applied after the mix. Nothing is projected per entity (that was two D x D
    products per entity, most of the agents' and the mixer's work).

    Shapes: query ``[..., Dq]``, entities ``[..., E, D]``, hidden ``[..., E]`` bool -> ``[..., D]``.
    """

    def __init__(self, query_dim: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(query_dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, entities: Tensor, hidden: Tensor | None = None) -> Tensor:
        h, dim = self.heads, entities.shape[-1]
        q = self.query(query).unflatten(-1, (h, -1))  # [..., H, d]
        d = q.shape[-1]
        folded = torch.einsum("...hd,hdD->...hD", q, self.key.weight.view(h, d, dim))  # W^k_h^T W^q_h x: [..., H, D]
        scores = folded @ entities.transpose(-1, -2) / math.sqrt(d)  # [..., H, E]
        if hidden is None:
            weights = scores.softmax(-1)
        else:
            # A row with every entity hidden would be a softmax over -inf only (NaN): it keeps
            # finite scores, then zero weights, so an agent that may see nothing reads zeros.
            blind = hidden.all(-1, keepdim=True).unsqueeze(-1)  # [..., 1, 1]
            hidden = hidden.unsqueeze(-2)  # [..., 1, E]: the same for every head
            weights = scores.masked_fill(hidden & ~blind, float("-inf")).softmax(-1).masked_fill(blind, 0.0)
        mixed = weights @ entities  # sum_e w_he e: [..., H, D]
        return self.out(torch.einsum("...hD,hdD->...hd", mixed, self.value.weight.view(h, d, dim)).flatten(-2))


class SubtaskMask(nn.Module):
    """The entities hidden from a viewer under an allocation: Eq. 9's subtask state s^k_{A_k}.

    A viewer has a subtask indicator c (an agent: its command; subtask k's mixer: the one-hot
    of k). With m_e the membership row of entity e and c_j agent j's command, the viewer sees

    .. math::
        e \\text{ of a subtask: } c \\cdot m_e = 1,\\qquad
        e \\text{ agent } j\\text{'s entity: } c \\cdot c_j = 1,\\qquad
        e \\text{ of neither: always},

    i.e. the subtask's non-agent entities and only the agents assigned to the same subtask;
    a viewer with no subtask sees only the entities of neither.

    Shapes: viewer ``[..., V, S]``, commands ``[..., N, S]`` (0/1) -> hidden ``[..., V, E]`` bool.
    """

    def __init__(self, layout: EntityLayout):
        super().__init__()
        membership = subtask_membership(layout.subtask_of_entity, layout.n_subtasks)
        self.register_buffer("membership", membership.float(), persistent=False)  # [E, S]
        self.register_buffer("in_subtask", membership.any(-1), persistent=False)  # [E]
        self.agents = layout.agent_entities

    def forward(self, viewer: Tensor, commands: Tensor) -> Tensor:
        hidden = self.in_subtask & (viewer @ self.membership.T < 0.5)  # [..., V, E]
        if self.agents == 0:
            return hidden
        # entity j < agent_entities is agent j: hidden unless it works on the viewer's subtask
        apart = viewer @ commands[..., :self.agents, :].transpose(-1, -2) < 0.5  # [..., V, A]
        rest = apart.new_zeros(*apart.shape[:-1], self.membership.shape[0] - self.agents)
        return hidden | torch.cat([apart, rest], -1)


class AgentNetwork(nn.Module):
    """Q_i(o_i, .) for every agent at once, one set of weights: ``[..., N, obs_dim]`` -> ``[..., N, K]``.

    With ``mask_subtasks`` agent i attends only to what :class:`SubtaskMask` leaves it under
    the level's allocation (every agent's command is in ``obs``, so the mask is one batched op).
    """

    def __init__(self, layout: EntityLayout, n_actions: int, config: AQMIXConfig):
        super().__init__()
        self.layout = layout
        d, c = config.attention_dim, layout.command_dim
        self.embed = nn.Sequential(nn.Linear(layout.entity_dim, d), nn.ReLU())
        self.attention = EntityAttention(d + c, d, config.heads)
        # the command also goes straight to the head: attention over identical entities
        # would otherwise hide which subtask the agent works on
        self.head = mlp([2 * d + c, *config.hidden_sizes, n_actions])
        self.mask = SubtaskMask(layout) if config.mask_subtasks and c > 0 else None

    def forward(self, obs: Tensor) -> Tensor:
        own, rows, command = self.layout.split(obs)  # [..., N, F], [..., N, E, F], [..., N, S]
        own, entities = self.embed(own), self.embed(rows)  # [..., N, D], [..., N, E, D]
        hidden = None if self.mask is None else self.mask(command, command)  # [..., N, E]
        query = torch.cat([own, command], -1)
        attended = self.attention(query, entities, hidden)  # [..., N, D]
        return self.head(torch.cat([query, attended], -1))


# -- the mixer -----------------------------------------------------------------------------------

class Mixer(nn.Module):
    """Monotonic QMIX mixing, one output per group g, conditioned on g's masked entities only.

    Each agent i reads group g's entities from its own observation: an attention of its own
    row's embedding over the entity embeddings that ``mask`` leaves group g (subtask k:
    s^k_{A_k} of Eq. 9; flat or unmasked: every entity), x_{g,i}. The group's state is the
    mean over its members, x_g. With member_{g,i} in {0, 1}:

    .. math::
        Q^g_{tot} = w^g_{final} \\cdot \\mathrm{elu}\\big(\\textstyle\\sum_i member_{g,i}\\, Q_i
        |W_1(x_{g,i})| + b_1(x_g)\\big) + V(x_g),\\qquad w^g_{final} = |W_f(x_g)|,

    so dQ^g_tot/dQ_i >= 0, = 0 unless i is in g, and Q^g_tot does not change with the
    entities hidden from g (another subtask's entities and agents).

    x_{g,i} counts only where i is in g, and an agent is in one group at most (its command is
    a one-hot; flat, everyone is in the one group), so x_i, its view under its own group's
    mask, is all there is to compute: N attentions, not G N.

    Shapes: ``q [..., N]``, ``obs [..., N, obs_dim]``, ``groups [..., N, G]`` 0/1, at most one 1
    per agent -> ``Q_tot [..., G]``; with a mask, G = S (group g is subtask g).
    """

    def __init__(self, layout: EntityLayout, config: AQMIXConfig, mask: SubtaskMask | None):
        super().__init__()
        h, d = config.hypernet_embed, config.mixing_embed_dim
        self.layout, self.mask = layout, mask
        self.embed = nn.Sequential(nn.Linear(layout.entity_dim, h), nn.ReLU())
        self.attention = EntityAttention(h, h, config.heads)
        self.hyper_w_1 = nn.Linear(h, d)
        self.hyper_b_1 = nn.Linear(h, d)
        self.hyper_w_final = nn.Linear(h, d)
        self.V = nn.Sequential(nn.Linear(h, d), nn.ReLU(), nn.Linear(d, 1))  # QMIX's state-dependent bias

    def forward(self, q: Tensor, obs: Tensor, groups: Tensor) -> Tensor:
        own, rows, _ = self.layout.split(obs)
        member = groups.transpose(-1, -2)  # [..., G, N]
        # agent i's group's mask: with its one-hot group as the viewer, the one its group sees
        hidden = None if self.mask is None else self.mask(groups, groups)  # [..., N, E]
        x = self.attention(self.embed(own), self.embed(rows), hidden)  # x_i: [..., N, H]
        state = member @ x / member.sum(-1, keepdim=True).clamp(min=1)  # [..., G, H]
        w1 = self.hyper_w_1(x).abs()  # [..., N, D]; abs: monotonic in every Q_i
        q_in = member * q.unsqueeze(-2)  # [..., G, N]: agents outside the group contribute nothing
        hidden_layer = F.elu(q_in @ w1 + self.hyper_b_1(state))  # [..., G, D]
        w_final = self.hyper_w_final(state).abs()
        return (hidden_layer * w_final).sum(-1) + self.V(state).squeeze(-1)


# -- the learner ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EntityLayout:
    """Where the entities sit in an agent's observation (from the env's ``EnvSpec.entities``)."""

    n_subtasks: int
    n_entities: int
    entity_dim: int
    first: int
    """Entity e's row is ``obs[..., first + e F : first + (e + 1) F]``; the agent's own row is ``obs[..., :F]``."""
    subtask_of_entity: tuple[int, ...]
    command_dim: int
    """S when the level's obs ends with a one-hot subtask command, else 0."""
    agent_entities: int = 0
    """Entities 0..agent_entities-1 are the level's agents 0..agent_entities-1 (agents come first
    among the entities: the leading entities of no subtask, at most one per agent)."""

    def split(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """An observation's own row ``[..., F]``, entity rows ``[..., E, F]`` and command ``[..., S]`` (S may be 0)."""
        rows = obs[..., self.first:self.first + self.n_entities * self.entity_dim]
        return (obs[..., :self.entity_dim], rows.unflatten(-1, (self.n_entities, self.entity_dim)),
                obs[..., obs.shape[-1] - self.command_dim:])

    @classmethod
    def read(cls, io: AgentIO, entities: Entities, name: str) -> EntityLayout:
        """The layout from env ``name``'s entities (which the env's spec has checked); a ValueError
        says what does not fit this level."""
        s, e, f = entities.n_subtasks, entities.n_entities, entities.entity_dim
        first, of_entity = entities.first, entities.subtask_of_entity
        command_dim = io.obs_dim - io.child_obs_dim
        problems = [
            (io.group == 1, f"aqmix reads env observations: one env agent per agent (group 1), got {io.group}"),
            (f <= first and first + e * f <= io.child_obs_dim,
             (f"entities at {first}..{first + e * f} (after the own row of {f}) exceed the observation of "
              f"{io.child_obs_dim}") if f <= first else f"entities start at {first}, inside the own row of {f}"),
            (command_dim in (0, s),
             f"the command must be a one-hot of the {s} subtasks or absent, got {command_dim} command dims")]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"aqmix on {name}: {message}")
        leading = next((i for i, k in enumerate(of_entity) if k != -1), e)
        return cls(s, e, f, first, of_entity, command_dim, min(leading, io.n_agents))


class AQMIX(EpisodeTargetLearner):
    """A-QMIX for all agents of a level: entity-attention utilities, per-subtask monotonic mixing."""

    config_class = AQMIXConfig
    requires = ("entities",)  # what it needs of the env (algorithms.system_requires)
    acts_on = "discrete_actions"

    @classmethod
    def build(cls, io: AgentIO, config: AQMIXConfig, env: EnvSpec) -> AQMIX:
        return cls(io, config, env.require("entities", "aqmix").in_observation("aqmix", env.name), env.name)

    def __init__(self, io: AgentIO, config: AQMIXConfig, entities: Entities, env_name: str = "env"):
        super().__init__(io, config.buffer_size)
        self.config = c = config
        space = io.action_space
        if not isinstance(space, spaces.Discrete):
            hint = ("for one action per child, make the level joint (joint: true)"
                    if isinstance(space, spaces.MultiDiscrete) else "use td3 for a Box one")
            raise ValueError(f"aqmix needs a Discrete action space, got {space}; {hint}")
        self.n_actions = int(space.n)
        self.layout = EntityLayout.read(io, entities, env_name)
        self.agent = AgentNetwork(self.layout, self.n_actions, c)
        # the mixer of subtask k sees what k's agents may see; flat and no-mask: everything
        mixer_mask = SubtaskMask(self.layout) if c.mask_subtasks and self.layout.command_dim else None
        self.mixer = Mixer(self.layout, c, mixer_mask)
        self.target_agent = copy.deepcopy(self.agent).requires_grad_(False)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)
        self.params = [*self.agent.parameters(), *self.mixer.parameters()]
        # foreach: one call per RMSprop op over all 28 tensors (torch defaults to it on GPUs only;
        # on the CPU it loops in Python): the same values, bit for bit (tests/algorithms/test_aqmix.py)
        self.optimizer = torch.optim.RMSprop(self.params, lr=c.learning_rate, alpha=c.optim_alpha, eps=c.optim_eps,
                                             foreach=True)
        #: env steps of all copies in the rollouts given to ``update``: drives epsilon
        self.env_steps = 0

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "env_steps": self.env_steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.env_steps = int(state["env_steps"])

    # -- policy ----------------------------------------------------------------------------
    def q_values(self, obs: Tensor) -> Tensor:
        """The utilities ``[..., N, obs_dim]`` -> ``[..., N, K]``, differentiable."""
        return self.agent(obs)

    def groups(self, obs: Tensor) -> Tensor:
        """Who each Q_tot mixes, ``[..., N, G]`` 0/1: the command one-hot (G = S), or everyone (G = 1)."""
        if self.layout.command_dim == 0:
            return obs.new_ones(*obs.shape[:-1], 1)
        return (obs[..., -self.layout.command_dim:] > 0.5).float()

    def epsilon(self, env_steps: int | None = None) -> float:
        """Linear anneal over ``epsilon_anneal_steps`` env steps; the steps seen so far by default."""
        c = self.config
        env_steps = self.env_steps if env_steps is None else env_steps
        return linear_schedule(c.epsilon_start, c.epsilon_finish, c.epsilon_anneal_steps, env_steps)

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Epsilon-greedy ``int64 [B, N]`` (greedy if deterministic), log-prob zeros ``[B, N]``."""
        with torch.no_grad():
            q_values = self.q_values(obs)
        action = q_values.argmax(-1) if deterministic else epsilon_greedy(q_values, self.epsilon())
        return action, obs.new_zeros(obs.shape[:2])

    # -- learning --------------------------------------------------------------------------
    def transitions(self, rollout: Rollout) -> dict[str, Tensor]:
        """The replay rows of a rollout, each ``[T*B, N, ...]`` (terminated ``[T*B, 1]`` float)."""
        return {"obs": flatten_steps(rollout.obs),
                "action": flatten_steps(rollout.action),
                "reward": flatten_steps(rollout.reward) * self.config.reward_scale,
                "next_obs": flatten_steps(rollout.next_obs()),
                "terminated": flatten_steps(rollout.terminated).float().unsqueeze(-1)}

    def group_reward(self, obs: Tensor, reward: Tensor) -> Tensor:
        """``[M, G]``: r^k, carried by every agent assigned to k (their mean); flat: the agents' mean."""
        groups = self.groups(obs)
        return (groups * reward.unsqueeze(-1)).sum(-2) / groups.sum(-2).clamp(min=1)

    def td_target(self, batch: dict[str, Tensor]) -> Tensor:
        """``[M, G]``: the online agents pick the next actions, the target agents and mixer value them."""
        c = self.config
        with torch.no_grad():
            next_obs = batch["next_obs"]
            best = self.agent(next_obs).argmax(-1, keepdim=True)
            next_q = self.target_agent(next_obs).gather(-1, best).squeeze(-1)  # [M, N]
            groups = self.groups(next_obs if c.target_groups == "next" else batch["obs"])
            next_tot = self.target_mixer(next_q, next_obs, groups)
            if c.target_groups == "next":  # a subtask left by all its agents: nothing to bootstrap
                next_tot = next_tot * (groups.sum(-2) > 0)
            reward = self.group_reward(batch["obs"], batch["reward"])
            return reward + c.gamma * (1.0 - batch["terminated"]) * next_tot

    def q_tot(self, obs: Tensor, action: Tensor) -> Tensor:
        """``[M, G]``: the mixed utilities of the joint ``action`` ``[M, N]``, differentiable."""
        q = self.q_values(obs).gather(-1, action.unsqueeze(-1)).squeeze(-1)  # [M, N]
        return self.mixer(q, obs, self.groups(obs))

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """TD loss of the stored joint actions over the subtasks that have agents, and their mean Q_tot."""
        q_tot = self.q_tot(batch["obs"], batch["action"])
        target = self.td_target(batch)
        active = (self.groups(batch["obs"]).sum(-2) > 0).float()  # a subtask without agents has no loss
        error = (F.smooth_l1_loss if self.config.huber_loss else F.mse_loss)(q_tot, target, reduction="none")
        count = active.sum().clamp(min=1)
        return (error * active).sum() / count, (q_tot.detach() * active).sum() / count

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One TD step of the agents and the mixer on ``batch``, the gradient's norm clipped."""
        q_loss, q_tot = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        return {"q_loss": q_loss.detach(), "q_tot": q_tot, "grad_norm": grad_norm}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def store_rollout(self, rollout: Rollout, ctx: UpdateContext) -> None:
        """Count its finished episodes and steps; one replay row per env copy's step (none masked)."""
        self.count_episodes(rollout)
        self.env_steps += rollout.obs.shape[0] * rollout.obs.shape[1]  # T steps of B copies
        self.replay.add(**self.transitions(rollout))

    def warmed_up(self) -> bool:
        return len(self.replay) >= max(self.config.batch_size, self.config.learning_starts)

    def new_transitions(self, rollout: Rollout) -> int:
        """``T``: ``gradient_steps(T)`` per rollout, pymarl's one step per batch of episodes' steps."""
        return rollout.obs.shape[0]

    def after_learning(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """The targets follow every ``target_update_episodes`` finished episodes; epsilon is logged."""
        if stats and self.target_update_due(self.config.target_update_episodes):
            soft_update(self.target_agent, self.agent, self.config.tau)
            soft_update(self.target_mixer, self.mixer, self.config.tau)
        if stats:
            stats["epsilon"] = torch.tensor(self.epsilon(), device=stats["q_loss"].device)
        return stats
