"""Records what TAG's inter-level analysis (Sec. 5.3) needs from training: per episode, one
bottom agent's actions, the command its own superior gave it (connected) and the command
the level above gave another bottom agent, which the first never sees (unconnected; the paper
pairs the top's action for agent i with agent j's actions).

The bottom level's observation ends with its one-hot command, so the rollout of the bottom
level holds everything; copy 0 is traced, agent 0 against agent 1. Saved as
``level_actions.npz`` (``bottom``, ``connected``, ``unconnected`` ``[episodes, T]`` padded
with -1, ``n_actions``, ``n_upper_actions``), which ``hmarl.studies.report`` turns into the figure.

The trace is a :class:`hmarl.run.callbacks.Callback` that TAG's configs name
(``callbacks: [action_trace]``): the trainer builds it for every hierarchy it applies to
(:meth:`LevelActionTrace.for_hierarchy`), keeps its state in checkpoints and saves it as an artifact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from hmarl.buffers import Rollout
from hmarl.run.callbacks import Callback, LevelRollouts
from hmarl.hierarchy import Hierarchy


class LevelActionTrace(Callback):
    """Per-episode action streams of bottom agent 0, its command and agent 1's command (copy 0)."""

    def __init__(self, n_actions: int, n_upper_actions: int):
        self.n_actions, self.n_upper_actions = n_actions, n_upper_actions
        self.episodes: list[np.ndarray] = []  # finished episodes, [3, T] each
        self.current = np.zeros((3, 0), dtype=np.int64)

    @classmethod
    def for_hierarchy(cls, hierarchy: Hierarchy) -> LevelActionTrace | None:
        """A trace if the bottom level takes discrete commands over discrete actions of >= 2 agents."""
        bottom = hierarchy.levels[0]
        command, env = bottom.command, bottom.below.spec
        if not isinstance(command, spaces.Discrete) or not env.discrete or bottom.io.group != 1 or env.n_agents < 2:
            return None
        return cls(env.action_dim, int(command.n))

    @classmethod
    def from_trainer(cls, trainer) -> LevelActionTrace | None:
        return cls.for_hierarchy(trainer.hierarchy)

    def restart(self) -> None:
        """Drop the episode in progress: the env copies were reset (a checkpoint restarts episodes)."""
        self.current = np.zeros((3, 0), dtype=np.int64)

    def on_reset(self, trainer) -> None:
        """All env copies were reset: :meth:`restart`."""
        self.restart()

    def on_rollout(self, trainer, rollouts: LevelRollouts, step: int) -> None:
        """:meth:`add` the bottom level's part of the rollout."""
        self.add(rollouts[0])

    def add(self, rollout: Rollout) -> None:
        """Append copy 0's steps of one rollout of the bottom level (a few transfers per rollout, none per step)."""
        k = self.n_upper_actions
        commands = rollout.obs[:, 0, :2, -k:].argmax(-1)  # [T, 2]: agents 0 and 1
        steps = np.stack([rollout.action[:, 0, 0].cpu().numpy(), *commands.T.cpu().numpy()])  # [3, T]
        ends = np.flatnonzero(rollout.done[:, 0].cpu().numpy()) + 1
        pieces = np.split(steps, ends, axis=1)
        for piece in pieces[:-1]:
            self.episodes.append(np.concatenate([self.current, piece], axis=1))
            self.current = np.zeros((3, 0), dtype=np.int64)
        self.current = np.concatenate([self.current, pieces[-1]], axis=1)

    def arrays(self) -> dict[str, Any]:
        """The finished episodes as padded arrays (the contents of ``level_actions.npz``)."""
        length = max((e.shape[1] for e in self.episodes), default=0)
        padded = np.full((len(self.episodes), 3, length), -1, dtype=np.int64)
        for i, episode in enumerate(self.episodes):
            padded[i, :, :episode.shape[1]] = episode
        return {"bottom": padded[:, 0], "connected": padded[:, 1], "unconnected": padded[:, 2],
                "n_actions": np.int64(self.n_actions), "n_upper_actions": np.int64(self.n_upper_actions)}

    def save(self, path: Path) -> None:
        """Write :meth:`arrays` to ``path`` as a compressed ``.npz``."""
        with open(path, "wb") as f:
            np.savez_compressed(f, **self.arrays())

    def artifacts(self, folder: Path) -> list[Path]:
        """``level_actions.npz``, which ``hmarl.studies.report`` turns into the Sec. 5.3 figure."""
        path = Path(folder) / "level_actions.npz"
        self.save(path)
        return [path]

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the finished episodes and the one in progress."""
        return {"episodes": self.episodes, "current": self.current}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state` returned."""
        self.episodes, self.current = list(state["episodes"]), state["current"]
