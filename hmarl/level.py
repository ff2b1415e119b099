"""A level of agents presented as an env to the level above (TAG's LevelEnv, generalised).

Each agent ``i`` of a level controls ``children(i)``, a set of units of the
level below; the children of all agents partition the units below. One
``step(command)`` from the level above lasts ``steps_per_command`` steps of this
level; at each, every agent acts on its children's messages and the command
it holds (Algorithm 1 of TAG, batched over agents and env copies)::

    a_i = pi_i(command_i, obs_below[children(i)])   # one call for all agents
    below.step(a)                                      # children read their part of a_i
    m_i = phi_i(obs_below[children(i)])                # message sent up
    r_i = sum of the children's rewards over the period

Commands reach the children by what they observe: appended as a one-hot
(discrete) or raw (continuous), so the agents keep their autonomy.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from gymnasium import spaces

from hmarl.buffers import Rollout, RolloutBuffer
from hmarl.comm import Communication
from hmarl.goals import goal_transition
from hmarl.graphs import Regrouping
from hmarl.learner import AgentIO, Learner
from hmarl.rewards import LevelStep, RewardRule
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep

#: A discrete agent over c children with K actions each acts on K**c joint actions.
MAX_JOINT_ACTIONS = 65_536


def check_partition(children: list[list[int]], n_below: int, where: str = "level") -> None:
    """Fail unless ``children`` partitions the ``n_below`` units below."""
    owners: dict[int, list[int]] = {}
    for agent, group in enumerate(children):
        if not group:
            raise ValueError(f"{where}: agent {agent} has no children; every agent needs at least one")
        for unit in group:
            if not 0 <= unit < n_below:
                raise ValueError(f"{where}: agent {agent} lists unit {unit}, but the level below "
                                 f"has units 0..{n_below - 1}")
            owners.setdefault(unit, []).append(agent)
    shared = {u: a for u, a in owners.items() if len(a) > 1}
    orphans = sorted(set(range(n_below)) - set(owners))
    if shared or orphans:
        parts = [f"unit {u} has several parents (agents {a})" for u, a in sorted(shared.items())]
        parts += [f"units {orphans} have no parent"] if orphans else []
        raise ValueError(f"{where}: children must partition the {n_below} units below: "
                         + "; ".join(parts))


def command_features_dim(command: spaces.Space | None) -> int:
    """How many numbers a command adds to a child's observation (one-hot size or box length; 0 for none)."""
    if command is None:
        return 0
    if isinstance(command, spaces.Discrete):
        return int(command.n)
    return int(command.shape[0])


def agent_io(below: EnvSpec, n_agents: int, group: int, command: spaces.Space | None, joint: bool,
             position_dim: int = 0, presence: bool = False) -> AgentIO:
    """The observation and action spaces of ``n_agents`` agents with ``group`` child slots each."""
    child_dim = below.obs_dim + position_dim + int(presence)
    child_obs_dim = group * child_dim
    if below.discrete:
        k = below.action_dim
        if joint:
            if k ** group > MAX_JOINT_ACTIONS:
                raise ValueError(
                    f"a discrete agent over {group} children with {k} actions each has "
                    f"{k}**{group} = {k ** group} joint actions (limit {MAX_JOINT_ACTIONS}); "
                    f"use smaller groups, joint: false (one action head per child), or continuous commands")
            action_space = spaces.Discrete(k ** group)
        else:
            action_space = spaces.MultiDiscrete([k] * group)
    else:
        box = below.action_space
        action_space = spaces.Box(low=float(box.low.min()), high=float(box.high.max()),
                                  shape=(group * below.action_dim,))
    return AgentIO(n_agents=n_agents, obs_dim=child_obs_dim + command_features_dim(command),
                   child_obs_dim=child_obs_dim, action_space=action_space, group=group,
                   position_dim=position_dim, presence=presence)


def level_io(below: EnvSpec, children: list[list[int]] | Regrouping, command: spaces.Space | None,
             joint: bool, positions: bool = False) -> AgentIO:
    """The agents' io of a level with these ``children`` (lists, or a Regrouping) over ``below``."""
    dynamic = isinstance(children, Regrouping)
    n, group = (children.n_groups, children.capacity) if dynamic else (len(children), max(map(len, children)))
    position_dim = 0
    if positions or dynamic:
        needed_by = "regrouping children by position" if dynamic else "children's positions (positions: true)"
        position_dim = int(below.require("positions", needed_by))
    # an empty slot must be told apart from a child whose message is zero
    presence = dynamic or any(len(c) < group for c in children)
    return agent_io(below, n, group, command, joint, position_dim, presence)


class Level:
    """A level of ``N`` agents over the units of ``below``; itself a ``MultiAgentEnv``.

    Args:
        below: the real env or another ``Level``.
        learner: the agents' policy (built for ``agent_io(...)``).
        children: ``children[i]`` lists the units below that agent ``i`` controls, or a
            :class:`~hmarl.graphs.Regrouping` that reassigns them per copy by position
            (after every step of this level, or at each episode's start).
        comm: the communication function phi (messages sent up).
        reward_rule: what the agents learn from.
        command: the action space each agent accepts from the level above (``None`` at the top).
        steps_per_command: how many steps of this level one command from above lasts.
        joint: discrete agents act on the joint action of their children (TAG's K**c)
            rather than one head per child.
        relative_goals: the commands are goals relative to the env's ``goal_indices``
            (HRL-CG): between two commands each goal follows ``h(s, g, s') = s + g - s'``.
        positions: each child's position is appended to its message (for graphs built
            from positions); implied by a Regrouping.
        decide_every: the agents of a copy take a new action only every ``decide_every`` of
            their steps, at an episode's start, and at once when the copy's active subtasks
            change (env capability ``subtasks``); in between they hold their last action
            (ALMA's allocator). Every step is stored, with a ``decision`` flag.

    Each child slot of an agent's observation holds ``[message, position?, present?]``
    (``present`` when agents may have fewer children than slots: 1 for a child, 0 for an empty slot).
    An agent's position is the mean of its children's.

    Shapes:
        ``step(command)``: command ``[B, N]`` (Discrete) or ``[B, N, d]`` (Box), ``None`` at the top;
        returns obs ``[B, N, comm.out_dim]`` and reward ``[B, N]``.
    """

    def __init__(self, below: MultiAgentEnv, learner: Learner, children: list[list[int]] | Regrouping,
                 comm: Communication, reward_rule: RewardRule,
                 command: spaces.Discrete | spaces.Box | None = None,
                 steps_per_command: int = 1, joint: bool = True, relative_goals: bool = False,
                 positions: bool = False, decide_every: int | None = None):
        below_spec = below.spec
        n_below, device = below_spec.n_agents, below_spec.device
        self.dynamic = isinstance(children, Regrouping)
        if not self.dynamic:
            check_partition(children, n_below)
        self.below = below
        self.children = children
        self.learner = learner
        self.comm = comm
        self.reward_rule = reward_rule
        self.command = command
        self.steps_per_command = steps_per_command
        self.joint = joint
        self.positions = positions or self.dynamic
        self.training = True
        self.buffer = RolloutBuffer(0)
        self.io = level_io(below_spec, children, command, joint, positions)
        n, self.group = self.io.n_agents, self.io.group
        self._rows = torch.arange(below_spec.num_envs, device=device).unsqueeze(1)
        if self.dynamic:
            self._assignment = self._slot = self._index = self._unit_slot = None
            self._blocks = False
        else:
            flat = [u for c in children for u in c]
            # Consecutive equal blocks are plain reshapes; anything else goes through an index
            # whose padding slot (n_below) reads zeros and writes nowhere.
            self._blocks = flat == list(range(n_below)) and all(len(c) == self.group for c in children)
            padded = [c + [n_below] * (self.group - len(c)) for c in children]
            self._index = torch.tensor(padded, device=device).reshape(1, -1).expand(below_spec.num_envs, -1)
            parent, slot = self.parents()
            self._unit_slot = (parent * self.group + slot).expand(below_spec.num_envs, -1)
        self._below_discrete = below_spec.discrete
        self._k = below_spec.action_dim
        self._digits = self._k ** torch.arange(self.group - 1, -1, -1, device=device)
        capabilities = {k: below_spec.capabilities[k] for k in ("positions", "subtasks") if k in below_spec.capabilities}
        self.spec = EnvSpec(n_agents=n, obs_dim=comm.out_dim, action_space=command,
                            max_steps=math.ceil(below_spec.max_steps / steps_per_command),
                            num_envs=below_spec.num_envs, device=device, capabilities=capabilities,
                            name=f"level over {below_spec.name}")
        self._below_ts: TimeStep | None = None
        self._observed_of: tuple[TimeStep, Tensor] | None = None
        self._command_features: Tensor | None = None
        self.decide_every = decide_every
        if decide_every is not None:
            if decide_every < 1:
                raise ValueError(f"decide_every must be >= 1, got {decide_every}")
            below_spec.require("subtasks", "re-deciding when subtasks change (decide_every)")
        self._held: Tensor | None = None
        self.relative_goals = relative_goals
        self._goal_index = self._goal_dims(below_spec, command) if relative_goals else None

    def _goal_dims(self, below: EnvSpec, command) -> Tensor:
        index = below.require("goal_indices", "relative goals")
        if self.group != 1:
            raise ValueError("relative goals need one child per agent (group_size 1)")
        if not isinstance(command, spaces.Box) or command.shape[0] != len(index):
            raise ValueError(f"relative goals live on the {len(index)} goal dims {list(index)} of "
                             f"{below.name}; the level above must send box({len(index)}, range) commands")
        return torch.as_tensor(index, device=below.device)

    def parents(self) -> tuple[Tensor, Tensor]:
        """For each unit below: the agent controlling it, and its place among that agent's children.

        ``[N_below]`` each for fixed children; ``[B, N_below]`` (the current grouping) for a Regrouping.
        """
        if self.dynamic:
            return self._assignment, self._slot
        parent = torch.empty(self.below.spec.n_agents, dtype=torch.long)
        slot = torch.empty_like(parent)
        for agent, group in enumerate(self.children):
            for place, unit in enumerate(group):
                parent[unit], slot[unit] = agent, place
        device = self._rows.device
        return parent.to(device), slot.to(device)

    def _regroup(self, ts: TimeStep, fresh: Tensor) -> None:
        """Reassign children from the units' positions (dynamic levels only)."""
        assignment = self.children.assign(ts.info["positions"], fresh, self._assignment)
        self._assignment, self._slot = assignment, self.children.slots(assignment)
        self._unit_slot = assignment * self.group + self._slot
        n_below = self.below.spec.n_agents
        index = torch.full((self.spec.num_envs, self.spec.n_agents * self.group), n_below,
                           dtype=torch.long, device=assignment.device)
        units = torch.arange(n_below, device=assignment.device).expand_as(assignment)
        self._index = index.scatter(1, self._unit_slot, units)

    # -- moving data between the level below and this level's agents -------------------
    def children_view(self, x: Tensor) -> Tensor:
        """``[B, N_below, ...]`` -> ``[B, N, group, ...]`` (missing children read zeros)."""
        b = x.shape[0]
        if self._blocks:
            return x.reshape(b, self.spec.n_agents, self.group, *x.shape[2:])
        padded = torch.cat([x, x.new_zeros(b, 1, *x.shape[2:])], dim=1)
        return padded[self._rows, self._index].reshape(b, self.spec.n_agents, self.group, *x.shape[2:])

    def _present(self) -> Tensor:
        """``[B, N, group]`` bool: which child slots hold a unit."""
        return (self._index < self.below.spec.n_agents).view(-1, self.spec.n_agents, self.group)

    def _child_obs(self, below_obs: Tensor, positions: Tensor | None) -> Tensor:
        if self.positions:
            below_obs = torch.cat([below_obs, positions], dim=-1)
        view = self.children_view(below_obs)
        if self.io.presence:
            view = torch.cat([view, self._present().unsqueeze(-1).to(view.dtype)], dim=-1)
        return view.flatten(2)

    def _observed(self, ts: TimeStep) -> Tensor:
        """``_child_obs`` of what the level below returned, computed once per TimeStep: the end of
        one step (the messages sent up) and the start of the next (what the agents act on) read it."""
        if self._observed_of is not None and self._observed_of[0] is ts:
            return self._observed_of[1]
        child_obs = self._child_obs(ts.obs, ts.info.get("positions"))
        self._observed_of = (ts, child_obs)
        return child_obs

    def _agent_positions(self, positions: Tensor) -> Tensor:
        """Each agent's position: the mean of its children's ``[B, N, D]``."""
        if self._blocks and self.group == 1 and positions.is_floating_point():  # its only child's, as it is
            return positions
        total = self.children_view(positions).sum(2)
        if self._blocks:
            return total / self.group
        return total / self._present().sum(-1, keepdim=True).clamp(min=1)

    def _upward_info(self, ts: TimeStep) -> dict[str, Tensor]:
        """What the level above may need from below: agents' positions, which agents are alive
        (an agent is while any of its children is), the env's active subtasks."""
        info = {"active_subtasks": ts.info["active_subtasks"]} if "active_subtasks" in ts.info else {}
        if "positions" in ts.info:
            info["positions"] = self._agent_positions(ts.info["positions"])
        if "alive" in ts.info:
            info["alive"] = self._agents_alive(ts)
        return info

    def _children_alive(self, ts: TimeStep) -> Tensor:
        """``[B, N, group]`` bool: child slots holding a unit that is alive (units are, unless the
        level below reports ``alive``)."""
        if "alive" not in ts.info:
            return self._present() if not self._blocks else ts.terminated.new_ones(
                self.spec.num_envs, self.spec.n_agents, self.group)
        return self.children_view(ts.info["alive"])  # empty slots read False

    def _agents_alive(self, ts: TimeStep) -> Tensor:
        """``[B, N]`` bool: agents with a living child."""
        return self._children_alive(ts).any(-1)

    def _act(self, obs: Tensor, ts: TimeStep) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The agents' action; with ``decide_every``, copies that need no decision hold their last one."""
        if self.decide_every is None:
            return *self.learner.act(obs, deterministic=not self.training), {}
        active = ts.info["active_subtasks"]
        decision = (self._age % self.decide_every == 0) | self._fresh | (active != self._active).any(-1)
        self._age = torch.where(decision, 1, self._age + 1)
        self._active = active
        if self._held is None:
            self._held, self._held_log_prob = self.learner.act(obs, deterministic=not self.training)
            return self._held, self._held_log_prob, {"decision": decision}
        # Only the deciding copies act: acting (e.g. scoring many proposed allocations) is the
        # expensive part, and most steps few copies decide. One host read per step finds them.
        deciding = decision.nonzero().squeeze(-1)
        if deciding.numel():
            action, log_prob = self.learner.act(obs[deciding], deterministic=not self.training)
            self._held, self._held_log_prob = self._held.clone(), self._held_log_prob.clone()
            self._held[deciding], self._held_log_prob[deciding] = action, log_prob
        return self._held, self._held_log_prob, {"decision": decision}

    def _with_command(self, child_obs: Tensor) -> Tensor:
        if self._command_features is None:
            return child_obs
        return torch.cat([child_obs, self._command_features], dim=-1)

    def _encode(self, command: Tensor | None) -> Tensor | None:
        """A command as the features appended to the agents' observations (one-hot or clamped raw)."""
        if self.command is None:
            return None
        if isinstance(self.command, spaces.Discrete):
            return torch.nn.functional.one_hot(command, int(self.command.n)).float()
        return command.clamp(float(self.command.low.min()), float(self.command.high.max()))

    def _set_command(self, command: Tensor | None) -> None:
        self._command_features = self._encode(command)

    def _to_below(self, action: Tensor) -> Tensor:
        """Split each agent's action into its children's actions: ``[B, N_below, ...]``."""
        b, n = action.shape[:2]
        if self._below_discrete:
            per_child = (action.unsqueeze(-1) // self._digits) % self._k if self.joint else action
        else:
            per_child = action.reshape(b, n, self.group, -1)
        per_child = per_child.reshape(b, n * self.group, *per_child.shape[3:])
        if self._blocks:
            return per_child
        return per_child[self._rows, self._unit_slot]

    # -- the env interface -------------------------------------------------------------
    @torch.no_grad()
    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset the levels below and return this level's first messages (reward 0)."""
        self._below_ts = ts = self.below.reset(seed)
        self.buffer.clear()
        if self.dynamic:
            self._assignment = None
            self._regroup(ts, fresh=torch.ones_like(ts.terminated))
        if self.decide_every is not None:
            self._held, self._fresh = None, torch.ones_like(ts.terminated)
            self._age = torch.zeros(ts.terminated.shape, dtype=torch.long, device=ts.terminated.device)
            self._active = ts.info["active_subtasks"]
        b = self.spec.num_envs
        return TimeStep(obs=self.comm(self._observed(ts)),
                        reward=ts.reward.new_zeros(b, self.spec.n_agents),
                        terminated=ts.terminated, truncated=ts.truncated, info=self._upward_info(ts))

    @torch.no_grad()
    def step(self, command: Tensor | None = None) -> TimeStep:
        """Hold ``command`` for ``steps_per_command`` steps of this level's agents; return their messages,
        the sum of their children's rewards and whether each copy's episode ended (see the class docstring)."""
        self._set_command(command)
        ts = self._below_ts
        b, n = self.spec.num_envs, self.spec.n_agents
        reward_up = ts.reward.new_zeros(b, n)
        alive = torch.ones(b, dtype=torch.bool, device=reward_up.device)
        terminated = torch.zeros_like(alive)
        truncated = torch.zeros_like(alive)
        final_message = final_positions = None
        for _ in range(self.steps_per_command):
            child_obs = self._observed(ts)
            obs = self._with_command(child_obs)
            # A copy whose episode ended earlier in this period acts on a command decided in
            # that episode: its steps until the level above decides again count in no loss.
            # (The level above acts on a fixed stride for all copies, so it cannot decide
            # afresh for one copy mid-period; masking keeps its transitions whole.)
            children_alive = self._children_alive(ts)
            mask = alive.unsqueeze(-1) & children_alive.any(-1)
            child_mask = mask.unsqueeze(-1) & children_alive
            action, log_prob, extra = self._act(obs, ts)
            ts = self.below.step(self._to_below(action))
            self._observed_of = None  # (even if the level below handed back the same TimeStep, refilled)
            done = ts.done
            children_reward = self.children_view(ts.reward).sum(-1)
            ended_positions = ts.info.get("final_positions", ts.info.get("positions"))
            next_child_obs = self._child_obs(ts.final_obs, ended_positions)
            if not self.dynamic and ts.final_obs is ts.obs and ended_positions is ts.info.get("positions"):
                self._observed_of = (ts, next_child_obs)  # no copy reset: the next step acts on the same
            step = LevelStep(children_reward, child_obs, next_child_obs, self._command_features, ts.info)
            if self._goal_index is not None:
                self._command_features = goal_transition(child_obs, self._command_features, next_child_obs,
                                                         self._goal_index)
            if self.training:
                if self.dynamic:
                    extra.update(parent=self._assignment, slot=self._slot)
                self.buffer.add(obs=obs, action=action, log_prob=log_prob,
                                reward=self.reward_rule.step_reward(step),
                                terminated=ts.terminated, done=done,
                                final_obs=self._with_command(next_child_obs), mask=mask, child_mask=child_mask,
                                **extra)
            # A copy that finished inside the period starts its next episode under the
            # same command; what follows belongs to that episode, not to this transition.
            reward_up += children_reward * alive.unsqueeze(-1)
            message = self.comm(next_child_obs)
            final_message = message if final_message is None else torch.where(
                alive[:, None, None], message, final_message)
            if "positions" in ts.info:
                ended_at = self._agent_positions(ended_positions)
                final_positions = ended_at if final_positions is None else torch.where(
                    alive[:, None, None], ended_at, final_positions)
            terminated |= ts.terminated & alive
            truncated |= ts.truncated & ~ts.terminated & alive
            alive &= ~done
            if self.dynamic:
                self._regroup(ts, fresh=done)
            if self.decide_every is not None:
                self._fresh = done
        self._below_ts = ts
        info = {"final_obs": final_message, **self._upward_info(ts)}
        if final_positions is not None:
            info["final_positions"] = final_positions
        return TimeStep(obs=self.comm(self._observed(ts)), reward=reward_up,
                        terminated=terminated, truncated=truncated, info=info)

    # -- learning ------------------------------------------------------------------------
    def bootstrap_observation(self, next_command: Tensor | None = None) -> Tensor:
        """The observation after the last stored step, carrying ``next_command`` (the command the
        level above gives for the next step) when given, else the command held now."""
        child_obs = self._observed(self._below_ts)
        if next_command is None:
            return self._with_command(child_obs)
        return torch.cat([child_obs, self._encode(next_command)], dim=-1)

    def split_action(self, action: Tensor) -> Tensor:
        """The agents' action ``[B, N, ...]`` as the commands of the units below ``[B, N_below, ...]``."""
        return self._to_below(action)

    @torch.no_grad()
    def messages(self) -> Tensor:
        """The messages the agents send up from what they observe now ``[B, N, comm.out_dim]``."""
        return self.comm(self._observed(self._below_ts))

    def refresh_below(self, messages: Tensor) -> None:
        """Replace what this level sees of the level below by ``messages`` (recomputed after the
        level below's communication function learned)."""
        self._below_ts = dataclasses.replace(self._below_ts, obs=messages)

    @torch.no_grad()
    def rollout(self, next_command: Tensor | None = None, steps: int | None = None) -> Rollout:
        """This level's stored transitions (all of a full buffer, or the last ``steps``),
        bootstrapped from :meth:`bootstrap_observation`."""
        return self.buffer.rollout(self.bootstrap_observation(next_command), steps)
