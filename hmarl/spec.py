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

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from gymnasium import spaces

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""

#: Facts a system may require of an env (``EnvSpec.facts``), each derived from the spec's typed
#: fields: ``positions`` (:attr:`EnvSpec.positions` is set), ``entities`` (:attr:`EnvSpec.entities`
#: is set), ``obs_slices.<name>`` (each named slice of :attr:`EnvSpec.obs_slices`, e.g.
#: ``obs_slices.position``), the kind of actions (``discrete_actions`` or ``continuous_actions``) and
#: ``several_agents`` (two agents or more: hierarchies that group agents).
FACTS = ("positions", "entities", "obs_slices.<name>", "discrete_actions", "continuous_actions", "several_agents")

#: The observation slices the bundled systems read (:attr:`EnvSpec.obs_slices`; an env may name others):
#: ``position``: the agent's own position (HRL-CG's relative goals live there); ``velocity``: the
#: agent's own velocity; ``landmarks``: landmark positions relative to the agent, ``(x, y)`` each
#: (the simple-spread heuristic); ``context``: the task's context c (the point maze's target),
#: which HRL-CG's worker pi_w(s, g) does not read.
OBS_SLICES = ("position", "velocity", "landmarks", "context")

#: Options (values of ``EnvSpec.optional``) that are run keys of their own rather than ``env_options``.
TOP_LEVEL_OPTIONS = ("continuous_actions",)


def subtask_membership(subtask_of_entity: Sequence[int], n_subtasks: int,
                       device: str | torch.device | None = None) -> Tensor:
    """``[E, S]`` bool: entity ``e`` belongs to subtask ``k`` (entities of subtask -1 to none)."""
    of_entity = torch.as_tensor(list(subtask_of_entity), device=device)
    return of_entity.unsqueeze(-1) == torch.arange(n_subtasks, device=device)


@dataclass(frozen=True)
class Entities:
    """An entity-structured observation and the subtasks its entities belong to (ALMA's).

    Entity ``e``'s row of ``F = entity_dim`` features is ``obs[..., first + e F : first + (e + 1) F]``
    (:attr:`obs_slice` holds them all); agents come first among the entities. An env with entities
    puts in ``info`` (after any reset): ``entities`` ``[B, E, F]`` (the absolute rows),
    ``entity_subtask`` ``[B, E, S]`` bool (:meth:`membership`), ``active_subtasks`` ``[B, S]`` bool
    and this step's ``subtask_rewards``: ``[B, S]``, or ``[B, N, S]`` when a subtask's reward depends
    on who works on it (agent ``i``'s reward if it were the one; the ``subtask`` rule gives a subtask
    the best of its assigned agents').

    Built once by the env and checked here; :class:`EnvSpec` checks that the rows fit its ``obs_dim``.
    """

    n_subtasks: int
    """``S``, the number of subtasks."""
    subtask_of_entity: tuple[int, ...]
    """Each entity's subtask (``-1``: none, e.g. the agents); its length is ``E``."""
    entity_dim: int
    """``F``, the features of an entity's row."""
    first: int | None
    """The observation dim where the entity rows start; None where they are not in the
    observation (a ``Level``'s spec: its agents observe their children's messages)."""
    finished_feature: int | None = None
    """The feature that is >= 0.5 once the entity's subtask is done (None: subtasks never finish)."""
    feature_names: tuple[str, ...] = ()
    """The features' names (``F`` of them), or empty."""

    def __post_init__(self):
        object.__setattr__(self, "subtask_of_entity", tuple(int(k) for k in self.subtask_of_entity))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        s, e, f = self.n_subtasks, len(self.subtask_of_entity), self.entity_dim
        problems = [
            (s >= 1 and f >= 1 and e >= 1, f"n_subtasks, entity_dim and the number of entities must be >= 1, "
                                           f"got {s}, {f}, {e}"),
            (all(-1 <= k < s for k in self.subtask_of_entity),
             f"subtask_of_entity holds subtasks -1..{s - 1}, got {list(self.subtask_of_entity)}"),
            (self.first is None or self.first >= 0, f"first must be >= 0 or None, got {self.first}"),
            (self.finished_feature is None or 0 <= self.finished_feature < f,
             f"finished_feature must be a feature 0..{f - 1}, got {self.finished_feature}"),
            (not self.feature_names or len(self.feature_names) == f,
             f"feature_names names {len(self.feature_names)} features, entity_dim is {f}")]
        for ok, problem in problems:
            if not ok:
                raise ValueError(f"Entities: {problem}")

    @property
    def n_entities(self) -> int:
        """``E``, the number of entities."""
        return len(self.subtask_of_entity)

    @property
    def obs_slice(self) -> slice | None:
        """The observation dims of all entity rows, ``first .. first + E F`` (None without ``first``)."""
        if self.first is None:
            return None
        return slice(self.first, self.first + self.n_entities * self.entity_dim)

    def in_observation(self, needed_by: str, name: str) -> Entities:
        """These entities, or a ValueError if their rows are not in env ``name``'s observation."""
        if self.first is None:
            raise ValueError(f"{needed_by} reads the entity rows of the observation, but {name}'s observation "
                             f"does not hold them")
        return self

    def membership(self, device: str | torch.device | None = None) -> Tensor:
        """``[E, S]`` bool: entity ``e`` belongs to subtask ``k``."""
        return subtask_membership(self.subtask_of_entity, self.n_subtasks, device)


def agents_then_subtasks(n_agents: int, n_subtasks: int, feature_names: Sequence[str],
                         finished: str | None = None) -> Entities:
    """The :class:`Entities` of an env whose entities are its agents, then one entity per subtask,
    each a row of ``feature_names`` after the agent's own row in its observation.

    ``finished``: the feature that is >= 0.5 once the entity's subtask is done (None: never).
    """
    names = tuple(feature_names)
    return Entities(n_subtasks=n_subtasks, subtask_of_entity=(-1,) * n_agents + tuple(range(n_subtasks)),
                    entity_dim=len(names), first=len(names),
                    finished_feature=None if finished is None else names.index(finished), feature_names=names)


def dims_slice(dims: slice | Sequence[int], what: str) -> slice:
    """``dims`` (a slice, or a list of consecutive observation dims such as ``[0, 1]``) as a slice;
    a ValueError names ``what`` if the dims are not consecutive."""
    if isinstance(dims, slice):
        return dims
    dims = [int(d) for d in dims]
    if not dims or dims != list(range(dims[0], dims[0] + len(dims))):
        raise ValueError(f"{what} must be consecutive observation dims, got {dims}")
    return slice(dims[0], dims[-1] + 1)


def slice_dims(s: slice) -> list[int]:
    """The observation dims of a slice of :attr:`EnvSpec.obs_slices`, as a list."""
    return list(range(s.start, s.stop))


@dataclass(frozen=True)
class EnvSpec:
    """What a ``MultiAgentEnv`` (a real env or a ``Level``) looks like from above.

    Besides the shapes, an env declares typed *facts*, checked when the spec is made (a slice
    beyond ``obs_dim`` or entity rows that do not fit are a ValueError): :attr:`positions`,
    :attr:`obs_slices`, :attr:`entities`, :attr:`episode_metrics`, :attr:`eval_groups`, and in
    :attr:`optional` the facts it has behind an option. Systems require facts by name
    (:attr:`facts`, :data:`FACTS`).
    """

    n_agents: int
    obs_dim: int
    action_space: spaces.Discrete | spaces.Box
    """Per-agent action space; every agent of an env shares it."""
    max_steps: int
    num_envs: int
    device: torch.device = torch.device("cpu")
    state_dim: int | None = None
    name: str = "env"
    positions: int | None = None
    """``D``, the size of the agents' positions, which ``step`` and ``reset`` give in
    ``info["positions"]`` ``[B, N, D]`` (after any reset) and ``step`` in ``info["final_positions"]``
    (before it); None: the env gives none."""
    obs_slices: dict[str, slice] = field(default_factory=dict)
    """Named dims of an agent's observation (:data:`OBS_SLICES`), e.g. ``{"position": slice(0, 2)}``."""
    entities: Entities | None = None
    """The entity layout of the observation and the subtasks (ALMA); None: no entities."""
    episode_metrics: tuple[str, ...] = ()
    """Names of per-episode scalars ``[B]`` the env reports in ``info`` on the step that ends an
    episode; ``success`` is one (rates: ``eval/success``), every other is logged as ``train/<name>``
    and ``eval/<name>`` (e.g. SaveTheCity's ``completed``)."""
    eval_groups: tuple[str, ...] = ()
    """Names of groups of copies (copy ``i`` is in group ``i % len(groups)``) whose success
    evaluation reports separately (``eval/success/<group>``), e.g. the point maze's targets."""
    optional: dict[str, str] = field(default_factory=dict)
    """Facts this env has behind an option: fact -> the constructor keyword that turns it on when
    true (an ``env_options`` key, or a run key of :data:`TOP_LEVEL_OPTIONS`), e.g. LBF's
    ``{"entities": "subtasks"}``. A system that needs one turns it on (``hmarl.run.experiment``) and
    says so in the log."""

    def __post_init__(self):
        object.__setattr__(self, "obs_slices", dict(self.obs_slices))
        object.__setattr__(self, "episode_metrics", tuple(self.episode_metrics))
        object.__setattr__(self, "eval_groups", tuple(self.eval_groups))
        object.__setattr__(self, "optional", dict(self.optional))
        where = f"{self.name}'s spec"
        if self.positions is not None and (not isinstance(self.positions, int) or self.positions < 1):
            raise ValueError(f"{where}: positions is the size of a position (an int >= 1) or None, "
                             f"got {self.positions!r}")
        for name, dims in self.obs_slices.items():
            if not isinstance(dims, slice):
                raise ValueError(f"{where}: obs_slices[{name!r}] must be a slice, got {dims!r}")
            if (not isinstance(dims.start, int) or not isinstance(dims.stop, int) or dims.step not in (None, 1)
                    or not 0 <= dims.start < dims.stop <= self.obs_dim):
                raise ValueError(f"{where}: obs_slices[{name!r}] is {dims}, but must be a slice(start, stop) "
                                 f"with 0 <= start < stop <= obs_dim ({self.obs_dim})")
        if self.entities is not None:
            if not isinstance(self.entities, Entities):
                raise ValueError(f"{where}: entities must be an hmarl.spec.Entities, got {type(self.entities).__name__}")
            rows = self.entities.obs_slice
            if rows is not None and rows.stop > self.obs_dim:
                raise ValueError(f"{where}: the {self.entities.n_entities} entity rows of {self.entities.entity_dim} "
                                 f"features take obs dims {rows.start}..{rows.stop}, beyond obs_dim ({self.obs_dim})")

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
        """What this env provides that a system may require (:data:`FACTS`), derived from the typed
        fields: ``positions``, ``entities``, ``obs_slices.<name>`` for each named slice, its kind of
        actions (``discrete_actions`` or ``continuous_actions``) and, with two agents or more,
        ``several_agents``."""
        kind = "discrete_actions" if self.discrete else "continuous_actions"
        return frozenset({kind, *(["several_agents"] if self.n_agents >= 2 else []),
                          *(["positions"] if self.positions is not None else []),
                          *(["entities"] if self.entities is not None else []),
                          *(f"obs_slices.{name}" for name in self.obs_slices)})

    def lacks(self, fact: str, needed_by: str) -> str | None:
        """None if the env provides ``fact``, else one line saying who needs it, what the env has
        instead and what to change (the option that turns it on, where the env has one)."""
        if fact in self.facts:
            return None
        what = fact.replace("_", " ") if fact in ("discrete_actions", "continuous_actions") else f"an env with {fact}"
        if fact in self.optional:
            option = self.optional[fact]
            where = f"{option}: true" if option in TOP_LEVEL_OPTIONS else f"env_options: {{{option}: true}}"
            return f"{needed_by} needs {what}; {self.name} has it behind an option: set {where}"
        if fact in ("discrete_actions", "continuous_actions"):
            return f"{needed_by} needs {what}; {self.name} has {self.action_space} actions only"
        if fact == "several_agents":
            return f"{needed_by} needs several agents; {self.name} has {self.n_agents}"
        kinds = ("discrete_actions", "continuous_actions", "several_agents")
        have = ", ".join(sorted(f for f in self.facts if f not in kinds)) or "none"
        return (f"{needed_by} needs {what}; {self.name} has {have}. "
                f"Pick an env that provides {fact}, or another algorithm.")

    def require(self, fact: str, needed_by: str) -> Any:
        """The typed value behind ``fact`` (``positions``: the size; ``entities``: the
        :class:`Entities`; ``obs_slices.<name>``: the slice; any other fact: True), or a
        ValueError saying what to change."""
        message = self.lacks(fact, needed_by)
        if message is not None:
            raise ValueError(message)
        if fact == "positions":
            return self.positions
        if fact == "entities":
            return self.entities
        if fact.startswith("obs_slices."):
            return self.obs_slices[fact.removeprefix("obs_slices.")]
        return True


def facts_passed_up(below: EnvSpec, facts: Sequence[str] = ()) -> dict[str, Any]:
    """The typed facts a ``Level`` over ``below`` declares (``EnvSpec`` keywords): the positions
    always (a level gives its agents' positions, the mean of their children's), the entities
    where ``facts`` asks for them (terminations higher up read the subtasks), without their place
    in the observation. Not the observation slices: a level's agents observe their children's
    messages, not the observation below."""
    passed: dict[str, Any] = {"positions": below.positions}
    if "entities" in facts and below.entities is not None:
        passed["entities"] = dataclasses.replace(below.entities, first=None)
    return passed


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
    """A batch of ``num_envs`` copies of a multi-agent env stepping together.

    ``close`` and ``render`` have defaults (nothing to release; no rendering) that an env gets by
    subclassing ``MultiAgentEnv``; any object with all five members is one too.
    """

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> TimeStep:
        """Start new episodes in every copy; ``seed`` makes them reproducible."""

    def step(self, actions: Tensor) -> TimeStep:
        """Step every copy; copies whose episode ends reset inside (``info["final_obs"]``)."""

    def close(self) -> None:
        """Release what the env holds (wrapped envs, windows, processes); the default holds nothing.
        Whoever made the env closes it when done (``Trainer.close``, evaluation, rendering)."""

    def render(self) -> np.ndarray:
        """An RGB image ``uint8 [H, W, 3]`` of copy 0 as it is now; envs that cannot draw themselves
        raise ``NotImplementedError`` with one line naming the env."""
        raise NotImplementedError(f"{self.spec.name} does not render")
