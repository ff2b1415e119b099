"""Matplotlib scenes of the built-in envs: each draws copy 0 of a TimeStep as an RGB image, with an
optional overlay of what a hierarchy does (owners, goals, allocations). The envs' ``render()`` uses
them (:func:`still`), and so do the episode videos of :mod:`hmarl.run.render`, which adds the
overlays. matplotlib is imported with this module, which only rendering imports."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hmarl.spec import MultiAgentEnv, TimeStep

PALETTE = [matplotlib.colors.to_rgb(c) for c in matplotlib.colormaps["tab10"].colors]
"""Colours of upper agents, allocations and subtasks (by index, cycling)."""


@dataclass
class Overlay:
    """What the hierarchy is doing at one env step, per env agent (``[N]`` or ``[N, 2]`` arrays)."""

    owner: np.ndarray | None
    """Index of the level-1 agent above each env agent (None without a level 1)."""
    outer: np.ndarray | None
    """Index of its level-2 agent (None unless level 2 has several agents)."""
    goals: np.ndarray | None
    """Each agent's goal in env coordinates (None unless level 0's commands are relative goals)."""
    allocation: np.ndarray | None
    """The subtask each agent is allocated to (None unless level 0 learns from subtasks)."""

    def fill(self, agent: int) -> tuple[float, float, float]:
        """The colour of env agent ``agent``: its subtask's, else its upper agent's, else its own."""
        index = self.allocation if self.allocation is not None else self.owner
        return PALETTE[int(index[agent] if index is not None else agent) % len(PALETTE)]

    def edge(self, agent: int) -> tuple[float, float, float]:
        """The outline of env agent ``agent``: its level-2 agent's colour, else black."""
        return (0.0, 0.0, 0.0) if self.outer is None else PALETTE[int(self.outer[agent]) % len(PALETTE)]


@dataclass
class Frame:
    """One recorded env step: the env's TimeStep (copy 0) and the overlay at that step."""

    ts: TimeStep
    overlay: Overlay
    step: int
    episode_return: float


class MatplotlibScene:
    """Draws one env step with matplotlib (Agg): the env's own things, then the agents and overlay.

    ``draw_env(ax, ts)`` draws what belongs to the env and returns the agents' positions
    ``[N, 2]`` and the subtasks' ``[S, 2]`` (or None) in plot coordinates.
    """

    def __init__(self, env: MultiAgentEnv, name: str, options: dict[str, Any], size: int):
        self.env, self.name, self.options, self.size = env, name, options, size
        self.spec = env.spec

    def frame(self, frame: Frame, title: str) -> np.ndarray:
        """The RGB image ``[size, size, 3]`` of one frame."""
        return self.image(frame.ts, frame.overlay,
                          f"{title}  t={frame.step}  return {frame.episode_return:.2f}")

    def image(self, ts: TimeStep, overlay: Overlay, caption: str) -> np.ndarray:
        """The RGB image ``uint8 [size, size, 3]`` of copy 0 of ``ts`` with ``overlay``, captioned."""
        figure = Figure(figsize=(self.size / 80, self.size / 80), dpi=80)
        canvas = FigureCanvasAgg(figure)
        ax = figure.add_axes((0, 0, 1, 0.9))
        ax.set_axis_off()
        ax.set_aspect("equal")
        positions, subtasks = self.draw_env(ax, ts)
        if overlay.allocation is not None and subtasks is not None:
            for index, (x, y) in enumerate(subtasks):  # a ring in the colour its agents take
                ax.scatter([x], [y], s=self.marker * 3.5, marker="s", facecolors="none", linewidths=1.5,
                           edgecolors=[PALETTE[index % len(PALETTE)]], zorder=1.5)
            for agent, subtask in enumerate(overlay.allocation):
                (x0, y0), (x1, y1) = positions[agent], subtasks[int(subtask)]
                ax.plot([x0, x1], [y0, y1], color=PALETTE[int(subtask) % len(PALETTE)], lw=1, ls="--", zorder=2)
        if overlay.goals is not None:
            for agent, goal in enumerate(self.to_plot(overlay.goals)):
                (x, y) = positions[agent]
                ax.annotate("", xy=goal, xytext=(x, y), zorder=3,
                            arrowprops=dict(arrowstyle="->", color=overlay.fill(agent), lw=1.5))
        for agent, (x, y) in enumerate(positions):
            ax.scatter([x], [y], s=self.marker, color=[overlay.fill(agent)], edgecolors=[overlay.edge(agent)],
                       linewidths=2, zorder=4)
        figure.text(0.5, 0.95, caption, ha="center", va="center", fontsize=7)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    marker = 80
    """Area of an agent's marker (points squared)."""

    def to_plot(self, xy: np.ndarray) -> np.ndarray:
        """Env coordinates ``[..., 2]`` as plot coordinates (grids: ``(row, col)`` -> ``(col, -row)``)."""
        return xy

    def draw_env(self, ax, ts: TimeStep) -> tuple[np.ndarray, np.ndarray | None]:
        """Continuous worlds (VMAS, MPE): agents where the env says they are, landmarks if it has them."""
        obs = ts.obs[0].cpu().numpy()
        info = {k: v[0].cpu().numpy() for k, v in ts.info.items() if torch.is_tensor(v) and v.dim() > 1}
        slices = self.spec.obs_slices
        if "positions" in info:
            positions = info["positions"]
        else:
            positions = obs[:, slices["position"]]
        subtasks = None
        if "entities" in info and self.spec.entities is not None:  # landmark subtasks: absolute entity rows
            subtasks = info["entities"][self.spec.n_agents:, :2]
        elif "landmarks" in slices:
            subtasks = positions[0] + obs[0, slices["landmarks"]].reshape(-1, 2)
        if subtasks is not None:
            ax.scatter(subtasks[:, 0], subtasks[:, 1], s=self.marker, marker="s", color="0.8", zorder=1)
        extent = np.abs(np.concatenate([positions, subtasks if subtasks is not None else positions])).max()
        ax.set_xlim(-extent - 0.3, extent + 0.3)
        ax.set_ylim(-extent - 0.3, extent + 0.3)
        return positions, subtasks


class PointMazeScene(MatplotlibScene):
    """The point U-maze: walls, the episode's target (a star), the point."""

    def draw_env(self, ax, ts):
        from hmarl.envs.point_maze import CELL, GRID_LOW, WALLS

        for row, cells in enumerate(WALLS):
            for col, wall in enumerate(cells):
                if wall:
                    ax.add_patch(Rectangle((GRID_LOW + col * CELL, GRID_LOW + row * CELL), CELL,
                                                              CELL, color="0.6", zorder=0))
        obs = ts.obs[0].cpu().numpy()  # [1, 4]: position, target
        ax.scatter([obs[0, 2]], [obs[0, 3]], marker="*", s=150, color="gold", edgecolors="k", zorder=1)
        ax.set_xlim(GRID_LOW, GRID_LOW + len(WALLS) * CELL)
        ax.set_ylim(GRID_LOW, GRID_LOW + len(WALLS) * CELL)
        return obs[:, :2], None


class GridScene(MatplotlibScene):
    """Grid worlds, ``(row, col)`` positions drawn with row 0 at the top."""

    marker = 60

    def to_plot(self, xy):
        return np.stack([xy[..., 1], -xy[..., 0]], -1)

    def grid(self, ax, rows: int, cols: int) -> None:
        for r in range(rows + 1):
            ax.plot([-0.5, cols - 0.5], [-r + 0.5, -r + 0.5], color="0.9", lw=0.5, zorder=0)
        for c in range(cols + 1):
            ax.plot([c - 0.5, c - 0.5], [0.5, -rows + 0.5], color="0.9", lw=0.5, zorder=0)
        ax.set_xlim(-0.6, cols - 0.4)
        ax.set_ylim(-rows + 0.4, 0.6)


class LbfScene(GridScene):
    """Level-Based Foraging: foods (squares with their level) and players, from the env's global ``state``."""

    def draw_env(self, ax, ts):
        from hmarl.envs.lbf import LBFWS_EASY, LBFWS_HARD

        options = {**{"lbfws_easy": LBFWS_EASY, "lbfws_hard": LBFWS_HARD}.get(self.name, {}), **self.options}
        size = options.get("field_size", 8)
        rows, cols = (size, size) if isinstance(size, int) else size
        self.grid(ax, rows, cols)
        n = self.spec.n_agents
        state = ts.state[0].cpu().numpy()
        foods = state[:state.shape[0] - 3 * n - (n if options.get("survival") else 0)].reshape(-1, 3)
        players = state[len(foods) * 3:len(foods) * 3 + 3 * n].reshape(n, 3)
        for row, col, level in foods:
            if level > 0:
                x, y = self.to_plot(np.array([row, col]))
                ax.scatter([x], [y], marker="s", s=110, color="#7cb342", zorder=1)
                ax.text(x, y, str(int(level)), ha="center", va="center", fontsize=7, zorder=5)
        positions = self.to_plot(players[:, :2])
        for (x, y), level in zip(positions, players[:, 2]):
            ax.text(x, y, str(int(level)), ha="center", va="center", fontsize=6, color="w", zorder=5)
        subtasks = None
        if "entities" in ts.info:  # subtask slots: rows scaled by max(rows, cols) - 1
            entities = ts.info["entities"][0].cpu().numpy()
            subtasks = self.to_plot(entities[n:, :2] * (max(rows, cols) - 1))
        return positions, subtasks


class CityScene(GridScene):
    """SaveTheCity: buildings green by health (a flame while burning, a black rim once finished),
    agents with their type's letter."""

    def draw_env(self, ax, ts):
        from hmarl.envs.savethecity import GRID

        self.grid(ax, GRID, GRID)
        n = self.spec.n_agents
        entities = ts.info["entities"][0].cpu().numpy()  # agents, then buildings; see envs.savethecity
        places = self.to_plot(np.rint(entities[:, :2] * (GRID - 1)))
        for (x, y), row in zip(places[n:], entities[n:]):
            fire, health, finished = row[7], row[8], row[11]
            ax.scatter([x], [y], marker="s", s=150, color=matplotlib.colormaps["Greens"](0.2 + 0.8 * health),
                       edgecolors="k" if finished else "0.5", linewidths=2, zorder=1)
            if fire > 0:
                ax.scatter([x], [y], marker="^", s=20 + 80 * fire, color="orangered", zorder=1.6)
        for (x, y), row in zip(places[:n], entities[:n]):
            kind = "FBG"[int(np.argmax(row[4:7]))]  # firefighter, builder, generalist
            ax.text(x, y, kind, ha="center", va="center", fontsize=6, color="w", zorder=5)
        return places[:n], places[n:]


NO_OVERLAY = Overlay(None, None, None, None)
"""An overlay that draws nothing over the env."""


def still(scene: type[MatplotlibScene], env: MultiAgentEnv, ts: TimeStep, options: dict[str, Any] | None = None,
          size: int = 240) -> np.ndarray:
    """A built-in env's ``render()``: copy 0 of ``ts`` (the env as it is now) drawn by ``scene``,
    captioned with the env's name; ``uint8 [size, size, 3]``."""
    return scene(env, env.spec.name, options or {}, size).image(ts, NO_OVERLAY, env.spec.name)
