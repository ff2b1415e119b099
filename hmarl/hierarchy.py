"""A stack of levels over an env: the rollout loop and the coordinated update."""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from gymnasium import spaces
from torch import nn

from hmarl.buffers import RolloutBuffer
from hmarl.comm import COMMUNICATION
from hmarl.learner import AgentIO, Learner, Published, UpdateContext
from hmarl.level import Level, check_partition, level_io
from hmarl.rewards import REWARD_RULES
from hmarl.spec import MultiAgentEnv, Tensor, TimeStep, slice_dims
from hmarl.strategies import (CHANNELS, GROUPINGS, TERMINATIONS, Every, Fixed, Grouping, Termination, channel_for,
                              describe, env_reads, split_for)

_COMMAND = re.compile(r"^\s*(discrete|box)\s*\(\s*(\d+)\s*(?:,\s*([0-9.eE+-]+)\s*)?\)\s*$")


def parse_command(text: str | None) -> spaces.Discrete | spaces.Box | None:
    """``"discrete(5)"`` -> Discrete(5) (one-hot to the child); ``"box(2)"`` -> Box([-1, 1]^2);
    ``"box(2, 10)"`` -> Box([-10, 10]^2)."""
    if text is None:
        return None
    match = _COMMAND.match(str(text))
    bound = float(match.group(3)) if match and match.group(3) else 1.0
    if not match or int(match.group(2)) < 1 or bound <= 0 or (match.group(1) == "discrete" and match.group(3)):
        raise ValueError(f"command {text!r} is not 'discrete(n)', 'box(d)' or 'box(d, bound)' "
                         "with n, d >= 1 and bound > 0")
    kind, size = match.group(1), int(match.group(2))
    return spaces.Discrete(size) if kind == "discrete" else spaces.Box(-bound, bound, (size,))


@dataclass
class LevelSpec:
    """One level of a hierarchy, as written in YAML (levels are listed bottom-up)."""

    learner: str
    """Name of the learner in the algorithms' registry (``ppo``, ``mappo``, ...)."""
    group_size: int | str | None = None
    """Each agent controls this many consecutive units below (default 1); ``all``: one agent over all."""
    children: list[list[int]] | None = None
    """Explicit ``children[i]`` for agent i; excludes ``group_size``."""
    groups: int | None = None
    """Number of agents; their children are balanced blocks of the units below by index
    (``grouping: static``) or by position (``dynamic``, ``episode``). Excludes the two above."""
    grouping: str = "static"
    """``static``: fixed children; ``dynamic``: balanced clusters of the units below by
    position, recomputed after every step of this level; ``episode``: the same clusters
    kept for a whole episode (HiMPo's SG ablation). The last two need ``groups``."""
    positions: bool = False
    """Append each child's position to its message (for graphs built from positions)."""
    decide_every: int | None = None
    """Act anew only every ``decide_every`` steps of the level below, at episode starts and
    when the env's active subtasks change; hold the last action in between (ALMA's
    allocator, which uses ``period: 1``). Needs an env with subtasks."""
    period: int = 1
    """This level acts once every ``period`` steps of the level below."""
    command: str | None = None
    """What each agent sends each child: ``discrete(n)``, ``box(d)`` or ``box(d, bound)``;
    ``None`` for the bottom level."""
    relative_goals: bool = False
    """The commands are goals relative to the children's goal dims, carried by
    ``h(s, g, s') = s + g - s'`` between this level's actions (HRL-CG)."""
    joint: bool = True
    """Discrete agents act on the joint action of their children (K**c actions)."""
    comm: str = "concat"
    """Communication function: the message this level's agents send up."""
    reward: str = "sum_up"
    """Reward rule: what this level's agents learn from."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """Options of the reward rule (e.g. ``env_reward_coef`` of ``upper_advantage``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Learner options for this level only, over the run's shared learner options."""
    termination: str | dict[str, Any] | None = None
    """When the agents act anew, by name from :data:`hmarl.strategies.TERMINATIONS` (a new one
    registered there works too): ``name`` or ``{name: ..., <its options>}``. Replaces the sugar
    ``period`` (``every``) and ``decide_every`` (``on_subtask_change``)."""

    def resolve_children(self, n_below: int, where: str) -> list[list[int]] | Grouping:
        """The children of this level's agents over ``n_below`` units: lists, or the grouping that
        ``groups`` agents make by ``grouping`` (:data:`~hmarl.strategies.GROUPINGS`: ``static``,
        HiMPo's ``dynamic`` and ``episode``); ``where`` prefixes error messages.

        ``group_size: k`` gives ``ceil(n_below / k)`` agents over consecutive blocks of at most
        ``k`` units, as equal as can be (2 over 3 units: ``[[0, 1], [2]]``; 3 over 4: ``[[0, 1], [2, 3]]``)."""
        given = [k for k in ("group_size", "children", "groups") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"{where}: give one of group_size, children and groups, not {' and '.join(given)}")
        make = GROUPINGS.lookup(self.grouping, where)
        if self.grouping != "static" and self.groups is None:
            raise ValueError(f"{where}: grouping {self.grouping} regroups the units below among "
                             f"'groups' agents; set groups (the number of agents)")
        if self.groups is not None:
            return make(n_below, self.groups)
        if self.children is not None:
            return [list(c) for c in self.children]
        size = n_below if self.group_size == "all" else self.group_size or 1
        if isinstance(size, str):
            raise ValueError(f"{where}: group_size must be an integer or 'all', got {size!r}")
        if size < 1:
            raise ValueError(f"{where}: group_size must be >= 1, got {size}")
        # ceil(n / size) agents over consecutive blocks as equal as can be, the larger first: a
        # size that does not divide n gives unequal groups (2 over 3 units: [[0, 1], [2]]), whose
        # agents see presence flags for their empty child slots
        agents = -(-n_below // size)
        sizes = [n_below // agents + (i < n_below % agents) for i in range(agents)]
        starts = [sum(sizes[:i]) for i in range(agents)]
        return [list(range(start, start + length)) for start, length in zip(starts, sizes)]


#: ``make_learner(spec, io, level_index)`` -> the level's learner
MakeLearner = Callable[[LevelSpec, AgentIO, int], Learner]


class Hierarchy(nn.Module):
    """Levels bottom-up over an env; holds every learner and communication function.

    ``rollout(T)`` steps all ``B`` copies ``T`` env steps, every level storing its
    own transitions at its own time scale; ``update`` then runs the learners
    top-down, so an upper level's results exist before a lower level reads them.
    """

    def __init__(self, env: MultiAgentEnv, levels: list[Level]):
        super().__init__()
        self.env = env
        self.levels = levels
        #: what each level published in the latest :meth:`update` (level index -> Published)
        self.published: dict[int, Published] = {}
        self.learners = nn.ModuleList(level.learner for level in levels)
        self.comms = nn.ModuleList(level.comm for level in levels)
        #: env steps between two actions of level i
        self.strides = [math.prod(lv.steps_per_command for lv in levels[:i]) for i in range(len(levels))]
        for level, stride in zip(levels, self.strides):
            level.learner.stride = stride
        #: env steps per call of the top level's ``step``
        self.top_stride = math.prod(lv.steps_per_command for lv in levels)

    @property
    def top(self) -> Level:
        """The top level, which the Hierarchy steps with no command."""
        return self.levels[-1]

    def train(self, mode: bool = True) -> "Hierarchy":
        super().train(mode)
        for level in self.levels:
            level.training = mode
        return self

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset the whole stack (each level resets the one below) and return the top's first TimeStep."""
        return self.top.reset(seed)

    def check_rollout_length(self, env_steps: int) -> None:
        """Fail unless ``env_steps`` is a whole number of top-level steps (``top_stride`` env steps
        each) and every level's update schedule (:meth:`rollouts_per_update`) is possible."""
        if env_steps % self.top_stride:
            raise ValueError(f"a rollout of {env_steps} env steps is not a whole number of top-level "
                             f"steps ({self.top_stride} env steps each); use a multiple of {self.top_stride}")
        self.rollouts_per_update(env_steps)

    def rollouts_per_update(self, env_steps: int) -> list[int]:
        """For each level, how many rollouts of ``env_steps`` it collects before it updates: enough
        for its learner's ``transitions_per_update`` (its own steps x env copies; TAG Appendix A's
        buffer), so a level acting every 4 env steps updates a quarter as often as the bottom
        at the same buffer size; 1 (every rollout) when the learner sets none."""
        copies = self.env.spec.num_envs
        rounds = []
        for level, stride in zip(self.levels, self.strides):
            wanted = level.learner.transitions_per_update
            rounds.append(1 if wanted is None else math.ceil(wanted / (env_steps // stride * copies)))
        for index, level in enumerate(self.levels[:-1]):
            if level.reward_rule.needs and rounds[index] != rounds[index + 1]:
                raise ValueError(
                    f"level {index} learns from the advantages of level {index + 1}, so the two must update "
                    f"together, but with rollouts of {env_steps} env steps on {copies} copies they update "
                    f"every {rounds[index]} and {rounds[index + 1]} rollouts; give their learners buffer sizes "
                    f"of the same number of rollouts (or none)")
        return rounds

    def rollout(self, env_steps: int) -> None:
        """Step every copy ``env_steps`` env steps; each level adds its transitions to its buffer,
        which holds :meth:`rollouts_per_update` rollouts."""
        for level, stride, rounds in zip(self.levels, self.strides, self.rollouts_per_update(env_steps)):
            if level.buffer.capacity != env_steps // stride * rounds:
                level.buffer = RolloutBuffer(env_steps // stride * rounds)
            elif level.buffer.full:  # collected but never updated on: the new rollout replaces it
                level.buffer.clear()
        for _ in range(env_steps // self.top_stride):
            self.top.step(None)

    def ready(self) -> list[bool]:
        """Which levels hold a full buffer, i.e. update at the next :meth:`update`."""
        return [level.buffer.full for level in self.levels]

    @torch.no_grad()
    def next_commands(self) -> list[Tensor | None]:
        """The command each level will receive at its next step, drawn top-down from the current
        (not yet updated) policies: the bootstrap observation of a rollout carries it, since every
        level above decides anew at a rollout's end. ``None`` where the command is held instead (a
        level that re-decides only sometimes, relative goals carried by ``h``) or the level below
        learns off-policy."""
        commands: list[Tensor | None] = [None] * len(self.levels)
        upper_obs = self.top.bootstrap_observation()
        for index in reversed(range(len(self.levels) - 1)):
            upper, level = self.levels[index + 1], self.levels[index]
            carried = level.channel is not None and level.channel.carries
            if upper.termination.holds or carried or not level.learner.on_policy:
                upper_obs = level.bootstrap_observation()
                continue
            action = upper.policy_action(upper_obs)
            commands[index] = upper.split_action(action)
            upper_obs = level.bootstrap_observation(commands[index])
        return commands

    def update(self, progress: float) -> dict[str, Tensor]:
        """Update top-down every level whose buffer is full (:meth:`ready`), so an upper level's
        results exist before a lower level reads them; returns ``level{l}/{name}`` metrics.

        One loop for every family: each learner gets an :class:`~hmarl.learner.UpdateContext`
        with what the level above just published and the level below's rollout and learner; a
        reward rule that ``needs`` the level above's outputs relabels the rewards first. What each
        level published is kept in :attr:`published` until the next update.
        """
        metrics: dict[str, Tensor] = {}
        ready = self.ready()
        commands = self.next_commands()
        rollouts = {i: level.rollout(commands[i]) for i, level in enumerate(self.levels) if ready[i]}
        self.published = {}
        for index in reversed(range(len(self.levels))):
            if not ready[index]:
                continue
            level, rollout = self.levels[index], rollouts[index]
            above = self.published.get(index + 1)
            if level.reward_rule.needs:
                if above is None:
                    raise RuntimeError(f"level {index}'s reward needs {sorted(level.reward_rule.needs)} of the level "
                                       "above, which did not update with it")
                rollout.reward = level.reward_rule.relabel(rollout, UpdateContext(progress, above))
            below = rollouts.get(index - 1)
            ctx = UpdateContext(progress, above, below, self.levels[index - 1].learner if below is not None else None)
            result = level.learner.update(rollout, ctx)
            if level.learner.publishes:
                parent, slot = level.parents() if rollout.parent is None else (rollout.parent, rollout.slot)
                stride = self.levels[index - 1].steps_per_command if index else 1
                self.published[index] = Published(result.outputs, parent, slot, stride)
            prefix = f"level{index}/{type(level.learner).__name__.lower()}"
            for key, value in result.metrics.items():
                metrics[f"{prefix}/{key}"] = value
            child_obs = rollout.obs[..., :level.io.child_obs_dim]
            for key, value in level.comm.update(child_obs).items():
                metrics[f"{prefix}/{key}"] = value
            level.buffer.clear()
        # What each level above sees of the one below was encoded before the communication
        # functions learned: encode it again, bottom-up, so the next rollout starts with new messages.
        for below, level in zip(self.levels, self.levels[1:]):
            level.refresh_below(below.messages())
        return metrics

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer of the stack, as each learner and communication function declares them
        (learners bottom-up, then the communication functions)."""
        return [o for learner in self.learners for o in learner.optimizers()] + \
            [o for comm in self.comms for o in comm.optimizers()]

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything the stack learns: parameters, buffers and optimizer states."""
        return {"modules": self.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers()]}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` saved, on a hierarchy built from the same config."""
        self.load_state_dict(state["modules"])
        for optimizer, saved in zip(self.optimizers(), state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)

    def attach(self, env: MultiAgentEnv) -> "Hierarchy":
        """The same agents (shared modules) over another env, e.g. for evaluation."""
        below: MultiAgentEnv = env
        levels = []
        for level in self.levels:
            below = Level(below, level.learner, level.comm, level.reward_rule, grouping=level.grouping,
                          channel=level.channel, split=level.split, termination=level.termination,
                          steps_per_command=level.steps_per_command, positions=level.positions,
                          passes_up=level.passes_up, facts_up=level.facts_up, env_up=level.env_up,
                          env_slots=level.io.env_slots)
            levels.append(below)
        return Hierarchy(env, levels)


def build_hierarchy(env: MultiAgentEnv, specs: list[LevelSpec], make_learner: MakeLearner) -> Hierarchy:
    """Build levels bottom-up from ``specs``; ``make_learner`` resolves learner names.

    Every structural problem is reported here, before any env step: a bad
    partition, an impossible group size, a joint action space too large to
    enumerate, unknown communication or reward names, a command on the bottom level, and
    learners that read the env agents' observations from their children's messages
    (``reads_env_observations``) placed where those messages are not the env's observations.

    What the learners, reward rules and channels of any level read of the env itself (their
    ``reads_env``) is passed up by every level below them (:meth:`Level.forward_env`); a learner
    that reads the env agents' observations above a level whose messages are not those
    observations gets them appended to its own (``AgentIO.env_slots``).
    """
    if not specs:
        raise ValueError("a hierarchy needs at least one level")
    if specs[0].command is not None:
        raise ValueError("level 0 acts in the env with the env's own actions; "
                         "'command' belongs to the levels above it")
    if specs[0].relative_goals:
        raise ValueError("level 0: relative_goals belongs to the level above it, whose commands are the goals")
    if specs[0].period != 1:
        raise ValueError("level 0 acts at every env step; its period must be 1")
    for index, spec in enumerate(specs):
        if spec.period < 1:
            raise ValueError(f"level {index}: period must be >= 1, got {spec.period}")
    terminations = [_termination(spec, f"level {index}") for index, spec in enumerate(specs)]
    below: MultiAgentEnv = env
    levels: list[Level] = []
    for index, spec in enumerate(specs):
        where = f"level {index}"
        upper = specs[index + 1] if index + 1 < len(specs) else None
        COMMUNICATION.lookup(spec.comm, where)
        REWARD_RULES.lookup(spec.reward, where)
        if upper is not None and upper.command is None:
            raise ValueError(f"level {index + 1} sits above level {index} but gives it no command; "
                             "set its command to discrete(n) or box(d)")
        command = parse_command(upper.command) if upper else None
        try:
            children = spec.resolve_children(below.spec.n_agents, where)
            if isinstance(children, Grouping):
                grouping = children
            else:
                check_partition(children, below.spec.n_agents, where)
                grouping = Fixed(children)
            split = split_for(below.spec, grouping.group, spec.joint)
            termination = terminations[index]
            for fact in termination.requires:
                below.spec.require(fact, f"{type(termination).__name__} (decide_every)")
        except ValueError as error:
            raise ValueError(str(error) if str(error).startswith(where) else f"{where}: {error}") from None
        goal_index = None
        if upper is not None and upper.relative_goals:  # checked here to name the manager, not its workers
            manager = f"level {index + 1}"
            goal_index = slice_dims(env.spec.require("obs_slices.position", f"{manager}: relative_goals"))
            if not isinstance(command, spaces.Box) or command.shape[0] != len(goal_index):
                raise ValueError(f"{manager}: relative goals live on the {len(goal_index)} goal dims "
                                 f"{goal_index} of {env.spec.name}; set its command to "
                                 f"box({len(goal_index)}, bound)")
        channel = channel_for(command) if goal_index is None else CHANNELS["relative_goal"](command, goal_index)
        try:
            io = level_io(below.spec, grouping, channel, split, spec.positions)
        except ValueError as error:
            raise ValueError(str(error) if str(error).startswith(where) else f"{where}: {error}") from None
        problem = _messages_not_env_obs(levels, specs)
        if problem is not None:  # the env agents' observations follow the agents' own for a learner that reads them
            io = dataclasses.replace(io, env_slots=grouping.group * math.prod(lv.grouping.group for lv in levels))
        comm = COMMUNICATION[spec.comm](io.n_agents, io.child_obs_dim)
        learner = make_learner(spec, io, index)
        if getattr(learner, "reads_env_observations", False) and problem is not None:
            raise ValueError(f"{where}: {spec.learner} reads the env agents' observations from its children's "
                             f"messages, but level {problem}; give every level below it group_size 1 and comm: concat")
        try:
            rule = _reward_rule(spec, env if REWARD_RULES[spec.reward].reads_env else below, io.group)
            rule.check_command(command)
            level = Level(below, learner, comm, rule, grouping=grouping, channel=channel, split=split,
                          termination=termination,
                          steps_per_command=terminations[index + 1].stride if upper else 1,
                          positions=spec.positions,
                          passes_up=tuple(sorted({key for t in terminations[index + 1:] for key in t.reads})),
                          facts_up=tuple(sorted({fact for t in terminations[index + 1:] for fact in t.requires})),
                          env_slots=io.env_slots)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: {error}") from None
        levels.append(level)
        below = level
    for index, level in enumerate(levels):  # each passes up what the readers above it read of the env
        level.forward_env(env_reads(*(upper.env_reads for upper in levels[index + 1:])))
    for index, level in enumerate(levels):
        needs = level.reward_rule.needs
        if needs:
            above = levels[index + 1].learner if index + 1 < len(levels) else None
            missing = sorted(needs - (above.publishes if above is not None else frozenset()))
            if missing:
                found = "no level above" if above is None else (
                    f"{type(above).__name__} above it, which publishes {sorted(above.publishes) or 'nothing'}")
                raise ValueError(f"level {index}: reward {specs[index].reward} needs {', '.join(missing)} from the "
                                 f"level above (an advantage-estimating learner such as ppo or mappo); found {found}")
    return Hierarchy(env, levels)


def _messages_not_env_obs(levels: list[Level], specs: list[LevelSpec]) -> str | None:
    """None if the children's messages of a level over ``levels`` are the env agents' observations (every
    level has one unit per agent, in order, and sends their observations up as they are), else why not
    (``"<index> gives an agent several units"``)."""
    for lower_index, lower in enumerate(levels):
        units = lower.children
        if lower.grouping.varies:
            return f"{lower_index} regroups its units"
        if any(len(group) > 1 for group in units):
            return f"{lower_index} gives an agent several units"
        if units != [[unit] for unit in range(lower.below.spec.n_agents)]:
            return f"{lower_index} reorders its units"
        if specs[lower_index].comm != "concat":
            return f"{lower_index} sends {specs[lower_index].comm} messages"
    return None


def _termination(spec: LevelSpec, where: str) -> Termination:
    """``period: k`` is ``Every(k)``; ``decide_every: k`` (with ``period: 1``) is ``OnSubtaskChange(k)``;
    ``termination`` names any registered one."""
    if spec.termination is not None:
        if spec.decide_every is not None or spec.period != 1:
            raise ValueError(f"{where}: termination replaces period and decide_every; give only termination")
        options = {"name": spec.termination} if isinstance(spec.termination, str) else dict(spec.termination)
        name = options.pop("name", None)
        termination = TERMINATIONS.lookup(name, where)
        try:
            return termination(**options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: termination {name}: {error}") from None
    if spec.decide_every is None:
        return Every(spec.period)
    if spec.period != 1:
        raise ValueError(f"{where}: decide_every re-decides at any step of the level below, so it needs "
                         f"period: 1, not {spec.period}")
    try:
        return TERMINATIONS["on_subtask_change"](spec.decide_every)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _reward_rule(spec: LevelSpec, below: MultiAgentEnv, group: int):
    """The level's reward rule; unknown ``reward_options`` are named with the valid ones."""
    rule = REWARD_RULES[spec.reward]
    valid = [p for p in inspect.signature(rule.__init__).parameters if p not in ("self", "below", "group_size")]
    unknown = sorted(set(spec.reward_options) - set(valid))
    if unknown:
        raise ValueError(f"reward {spec.reward} has no option {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(valid) or 'none'}")
    return rule(below.spec, group, **spec.reward_options)


def describe_hierarchy(hierarchy: Hierarchy) -> str:
    """The resolved levels, top first: learner, sizes, and the four strategies, communication and reward."""
    lines = []
    for index in reversed(range(len(hierarchy.levels))):
        level, stride = hierarchy.levels[index], hierarchy.strides[index]
        io = level.io
        lines += [f"level {index}: {io.n_agents} x {type(level.learner).__name__}, acting every {stride} env step(s)",
                  f"  observes     {io.obs_dim} = {io.group} child slot(s) x {io.child_dim}"
                  + (f" + command {level.channel.dim}" if level.channel else "")
                  + (f", then the env agents' observations ({io.env_slots} slots, {io.env_dim(hierarchy.env.spec)})"
                     if level.env_block else ""),
                  f"  acts         {io.action_space}",
                  f"  grouping     {describe(level.grouping)}",
                  f"  channel      {describe(level.channel)}",
                  f"  split        {describe(level.split)}",
                  f"  termination  {describe(level.termination)}"
                  + (f" (the level below runs {level.below.steps_per_command} steps per command)"
                     if index and level.below.steps_per_command > 1 else ""),
                  f"  comm         {type(level.comm).__name__} -> {level.comm.out_dim} per agent",
                  f"  reward       {type(level.reward_rule).__name__}"
                  + (f" (needs {', '.join(sorted(level.reward_rule.needs))})" if level.reward_rule.needs else "")]
    env = hierarchy.env.spec
    lines.append(f"env: {env.name}, {env.n_agents} agents, obs {env.obs_dim}, actions {env.action_space}, "
                 f"{env.num_envs} copies")
    return "\n".join(lines)
