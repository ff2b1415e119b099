"""Render one evaluation episode of a trained hierarchy, with the hierarchy drawn over the env.

``render_episode(hierarchy, run, path)`` plays one greedy episode on a fresh single-copy env
and writes it as a GIF or MP4 (``imageio``; MP4 needs ``imageio-ffmpeg``, the ``render``
extra). Every frame shows the env and, over it,

* **ownership**: each env agent is filled with the colour of the level-1 agent above it (its
  upper agent) and outlined in the colour of its level-2 agent when that level has several;
* **goals**: where a level's commands are goals relative to the env's goal dims (HRL-CG),
  an arrow from each agent to its goal;
* **allocations**: where the agents learn from the subtask they are given (ALMA), each agent
  and its subtask share a colour, joined by a line.

VMAS envs are drawn by VMAS's own renderer (agent colours and extra geometry for the
overlay) when it works: it needs OpenGL (pyglet; headless through EGL), and some scenarios'
own drawing fails with newer libraries (``vmas_sampling`` calls ``matplotlib.cm.get_cmap``,
removed in matplotlib 3.9). Otherwise, and for LBF, SaveTheCity, the point maze and MPE, a
small matplotlib (Agg) renderer draws the scene: agents where the env puts them, and what the
env shows of itself (walls and target, foods, buildings, landmarks). Any other env (one with
neither ``positions`` nor ``obs_slices["position"]``) is drawn by its own
``MultiAgentEnv.render`` (no overlay).

The built-in envs' ``render()`` (one still frame of copy 0, no overlay) is :func:`still`
with their scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib
import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw, ImageFont

from hmarl.hierarchy import Hierarchy
from hmarl.algorithms.alma.subtasks import SubtaskReward
from hmarl.spec import MultiAgentEnv, Tensor, TimeStep

PALETTE = [matplotlib.colors.to_rgb(c) for c in matplotlib.colormaps["tab10"].colors]
"""Colours of upper agents, allocations and subtasks (by index, cycling)."""
VIDEO_SUFFIXES = (".gif", ".mp4")


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


@dataclass
class Episode:
    """A played episode: its frames, its length in env steps and its return (mean over agents).

    The episode's last step has no frame: by the time the env reports it, it has started the
    next episode, and not every env keeps the last state (``final_obs`` is not the whole scene).
    """

    frames: list[Frame]
    steps: int
    episode_return: float


class Recorder:
    """A ``MultiAgentEnv`` wrapper that keeps the latest TimeStep and calls ``on_step`` after each step."""

    def __init__(self, env: MultiAgentEnv):
        self.env = env
        self.spec = env.spec
        self.last: TimeStep | None = None
        self.on_step: Callable[[TimeStep], None] = lambda ts: None

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset the env and remember its first TimeStep."""
        self.last = self.env.reset(seed)
        return self.last

    def step(self, actions: Tensor) -> TimeStep:
        """Step the env, remember the TimeStep, report it."""
        self.last = self.env.step(actions)
        self.on_step(self.last)
        return self.last


class HierarchyWatch:
    """Reads ownership, goals and allocations off a hierarchy as it plays.

    Commands are seen where they pass between levels: each level's ``step`` is wrapped on the
    instance (the hierarchy is a throwaway copy made by ``Hierarchy.attach``), and a relative
    goal is turned into a target in env coordinates when it is given, as ``h(s, g, s') = s + g - s'``
    keeps that target fixed until the next one.
    """

    def __init__(self, hierarchy: Hierarchy, recorder: Recorder):
        self.hierarchy, self.recorder = hierarchy, recorder
        self.commands: list[Tensor | None] = [None] * len(hierarchy.levels)
        self.targets: Tensor | None = None
        self._goal_index = recorder.spec.obs_slices.get("position")
        for index, level in enumerate(hierarchy.levels):
            level.step = self._watch(index, level.step)

    def _watch(self, index: int, step: Callable[[Tensor | None], TimeStep]) -> Callable[[Tensor | None], TimeStep]:
        def watched(command: Tensor | None = None) -> TimeStep:
            self.commands[index] = command
            if index == 0 and command is not None and self.hierarchy.levels[0].channel.carries:
                here = self.recorder.last.obs[0, :, self._goal_index]  # [N, 2]: where each agent is now
                self.targets = here + command[0]
            return step(command)

        return watched

    def _to_env_agents(self, level: int, values: Tensor) -> np.ndarray:
        """Per-agent values of ``level`` ``[N_level]`` as values of the env agents below them."""
        unit = torch.arange(self.recorder.spec.n_agents, device=values.device)
        for lower in self.hierarchy.levels[:level + 1]:
            parent, _ = lower.parents()
            unit = (parent[0] if parent.dim() == 2 else parent)[unit]
        return values[unit].cpu().numpy()

    def overlay(self) -> Overlay:
        """The overlay now (see ``Overlay``)."""
        levels = self.hierarchy.levels
        owner = outer = goals = allocation = None
        if len(levels) > 1:
            owner = self._to_env_agents(1, torch.arange(levels[1].spec.n_agents))
        if len(levels) > 2 and levels[2].spec.n_agents > 1:
            outer = self._to_env_agents(2, torch.arange(levels[2].spec.n_agents))
        if self.targets is not None:
            goals = self._to_env_agents(0, self.targets)
        if isinstance(levels[0].reward_rule, SubtaskReward) and self.commands[0] is not None:
            allocation = self._to_env_agents(0, self.commands[0][0])
        return Overlay(owner, outer, goals, allocation)


def play(hierarchy: Hierarchy, env: MultiAgentEnv, seed: int, every: int = 1,
         on_frame: Callable[[Frame], None] = lambda frame: None) -> Episode:
    """One greedy episode of ``hierarchy``'s agents on ``env`` (copy 0): a frame of its start and
    of every ``every``-th env step, each passed to ``on_frame`` as it happens (see ``Episode``)."""
    recorder = Recorder(env)
    player = hierarchy.attach(recorder)
    watch = HierarchyWatch(player, recorder)
    episode = Episode([], 0, 0.0)
    done = False

    def keep(frame: Frame) -> None:
        episode.frames.append(frame)
        on_frame(frame)

    def on_step(ts: TimeStep) -> None:
        nonlocal done
        if done:  # the rest of the top level's period belongs to the next episode
            return
        episode.steps += 1
        episode.episode_return += float(ts.reward[0].mean())
        done = bool(ts.done[0])
        if episode.steps % every == 0 and not done:
            keep(Frame(ts, watch.overlay(), episode.steps, episode.episode_return))

    player.train(False)
    with torch.random.fork_rng(devices=[]):  # greedy play draws no random numbers of the caller's
        player.reset(seed)
        keep(Frame(recorder.last, watch.overlay(), 0, 0.0))
        recorder.on_step = on_step
        for _ in range(math.ceil(env.spec.max_steps / player.top_stride)):
            player.top.step(None)
            if done:
                break
    return episode


# -- drawing -----------------------------------------------------------------------------------

def _vmas(env: MultiAgentEnv):
    """The VMAS ``Environment`` under ``env`` (through wrappers such as landmark subtasks), or None."""
    while env is not None:
        inner = getattr(env, "_env", None)  # envs.vmas.VmasEnv keeps the VMAS Environment here
        if inner is not None and hasattr(inner, "render"):
            return inner
        env = getattr(env, "env", None)
    return None


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


class NativeScene:
    """An env without positions drawn by its own ``MultiAgentEnv.render`` (no overlay), captioned
    like the other frames; drawn while the episode plays, as the env draws only its present."""

    def __init__(self, env: MultiAgentEnv, size: int):
        self.env, self.size = env, size

    def frame(self, frame: Frame, title: str) -> np.ndarray:
        image = Image.fromarray(np.asarray(self.env.render(), dtype=np.uint8)).resize((self.size, self.size))
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 9)  # the matplotlib frames' font
        ImageDraw.Draw(image).text((4, 2), f"{title}  t={frame.step}  return {frame.episode_return:.2f}",
                                   fill=(0, 0, 0), font=font)
        return np.asarray(image)


def scene_for(env: MultiAgentEnv, name: str, options: dict[str, Any], size: int) -> MatplotlibScene | NativeScene:
    """The matplotlib scene of env ``name``; for an env that gives no positions, its own renderer."""
    if name == "point_maze":
        return PointMazeScene(env, name, options, size)
    if name == "savethecity":
        return CityScene(env, name, options, size)
    if name.startswith("lbf"):
        return LbfScene(env, name, options, size)
    if env.spec.positions is None and "position" not in env.spec.obs_slices:
        return NativeScene(env, size)
    return MatplotlibScene(env, name, options, size)


class VmasScene:
    """VMAS's own renderer, with the overlay as agent colours and extra geometry."""

    def __init__(self, vmas_env, size: int):
        self.vmas = vmas_env
        self.vmas.scenario.viewer_size = (size, size)  # read when the viewer is first made
        self.overlay: Overlay | None = None
        scenario_render = self.vmas.scenario.extra_render
        self.vmas.scenario.extra_render = lambda env_index=0: [*scenario_render(env_index), *self._geoms()]

    def works(self) -> bool:
        """Whether VMAS's renderer works here, for this scenario (see the module docstring)."""
        try:
            self.vmas.render(mode="rgb_array", env_index=0)
        except Exception:  # pyglet raises several kinds of errors without GL, scenarios their own
            return False
        return True

    def _geoms(self) -> list:
        from vmas.simulator import rendering

        overlay, geoms = self.overlay, []
        if overlay is None:  # a render before the first frame (``works``)
            return geoms
        agents = self.vmas.agents
        for index, agent in enumerate(agents):
            here = agent.state.pos[0].tolist()
            if overlay.outer is not None:
                ring = rendering.make_circle(agent.shape.radius * 1.5, filled=False)
                ring.add_attr(rendering.Transform(translation=here))
                ring.set_color(*overlay.edge(index))
                geoms.append(ring)
            if overlay.goals is not None:
                line = rendering.Line(here, overlay.goals[index].tolist(), width=2)
                line.set_color(*overlay.fill(index))
                geoms.append(line)
            if overlay.allocation is not None:
                landmark = self.vmas.world.landmarks[int(overlay.allocation[index])]
                line = rendering.Line(here, landmark.state.pos[0].tolist(), width=1)
                line.set_color(*overlay.fill(index))
                geoms.append(line)
        return geoms

    def frame(self, frame: Frame, title: str) -> np.ndarray:
        """VMAS's RGB image of the current state (VMAS draws only the present: frames are drawn as played)."""
        self.overlay = frame.overlay
        for index, agent in enumerate(self.vmas.agents):
            agent.color = frame.overlay.fill(index)
        if frame.overlay.allocation is not None:
            for index, landmark in enumerate(self.vmas.world.landmarks):
                landmark.color = tuple(0.5 + 0.5 * c for c in PALETTE[index % len(PALETTE)])
        image = Image.fromarray(np.asarray(self.vmas.render(mode="rgb_array", env_index=0)))
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 9)  # the matplotlib frames' font
        ImageDraw.Draw(image).text((4, 2), f"{title}  t={frame.step}  return {frame.episode_return:.2f}",
                                   fill=(0, 0, 0), font=font)
        return np.asarray(image)


def render_episode(hierarchy: Hierarchy, env: MultiAgentEnv, name: str, options: dict[str, Any], seed: int,
                   path: str | Path, title: str, fps: int = 10, every: int = 1, size: int = 240,
                   native: bool = True) -> dict[str, Any]:
    """Play one greedy episode of ``hierarchy`` on ``env`` (a fresh single copy of env ``name``,
    built with ``options``, seeded by ``seed``) and write it to ``path`` (.gif or .mp4): every
    ``every``-th env step as a ``size`` x ``size`` frame, ``fps`` a second, titled ``title``.
    ``native``: VMAS envs through VMAS's renderer where it works. Returns
    ``{"frames", "steps", "renderer", "path"}``: frames written, the episode's length, the
    renderer used (``vmas``, ``matplotlib``, or ``native``: the env's own ``render()``) and the file.

    VMAS frames must be drawn while the episode plays (VMAS draws its current state); the
    others are drawn from the recorded steps afterwards.
    """
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: write a .gif or an .mp4")
    try:  # checked before playing: the episode would be wasted
        import imageio.v3 as iio
        if path.suffix == ".mp4":
            import imageio_ffmpeg  # noqa: F401  (imageio's MP4 writer runs its ffmpeg)
    except ImportError as error:
        raise ValueError(f"writing {path.suffix} needs {error.name}: pip install 'hmarl[render]'") from None
    vmas_env = _vmas(env) if native else None
    scene = VmasScene(vmas_env, size) if vmas_env is not None else None
    images: list[np.ndarray] = []
    if scene is not None and scene.works():
        episode = play(hierarchy, env, seed, every, lambda frame: images.append(scene.frame(frame, title)))
        renderer = "vmas"
    else:
        scene = scene_for(env, name, options, size)
        if isinstance(scene, NativeScene):
            episode = play(hierarchy, env, seed, every, lambda frame: images.append(scene.frame(frame, title)))
            renderer = "native"
        else:
            episode = play(hierarchy, env, seed, every)
            images = [scene.frame(frame, title) for frame in episode.frames]
            renderer = "matplotlib"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        iio.imwrite(path, images, duration=1000 / fps, loop=0)
    else:
        iio.imwrite(path, images, extension=".mp4", plugin="FFMPEG", fps=fps)
    return {"frames": len(images), "steps": episode.steps, "renderer": renderer, "path": str(path)}
