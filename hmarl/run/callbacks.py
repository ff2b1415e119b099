"""Watching training: what :class:`hmarl.run.experiment.Trainer` tells its callbacks.

``Trainer(run, callbacks=[...])`` calls, for each :class:`Callback`, in the order given:

- ``on_reset(trainer)`` when every env copy was reset (the first iteration, and after each
  checkpoint, where episodes restart): the episodes in progress are gone;
- ``on_rollout(trainer, rollouts, step)`` after each rollout, before the update: ``rollouts[l]``
  is level ``l``'s :class:`hmarl.Rollout` of that rollout (bottom-up, ``len(rollouts)`` levels),
  ``T_l = rollout_steps // hierarchy.strides[l]`` steps of its own. Per level:

  - ``obs`` ``[T_l, B, N_l, obs_dim]``: what its agents observed, the messages of their children
    (``obs[..., :io.child_obs_dim]``) followed by the command from the level above
    (``obs[..., io.child_obs_dim:]``: one-hot for a discrete command, raw for a continuous one;
    nothing at the top);
  - ``action``: what its agents did, i.e. the commands of the level below (a joint action is split
    among the children by ``level.split_action``);
  - ``reward`` ``[T_l, B, N_l]``: what its learner learns from, as the level's reward rule gave
    it during the rollout. A rule with ``deferred = True`` (``upper_advantage``) completes it
    from the advantages of the level above in the update only;
  - ``terminated``, ``done`` ``[T_l, B]``, and ``mask`` where a level leaves transitions out.

  The rollouts are computed when first indexed (none is, if no callback looks), and are views
  of the levels' buffers that the next rollout overwrites: ``clone()`` what you keep;
- ``on_update(trainer, metrics, step)`` after the coordinated update: the update's metrics as
  floats (``level{l}/{learner}/{loss}``), before they are logged.

``step`` is the number of env steps (all copies) trained once this iteration is done.

A config names callbacks too: ``callbacks: [action_trace]`` (TAG's configs do) builds each
from :data:`CALLBACKS` with ``from_trainer(trainer)``. A named callback's :meth:`Callback.state`
travels with the run's checkpoints and its :meth:`Callback.artifacts` become the run's sacred
artifacts; callbacks given to ``Trainer(callbacks=...)`` start afresh on a resume.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmarl.lazy import attribute
from hmarl.registry import Registry

if TYPE_CHECKING:  # torch only where the trainer runs: hmarl.run.experiment imports this module
    from hmarl.buffers import Rollout
    from hmarl.run.experiment import Trainer
    from hmarl.hierarchy import Hierarchy


class Callback:
    """Watches a :class:`hmarl.run.experiment.Trainer`; override the hooks you need (each does
    nothing here). See the module docstring for what each receives."""

    def on_reset(self, trainer: Trainer) -> None:
        """Every env copy was reset: episodes in progress are gone."""

    def on_rollout(self, trainer: Trainer, rollouts: LevelRollouts, step: int) -> None:
        """A rollout ended; ``rollouts[l]`` is level ``l``'s part of it (before the update)."""

    def on_update(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """The coordinated update of the levels ran; ``metrics`` are its results."""

    @classmethod
    def from_trainer(cls, trainer: Trainer) -> Callback | None:
        """The callback a config names (``callbacks: [name]``) for ``trainer``; None where it has
        nothing to watch in this hierarchy. Default: ``cls()``."""
        return cls()

    def state(self) -> Any:
        """What a checkpoint keeps of a named callback (None: nothing)."""
        return None

    def load_state(self, state: Any) -> None:
        """Continue from what :meth:`state` returned."""

    def artifacts(self, folder: Path) -> list[Path]:
        """Files written into ``folder`` at the run's end, kept as its sacred artifacts (none here)."""
        return []


class LevelRollouts(Sequence):
    """Each level's last rollout of ``env_steps`` env steps, bottom-up, read from the levels'
    buffers when first indexed: ``rollouts[l]`` is a :class:`hmarl.Rollout` of
    ``env_steps // hierarchy.strides[l]`` steps."""

    def __init__(self, hierarchy: Hierarchy, env_steps: int):
        self.hierarchy, self.env_steps = hierarchy, env_steps
        self._read: dict[int, Rollout] = {}

    def __len__(self) -> int:
        return len(self.hierarchy.levels)

    def __getitem__(self, index: int) -> Rollout:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        index = range(len(self))[index]  # negative indices count from the top; an IndexError past it
        if index not in self._read:
            steps = self.env_steps // self.hierarchy.strides[index]
            self._read[index] = self.hierarchy.levels[index].rollout(steps=steps)
        return self._read[index]


CALLBACKS: Registry[type[Callback]] = Registry("callback")
"""Callbacks a config names in ``callbacks``; register your own here (``CALLBACKS["mine"] = Mine``)."""
CALLBACKS.add_lazy("action_trace", attribute("hmarl.algorithms.tag.action_trace", "LevelActionTrace"))
