"""Rollout storage for on-policy learners and replay storage for off-policy ones: tensors only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


@dataclass
class Rollout:
    """A level's transitions of one rollout, ``T`` steps of ``B`` copies.

    Shapes:
        obs, final_obs ``[T, B, N, obs_dim]``; last_obs ``[B, N, obs_dim]``;
        action ``[T, B, N]`` / ``[T, B, N, heads]`` (discrete) or ``[T, B, N, act_dim]``;
        log_prob, reward ``[T, B, N]``; terminated, done ``[T, B]``.
    ``final_obs[t]`` is what the agents saw when copy b's episode ended at t
    (only read where ``done``); ``last_obs`` is what they see after step T-1.
    """

    obs: Tensor
    action: Tensor
    log_prob: Tensor
    reward: Tensor
    terminated: Tensor
    done: Tensor
    final_obs: Tensor
    last_obs: Tensor
    parent: Tensor | None = None
    """``[T, B, N_below]``: each unit's agent at each step, for levels that regroup children."""
    slot: Tensor | None = None
    """``[T, B, N_below]``: each unit's place among its agent's children."""
    decision: Tensor | None = None
    """``[T, B]``: the copy's agents took a new action at this step (levels with ``decide_every``)."""
    mask: Tensor | None = None
    """``[T, B, N]`` bool: the transitions that count in every loss (None: all of them). A step
    is left out when its agent is dead (env ``info["alive"]``) or when the command it acted
    on belongs to an episode that has already ended (an episode ended inside the period of
    a level above, and that level has not decided since)."""

    child_mask: Tensor | None = None
    """``[T, B, N, group]`` bool: the child slots that hold a living unit while their agent's
    transition counts (per-child terms, e.g. HiMPo's per-edge advantages; None: all of them)."""
    state: Tensor | None = None
    """``[T, B, ...]``: a recurrent learner's state each step started from (zeros where an
    episode started; :meth:`hmarl.learner.Learner.initial_state`), for truncated BPTT."""

    def weights(self) -> Tensor:
        """``mask`` as float ``[T, B, N]`` (ones when every transition counts)."""
        if self.mask is None:
            return self.reward.new_ones(self.reward.shape[:3])
        return self.mask.to(self.reward.dtype)

    def next_obs(self) -> Tensor:
        """The observation following each step, before any reset: ``[T, B, N, obs_dim]``."""
        following = torch.cat([self.obs[1:], self.last_obs.unsqueeze(0)])
        return torch.where(self.done[..., None, None], self.final_obs, following)


class RolloutBuffer:
    """Holds ``capacity`` steps; tensors are allocated on the first ``add``."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.t = 0
        self._data: dict[str, Tensor] = {}

    @property
    def full(self) -> bool:
        """Whether all ``capacity`` steps have been added."""
        return self.t == self.capacity

    def add(self, **fields: Tensor) -> None:
        """Store one step: every field ``[B, ...]`` (storage is allocated on the first call)."""
        if self.t >= self.capacity:
            raise RuntimeError(f"rollout buffer overflow: capacity {self.capacity}")
        if not self._data:
            self._data = {k: torch.empty(self.capacity, *v.shape, dtype=v.dtype, device=v.device)
                          for k, v in fields.items()}
        for key, value in fields.items():
            self._data[key][self.t] = value
        self.t += 1

    def rollout(self, last_obs: Tensor, steps: int | None = None) -> Rollout:
        """The stored steps as a :class:`Rollout` (the buffer must be full), or only the last
        ``steps`` of them stored so far; ``last_obs`` bootstraps."""
        if steps is None and not self.full:
            raise RuntimeError(f"rollout read after {self.t} of {self.capacity} steps")
        if steps is not None and not 0 < steps <= self.t:
            raise RuntimeError(f"the last {steps} steps were asked for; {self.t} are stored")
        start, end = (0, self.capacity) if steps is None else (self.t - steps, self.t)
        return Rollout(last_obs=last_obs, **{k: v[start:end] for k, v in self._data.items()})

    def clear(self) -> None:
        """Start the next rollout (storage is kept and overwritten)."""
        self.t = 0


class ReplayBuffer:
    """A ring buffer of named tensor fields for off-policy learners.

    Every ``add`` gives each field as a batch ``[M, ...]`` with one ``M`` for all
    fields; storage ``[capacity, ...]`` is allocated on the first ``add``, on the
    device and with the dtypes of that batch. When full, the oldest rows are
    overwritten; a batch larger than ``capacity`` keeps its last ``capacity`` rows.
    ``sample`` draws rows uniformly with replacement (``torch.randint``, torch's
    global RNG of the storage device).
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.pos = 0  # next row to write
        self.size = 0  # rows written so far, at most capacity
        self._data: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return self.size

    @property
    def device(self) -> torch.device | None:
        """The storage's device (None before the first ``add``)."""
        return next(iter(self._data.values())).device if self._data else None

    def add(self, **fields: Tensor) -> None:
        """Append a batch of rows, every field ``[M, ...]`` with the same ``M``."""
        if not fields:
            raise ValueError("ReplayBuffer.add needs at least one field")
        sizes = {k: v.shape[0] for k, v in fields.items()}
        m = next(iter(sizes.values()))
        if any(size != m for size in sizes.values()):
            raise ValueError(f"replay fields must share their first dimension, got {sizes}")
        if not self._data:
            self._data = {k: torch.empty(self.capacity, *v.shape[1:], dtype=v.dtype, device=v.device)
                          for k, v in fields.items()}
        elif fields.keys() != self._data.keys():
            raise ValueError(f"replay fields {sorted(fields)} differ from the stored {sorted(self._data)}")
        if m == 0:
            return
        skip = max(0, m - self.capacity)  # rows that would be overwritten within this batch
        rows = (self.pos + skip + torch.arange(m - skip, device=self.device)) % self.capacity
        for key, value in fields.items():
            self._data[key][rows] = value[skip:].to(self._data[key].device)
        self.pos = (self.pos + m) % self.capacity
        self.size = min(self.capacity, self.size + m)

    def state_dict(self) -> dict:
        """The rows written so far (checkpoints: a resumed learner keeps its experience)."""
        return {"pos": self.pos, "size": self.size, "data": {k: v[:self.size] for k, v in self._data.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._data = {}
        self.pos = self.size = 0
        if state["size"]:
            self.add(**state["data"])
        self.pos = state["pos"]

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """``batch_size`` rows drawn uniformly with replacement: ``{field: [batch_size, ...]}``."""
        return next(self.batches(1, batch_size))

    #: bytes of replay rows gathered at once by :meth:`batches` (several minibatches per gather)
    GATHER_BYTES = 16 * 2 ** 20

    def batches(self, steps: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """The minibatches of ``steps`` gradient steps, each as :meth:`sample`'s, drawn by one
        ``randint`` for all of them (one RNG call per update, not per step; the rows are the same
        in law as long as nothing is added meanwhile).

        The rows of several minibatches are gathered together, one ``index_select`` per field
        for up to ``GATHER_BYTES`` of rows, and each minibatch is a slice of that gather: the
        same rows, bit for bit, as indexing each minibatch on its own, without a gather per
        field and gradient step (on the CPU, TD3's six fields at 128 rows cost about as much
        to gather one by one as a quarter of the gradient step they feed). Only the rows of
        one gather are in memory beside the replay; they are views, so a learner must not
        write into its batch (none does).
        """
        if self.size == 0:
            raise RuntimeError("sample from an empty replay buffer")
        index = torch.randint(self.size, (steps, batch_size), device=self.device)
        row_bytes = sum(v[0].numel() * v.element_size() for v in self._data.values())
        chunk = max(1, min(steps, self.GATHER_BYTES // max(1, row_bytes * batch_size)))
        for start in range(0, steps, chunk):
            rows = index[start:start + chunk].reshape(-1)
            gathered = {key: value.index_select(0, rows) for key, value in self._data.items()}
            for i in range(len(rows) // batch_size):
                yield {key: value[i * batch_size:(i + 1) * batch_size] for key, value in gathered.items()}
