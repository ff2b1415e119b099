"""The four strategies a :class:`~hmarl.level.Level` calls (DESIGN v2), and nothing else varies per family.

=================  =============================================  ==========================
strategy           what it decides                                 kinds
=================  =============================================  ==========================
``Grouping``       who each agent's children are                   ``Fixed`` (HiMPo: ``Regroup``)
``CommandChannel`` how a command from above reaches an agent       ``OneHot``, ``Raw``
                                                                   (HRL-CG: ``RelativeGoal``)
``ActionSplit``    an agent's action -> its children's actions     ``Joint``, ``PerChild``
``Termination``    when the agents take a new action               ``Every(k)`` (ALMA:
                                                                   ``OnSubtaskChange(k)``)
=================  =============================================  ==========================

A strategy holds structure, never the state of one rollout: the same objects serve a
training hierarchy and the evaluation copy :meth:`~hmarl.hierarchy.Hierarchy.attach` builds
over other env copies. Each declares the env facts it ``requires`` (checked at build time, one
line naming what is missing) and, for terminations, the ``info`` keys it ``reads`` from below
(the levels in between pass them up).

The fast paths of the loop are properties of the strategies: ``Fixed`` children in
consecutive equal blocks are reshapes (``Assignment.blocks``); ``Every(k)`` is a stride (the
level below runs ``k`` steps per command, so nothing is held); a holding termination acts only
the copies that decide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces

from hmarl.registry import CHANNELS, GROUPINGS, TERMINATIONS  # noqa: F401  (re-exported with the strategies)
from hmarl.spec import EnvSpec, Tensor, TimeStep

#: A discrete agent over c children with K actions each acts on K**c joint actions.
MAX_JOINT_ACTIONS = 65_536


# -- Grouping ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assignment:
    """Who controls each unit below in every copy, in the forms the Level's data moves read.

    Shapes (``B`` copies, ``N`` agents with ``G`` child slots each, ``U`` units below):
        parent, slot: ``[U]`` (the same in every copy) or ``[B, U]``: each unit's agent and its
        place among that agent's children.
        index: ``[B, N * G]``: the unit in each child slot (``U`` for an empty slot).
        unit_slot: ``[B, U]``: each unit's child slot, ``parent * G + slot``.
    """

    parent: Tensor
    slot: Tensor
    index: Tensor
    unit_slot: Tensor
    n_agents: int
    group: int
    blocks: bool
    """The children are consecutive equal blocks of the units: every move is a reshape."""
    rows: Tensor
    """``[B, 1]``: each copy's index, for the gathers (made once, not per move)."""

    @property
    def n_units(self) -> int:
        """Units of the level below."""
        return self.unit_slot.shape[1]

    def view(self, x: Tensor) -> Tensor:
        """``[B, U, ...]`` -> ``[B, N, G, ...]`` (empty slots read zeros)."""
        b = x.shape[0]
        if self.blocks:
            return x.reshape(b, self.n_agents, self.group, *x.shape[2:])
        padded = torch.cat([x, x.new_zeros(b, 1, *x.shape[2:])], dim=1)
        return padded[self.rows, self.index].reshape(b, self.n_agents, self.group, *x.shape[2:])

    def present(self) -> Tensor:
        """``[B, N, G]`` bool: which child slots hold a unit."""
        return (self.index < self.n_units).view(-1, self.n_agents, self.group)

    def agent_positions(self, positions: Tensor) -> Tensor:
        """Each agent's position, the mean of its children's: ``[B, U, D]`` -> ``[B, N, D]``."""
        if self.blocks and self.group == 1 and positions.is_floating_point():  # its only child's, as it is
            return positions
        total = self.view(positions).sum(2)
        if self.blocks:
            return total / self.group
        return total / self.present().sum(-1, keepdim=True).clamp(min=1)

    def children_alive(self, alive: Tensor | None) -> Tensor:
        """``[B, N, G]`` bool: the child slots holding a living unit; ``alive`` ``[B, U]`` (None: all are)."""
        if alive is None:
            if self.blocks:
                return torch.ones(self.index.shape[0], self.n_agents, self.group, dtype=torch.bool,
                                  device=self.index.device)
            return self.present()
        return self.view(alive)  # empty slots read False

    def to_units(self, per_slot: Tensor) -> Tensor:
        """``[B, N * G, ...]`` (one entry per child slot) -> ``[B, U, ...]`` (each unit's)."""
        if self.blocks:
            return per_slot
        return per_slot[self.rows, self.unit_slot]

    def spread(self, per_agent: Tensor) -> Tensor:
        """``[B, N, ...]`` (one entry per agent) -> ``[B, U, ...]``: each unit its agent's entry."""
        if self.blocks:
            return per_agent.repeat_interleave(self.group, dim=1) if self.group > 1 else per_agent
        return per_agent[self.rows, self.parent.expand(per_agent.shape[0], -1)]

    def compose(self, below: "Assignment") -> "Assignment":
        """The assignment of the units below ``below`` to this level's agents, given ``below``:
        those units -> this level's units (its children). A unit's slot is its place among all the
        units under its agent: ``slot * below.group + below's slot`` (``group * below.group`` slots).

        Consecutive equal blocks of consecutive equal blocks are consecutive equal blocks: reshapes still."""
        if self.parent.dim() == 1 and below.parent.dim() == 1:
            parent = self.parent[below.parent]
            slot = self.slot[below.parent] * below.group + below.slot
        else:
            b = self.index.shape[0]
            owner = below.parent.expand(b, -1)
            parent = self.parent.expand(b, -1).gather(1, owner)
            slot = self.slot.expand(b, -1).gather(1, owner) * below.group + below.slot.expand(b, -1)
        return Assignment.of(parent, slot, self.n_agents, self.group * below.group, self.index.shape[0],
                             self.blocks and below.blocks)

    @classmethod
    def of(cls, parent: Tensor, slot: Tensor, n_agents: int, group: int, num_envs: int,
           blocks: bool = False) -> "Assignment":
        """The assignment with these ``parent``/``slot`` (``[U]`` or ``[B, U]``)."""
        n_units = parent.shape[-1]
        unit_slot = (parent * group + slot).expand(num_envs, n_units)
        units = torch.arange(n_units, device=parent.device).expand(num_envs, n_units)
        index = torch.full((num_envs, n_agents * group), n_units, dtype=torch.long, device=parent.device)
        rows = torch.arange(num_envs, device=parent.device).unsqueeze(1)
        return cls(parent, slot, index.scatter(1, unit_slot, units), unit_slot, n_agents, group, blocks, rows)


# -- What is read of the env below all levels -------------------------------------------------
@dataclass(frozen=True)
class EnvRead:
    """An entry of the env below all levels that a learner, reward rule or channel at any level reads
    (its ``reads_env``): every Level between the env and the reader passes it up unchanged, at the env's
    resolution (one row per env agent, or per copy), in its ``info`` as ``env/<key>``.

    ``key``: ``"obs"`` (the env agents' observations, with ``final_obs``, the ones that ended an
    episode) or an ``info`` key of the env (with ``final_<key>`` where the env reports one).
    ``summed``: a per-step quantity (a reward): a level whose step lasts several env steps passes up
    its sum over them (while the copy's episode lasts); else the value after its last step.
    """

    key: str
    summed: bool = False


@dataclass(frozen=True)
class EnvView:
    """What a level's agents read of the env over one of their steps (``LevelStep.env``).

    ``start``: the env entries the step began from (``obs`` ``[B, U, obs_dim]``, ...); ``end``: the
    ones it ended with (``obs`` after any reset, ``final_obs`` before it, summed entries over the
    step); ``assignment``: the env agents (``U``) under each of the level's agents (``N``), composed
    through the levels between (:meth:`Assignment.compose`; directly above the env, the level's own).
    A level whose grouping varies reads it as it was when the step began.
    """

    start: dict[str, Tensor]
    end: dict[str, Tensor]
    assignment: Assignment

    def mean(self, per_env_agent: Tensor) -> Tensor:
        """``[B, U, D]`` -> ``[B, N, D]``: the mean over the env agents under each agent (an env agent's
        own value, as it is, directly above the env with one each)."""
        return self.assignment.agent_positions(per_env_agent)

    def per_env_agent(self, per_agent: Tensor) -> Tensor:
        """``[B, N, ...]`` -> ``[B, U, ...]``: each env agent the entry of the agent it is under."""
        return self.assignment.spread(per_agent)


def env_reads(*sources: Any) -> tuple[EnvRead, ...]:
    """The env entries ``sources`` read, each key once, in order: a source is a learner, rule or channel
    (its ``reads_env``; None: nothing) or a sequence of :class:`EnvRead`."""
    reads: dict[str, EnvRead] = {}
    for source in sources:
        for read in (source if isinstance(source, (tuple, list)) else getattr(source, "reads_env", ())):
            if reads.setdefault(read.key, read) != read:
                raise ValueError(f"env entry {read.key!r} is read both summed and not: {reads[read.key]}, {read}")
    return tuple(reads.values())


class Grouping:
    """Who each of a level's agents controls among the units below.

    ``assign(ts, fresh, previous)`` is called at every reset (``previous`` None) and after every
    step of the level (``fresh`` [B] bool: the copies whose episode just started).
    """

    requires: tuple[str, ...] = ()
    """Env facts the grouping reads (``info`` entries of the level below)."""
    varies = False
    """The assignment may change between steps (each step's is stored with the transitions)."""

    n_agents: int
    group: int
    """Child slots per agent."""

    @property
    def leaves_slots_empty(self) -> bool:
        """Some agent may have fewer children than slots (its observation flags which are filled)."""
        raise NotImplementedError

    def assign(self, ts: TimeStep, fresh: Tensor, previous: Assignment | None) -> Assignment:
        """The assignment after ``ts``."""
        raise NotImplementedError


class Fixed(Grouping):
    """A fixed partition: ``children[i]`` are the units agent ``i`` controls, in slot order."""

    def __init__(self, children: list[list[int]]):
        self.children = [list(c) for c in children]
        self.n_agents = len(children)
        self.group = max(map(len, children))

    @property
    def leaves_slots_empty(self) -> bool:
        return any(len(c) < self.group for c in self.children)

    def parents(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``[U]`` each: every unit's agent and its place among that agent's children."""
        n_units = sum(map(len, self.children))
        parent, slot = torch.empty(n_units, dtype=torch.long), torch.empty(n_units, dtype=torch.long)
        for agent, units in enumerate(self.children):
            for place, unit in enumerate(units):
                parent[unit], slot[unit] = agent, place
        return parent.to(device), slot.to(device)

    def assign(self, ts: TimeStep, fresh: Tensor, previous: Assignment | None) -> Assignment:
        if previous is not None:
            return previous  # nothing moves: the one built at reset
        return self.assignment(ts.reward.shape[0], ts.reward.device)

    def assignment(self, num_envs: int, device: torch.device | str = "cpu") -> Assignment:
        """The (only) assignment over ``num_envs`` copies."""
        flat = [u for c in self.children for u in c]
        blocks = flat == list(range(len(flat))) and not self.leaves_slots_empty
        parent, slot = self.parents(device)
        return Assignment.of(parent, slot, self.n_agents, self.group, num_envs, blocks)

    def __repr__(self) -> str:
        return f"Fixed({self.children})"


def static_clusters(n_workers: int, n_clusters: int, device: torch.device | str | None = None) -> Tensor:
    """Clusters by agent index: ``M`` contiguous blocks whose sizes differ by at most one.

    Shapes:
        -> ``[N]`` int64, non-decreasing, in ``[0, M)``.
    """
    if n_clusters < 1:
        raise ValueError(f"groups must be at least one group, got {n_clusters}")
    if n_clusters > n_workers:
        raise ValueError(f"more groups than units ({n_clusters} > {n_workers})")
    return torch.arange(n_workers, device=device) * n_clusters // n_workers


def static_grouping(n_units: int, groups: int) -> Fixed:
    """``grouping: static`` with ``groups``: ``groups`` agents over balanced blocks of the units by index."""
    assignment = static_clusters(n_units, groups).tolist()
    return Fixed([[u for u in range(n_units) if assignment[u] == g] for g in range(groups)])


# -- CommandChannel ---------------------------------------------------------------------------
class CommandChannel:
    """How a command from the level above reaches the agents: the features appended to their
    observations (``encode``), and how those features evolve between two commands (``carry``)."""

    requires: tuple[str, ...] = ()
    carries = False
    """The features change between commands (so a rollout's bootstrap keeps the carried ones)."""
    reads_env: tuple[EnvRead, ...] = ()
    """What ``carry`` reads of the env below all levels (:class:`EnvRead`), in its ``env`` argument."""

    def __init__(self, space: spaces.Discrete | spaces.Box):
        self.space = space

    @property
    def dim(self) -> int:
        """Numbers the command adds to an agent's observation."""
        raise NotImplementedError

    def encode(self, command: Tensor) -> Tensor:
        """``[B, N]`` or ``[B, N, d]`` -> features ``[B, N, dim]``."""
        raise NotImplementedError

    def carry(self, features: Tensor, child_obs: Tensor, next_child_obs: Tensor, env: EnvView | None = None) -> Tensor:
        """The features after a step from ``child_obs`` to ``next_child_obs`` (unchanged by default);
        ``env``: what the step read of the env (:attr:`reads_env`)."""
        return features

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim})"


class OneHot(CommandChannel):
    """A discrete command as a one-hot (TAG, ALMA's allocation)."""

    @property
    def dim(self) -> int:
        return int(self.space.n)

    def encode(self, command: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(command, int(self.space.n)).float()


class Raw(CommandChannel):
    """A continuous command as it is, clamped to its box (HiMPo's goals, TAG's continuous levels)."""

    @property
    def dim(self) -> int:
        return int(self.space.shape[0])

    def encode(self, command: Tensor) -> Tensor:
        return command.clamp(float(self.space.low.min()), float(self.space.high.max()))


def channel_for(space: spaces.Discrete | spaces.Box | None) -> CommandChannel | None:
    """The channel of a command space: one-hot for discrete, raw for a box; None (no command: the
    top level). Other channels are named (:data:`CHANNELS`)."""
    if space is None:
        return None
    return OneHot(space) if isinstance(space, spaces.Discrete) else Raw(space)


# -- ActionSplit ------------------------------------------------------------------------------
class ActionSplit:
    """An agent's action as its children's: the agents' action space over ``group`` child slots
    of the level below, and ``split`` of ``[B, N, ...]`` into one action per child slot
    ``[B, N * group, ...]`` (slots of agent ``i`` first, in slot order)."""

    def __init__(self, below: EnvSpec, group: int):
        self.group = group
        self.k = below.action_dim

    @property
    def space(self) -> spaces.Space:
        """Each agent's action space."""
        raise NotImplementedError

    def split(self, action: Tensor) -> Tensor:
        """``[B, N, ...]`` agents' actions -> ``[B, N * group, ...]`` one per child slot."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.space})"


class Joint(ActionSplit):
    """TAG: a discrete agent over ``c`` children with ``K`` actions each picks one of ``K**c`` joint
    actions; child slot ``j`` takes digit ``j`` of the joint index in base ``K``, the most
    significant digit first (slot 0), i.e. ``a = sum_j a_j K**(c-1-j)``."""

    def __init__(self, below: EnvSpec, group: int):
        super().__init__(below, group)
        if not below.discrete:
            raise ValueError("a joint action enumerates discrete children's actions; the level below acts "
                             "continuously (use joint: false)")
        if self.k ** group > MAX_JOINT_ACTIONS:
            raise ValueError(
                f"a discrete agent over {group} children with {self.k} actions each has "
                f"{self.k}**{group} = {self.k ** group} joint actions (limit {MAX_JOINT_ACTIONS}); "
                f"use smaller groups, joint: false (one action head per child), or continuous commands")
        self._digits = self.k ** torch.arange(group - 1, -1, -1, device=below.device)

    @property
    def space(self) -> spaces.Discrete:
        return spaces.Discrete(self.k ** self.group)

    def split(self, action: Tensor) -> Tensor:
        b, n = action.shape[:2]
        return ((action.unsqueeze(-1) // self._digits) % self.k).reshape(b, n * self.group)


class PerChild(ActionSplit):
    """One action per child: a MultiDiscrete head per child slot (MAPPO levels), or, over
    continuous children, their actions concatenated in slot order."""

    def __init__(self, below: EnvSpec, group: int):
        super().__init__(below, group)
        self.discrete = below.discrete
        self._box = below.action_space

    @property
    def space(self) -> spaces.MultiDiscrete | spaces.Box:
        if self.discrete:
            return spaces.MultiDiscrete([self.k] * self.group)
        return spaces.Box(low=float(self._box.low.min()), high=float(self._box.high.max()),
                          shape=(self.group * self.k,))

    def split(self, action: Tensor) -> Tensor:
        b, n = action.shape[:2]
        if self.discrete:
            return action.reshape(b, n * self.group)
        return action.reshape(b, n * self.group, self.k)


def split_for(below: EnvSpec, group: int, joint: bool) -> ActionSplit:
    """``Joint`` for discrete children when ``joint``, else ``PerChild``."""
    return Joint(below, group) if joint and below.discrete else PerChild(below, group)


# -- Termination ------------------------------------------------------------------------------
@dataclass
class Moment:
    """What a holding termination sees when it decides, for the ``B`` copies of its level."""

    age: Tensor
    """``[B]`` steps since each copy's last decision (0 at a reset)."""
    fresh: Tensor
    """``[B]`` bool: the copies whose episode just started."""
    obs: Tensor
    """``[B, N, obs_dim]``: what the level's agents observe now."""
    ts: TimeStep
    """What the level below reported (its ``info`` holds the keys the termination ``reads``)."""
    held: Tensor | None
    """The actions the copies hold (None before the first decision)."""
    memory: dict[str, Tensor]
    """The termination's own memory (from :meth:`Termination.start`), to update in place."""


class Termination:
    """When a level's agents take a new action.

    ``stride``: a fixed number of steps of the level below each action lasts (the fast path:
    the level below runs them under one command). A termination that ``holds`` instead acts on
    every step of the level below, per copy: ``decide`` says which copies take a new action,
    the others hold their last one (every step is stored, with a ``decision`` flag).
    """

    stride = 1
    holds = False
    requires: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    """``info`` keys of the level below that ``decide`` reads (passed up through the levels between)."""

    def bind(self, level) -> None:
        """Called by the Level it serves (a learned termination reads its level's learner here)."""

    def start(self, ts: TimeStep) -> dict[str, Tensor]:
        """The memory ``decide`` keeps, at a reset."""
        return {}

    def decide(self, now: Moment) -> Tensor:
        """``[B]`` bool: the copies whose agents act anew now."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class Holding:
    """The per-copy state of a level under a holding termination: each copy's last action, the
    steps since its decision and the termination's memory. Only the deciding copies act."""

    def __init__(self, termination: Termination, ts: TimeStep):
        self.termination = termination
        self.fresh = torch.ones_like(ts.terminated)
        self.age = torch.zeros(ts.terminated.shape, dtype=torch.long, device=ts.terminated.device)
        self.memory = termination.start(ts)
        self.action: Tensor | None = None
        self.log_prob: Tensor | None = None

    def act(self, learner, obs: Tensor, ts: TimeStep, deterministic: bool,
            state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The held actions and log-probs with the deciding copies' replaced, ``decision`` ``[B]``,
        and a recurrent learner's ``state`` (``[B, ...]``, None if it has none) advanced for the
        deciding copies only."""
        decision = self.termination.decide(Moment(self.age, self.fresh, obs, ts, self.action, self.memory))
        self.age = torch.where(decision, 1, self.age + 1)
        if self.action is None:
            if state is None:
                self.action, self.log_prob = learner.act(obs, deterministic=deterministic)
            else:
                self.action, self.log_prob, next_state = learner.act_recurrent(obs, state, deterministic)
                state = torch.where(decision.view(-1, *([1] * (state.dim() - 1))), next_state, state)
            return self.action, self.log_prob, decision, state
        # Only the deciding copies act: acting (e.g. scoring many proposed allocations) is the
        # expensive part, and most steps few copies decide. One host read per step finds them.
        deciding = decision.nonzero().squeeze(-1)
        if deciding.numel():
            if state is None:
                action, log_prob = learner.act(obs[deciding], deterministic=deterministic)
            else:
                action, log_prob, next_state = learner.act_recurrent(obs[deciding], state[deciding], deterministic)
                state = state.index_copy(0, deciding, next_state)
            self.action, self.log_prob = self.action.clone(), self.log_prob.clone()
            self.action[deciding], self.log_prob[deciding] = action, log_prob
        return self.action, self.log_prob, decision, state


class Every(Termination):
    """A new action every ``k`` steps of the level below, in every copy (TAG, HiMPo, HRL-CG's period)."""

    def __init__(self, k: int = 1):
        if k < 1:
            raise ValueError(f"period must be >= 1, got {k}")
        self.stride = k

    def decide(self, now: Moment) -> Tensor:
        return (now.age % self.stride == 0) | now.fresh

    def __repr__(self) -> str:
        return f"Every({self.stride})"


def describe(strategy: Any) -> str:
    """A strategy in one short phrase (``python -m hmarl describe``): its ``repr``, or ``none``."""
    return "none" if strategy is None else repr(strategy)
