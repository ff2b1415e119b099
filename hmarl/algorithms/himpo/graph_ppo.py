"""Graph PPO: a level's policy and critic as message passing over its agents (HiMPo, Sec. 3).

Every agent of a level is a node and its children (the units below it) hang under
it. One forward pass serves all ``B`` copies and ``N`` agents::

    e_c = f(message_c, position_c)                          # every child slot
    h_i = g([mean of e_c over children(i), command_i])      # bottom-up: children -> parent
    h_i = GNN(h, same-level edges)                          # kNN by position, complete, or none
    out_ic = head([h_i, e_c])                               # one output per (agent, child) edge

The actor's outputs are the children's actions (env actions for workers, goals for
managers) and the critic's a value per (agent, child) edge, so a superior's
advantage is per child (HiMPo Eq. 5: ``r_w = A_s(o^{s->w}, g^{s->w}) / alpha``).
Each edge is one PPO sample with its own ratio and advantage; the edges of an agent
share its reward. Parameters are shared by all nodes and edges (one network per
level), so gradients are clipped together and ``target_kl`` stops the whole level.

An edge counts (:meth:`GraphPPO.edge_mask`) where its slot holds a child, its agent's
transition counts (``Rollout.mask``: alive, command of a running episode) and its child
was alive when the command was given (``Rollout.child_mask``); the rest is left out of every loss, of the advantage and return statistics,
and of the advantages published for the level below (zero there).

Shapes: obs ``[B, N, obs_dim]``; actions ``[B, N]`` (one discrete child), ``[B, N, group]``
(discrete, one head per child) or ``[B, N, group * d]`` (continuous); log-prob ``[B, N, group]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gymnasium import spaces
from torch import nn

from hmarl.algorithms.onpolicy import (OnPolicyLearner, RunningNorm, TrainingBatch, clipped_losses, episode_starts,
                                       gae, log_softmax, normal_log_prob, sample_categorical, sample_normal,
                                       sequence_rows, time_major)
from hmarl.algorithms.ppo import PPOConfig
from hmarl.buffers import Rollout
from hmarl.algorithms.himpo.graphs import complete_edges, complete_neighbours, knn_edges, knn_neighbours
from hmarl.learner import AgentIO
from hmarl.nn import AgentGRU, AgentMLP
from hmarl.nn.gnn import DENSE_LAYER_TYPES, GNN_LAYERS, GraphEncoder, edges_to_adjacency

GRAPHS = ("knn", "complete", "none")


@dataclass
class GraphPPOConfig(PPOConfig):
    """PPO options (see :class:`PPOConfig`) plus the level's graph; parameters are always shared."""

    graph: str = "complete"
    """Same-level edges between the level's agents: ``knn`` (by position; needs
    ``positions: true`` on the level), ``complete`` or ``none``."""
    knn: int = 2
    """Neighbours per agent on a ``knn`` graph (at most N - 1)."""
    embedding: int = 64
    """Size of the child and agent embeddings and of the GNN layers."""
    gnn_layer: str = "neighbour"
    """Message-passing layer: a name in ``hmarl.nn.gnn.GNN_LAYERS``."""
    gnn_layers: int = 1
    """Message-passing rounds."""
    dense: bool = False
    """Message passing as batched dense matmuls instead of one sparse disjoint-union graph
    (same result). Measured (neighbour layer, one CPU thread, 64 copies acting / 1,600
    samples forward+backward): sparse is as fast or faster at 3 and 7 agents on kNN and
    complete graphs (7 agents: 1.8 vs 3.3 ms acting, 91 vs 145 ms updating); dense only
    wins on complete graphs of 16 agents."""
    share_params: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.graph not in GRAPHS:
            raise ValueError(f"unknown graph {self.graph!r}; available: {', '.join(GRAPHS)}")
        if not self.share_params:
            raise ValueError("graph_ppo shares one network among all agents of a level; share_params must be true")
        if self.centralized_critic:
            raise ValueError("graph_ppo's critic sees neighbours through message passing; "
                             "centralized_critic must be false")
        if self.gnn_layer not in GNN_LAYERS:
            raise ValueError(f"unknown gnn_layer {self.gnn_layer!r}; available: {', '.join(GNN_LAYERS)}")
        if self.dense and self.gnn_layer not in DENSE_LAYER_TYPES:
            raise ValueError(f"gnn_layer {self.gnn_layer} has no dense form; set dense: false "
                             f"(or use one of {', '.join(DENSE_LAYER_TYPES)})")
        if self.knn < 1 or self.embedding < 1 or self.gnn_layers < 1:
            raise ValueError("knn, embedding and gnn_layers must be >= 1")


class EdgeNetwork(nn.Module):
    """Outputs ``[..., N, group, out_dim]``, one per (agent, child) edge; see the module docstring."""

    def __init__(self, io: AgentIO, out_dim: int, config: GraphPPOConfig, out_gain: float):
        super().__init__()
        c, h = config, config.embedding
        self.io = io
        self.message_dim = io.child_dim - io.position_dim - int(io.presence)
        self.command_dim = io.obs_dim - io.child_obs_dim
        self.graph = c.graph if io.n_agents > 1 else "none"
        self.knn, self.dense = min(c.knn, io.n_agents - 1), c.dense
        self.child_encoder = AgentMLP(1, self.message_dim + io.position_dim, [], h, c.activation,
                                      math.sqrt(2), share_params=True)
        self.agent_encoder = AgentMLP(1, h + self.command_dim, [], h, c.activation, math.sqrt(2),
                                      share_params=True)
        self.activation = self.child_encoder.activation
        # recurrent: a GRU over each agent's embedding, before the message passing
        agent_dim = c.rnn_hidden if c.recurrent == "gru" else h
        self.gnn = None if self.graph == "none" else GraphEncoder(agent_dim, h, c.gnn_layers, c.gnn_layer,
                                                                  c.activation)
        self.head = AgentMLP(1, (agent_dim if self.gnn is None else h) + h, c.hidden_sizes, out_dim, c.activation,
                             out_gain, share_params=True)
        self.rnn = AgentGRU(1, h, c.rnn_hidden, share_params=True) if c.recurrent == "gru" else None
        if self.graph == "complete":
            self.register_buffer("complete", complete_neighbours(io.n_agents), persistent=False)
            self.register_buffer("complete_adj", edges_to_adjacency(complete_edges(io.n_agents), io.n_agents, 1),
                                 persistent=False)

    def split(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs -> child features ``[..., N, group, child_dim]``, presence ``[..., N, group]``, command."""
        io = self.io
        children = obs[..., :io.child_obs_dim].unflatten(-1, (io.group, io.child_dim))
        present = children[..., -1] > 0.5 if io.presence else torch.ones_like(children[..., 0], dtype=torch.bool)
        return children, present, obs[..., io.child_obs_dim:]

    def _pool(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Mean over each agent's children ``[..., N, G, d]`` -> ``[..., N, d]``; ``weight``
        ``[..., N, G, 1]`` marks the slots that hold a child, None when every slot does (the
        fast path spares the masking's three passes over the embeddings; same result)."""
        if weight is not None:
            return (x * weight).sum(-2) / weight.sum(-2).clamp(min=1)
        return x.squeeze(-2) if self.io.group == 1 else x.sum(-2) / self.io.group

    def _parts(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """obs -> child features, the slots' weights ``[..., N, group, 1]`` (1 for a child; None when
        every slot holds one) and the command."""
        io = self.io
        children = obs[..., :io.child_obs_dim].unflatten(-1, (io.group, io.child_dim))
        weight = (children[..., -1:] > 0.5).float() if io.presence else None
        return children, weight, obs[..., io.child_obs_dim:]

    def same_level_graph(self, obs: torch.Tensor) -> torch.Tensor | None:
        """The agents' same-level graph in ``obs``: kNN neighbour lists ``[M, N, k]`` of the agents'
        positions (the mean of their children's), the complete graph ``[N, N - 1]``, or with
        ``dense`` an adjacency ``[M, N, N]`` (``M`` the flattened leading dims); None without edges.
        The actor and the critic read the same graph: compute it once for both."""
        if self.gnn is None:
            return None
        if self.graph == "complete":
            return self.complete_adj if self.dense else self.complete
        io = self.io
        children, weight, _ = self._parts(obs)
        child_pos = children[..., self.message_dim:self.message_dim + io.position_dim]
        positions = self._pool(child_pos, weight)
        positions = positions.reshape(-1, io.n_agents, io.position_dim)
        if self.dense:
            return edges_to_adjacency(knn_edges(positions, self.knn), io.n_agents, positions.shape[0])
        return knn_neighbours(positions, self.knn)

    def forward(self, obs: torch.Tensor, graph: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs per edge; ``graph`` is :meth:`same_level_graph` of ``obs`` (computed when not given)."""
        return self.decode(obs, *self.encode(obs), graph)

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The child embeddings ``[..., N, G, h]`` and each agent's ``[..., N, h]`` (what a GRU reads)."""
        children, weight, command = self._parts(obs)
        child_in = children[..., :self.message_dim + self.io.position_dim]
        embedded = self.activation(self.child_encoder(child_in))  # [..., N, G, h]
        pooled = self._pool(embedded, weight)  # children -> parent
        return embedded, self.activation(self.agent_encoder(torch.cat([pooled, command], dim=-1)))

    def decode(self, obs: torch.Tensor, embedded: torch.Tensor, agent: torch.Tensor,
               graph: torch.Tensor | None = None) -> torch.Tensor:
        """Message passing among the agents (their embeddings, or GRU states) and the edge head."""
        if self.gnn is not None:
            graph = self.same_level_graph(obs) if graph is None else graph
            lead, (n, d) = agent.shape[:-2], agent.shape[-2:]
            flat = agent.reshape(-1, n, d)
            agent = (self.gnn.forward_dense(flat, graph) if self.dense
                     else self.gnn.forward_neighbours(flat, graph)).reshape(*lead, n, -1)
        pair = torch.cat([agent.unsqueeze(-2).expand(*embedded.shape[:-1], -1), embedded], dim=-1)
        return self.head(pair)


class GraphPPO(OnPolicyLearner):
    """PPO on the (agent, child) edges of a level whose agents pass messages (HiMPo's levels).

    The update is :class:`~hmarl.algorithms.onpolicy.OnPolicyLearner`'s; what differs from PPO
    is the network (:class:`EdgeNetwork`), the edges' sample mask, their advantages (ending
    where an edge's next step is left out) and one gradient clip and target-KL stop for the
    whole level (its parameters are shared)."""

    config_class = GraphPPOConfig

    def __init__(self, io: AgentIO, config: GraphPPOConfig):
        super().__init__(io)
        self.config = c = config
        self.transitions_per_update = c.transitions_per_update
        space = io.action_space
        self.discrete = not isinstance(space, spaces.Box)
        if isinstance(space, spaces.Discrete) and io.group > 1:
            raise ValueError("graph_ppo acts once per child; a discrete level over several children "
                             "needs joint: false (one action head per child)")
        if self.discrete:
            nvec = [int(space.n)] if isinstance(space, spaces.Discrete) else space.nvec.tolist()
            self.k = nvec[0]
            per_child = self.k
        else:
            per_child = int(space.shape[0]) // io.group
            self.log_std = nn.Parameter(torch.zeros(per_child))
        if c.graph == "knn" and io.n_agents > 1 and io.position_dim == 0:
            raise ValueError("graph knn links agents by position: set positions: true on this level "
                             "(the env must have positions), or use graph: complete")
        #: a GRU in each network, over its agents' embeddings (``recurrent: gru``)
        self.recurrent = c.recurrent == "gru"
        self.actor = EdgeNetwork(io, per_child, c, c.actor_out_gain)
        self.critic = EdgeNetwork(io, 1, c, c.critic_out_gain)
        self.return_norm = RunningNorm(1)
        # foreach: one call per step for all parameters instead of a Python loop over them (the CPU
        # default); the same arithmetic, bit for bit
        self.optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate, eps=1e-5, foreach=True)

    # -- policy and value ------------------------------------------------------------------
    def _distribution(self, out: torch.Tensor) -> torch.Tensor:
        """The actor's output as log-probabilities (discrete) or means."""
        return log_softmax(out) if self.discrete else out

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self._sample(self.actor(obs), deterministic)

    def _sample(self, out: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """An action and its log-probability ``[B, N, G]`` from the actor's output."""
        if self.discrete:
            action, log_prob = sample_categorical(self._distribution(out), deterministic)  # [B, N, G]
            return (action.squeeze(-1) if isinstance(self.io.action_space, spaces.Discrete) else action), log_prob
        action, log_prob = sample_normal(self._distribution(out), self.log_std.exp(), deterministic)
        return action.flatten(-2), log_prob

    # -- recurrent state: [B, 2 N, rnn_hidden], the actor's GRU state per agent, then the critic's
    def initial_state(self, num_envs: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Zeros ``[B, 2 N, rnn_hidden]``: each agent's actor state, then its critic state."""
        return torch.zeros(num_envs, 2 * self.io.n_agents, self.config.rnn_hidden, device=device)

    def act_recurrent(self, obs: torch.Tensor, state: torch.Tensor,
                      deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`act` from the GRUs' ``state`` (:meth:`initial_state`); both GRUs advance one step."""
        with torch.no_grad():
            n = self.io.n_agents
            embedded, agent = self.actor.encode(obs)
            actor_h = self.actor.rnn(agent, state[:, :n])
            critic_h = self.critic.rnn(self.critic.encode(obs)[1], state[:, n:])
            action, log_prob = self._sample(self.actor.decode(obs, embedded, actor_h), deterministic)
            return action, log_prob, torch.cat([actor_h, critic_h], 1)

    def _sequence_outputs(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's and the critic's outputs on a minibatch of chunks (:func:`sequence_rows`), by
        BPTT from each chunk's stored state: ``[S * length, N, G, out]`` and ``[S * length, N, G]``."""
        obs, reset, advance, graph = time_major(mb, "obs", "reset", "advance", "graph")
        graph = None if graph is None else graph.flatten(0, 1)
        n = self.io.n_agents
        outputs = []
        for net, state in ((self.actor, mb["state"][:, :n]), (self.critic, mb["state"][:, n:])):
            embedded, agent = net.encode(obs)
            hidden, _ = net.rnn.sequence(agent, state, reset, advance)
            outputs.append(net.decode(obs, embedded, hidden, graph).transpose(0, 1).flatten(0, 1))
        return outputs[0], outputs[1].squeeze(-1)

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor,
                 graph: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy ``[M, N, group]`` of stored actions (feed-forward); ``graph``
        as in :meth:`EdgeNetwork.forward`."""
        return self._evaluate_out(self.actor(obs, graph), action)

    def _evaluate_out(self, out: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`evaluate` from the actor's output."""
        if self.discrete:
            log_p = self._distribution(out)
            index = action.view(*log_p.shape[:-1], 1)
            return log_p.gather(-1, index).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
        mean = self._distribution(out)
        std = self.log_std.exp()
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum(-1).expand(mean.shape[:-1])
        return normal_log_prob(mean, std, action.view_as(mean)), entropy

    def critic_output(self, obs: torch.Tensor, graph: torch.Tensor | None = None) -> torch.Tensor:
        """Values per (agent, child slot); ``graph`` as in :meth:`EdgeNetwork.forward`."""
        return self.critic(obs, graph).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """One value per (agent, child) edge ``[..., N, group]``, in return units."""
        out = self.critic_output(obs)
        return self.return_norm.denormalize(out) if self.config.normalize_value else out

    # -- learning --------------------------------------------------------------------------
    def rollout_outputs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's outputs on each step's observation and on the one after it (before any
        reset: :meth:`Rollout.next_obs`), from one pass over ``T + 1`` steps plus the steps where
        an episode ended: the observation after a step is the next step's (``last_obs`` after
        the last) except there (``final_obs``), so the two full passes over ``2 T`` steps that the
        two would take share all other rows. Each row (a copy's agents at one step) is its own
        graph, so its outputs do not depend on the other rows; GEMMs can round a row differently
        in batches of other sizes (a few ulp; tests/algorithms/test_graph_ppo.py checks 1e-6).
        The episode ends are read on the host once per update.

        Shapes: rollout ``[T, B, ...]`` -> ``[T, B, N, group]`` each.
        """
        steps, copies = rollout.done.shape
        ended = rollout.done.flatten().nonzero().squeeze(-1)  # [E] rows (step * B + copy)
        rows = torch.cat([rollout.obs.flatten(0, 1), rollout.last_obs,
                          rollout.final_obs.flatten(0, 1).index_select(0, ended)])
        out = self.critic_output(rows)
        current, following = out[:steps * copies], out[copies:(steps + 1) * copies]
        after = following.index_copy(0, ended, out[(steps + 1) * copies:])
        return current.unflatten(0, (steps, copies)), after.unflatten(0, (steps, copies))

    def edge_mask(self, rollout: Rollout) -> torch.Tensor:
        """Which (agent, child) edges count: the slot holds a child, the agent's transition counts
        (``rollout.mask``) and the child was alive when this level gave its command
        (``rollout.child_mask``, stored by the Level at each of its steps).

        Shapes: rollout ``[T, B, N, ...]`` -> ``[T, B, N, group]`` bool.
        """
        valid = self.actor.split(rollout.obs)[1]
        if rollout.mask is not None:
            valid = valid & rollout.mask.unsqueeze(-1)
        if rollout.child_mask is not None:
            valid = valid & rollout.child_mask
        return valid

    def _advantages(self, reward: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                    rollout: Rollout, valid: torch.Tensor) -> torch.Tensor:
        """GAE per edge. An edge whose next step does not count ends where it is, with no
        bootstrap: a dead agent earns nothing more, and the critic never learns the values
        of left-out steps; so nothing a left-out step holds reaches the steps that count.

        Shapes: reward, values, next_values, valid ``[T, B, N, G]`` -> ``[T, B, N, G]``.
        """
        c = self.config
        following = torch.cat([valid[1:], torch.ones_like(valid[:1])])  # past the rollout: unknown, go on
        flags = lambda x: x.view(*x.shape, 1, 1).expand_as(valid)  # noqa: E731  [T, B] -> [T, B, N, G]
        done = flags(rollout.done)
        ends = valid & ~following & ~done
        # gae reads [T, B] flags: one column per (copy, agent, child)
        columns = lambda x: x.flatten(1)  # noqa: E731
        advantages = gae(columns(reward), columns(values), columns(next_values),
                         columns(flags(rollout.terminated) | ends), columns(done | ends), c.gamma, c.gae_lambda)
        return torch.where(valid, advantages.view_as(valid), 0.0)

    def training_batch(self, rollout: Rollout) -> TrainingBatch:
        """The rollout flattened over steps and copies (a row: one copy's agents at one step), with
        the edge mask ``valid``, the same-level ``graph`` of each row when it depends on the row
        (kNN), and the per-edge ``advantages`` ``[T, B, N, G]`` published for the level below
        (zero on left-out edges: they train nothing below). Updates the return statistics."""
        c = self.config
        valid = self.edge_mask(rollout)  # [T, B, N, G]
        with torch.no_grad():  # on the critic's (standardised) scale
            old_output, next_output = (self._recurrent_outputs(rollout) if self.recurrent
                                       else self.rollout_outputs(rollout))
            scale = self.return_norm.denormalize if c.normalize_value else (lambda x: x)
            values = scale(old_output)
            reward = rollout.reward.unsqueeze(-1).expand_as(values)  # an agent's edges share its reward
            advantages = self._advantages(reward, values, scale(next_output), rollout, valid)
        returns = advantages + values
        if c.normalize_value:
            # The statistics take in this rollout's returns, and the targets follow them; the
            # clip window stays centred on what the critic output (MAPPO's ValueNorm): mapping the
            # old values back through the new statistics would centre it where the critic never was.
            if bool(valid.any()):  # an empty sample would make the statistics NaN
                self.return_norm.update(returns[valid].unsqueeze(-1))
            returns = self.return_norm.normalize(returns)
        values = old_output
        returns = torch.where(valid, returns, values)  # left out: no value error, whatever they held
        fields = dict(obs=rollout.obs, action=rollout.action, log_prob=rollout.log_prob, advantages=advantages,
                      returns=returns, values=values, valid=valid)
        if self.recurrent:  # rows: whole chunks of every copy
            if self.actor.graph == "knn":
                fields["graph"] = self.actor.same_level_graph(rollout.obs).unflatten(0, rollout.obs.shape[:2])
            return TrainingBatch(sequence_rows(fields, rollout, min(c.bptt_chunk, rollout.obs.shape[0])), {},
                                 {"advantages": advantages})
        rows = {key: value.flatten(0, 1) for key, value in fields.items()}
        if self.actor.graph == "knn":
            # the same-level graph depends on the observations alone: built once for the rollout
            # and gathered per minibatch (the complete graph and none are the same for every row)
            rows["graph"] = self.actor.same_level_graph(rows["obs"])
        return TrainingBatch(rows, {}, {"advantages": advantages})

    def _recurrent_outputs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rollout_outputs` of a recurrent critic: one pass over the rollout from its first
        stored state, and one more GRU step from the state carried out of each step for the
        observation after it. Shapes: ``[T, B, N, group]`` each."""
        critic, next_obs = self.critic, rollout.next_obs()
        embedded, agent = critic.encode(rollout.obs)
        hidden, carried = critic.rnn.sequence(agent, rollout.state[0][:, self.io.n_agents:],
                                              episode_starts(rollout.done), rollout.decision)
        next_embedded, next_agent = critic.encode(next_obs)
        following = critic.rnn(next_agent, carried)
        return (critic.decode(rollout.obs, embedded, hidden).squeeze(-1),
                critic.decode(next_obs, next_embedded, following).squeeze(-1))

    def losses(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PPO's terms over the edges of a minibatch, scalars: every edge that counts is one sample
        (advantages are standardised over them)."""
        c = self.config
        if self.recurrent:  # chunks [S, length, ...]: run the GRUs, then every step's edges are samples
            actor_out, new_value = self._sequence_outputs(mb)
            mb = {key: mb[key].flatten(0, 1) for key in ("action", "log_prob", "advantages", "returns", "values",
                                                         "valid")}
            new_log_prob, entropy = self._evaluate_out(actor_out, mb["action"])
        else:
            obs = mb["obs"]
            graph = mb["graph"] if "graph" in mb else self.actor.same_level_graph(obs)  # the actor's and the critic's
            new_log_prob, entropy = self.evaluate(obs, mb["action"], graph)
            new_value = self.critic_output(obs, graph)
        mask = mb["valid"].reshape(-1)
        terms = clipped_losses(*(x.reshape(-1) for x in (
            new_log_prob, mb["log_prob"], mb["advantages"], new_value, mb["values"], mb["returns"])),
            c.clip_coef, c.clip_vloss, c.norm_adv, mask)
        pg_loss, v_loss, approx_kl, clipfrac = (_masked_mean(x, mask) for x in terms)
        return {"pg_loss": pg_loss, "v_loss": v_loss, "entropy": _masked_mean(entropy.reshape(-1), mask),
                "approx_kl": approx_kl, "clipfrac": clipfrac}

    def clip_gradients(self) -> None:
        """One norm over all parameters: they are shared by every node and edge of the level."""
        nn.utils.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask``; 0 when nothing counts."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)
