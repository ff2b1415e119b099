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

import math

import torch
from gymnasium import spaces

from hmarl.buffers import Rollout, RolloutBuffer
from hmarl.comm import Communication
from hmarl.goals import goal_transition
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
    if command is None:
        return 0
    if isinstance(command, spaces.Discrete):
        return int(command.n)
    return int(command.shape[0])


def agent_io(below: EnvSpec, children: list[list[int]], command: spaces.Space | None,
             joint: bool) -> AgentIO:
    """The observation and action spaces of a level's agents over ``below``."""
    group = max(len(c) for c in children)
    child_obs_dim = group * below.obs_dim
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
    return AgentIO(n_agents=len(children), obs_dim=child_obs_dim + command_features_dim(command),
                   child_obs_dim=child_obs_dim, action_space=action_space)


class Level:
    """A level of ``N`` agents over the units of ``below``; itself a ``MultiAgentEnv``.

    Args:
        below: the real env or another ``Level``.
        learner: the agents' policy (built for ``agent_io(...)``).
        children: ``children[i]`` lists the units below that agent ``i`` controls.
        comm: the communication function phi (messages sent up).
        reward_rule: what the agents learn from.
        command: the action space each agent accepts from the level above (``None`` at the top).
        steps_per_command: how many steps of this level one command from above lasts.
        joint: discrete agents act on the joint action of their children (TAG's K**c)
            rather than one head per child.
        relative_goals: the commands are goals relative to the env's ``goal_indices``
            (HRL-CG): between two commands each goal follows ``h(s, g, s') = s + g - s'``.

    Shapes:
        ``step(command)``: command ``[B, N]`` (Discrete) or ``[B, N, d]`` (Box), ``None`` at the top;
        returns obs ``[B, N, comm.out_dim]`` and reward ``[B, N]``.
    """

    def __init__(self, below: MultiAgentEnv, learner: Learner, children: list[list[int]],
                 comm: Communication, reward_rule: RewardRule,
                 command: spaces.Discrete | spaces.Box | None = None,
                 steps_per_command: int = 1, joint: bool = True, relative_goals: bool = False):
        check_partition(children, below.spec.n_agents)
        self.below = below
        self.children = children
        self.learner = learner
        self.comm = comm
        self.reward_rule = reward_rule
        self.command = command
        self.steps_per_command = steps_per_command
        self.joint = joint
        self.training = True
        self.buffer = RolloutBuffer(0)
        below_spec = below.spec
        self.io = agent_io(below_spec, children, command, joint)
        n_below, n = below_spec.n_agents, len(children)
        self.group = max(len(c) for c in children)
        flat = [u for c in children for u in c]
        # Consecutive equal blocks are plain reshapes; anything else goes through an index
        # whose padding slot (n_below) reads zeros and writes nowhere.
        self._blocks = flat == list(range(n_below)) and all(len(c) == self.group for c in children)
        padded = [c + [n_below] * (self.group - len(c)) for c in children]
        self._index = torch.tensor(padded, device=below_spec.device).reshape(-1)
        self._below_discrete = below_spec.discrete
        self._k = below_spec.action_dim
        self._digits = self._k ** torch.arange(self.group - 1, -1, -1, device=below_spec.device)
        self.spec = EnvSpec(n_agents=n, obs_dim=comm.out_dim, action_space=command,
                            max_steps=math.ceil(below_spec.max_steps / steps_per_command),
                            num_envs=below_spec.num_envs, device=below_spec.device,
                            name=f"level over {below_spec.name}")
        self._below_ts: TimeStep | None = None
        self._command_features: Tensor | None = None
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
        """For each unit below: the agent controlling it, and its place among that agent's children."""
        parent = torch.empty(self.below.spec.n_agents, dtype=torch.long)
        slot = torch.empty_like(parent)
        for agent, group in enumerate(self.children):
            for place, unit in enumerate(group):
                parent[unit], slot[unit] = agent, place
        return parent.to(self._index.device), slot.to(self._index.device)

    # -- moving data between the level below and this level's agents -------------------
    def children_view(self, x: Tensor) -> Tensor:
        """``[B, N_below, ...]`` -> ``[B, N, group, ...]`` (missing children read zeros)."""
        b = x.shape[0]
        if self._blocks:
            return x.reshape(b, self.spec.n_agents, self.group, *x.shape[2:])
        padded = torch.cat([x, x.new_zeros(b, 1, *x.shape[2:])], dim=1)
        return padded[:, self._index].reshape(b, self.spec.n_agents, self.group, *x.shape[2:])

    def _child_obs(self, below_obs: Tensor) -> Tensor:
        return self.children_view(below_obs).flatten(2)

    def _with_command(self, child_obs: Tensor) -> Tensor:
        if self._command_features is None:
            return child_obs
        return torch.cat([child_obs, self._command_features], dim=-1)

    def _set_command(self, command: Tensor | None) -> None:
        if self.command is None:
            self._command_features = None
        elif isinstance(self.command, spaces.Discrete):
            self._command_features = torch.nn.functional.one_hot(command, int(self.command.n)).float()
        else:
            self._command_features = command.clamp(float(self.command.low.min()),
                                                   float(self.command.high.max()))

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
        out = per_child.new_zeros(b, self.below.spec.n_agents + 1, *per_child.shape[2:])
        out[:, self._index] = per_child
        return out[:, :-1]

    # -- the env interface -------------------------------------------------------------
    @torch.no_grad()
    def reset(self, seed: int | None = None) -> TimeStep:
        self._below_ts = ts = self.below.reset(seed)
        self.buffer.clear()
        b = self.spec.num_envs
        return TimeStep(obs=self.comm(self._child_obs(ts.obs)),
                        reward=ts.reward.new_zeros(b, self.spec.n_agents),
                        terminated=ts.terminated, truncated=ts.truncated)

    @torch.no_grad()
    def step(self, command: Tensor | None = None) -> TimeStep:
        self._set_command(command)
        ts = self._below_ts
        b, n = self.spec.num_envs, self.spec.n_agents
        reward_up = ts.reward.new_zeros(b, n)
        alive = torch.ones(b, dtype=torch.bool, device=reward_up.device)
        terminated = torch.zeros_like(alive)
        truncated = torch.zeros_like(alive)
        final_message = None
        for _ in range(self.steps_per_command):
            child_obs = self._child_obs(ts.obs)
            obs = self._with_command(child_obs)
            action, log_prob = self.learner.act(obs, deterministic=not self.training)
            ts = self.below.step(self._to_below(action))
            children_reward = self.children_view(ts.reward).sum(-1)
            next_child_obs = self._child_obs(ts.final_obs)
            step = LevelStep(children_reward, child_obs, next_child_obs, self._command_features)
            if self._goal_index is not None:
                self._command_features = goal_transition(child_obs, self._command_features, next_child_obs,
                                                         self._goal_index)
            if self.training:
                self.buffer.add(obs=obs, action=action, log_prob=log_prob,
                                reward=self.reward_rule.step_reward(step),
                                terminated=ts.terminated, done=ts.done,
                                final_obs=self._with_command(next_child_obs))
            # A copy that finished inside the period starts its next episode under the
            # same command; what follows belongs to that episode, not to this transition.
            reward_up += children_reward * alive.unsqueeze(-1)
            message = self.comm(next_child_obs)
            final_message = message if final_message is None else torch.where(
                alive[:, None, None], message, final_message)
            terminated |= ts.terminated & alive
            truncated |= ts.truncated & ~ts.terminated & alive
            alive &= ~ts.done
        self._below_ts = ts
        return TimeStep(obs=self.comm(self._child_obs(ts.obs)), reward=reward_up,
                        terminated=terminated, truncated=truncated,
                        info={"final_obs": final_message})

    # -- learning ------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self) -> Rollout:
        """This level's transitions since the last ``clear``, with the bootstrap observation."""
        return self.buffer.rollout(last_obs=self._with_command(self._child_obs(self._below_ts.obs)))
