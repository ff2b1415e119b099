"""Throughput of full training loops next to raw env stepping (the limit) and a peer.

    python -m hmarl.bench                       # prints tables, writes docs/benchmarks.md
    python -m hmarl.bench --peer-python /path/to/peer/venv/bin/python

Each group runs named configs on one env for ``frames`` env steps with 100-step
rollouts; the on-policy systems use 4 epochs of 4 minibatches, as the peer does.
The figure is env steps per second of the training iterations (rollouts and
updates). The peer is BenchMARL's MAPPO (``shared/tools/peer_benchmarl.py``) on the
first group's setting, run in its own interpreter.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hmarl.experiment import CONFIG_DIR, RunConfig, Trainer, load_yaml



@dataclass(frozen=True)
class Group:
    env: str
    n_agents: int
    num_envs: int
    frames: int
    systems: tuple[str, ...]


GROUPS = (Group("vmas_balance", 4, 64, 64_000, ("mappo", "ippo", "tag_3ppo")),
          Group("vmas_sampling", 3, 64, 64_000, ("himppo", "ippo", "mappo")),
          Group("lbfws_hard", 4, 64, 64_000, ("himppo", "ippo", "mappo")),
          Group("point_maze", 1, 16, 32_000, ("td3", "hrl", "hrl_cg")),
          Group("savethecity", 3, 64, 32_000, ("alma", "alma_heuristic", "aqmix")))
PEER_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "peer_benchmarl.py"


def system_config(algorithm: str, group: Group, threads: int) -> RunConfig:
    """The run of named config ``algorithm`` on the group's env with the benchmark's budget."""
    config = {**load_yaml(CONFIG_DIR / "default.yaml"), **load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm}.yaml"),
              **load_yaml(CONFIG_DIR / "envs" / f"{group.env}.yaml")}
    config.update(num_envs=group.num_envs, rollout_steps=100, total_steps=group.frames, eval_interval=0,
                  eval_envs=3, progress=False, n_agents=group.n_agents, threads=threads)
    for learner in ("ppo", "mappo", "graph_ppo"):
        if learner in config:
            config[learner] = {**config[learner], "update_epochs": 4, "num_minibatches": 4}
    return RunConfig.from_config(config)


def training_throughput(run: RunConfig) -> float:
    """Env steps per second over all training iterations (rollouts and updates, the first
    iteration's warm-up included); construction and the final evaluation are left out,
    as the peer's timing leaves out its setup and runs no evaluation."""
    seconds = []

    def log(name: str, value: float, step: int) -> None:
        if name == "perf/env_steps_per_s":
            seconds.append(run.steps_per_iteration / value)

    Trainer(run, log).fit()
    return run.iterations * run.steps_per_iteration / sum(seconds)


def raw_throughput(group: Group, threads: int) -> float:
    """Env steps per second of the env alone under uniformly random actions."""
    from envs import make_env

    run = system_config(group.systems[0], group, threads)
    env = make_env(group.env, num_envs=group.num_envs, n_agents=group.n_agents, max_steps=run.max_steps,
                   continuous_actions=run.continuous_actions, seed=0)
    env.reset(seed=0)
    steps = group.frames // group.num_envs
    g = torch.Generator().manual_seed(0)
    shape = (steps, group.num_envs, group.n_agents)
    actions = (torch.randint(0, env.spec.action_dim, shape, generator=g) if env.spec.discrete
               else torch.rand(*shape, env.spec.action_dim, generator=g) * 2 - 1)
    tic = time.perf_counter()
    for t in range(steps):
        env.step(actions[t])
    return steps * group.num_envs / (time.perf_counter() - tic)


def peer_throughput(python: str, num_envs: int, frames: int) -> float | None:
    """BenchMARL MAPPO's env steps per second, run by ``python`` (None if it fails)."""
    out = subprocess.run([python, str(PEER_SCRIPT), "--n-envs", str(num_envs), "--frames", str(frames)],
                         capture_output=True, text=True, cwd="/tmp")
    match = re.search(r"frames_per_s=(\d+)", out.stdout)
    if not match:
        print(f"peer failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return None
    return float(match.group(1))


def table(group: Group, peer: float | None, threads: int) -> str:
    """The markdown table of one group: raw env stepping, each system and the peer."""
    rows = [("raw env stepping (the limit)", raw_throughput(group, threads))]
    rows += [(system, training_throughput(system_config(system, group, threads))) for system in group.systems]
    if peer:
        rows.append(("BenchMARL MAPPO (peer)", peer))
    lines = [f"### {group.env}: {group.n_agents} agent(s), {group.num_envs} copies, {group.frames:,} env steps",
             "", "| system | env steps/s | vs raw env |" + (" vs peer |" if peer else ""),
             "|---|---:|---:|" + ("---:|" if peer else "")]
    for name, value in rows:
        line = f"| {name} | {value:,.0f} | {value / rows[0][1]:.2f} |"
        lines.append(line + (f" {value / peer:.2f} |" if peer else ""))
    return "\n".join(lines)


def main() -> None:
    """``python -m hmarl.bench``: print the tables and write them to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-python", help="interpreter with benchmarl installed (see the peer script)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    first = GROUPS[0]
    peer = peer_throughput(args.peer_python, first.num_envs, first.frames) if args.peer_python else None
    tables = [table(group, peer if group is first else None, args.threads) for group in GROUPS]
    print("\n\n".join(tables))
    header = (f"# Benchmarks\n\nGenerated by `python -m hmarl.bench` on {datetime.date.today()}: "
              f"100-step rollouts, on-policy updates of 4 epochs x 4 minibatches, {args.threads} torch "
              f"threads, device cpu. Machine: {platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}.\n\n"
              "Figures are env steps per second of the training iterations (rollouts and updates, "
              "warm-up included; no evaluation, as in the peer's run); the raw row steps the env "
              "alone with random actions (random play ends balance episodes early, so it resets "
              "more often than a policy does).\n\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
