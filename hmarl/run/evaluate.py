"""Evaluate (and render) what a run trained.

    python -m hmarl.run.evaluate RUN_DIR [--episodes N] [--render out.gif|out.mp4] [--device cpu]

``RUN_DIR`` is a sacred run folder (``results/<id>/``, or a sweep's ``.../seed<k>/<id>/``):
its ``config.json`` rebuilds the hierarchy exactly as training built it
(``hmarl.run.experiment.build``) and its ``model.pt`` (``{"modules": hierarchy.state_dict(), ...}``)
fills in the weights; a run folder without one falls back to the run's last checkpoint, if it
is still where the config put it. The agents then play ``N`` greedy episodes (one per env
copy, each counted once as in training's evaluations; by default as many, and with the same
seed, as the run's own evaluations, so the result matches its final ``eval/return``), and the
mean return is printed with a 95% confidence interval (Student's t over episodes), with any
success rate and episode metrics the env reports. ``--render`` plays one more episode and
writes it with the hierarchy drawn over the env (``hmarl.run.render``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from hmarl.run.config import writable_folder
from hmarl.run.experiment import RunConfig, build, evaluate, make_run_env
from hmarl.hierarchy import Hierarchy
from hmarl.run.render import VIDEO_SUFFIXES, render_episode

MODEL = "model.pt"
"""The file a run keeps its final model in (a sacred artifact in the run folder)."""


@dataclass
class Estimate:
    """A mean over episodes with its 95% confidence interval (NaN bounds for a single episode)."""

    mean: float
    low: float
    high: float
    episodes: int

    @classmethod
    def of(cls, values: np.ndarray, rate: bool = False) -> "Estimate":
        """The mean of ``values`` with Student's t interval; for a ``rate`` of 0/1 outcomes
        (successes) the Wilson interval, which stays within [0, 1]."""
        mean, count = float(np.mean(values)), len(values)
        if count < 2:
            return cls(mean, math.nan, math.nan, count)
        if rate:
            interval = stats.binomtest(int(values.sum()), count).proportion_ci(0.95, method="wilson")
            return cls(mean, float(interval.low), float(interval.high), count)
        if np.ptp(values) == 0:  # every episode the same: the interval is the point
            return cls(mean, mean, mean, count)
        low, high = stats.t.interval(0.95, count - 1, loc=mean, scale=stats.sem(values))
        return cls(mean, float(low), float(high), count)

    def __str__(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:.4g} (one episode: no interval)"
        return f"{self.mean:.4g} (95% CI {self.low:.4g} to {self.high:.4g}, {self.episodes} episodes)"


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[RunConfig, Hierarchy, str]:
    """The run's config, its hierarchy with the trained weights, and where they came from.

    ``device`` replaces the run's (e.g. ``cpu`` for a run trained on a GPU). Problems are
    one-line ValueErrors.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a run folder: it has no config.json (give a sacred run folder, "
                         f"e.g. results/1)")
    config = json.loads((run_dir / "config.json").read_text())
    # evaluating writes nothing: no checkpoints, no progress bar
    overrides: dict[str, Any] = {"checkpoint_interval": 0, "resume": False, "progress": False}
    if device is not None:
        overrides["device"] = device
    run = RunConfig.from_config({**config, **overrides})
    source = run_dir / MODEL
    if source.is_file():
        state = torch.load(source, map_location=run.device, weights_only=False)["modules"]
    else:
        # the checkpoint's place depends on the config as trained (device included), not as evaluated
        trained = run.replace(**{key: config[key] for key in overrides if key in config})
        checkpoint = trained.checkpoint_path() / "checkpoint.pt"
        if not checkpoint.is_file():
            raise ValueError(f"{run_dir} has no {MODEL} (runs save their final model there) and its checkpoint "
                             f"{checkpoint} is gone; nothing to evaluate")
        saved = torch.load(checkpoint, map_location=run.device, weights_only=False)
        state, source = saved["hierarchy"]["modules"], checkpoint
        if saved["iteration"] < run.iterations:
            print(f"hmarl.run.evaluate: warning: {checkpoint} is from iteration {saved['iteration']} of "
                  f"{run.iterations}, not the end of training", file=sys.stderr)
    # The weights do not depend on the number of env copies; one is enough to build them on.
    hierarchy = build(run.replace(num_envs=1))
    hierarchy.load_state_dict(state)
    return run, hierarchy, str(source)


def evaluate_run(run: RunConfig, hierarchy: Hierarchy, episodes: int, seed: int) -> dict[str, Estimate]:
    """``episodes`` greedy episodes on the run's evaluation env (``eval_env_options``), seeded as
    the run's own evaluations are: ``eval/return`` and what else the env reports, per episode."""
    evaluator = hierarchy.attach(make_run_env(run, episodes, seed_offset=seed - run.seed, evaluation=True))
    try:
        evaluate(evaluator, seed)
    finally:
        evaluator.env.close()
    first = evaluator.env.first_episodes()
    done = first.finished.cpu().numpy()
    results = {"eval/return": Estimate.of(first.returns.cpu().numpy()[done])}
    if first.success is not None:
        results["eval/success"] = Estimate.of(first.success.cpu().numpy()[done], rate=True)
    for name, values in first.metrics.items():
        results[f"eval/{name}"] = Estimate.of(values.cpu().numpy()[done])
    return results


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m hmarl.run.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a sacred run folder (config.json, model.pt)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="greedy episodes (default: the run's eval_envs, as its own evaluations)")
    parser.add_argument("--render", type=Path, default=None, metavar="OUT.gif|OUT.mp4",
                        help="also play one episode and write it, the hierarchy drawn over the env")
    parser.add_argument("--device", default=None, help="run on this device instead of the run's (e.g. cpu)")
    parser.add_argument("--seed", type=int, default=None,
                        help="evaluation seed (default: the run's, seed + 10000, as its own evaluations)")
    parser.add_argument("--fps", type=int, default=10, help="frames per second of the rendering (default 10)")
    parser.add_argument("--every", type=int, default=None,
                        help="draw every N-th env step (default: at most about 100 frames an episode)")
    parser.add_argument("--size", type=int, default=240, help="frame width and height in pixels (default 240)")
    args = parser.parse_args(argv)
    for name in ("episodes", "fps", "every", "size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"hmarl.run.evaluate: --{name} must be >= 1, got {getattr(args, name)}")
    if args.render is not None and args.render.suffix not in VIDEO_SUFFIXES:
        raise SystemExit(f"hmarl.run.evaluate: --render {args.render}: write a .gif or an .mp4")
    try:
        if args.render is not None:
            writable_folder(args.render.resolve().parent, "--render folder")
        run, hierarchy, source = load_run(args.run_dir, args.device)
        episodes = args.episodes or run.eval_envs
        seed = run.seed + 10_000 if args.seed is None else args.seed
        print(f"{args.run_dir}: {run.algorithm} on {run.env} from {source}; {episodes} greedy episodes, seed {seed}")
        try:
            results = evaluate_run(run, hierarchy, episodes, seed)
        finally:
            hierarchy.env.close()  # the env it was built on; evaluation plays on envs of its own
        for name, estimate in results.items():
            print(f"  {name}: {estimate}")
        if args.render is not None:
            every = args.every or max(1, run.max_steps // 100)
            env = make_run_env(run, 1, seed_offset=seed - run.seed, evaluation=True)
            try:
                drawn = render_episode(hierarchy, env, run.env, {**run.env_options, **run.eval_env_options}, seed,
                                       args.render, f"{run.algorithm} on {run.env}", args.fps, every, args.size)
            finally:
                env.close()
            print(f"  rendered {drawn['frames']} frames of a {drawn['steps']}-step episode with the "
                  f"{drawn['renderer']} renderer to {drawn['path']}")
    except (ValueError, KeyError, OSError) as error:
        raise SystemExit(f"hmarl.run.evaluate: {error.args[0] if isinstance(error, KeyError) else error}") from None


if __name__ == "__main__":
    main()
