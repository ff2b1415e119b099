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

import numpy as np
import torch
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from hmarl.hierarchy import Hierarchy
from hmarl.algorithms.alma.subtasks import SubtaskReward
from hmarl.envs.scenes import PALETTE, CityScene, Frame, LbfScene, MatplotlibScene, Overlay, PointMazeScene
from hmarl.spec import MultiAgentEnv, Tensor, TimeStep

VIDEO_SUFFIXES = (".gif", ".mp4")


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
