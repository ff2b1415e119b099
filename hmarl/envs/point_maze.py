"""A batched point-mass U-maze in torch, shaped like the AntMaze of HIRO and HRL-CG.

The maze is HIRO's: a 5 x 5 grid of 8-unit cells (``WALLS``, row 0 is the lowest y)
whose free cells form a U. Cell centres sit at ``8 * (col - 1), 8 * (row - 1)``, so
the agent starts at (0, 0) in the bottom-left free cell and the corridor runs right
along y = 0 to (16, 0), up x = 16 to (16, 16) and left along y = 16 to (0, 16).
Free space is ``[-4, 20)^2`` minus the inner wall ``[-4, 12) x [4, 12)``.

Instead of an Ant, a point moves by its action (times ``speed``); a move that would
end in a wall or outside the maze is undone per axis, x first, so the point slides
along walls. Reward is minus the L2 distance to the episode's target; an episode
succeeds if the point is within ``success_radius`` of it at its final step.
"""
from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from hmarl.envs.registry import register
from hmarl.envs.seeding import cpu_generator
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep

CELL = 8.0
#: 1 = wall; row index grows with y, column index with x.
WALLS = ((1, 1, 1, 1, 1),
         (1, 0, 0, 0, 1),
         (1, 1, 1, 0, 1),
         (1, 0, 0, 0, 1),
         (1, 1, 1, 1, 1))
#: Corner of the grid: the start (0, 0) is the centre of cell (row 1, col 1).
GRID_LOW = -1.5 * CELL
#: The paper's training targets are uniform in ``[TARGET_LOW, TARGET_HIGH]^2``.
TARGET_LOW, TARGET_HIGH = -4.0, 20.0
#: The paper's evaluation targets; with ``eval_targets`` copy ``i`` gets ``EVAL_TARGETS[i % 3]``.
EVAL_TARGETS = ((16.0, 0.0), (16.0, 16.0), (0.0, 16.0))


class PointMaze(MultiAgentEnv):
    """``num_envs`` point U-mazes stepping together (one agent each).

    All copies start and end their episodes together (no early termination), so the
    step counter is one Python int and stepping never waits on the device.

    Shapes:
        obs ``[B, 1, 4]`` = (x, y, target_x, target_y), the target being the task's context
        (``obs_slices["context"]``); actions ``[B, 1, 2]`` in [-1, 1];
        reward ``[B, 1]``; ``info["positions"]`` ``[B, 1, 2]``; ``info["success"]`` ``[B]``
        bool (True only on the step that ends a successful episode); ``info["final_obs"]``.
    """

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
                 max_steps: int = 500, *, speed: float = 1.0, reward_scale: float = 1.0,
                 success_radius: float = 5.0, eval_targets: bool = False) -> None:
        if not 0 < speed <= CELL:
            # A longer step could jump across the 8-unit inner wall.
            raise ValueError(f"point_maze speed must be in (0, {CELL:g}], got {speed}")
        self._device = torch.device(device)
        self._speed = speed
        self._reward_scale = reward_scale
        self._radius = success_radius
        self._eval = eval_targets
        self._walls = torch.tensor(WALLS, dtype=torch.bool, device=self._device)
        self._gen = cpu_generator(seed)
        self._pos = torch.zeros(num_envs, 2, device=self._device)
        self._target = torch.zeros(num_envs, 2, device=self._device)
        self._t = 0
        self.spec = EnvSpec(
            n_agents=1, obs_dim=4, action_space=spaces.Box(-1.0, 1.0, (2,)), max_steps=max_steps,
            num_envs=num_envs, device=self._device,
            name="point_maze", positions=2, obs_slices={"position": slice(0, 2), "context": slice(2, 4)},
            episode_metrics=("success",),
            eval_groups=tuple(f"{x:g},{y:g}" for x, y in EVAL_TARGETS) if eval_targets else ())

    def reset(self, seed: int | None = None) -> TimeStep:
        """Start every copy at (0, 0) with a new target; ``seed`` re-seeds the targets."""
        if seed is not None:
            self._gen.manual_seed(seed)
        self._start()
        b = self.spec.num_envs
        no = torch.zeros(b, dtype=torch.bool, device=self._device)
        return TimeStep(obs=self._obs(), reward=torch.zeros(b, 1, device=self._device),
                        terminated=no, truncated=no.clone(),
                        info={"positions": self._pos.unsqueeze(1)})

    def step(self, actions: Tensor) -> TimeStep:
        delta = actions.reshape(-1, 2).to(self._pos).clamp(-1.0, 1.0) * self._speed
        pos = self._pos
        for axis in (0, 1):
            moved = pos.clone()
            moved[:, axis] += delta[:, axis]
            pos = torch.where(self._free(moved).unsqueeze(-1), moved, pos)
        # _pos is replaced, never written in place, so views handed out earlier stay valid.
        self._pos = pos
        self._t += 1

        distance = torch.linalg.vector_norm(pos - self._target, dim=-1)
        reward = (-distance * self._reward_scale).unsqueeze(-1)
        final_obs, final_positions = self._obs(), self._pos.unsqueeze(1)
        b = self.spec.num_envs
        ended = self._t >= self.spec.max_steps
        truncated = torch.full((b,), ended, dtype=torch.bool, device=self._device)
        success = truncated & (distance < self._radius)
        if ended:
            self._start()
        return TimeStep(obs=self._obs(), reward=reward,
                        terminated=torch.zeros_like(truncated), truncated=truncated,
                        info={"final_obs": final_obs, "final_positions": final_positions,
                              "positions": self._pos.unsqueeze(1),
                              "success": success})

    def _start(self) -> None:
        b = self.spec.num_envs
        self._pos = torch.zeros(b, 2, device=self._device)
        self._t = 0
        if self._eval:
            targets = torch.tensor(EVAL_TARGETS)[torch.arange(b) % len(EVAL_TARGETS)]
        else:
            targets = TARGET_LOW + (TARGET_HIGH - TARGET_LOW) * torch.rand(b, 2, generator=self._gen)
        self._target = targets.to(self._device)

    def _free(self, xy: Tensor) -> Tensor:
        """Whether each point ``[B, 2]`` lies in a free cell; off the grid counts as wall."""
        cell = torch.floor((xy - GRID_LOW) / CELL).long().clamp(0, len(WALLS) - 1)
        return ~self._walls[cell[:, 1], cell[:, 0]]

    def _obs(self) -> Tensor:
        return torch.cat([self._pos, self._target], dim=-1).unsqueeze(1)

    def render(self) -> np.ndarray:
        """Copy 0 as it is now, ``uint8 [240, 240, 3]``: walls, target, point (matplotlib)."""
        from hmarl.envs.scenes import PointMazeScene, still

        b = self.spec.num_envs
        no = torch.zeros(b, dtype=torch.bool, device=self._device)
        ts = TimeStep(obs=self._obs(), reward=torch.zeros(b, 1, device=self._device), terminated=no, truncated=no,
                      info={"positions": self._pos.unsqueeze(1)})
        return still(PointMazeScene, self, ts)


@register("point_maze")
def point_maze(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
               n_agents: int = 1, max_steps: int = 500, continuous_actions: bool = True,
               **options) -> PointMaze:
    """The point U-maze; ``options``: ``speed``, ``reward_scale``, ``success_radius``, ``eval_targets``."""
    if n_agents != 1:
        raise ValueError(f"point_maze has one agent; set n_agents=1 (got {n_agents})")
    if not continuous_actions:
        raise ValueError("point_maze has continuous actions only; set continuous_actions=True")
    return PointMaze(num_envs, device=device, seed=seed, max_steps=max_steps, **options)
