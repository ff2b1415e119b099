"""The environment protocol every level and adapter speaks.

Shapes (``B = num_envs``, ``N = n_agents``):
    obs        ``[B, N, obs_dim]`` float
    actions    ``[B, N]`` int64 (discrete) or ``[B, N, act_dim]`` float (continuous)
    reward     ``[B, N]`` float
    terminated ``[B]`` bool, truncated ``[B]`` bool
    state      ``[B, state_dim]`` float, or ``None``

Finished copies reset inside ``step``; the observation that ended their episode
is ``TimeStep.info["final_obs"]`` (equal to ``obs`` for copies that did not end).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from gymnasium import spaces

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""

#: Optional capabilities an env may declare in ``EnvSpec.capabilities``.
#: ``positions``: the size ``D`` of the agents' positions, given in ``info["positions"]``
#: ``[B, N, D]`` (after any reset) and ``info["final_positions"]`` (before it) from ``step``.
#: ``goal_indices``: which observation dims a relative goal lives in.
#: ``subtasks``: ``{"n_subtasks": S, "n_entities": E, "entity_dim": F, "obs_entities": [first, E],
#: "subtask_of_entity": [E ints, -1 for none]}``: entity e's row is ``obs[first + e*F : first + (e+1)*F]``;
#: ``info`` carries ``entities`` ``[B, E, F]``, ``entity_subtask`` ``[B, E, S]`` bool, ``active_subtasks``
#: ``[B, S]`` bool and this step's ``subtask_rewards``: ``[B, S]``, or ``[B, N, S]`` when a subtask's
#: reward depends on who works on it (agent ``i``'s reward if it were the one; the ``subtask`` rule
#: gives a subtask the best of its assigned agents'). Optional keys: ``finished_feature`` (the
#: entity feature that is >= 0.5 once its subtask is done; without it subtasks never finish) and
#: ``feature_names``. Agents come first among the entities.
#: ``landmarks``: where obs holds landmark positions relative to the agent and the agent velocity
#: (``{"first": dim, "count": n, "velocity": dim}``).
#: ``eval_groups``: names of groups of copies (copy ``i`` is in group ``i % len(groups)``) that
#: evaluation reports separately, e.g. the point maze's three evaluation targets.
#: ``episode_metrics``: names of per-episode scalars the env reports in ``info`` on the step that
#: ends an episode (e.g. SaveTheCity's ``completed``); evaluation logs their means as ``eval/<name>``.
#: ``context_indices``: observation dims holding the task's context c (the point maze's target);
#: HRL-CG's worker pi_w(s, g) does not read them.
CAPABILITIES = ("positions", "goal_indices", "subtasks", "landmarks", "eval_groups", "episode_metrics",
                "context_indices")

#: Facts a system may require of an env besides its capabilities (``EnvSpec.facts``): the kind of
#: its actions, and having two agents or more (hierarchies that group agents).
NON_CAPABILITY_FACTS = ("discrete_actions", "continuous_actions", "several_agents")
FACTS = CAPABILITIES + NON_CAPABILITY_FACTS

#: Switches (``EnvSpec.switches``) that are run keys of their own rather than ``env_options``.
TOP_LEVEL_SWITCHES = ("continuous_actions",)


def agents_then_subtasks(n_agents: int, n_subtasks: int, feature_names: Sequence[str],
                         finished: str | None = None) -> dict[str, Any]:
    """The ``subtasks`` capability of an env whose entities are its agents, then one entity per
    subtask, each a row of ``feature_names`` after the agent's own row in its observation.

    ``finished``: the feature that is >= 0.5 once the entity's subtask is done (None: never).
    """
    width, entities = len(feature_names), n_agents + n_subtasks
    capability = {"n_subtasks": n_subtasks, "n_entities": entities, "entity_dim": width,
                  "obs_entities": [width, entities], "subtask_of_entity": [-1] * n_agents + list(range(n_subtasks)),
                  "feature_names": list(feature_names)}
    if finished is not None:
        capability["finished_feature"] = list(feature_names).index(finished)
    return capability


def subtask_membership(subtask_of_entity: Sequence[int], n_subtasks: int,
                       device: str | torch.device | None = None) -> Tensor:
    """``[E, S]`` bool: entity ``e`` belongs to subtask ``k`` (entities of subtask -1 to none)."""
    of_entity = torch.as_tensor(list(subtask_of_entity), device=device)
    return of_entity.unsqueeze(-1) == torch.arange(n_subtasks, device=device)


@dataclass(frozen=True)
class EnvSpec:
    """What a ``MultiAgentEnv`` (a real env or a ``Level``) looks like from above."""

    n_agents: int
    obs_dim: int
    action_space: spaces.Discrete | spaces.Box
    """Per-agent action space; every agent of an env shares it."""
    max_steps: int
    num_envs: int
    device: torch.device = torch.device("cpu")
    state_dim: int | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    """Capability name -> its description (e.g. ``{"goal_indices": [0, 1]}``)."""
    name: str = "env"
    switches: dict[str, str] = field(default_factory=dict)
    """Facts (:data:`FACTS`: capabilities, ``continuous_actions``) this env has behind an option:
    fact -> the constructor keyword that turns it on when true (an ``env_options`` key, or a run
    key of :data:`TOP_LEVEL_SWITCHES`). A system that needs one turns it on (``hmarl.run.experiment``)."""

    @property
    def discrete(self) -> bool:
        """Whether the per-agent action space is ``Discrete``."""
        return isinstance(self.action_space, spaces.Discrete)

    @property
    def action_dim(self) -> int:
        """Number of discrete actions, or the length of a continuous action."""
        if self.discrete:
            return int(self.action_space.n)
        return int(self.action_space.shape[0])

    @property
    def facts(self) -> frozenset[str]:
        """What this env provides that a system may require (:data:`FACTS`): its capabilities,
        its kind of actions (``discrete_actions`` or ``continuous_actions``) and, with two agents
        or more, ``several_agents``."""
        kind = "discrete_actions" if self.discrete else "continuous_actions"
        return frozenset({*self.capabilities, kind, *(["several_agents"] if self.n_agents >= 2 else [])})

    def lacks(self, fact: str, needed_by: str) -> str | None:
        """None if the env provides ``fact``, else one line saying who needs it, what the env has
        instead and what to change (the option that turns it on, where the env has one)."""
        if fact in self.facts:
            return None
        what = fact.replace("_", " ")
        if fact in CAPABILITIES or fact not in NON_CAPABILITY_FACTS:
            what = f"an env with {fact}"
        if fact in self.switches:
            option = self.switches[fact]
            where = f"{option}: true" if option in TOP_LEVEL_SWITCHES else f"env_options: {{{option}: true}}"
            return f"{needed_by} needs {what}; {self.name} has it behind an option: set {where}"
        if fact in ("discrete_actions", "continuous_actions"):
            return f"{needed_by} needs {what}; {self.name} has {self.action_space} actions only"
        if fact == "several_agents":
            return f"{needed_by} needs several agents; {self.name} has {self.n_agents}"
        have = ", ".join(sorted(self.capabilities)) or "none"
        return (f"{needed_by} needs {what}; {self.name} has {have}. "
                f"Pick an env that provides {fact}, or another algorithm.")

    def require(self, capability: str, needed_by: str) -> Any:
        """Return a capability's description, or fail with what to change."""
        message = self.lacks(capability, needed_by)
        if message is not None:
            raise ValueError(message)
        return self.capabilities[capability]


@dataclass
class TimeStep:
    """One batched transition result. See the module docstring for shapes."""

    obs: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    state: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)

    @property
    def done(self) -> Tensor:
        """``terminated | truncated`` ``[B]``: the copies whose episode ended at this step."""
        return self.terminated | self.truncated

    @property
    def final_obs(self) -> Tensor:
        """The observation that ended each copy's episode (``obs`` where none ended)."""
        return self.info.get("final_obs", self.obs)


@runtime_checkable
class MultiAgentEnv(Protocol):
    """A batch of ``num_envs`` copies of a multi-agent env stepping together."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> TimeStep:
        """Start new episodes in every copy; ``seed`` makes them reproducible."""

    def step(self, actions: Tensor) -> TimeStep:
        """Step every copy; copies whose episode ends reset inside (``info["final_obs"]``)."""
