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

What varies between families is four strategies (:mod:`hmarl.strategies`): the
``Grouping`` (who the children are), the ``CommandChannel`` (how a command reaches
the agents' observations), the ``ActionSplit`` (an agent's action into its
children's) and the ``Termination`` (when the agents act anew). The Level is the
step loop that calls them.

What the learners, reward rules and channels of any level read of the env below all levels
(their ``reads_env``: :class:`~hmarl.strategies.EnvRead`) travels up the same way: each Level
passes those env entries up unchanged in its ``info`` (``env/<key>``, summed over its step where
they are per-step quantities), and keeps :attr:`Level.env_assignment`, the env agents under each of
its agents, composed through the levels below. A reader gets them as an
:class:`~hmarl.strategies.EnvView` (``LevelStep.env``, a channel's ``carry``), and a learner that
reads the env agents' observations gets them appended to its agents' (``AgentIO.env_slots``).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from gymnasium import spaces

from hmarl.buffers import Rollout, RolloutBuffer
from hmarl.comm import Communication
from hmarl.learner import AgentIO, Learner
from hmarl.rewards import LevelStep, RewardRule
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep, facts_passed_up
from hmarl.strategies import (ActionSplit, Assignment, CommandChannel, EnvRead, EnvView, Every, Fixed, Grouping,
                              Holding, Termination, env_reads, split_for)


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


def level_io(below: EnvSpec, grouping: Grouping, channel: CommandChannel | None, split: ActionSplit,
             positions: bool = False) -> AgentIO:
    """What the agents of a level with these strategies over ``below`` observe and emit."""
    position_dim = 0
    if positions or "positions" in grouping.requires:
        needed_by = ("regrouping children by position" if "positions" in grouping.requires
                     else "children's positions (positions: true)")
        position_dim = int(below.require("positions", needed_by))
    # an empty slot must be told apart from a child whose message is zero
    presence = grouping.leaves_slots_empty
    child_obs_dim = grouping.group * (below.obs_dim + position_dim + int(presence))
    return AgentIO(n_agents=grouping.n_agents, obs_dim=child_obs_dim + (channel.dim if channel else 0),
                   child_obs_dim=child_obs_dim, action_space=split.space, group=grouping.group,
                   position_dim=position_dim, presence=presence)


class Level:
    """A level of ``N`` agents over the units of ``below``; itself a ``MultiAgentEnv``.

    Args:
        below: the real env or another ``Level``.
        learner: the agents' policy (built for :func:`level_io`).
        comm: the communication function phi (messages sent up).
        reward_rule: what the agents learn from.
        grouping: who each agent's children are (:class:`~hmarl.strategies.Fixed` lists, or
            :class:`~hmarl.algorithms.himpo.graphs.Regroup` by position); a list of lists means ``Fixed``.
        channel: how the command from the level above reaches the agents (``None`` at the top).
        split: an agent's action into its children's (default: ``Joint`` for discrete children).
        termination: when the agents act anew (default ``Every(1)``: every step). A holding
            termination stores every step with a ``decision`` flag.
        steps_per_command: how many steps of this level one command from above lasts (the
            stride of the level above's ``Every(k)``).
        positions: each child's position is appended to its message (for graphs built
            from positions); implied by a grouping that reads positions.
        passes_up: ``info`` keys of the level below handed on to the level above unchanged
            (what terminations higher up read, e.g. ``active_subtasks``).
        facts_up: facts of the level below (``EnvSpec.facts``) that this level declares as its own
            (what terminations higher up require, e.g. ``entities``); ``positions`` always is,
            since the level passes its agents' positions up. Nothing else is: the level's
            observation is its agents' messages, so the observation slices below do not apply.
        env_up: env entries that readers at the levels above read (their ``reads_env``): passed up
            in ``info`` as ``env/<key>`` at the env's resolution (see the module docstring).
        env_slots: env agents under each agent where the children's messages are not the env
            agents' observations (:attr:`AgentIO.env_slots`; 0 where they are).

    Each child slot of an agent's observation holds ``[message, position?, present?]``
    (``present`` when agents may have fewer children than slots: 1 for a child, 0 for an empty slot).
    An agent's position is the mean of its children's.

    Shapes:
        ``step(command)``: command ``[B, N]`` (Discrete) or ``[B, N, d]`` (Box), ``None`` at the top;
        returns obs ``[B, N, comm.out_dim]`` and reward ``[B, N]``.
    """

    def __init__(self, below: MultiAgentEnv, learner: Learner, comm: Communication, reward_rule: RewardRule, *,
                 grouping: Grouping | list[list[int]], channel: CommandChannel | None = None,
                 split: ActionSplit | None = None, termination: Termination | None = None,
                 steps_per_command: int = 1, positions: bool = False, passes_up: tuple[str, ...] = (),
                 facts_up: tuple[str, ...] = (), env_up: tuple[EnvRead, ...] = (), env_slots: int = 0):
        below_spec = below.spec
        if not isinstance(grouping, Grouping):
            check_partition(grouping, below_spec.n_agents)
            grouping = Fixed(grouping)
        self.below = below
        self.learner = learner
        self.comm = comm
        self.reward_rule = reward_rule
        self.grouping = grouping
        self.channel = channel
        self.split = split or split_for(below_spec, grouping.group, joint=True)
        self.termination = termination or Every(1)
        self.termination.bind(self)
        self.steps_per_command = steps_per_command
        self.positions = positions or "positions" in grouping.requires
        self.passes_up, self.facts_up = tuple(passes_up), tuple(facts_up)
        self.training = True
        self.buffer = RolloutBuffer(0)
        self.io = dataclasses.replace(level_io(below_spec, grouping, channel, self.split, positions),
                                      env_slots=env_slots)
        #: the env agents' observations follow each agent's own (the learner reads them; see AgentIO)
        self.env_block = bool(env_slots) and any(r.key == "obs" for r in env_reads(learner))
        #: what this level reads of the env itself (its reward rule, channel and learner)
        self.env_reads = env_reads(reward_rule, channel, learner if self.env_block else None)
        self.env_up: tuple[EnvRead, ...] = ()
        self.forward_env(env_up)
        self._env_cache: tuple | None = None
        self._who: tuple[Assignment, Tensor] | None = None
        self.spec = EnvSpec(n_agents=self.io.n_agents, obs_dim=comm.out_dim,
                            action_space=None if channel is None else channel.space,
                            max_steps=math.ceil(below_spec.max_steps / steps_per_command),
                            num_envs=below_spec.num_envs, device=below_spec.device,
                            name=f"level over {below_spec.name}", **facts_passed_up(below_spec, self.facts_up))
        #: the current assignment (a fixed grouping's from the start, one that varies from each reset)
        self.assignment: Assignment | None = (grouping.assignment(below_spec.num_envs, below_spec.device)
                                              if isinstance(grouping, Fixed) else None)
        self._below_ts: TimeStep | None = None
        self._observed_of: tuple[TimeStep, Tensor] | None = None
        self._command_features: Tensor | None = None
        self._holding: Holding | None = None
        #: a recurrent learner's state per copy (None otherwise): zeroed where an episode starts
        self._state: Tensor | None = None

    def forward_env(self, reads: tuple[EnvRead, ...]) -> None:
        """Pass these env entries up (what readers at the levels above read), besides reading this level's own."""
        self.env_up = env_reads(tuple(reads))
        self._extracts = env_reads(self.env_reads, self.env_up)

    @property
    def env_assignment(self) -> Assignment:
        """The env agents under each of this level's agents (``Assignment.compose`` of the assignments of
        this level and those below): ``parent``/``slot`` of every env agent, ``group`` slots per agent."""
        mine = self.assignment
        below = self.below.env_assignment if isinstance(self.below, Level) else None
        if self._env_cache is None or self._env_cache[0] is not mine or self._env_cache[1] is not below:
            self._env_cache = (mine, below, mine if below is None else mine.compose(below))
        return self._env_cache[2]

    def _env_entries(self, ts: TimeStep) -> dict[str, Tensor]:
        """The env entries this level reads or passes up, at the env's resolution, from what the level
        below returned: the env's own (``obs``, ``final_obs``, info keys) or what the Level below passed up."""
        if isinstance(self.below, Level):
            return {key[4:]: value for key, value in ts.info.items() if key.startswith("env/")}
        entries: dict[str, Tensor] = {}
        for read in self._extracts:
            if read.key == "obs":
                entries["obs"], entries["final_obs"] = ts.obs, ts.final_obs
                continue
            if read.key not in ts.info:  # e.g. a per-step quantity at a reset
                continue
            entries[read.key] = ts.info[read.key]
            if f"final_{read.key}" in ts.info:
                entries[f"final_{read.key}"] = ts.info[f"final_{read.key}"]
        return entries

    def _env_view_block(self, env_obs: Tensor, assignment: Assignment) -> Tensor:
        """``[B, N, env_slots * (obs_dim + U)]``: per slot, the env agent's observation and a one-hot of which it is."""
        if self._who is None or self._who[0] is not assignment:
            units = assignment.n_units
            who = torch.nn.functional.one_hot(assignment.index, units + 1)[..., :units]
            self._who = (assignment, who.view(*assignment.index.shape[:1], assignment.n_agents, assignment.group,
                                              units).to(env_obs.dtype))
        return torch.cat([assignment.view(env_obs), self._who[1]], dim=-1).flatten(2)

    @staticmethod
    def _pass_up(up: dict[str, Tensor], end: dict[str, Tensor], reads: tuple[EnvRead, ...],
                 alive: Tensor | None) -> None:
        """Fold one step's env entries ``end`` into those passed up over the period (``alive``: the copies
        whose episode lasts; None at the first step): summed ones add up, the others keep the last value
        and the one that ended each copy's episode (``final_obs``, ``final_<key>``)."""
        def where(keep, x, y):
            return torch.where(keep.view(-1, *[1] * (x.dim() - 1)), x, y)
        for read in reads:
            key = read.key
            if key not in end:
                continue
            if read.summed:
                up[key] = (end[key] if alive is None or key not in up
                           else up[key] + where(alive, end[key], torch.zeros_like(end[key])))
                continue
            up[key] = end[key]
            final = "final_obs" if key == "obs" else f"final_{key}"
            if final in end:
                up[final] = end[final] if alive is None else where(alive, end[final], up[final])

    @property
    def command(self) -> spaces.Discrete | spaces.Box | None:
        """The action space each agent accepts from the level above (``None`` at the top)."""
        return None if self.channel is None else self.channel.space

    @property
    def children(self) -> list[list[int]] | None:
        """``children[i]``: the units agent ``i`` controls, for a fixed grouping (None if it varies)."""
        return self.grouping.children if isinstance(self.grouping, Fixed) else None

    def parents(self) -> tuple[Tensor, Tensor]:
        """For each unit below: the agent controlling it, and its place among that agent's children.

        ``[N_below]`` each for fixed children; ``[B, N_below]`` (the current grouping) for one that varies.
        """
        if self.assignment is None:
            raise RuntimeError("this level's children are assigned at reset: reset it first")
        return self.assignment.parent, self.assignment.slot

    # -- moving data between the level below and this level's agents -------------------
    def children_view(self, x: Tensor) -> Tensor:
        """``[B, N_below, ...]`` -> ``[B, N, group, ...]`` (missing children read zeros)."""
        return self.assignment.view(x)

    def _child_obs(self, below_obs: Tensor, positions: Tensor | None) -> Tensor:
        if self.positions:
            below_obs = torch.cat([below_obs, positions], dim=-1)
        view = self.assignment.view(below_obs)
        if self.io.presence:
            view = torch.cat([view, self.assignment.present().unsqueeze(-1).to(view.dtype)], dim=-1)
        return view.flatten(2)

    def _observed(self, ts: TimeStep) -> Tensor:
        """``_child_obs`` of what the level below returned, computed once per TimeStep: the end of
        one step (the messages sent up) and the start of the next (what the agents act on) read it."""
        if self._observed_of is not None and self._observed_of[0] is ts:
            return self._observed_of[1]
        child_obs = self._child_obs(ts.obs, ts.info.get("positions"))
        self._observed_of = (ts, child_obs)
        return child_obs

    def _upward_info(self, ts: TimeStep, env_up: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """What the level above may need from below: agents' positions, which agents are alive
        (an agent is while any of its children is), the entries named in ``passes_up`` and the
        env entries of ``env_up`` (``env/<key>``)."""
        info = {key: ts.info[key] for key in self.passes_up if key in ts.info}
        if env_up:
            info.update({f"env/{key}": value for key, value in env_up.items()})
        if "positions" in ts.info:
            info["positions"] = self.assignment.agent_positions(ts.info["positions"])
        if "alive" in ts.info:  # an agent is alive while any of its children is
            info["alive"] = self.assignment.children_alive(ts.info["alive"]).any(-1)
        return info

    def _act(self, obs: Tensor, ts: TimeStep) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The agents' action; under a holding termination, copies that need no decision hold their
        last one. A recurrent learner's state advances (for the copies that act) and the one this
        step started from is stored with it."""
        state = self._state
        if self._holding is None:
            if state is None:
                return *self.learner.act(obs, deterministic=not self.training), {}
            action, log_prob, self._state = self.learner.act_recurrent(obs, state, not self.training)
            return action, log_prob, {"state": state}
        action, log_prob, decision, self._state = self._holding.act(self.learner, obs, ts, not self.training, state)
        return action, log_prob, {"decision": decision} if state is None else {"decision": decision, "state": state}

    def policy_action(self, obs: Tensor) -> Tensor:
        """The action the agents would take on ``obs`` now (a recurrent learner from its current
        state, which does not advance): the command a rollout's bootstrap carries."""
        if self._state is None:
            return self.learner.act(obs, deterministic=not self.training)[0]
        return self.learner.act_recurrent(obs, self._state, not self.training)[0]

    def _with_command(self, child_obs: Tensor, block: Tensor | None = None) -> Tensor:
        """The agents' observation: their children's part, the command they hold, and the env block."""
        parts = [child_obs, *([] if self._command_features is None else [self._command_features]),
                 *([] if block is None else [block])]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _encode(self, command: Tensor | None) -> Tensor | None:
        """A command as the features appended to the agents' observations."""
        return None if self.channel is None else self.channel.encode(command)

    def _to_below(self, action: Tensor) -> Tensor:
        """Split each agent's action into its children's actions: ``[B, N_below, ...]``."""
        return self.assignment.to_units(self.split.split(action))

    # -- the env interface -------------------------------------------------------------
    @torch.no_grad()
    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset the levels below and return this level's first messages (reward 0)."""
        self._below_ts = ts = self.below.reset(seed)
        self.buffer.clear()
        fresh = torch.ones_like(ts.terminated)
        self.assignment = self.grouping.assign(ts, fresh, None)
        self._holding = Holding(self.termination, ts) if self.termination.holds else None
        self._state = self.learner.initial_state(ts.reward.shape[0], ts.reward.device) if self.learner.recurrent \
            else None
        b = self.spec.num_envs
        up: dict[str, Tensor] = {}
        if self.env_up:
            self._pass_up(up, self._env_entries(ts), self.env_up, None)
        return TimeStep(obs=self.comm(self._observed(ts)),
                        reward=ts.reward.new_zeros(b, self.spec.n_agents),
                        terminated=ts.terminated, truncated=ts.truncated, info=self._upward_info(ts, up))

    @torch.no_grad()
    def step(self, command: Tensor | None = None) -> TimeStep:
        """Hold ``command`` for ``steps_per_command`` steps of this level's agents; return their messages,
        the sum of their children's rewards and whether each copy's episode ended (see the class docstring)."""
        if self._below_ts is None:
            raise RuntimeError("step() before reset(): reset the level (or the Hierarchy over it) first")
        self._command_features = self._encode(command)
        ts = self._below_ts
        b, n = self.spec.num_envs, self.spec.n_agents
        reward_up = ts.reward.new_zeros(b, n)
        alive = torch.ones(b, dtype=torch.bool, device=reward_up.device)
        terminated = torch.zeros_like(alive)
        truncated = torch.zeros_like(alive)
        final_message = final_positions = None
        varies = self.grouping.varies
        up: dict[str, Tensor] = {}
        reads_env = bool(self._extracts)
        for step_index in range(self.steps_per_command):
            child_obs = self._observed(ts)
            if reads_env:  # the env agents under each agent as the step begins, and what it read of the env
                env_assignment, start = self.env_assignment, self._env_entries(ts)
            block = self._env_view_block(start["obs"], env_assignment) if self.env_block else None
            obs = self._with_command(child_obs, block)
            # A copy whose episode ended earlier in this period acts on a command decided in
            # that episode: its steps until the level above decides again count in no loss.
            # (The level above acts on a fixed stride for all copies, so it cannot decide
            # afresh for one copy mid-period; masking keeps its transitions whole.)
            children_alive = self.assignment.children_alive(ts.info.get("alive"))
            mask = alive.unsqueeze(-1) & children_alive.any(-1)
            child_mask = mask.unsqueeze(-1) & children_alive
            action, log_prob, extra = self._act(obs, ts)
            ts = self.below.step(self._to_below(action))
            self._observed_of = None  # (even if the level below handed back the same TimeStep, refilled)
            done = ts.done
            if self._state is not None:  # a copy whose episode ended starts the next from zeros
                self._state = torch.where(done.view(-1, *([1] * (self._state.dim() - 1))), 0.0, self._state)
            children_reward = self.assignment.view(ts.reward).sum(-1)
            ended_positions = ts.info.get("final_positions", ts.info.get("positions"))
            next_child_obs = self._child_obs(ts.final_obs, ended_positions)
            if not varies and ts.final_obs is ts.obs and ended_positions is ts.info.get("positions"):
                self._observed_of = (ts, next_child_obs)  # no copy reset: the next step acts on the same
            env = None
            if reads_env:
                end = self._env_entries(ts)
                env = EnvView(start, end, env_assignment) if self.env_reads else None
                if self.env_up:
                    self._pass_up(up, end, self.env_up, alive if step_index else None)
            step = LevelStep(children_reward, child_obs, next_child_obs, self._command_features, ts.info, env)
            if self.channel is not None and self.channel.carries:
                self._command_features = self.channel.carry(self._command_features, child_obs, next_child_obs,
                                                            env if self.channel.reads_env else None)
            if self.training:
                if varies:
                    extra.update(parent=self.assignment.parent, slot=self.assignment.slot)
                if self.buffer.capacity == 0:
                    raise RuntimeError("this level stores its transitions in a buffer that Hierarchy.rollout(steps) "
                                       "sizes; step the Hierarchy (or call level.eval() to step without storing)")
                self.buffer.add(obs=obs, action=action, log_prob=log_prob,
                                reward=self.reward_rule.step_reward(step),
                                terminated=ts.terminated, done=done,
                                final_obs=self._with_command(next_child_obs, None if block is None else
                                                             self._env_view_block(end["final_obs"], env_assignment)),
                                mask=mask, child_mask=child_mask,
                                **extra)
            # A copy that finished inside the period starts its next episode under the
            # same command; what follows belongs to that episode, not to this transition.
            reward_up += children_reward * alive.unsqueeze(-1)
            message = self.comm(next_child_obs)
            final_message = message if final_message is None else torch.where(
                alive[:, None, None], message, final_message)
            if "positions" in ts.info:
                ended_at = self.assignment.agent_positions(ended_positions)
                final_positions = ended_at if final_positions is None else torch.where(
                    alive[:, None, None], ended_at, final_positions)
            terminated |= ts.terminated & alive
            truncated |= ts.truncated & ~ts.terminated & alive
            alive &= ~done
            if varies:
                self.assignment = self.grouping.assign(ts, done, self.assignment)
            if self._holding is not None:
                self._holding.fresh = done
        self._below_ts = ts
        info = {"final_obs": final_message, **self._upward_info(ts, up)}
        if final_positions is not None:
            info["final_positions"] = final_positions
        return TimeStep(obs=self.comm(self._observed(ts)), reward=reward_up,
                        terminated=terminated, truncated=truncated, info=info)

    def close(self) -> None:
        """Close the env below (and through it the real env)."""
        self.below.close()

    def render(self):
        """The real env's frame (``uint8 [H, W, 3]``, copy 0): a level draws nothing of its own."""
        return self.below.render()

    def eval(self) -> "Level":
        """Step without storing transitions (and act deterministically), e.g. to watch a level by hand."""
        self.training = False
        return self

    # -- learning ------------------------------------------------------------------------
    def bootstrap_observation(self, next_command: Tensor | None = None) -> Tensor:
        """The observation after the last stored step, carrying ``next_command`` (the command the
        level above gives for the next step) when given, else the command held now."""
        child_obs = self._observed(self._below_ts)
        block = (self._env_view_block(self._env_entries(self._below_ts)["obs"], self.env_assignment)
                 if self.env_block else None)
        if next_command is None:
            return self._with_command(child_obs, block)
        return torch.cat([child_obs, self._encode(next_command), *([] if block is None else [block])], dim=-1)

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
