"""Reward rules: which reward a level's agents learn from.

What a level passes *up* is always the sum of its children's rewards over its
period (TAG's phi). What its agents *learn* from is a rule, so that reward
schemes are an ablation switch rather than a fork of the code.

Shapes: every field of :class:`LevelStep` is ``[B, N, ...]``; rules return ``[B, N]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hmarl.buffers import Rollout
from hmarl.learner import UpdateContext
from hmarl.registry import REWARD_RULES  # noqa: F401  (re-exported with the rules)
from hmarl.spec import EnvSpec, Tensor
from hmarl.strategies import EnvRead, EnvView


@dataclass
class LevelStep:
    """One step of a level, as a reward rule sees it."""

    children_reward: torch.Tensor
    """Sum of the children's rewards over the step ``[B, N]``."""
    child_obs: torch.Tensor
    """The children's messages before the step ``[B, N, child_obs_dim]``."""
    next_child_obs: torch.Tensor
    """... and after it, before any reset ``[B, N, child_obs_dim]``."""
    command: torch.Tensor | None
    """The command the agents held (one-hot or raw) ``[B, N, k]``; None at the top."""
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    """What the level below reported with this step (the env's ``info`` at the bottom)."""
    env: EnvView | None = None
    """What the step read of the env below all levels: the entries the rule's ``reads_env`` names,
    and which env agents are under each agent (None when the rule reads none)."""


class RewardRule:
    """Base rule; built for the level's agents over ``below``; called once per step.

    A rule that ``needs`` outputs of the level above (e.g. its ``advantages``), which exist only
    once that level has updated, completes the stored rewards in :meth:`relabel`: the
    Hierarchy's top-down update calls it with what the level above published. The build
    checks ``needs <= upper learner's publishes``.
    """

    needs: frozenset[str] = frozenset()
    #: what the rule reads of the env below all levels (``step.env``): the Levels between pass these
    #: entries up (:class:`~hmarl.strategies.EnvRead`), so the rule works at any depth. Such a rule is
    #: built with the env's spec as ``below`` (the facts it reads are the env's).
    reads_env: tuple[EnvRead, ...] = ()

    def __init__(self, below: EnvSpec, group_size: int):
        self.below = below
        self.group_size = group_size

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        raise NotImplementedError

    def check_command(self, command) -> None:
        """Fail at build time if the level above sends commands this rule cannot read."""

    def relabel(self, rollout: Rollout, ctx: UpdateContext) -> Tensor:
        """The rewards ``[T, B, N]`` to learn from, given what the level above published
        (``ctx.above``); only rules with ``needs`` are asked."""
        return rollout.reward


class SumUp(RewardRule):
    """TAG: an agent learns from the sum of its children's rewards."""

    def step_reward(self, step: LevelStep) -> torch.Tensor:
        """The reward ``[B, N]`` the level's agents store for this step."""
        return step.children_reward


