"""Throughput of full training loops next to raw env stepping (the limit) and a peer; how it
grows with the number of copies; how long the command line takes to answer.

    python -m hmarl.studies.bench                                  # every group; writes docs/benchmarks.md
    python -m hmarl.studies.bench --only vmas_balance startup      # some groups (env names, startup, scaling)
    python -m hmarl.studies.bench --quick                          # a quarter of the frames, scaling to 256 copies
    python -m hmarl.studies.bench --only vmas_balance --peer-python /tmp/peer/bin/python   # with the peer
    python -m hmarl.studies.bench --only scaling --device cuda --out docs/benchmarks_cuda.md

Throughput groups run named configs on one env for ``frames`` env steps with 100-step
rollouts; the on-policy systems use 4 epochs of 4 minibatches, as the peer does. The figure
is env steps per second of the training iterations (rollouts and updates, the first
iteration's warm-up included; construction and the final evaluation left out, as the peer's
timing leaves out its setup and runs no evaluation). The peer is BenchMARL's MAPPO
(``docs/scripts/peer_benchmarl.py``) on VMAS balance at the same copies and budget. A group
over a batched port (MPE simple spread) adds the original behind it (``mpe2_simple_spread``,
mpe2 through the PettingZoo adapter, one copy at a time): its raw stepping and its first
system trained on it.

The off-policy groups (point_maze, savethecity) are update-bound: one or more gradient steps
per env step of each copy. Next to each system they report its gradient steps per second and
its update-bound limit (the ``limit`` pseudo-system): the system's own learners, networks and
optimisers, taking as many gradient steps per rollout as one training iteration gives them
(the paper's schedule), on random minibatches shaped like their replay rows, with no env,
rollout or replay in the loop. ``vs limit`` is the training throughput over that limit.

Every measurement runs in a fresh interpreter, so that its peak memory (resident set size,
and CUDA's peak allocation on a GPU) is its own and no run warms another's caches. Start-up
times are the median wall time of 5 runs of each command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = REPO / "docs" / "scripts" / "peer_benchmarl.py"


@dataclass(frozen=True)
class Group:
    """Systems trained on one env at one number of copies."""

    env: str
    n_agents: int
    num_envs: int
    frames: int
    systems: tuple[str, ...]
    update_bound: bool = False
    """Off-policy systems: report gradient steps/s and each system's update-bound limit."""
    reference: str | None = None
    """Another env of the same rules (the original behind a batched port): its raw stepping and
    the first system trained on it are rows of the table too."""


GROUPS = (Group("vmas_balance", 4, 64, 64_000, ("mappo", "ippo", "tag_3ppo")),
          Group("mpe_simple_spread", 3, 64, 64_000, ("tag_3ppo", "mappo"), reference="mpe2_simple_spread"),
          Group("vmas_sampling", 3, 64, 64_000, ("himppo", "ippo", "mappo")),
          Group("lbfws_hard", 4, 64, 64_000, ("himppo", "ippo", "mappo")),
          Group("point_maze", 1, 16, 32_000, ("td3", "hrl", "hrl_cg"), update_bound=True),
          Group("savethecity", 3, 64, 32_000, ("alma", "alma_heuristic", "aqmix"), update_bound=True))
#: the row label of a system's update-bound limit, after its name
LIMIT = ": update-bound limit"
#: (system, env, n_agents) whose cost is measured at growing numbers of copies
SCALING = (("mappo", "vmas_balance", 4), ("tag_3ppo", "vmas_balance", 4), ("himppo", "vmas_sampling", 3))
SCALING_COPIES = (16, 64, 256, 1024)
SCALING_COPIES_CUDA = (1024, 4096, 16384)
#: what the command line is timed on: help, a merged config, a config error
STARTUP = (("--help", ["--help"]),
           ("print_config with mappo vmas_balance", ["print_config", "with", "mappo", "vmas_balance"]),
           ("a config error (num_envs=0)", ["-u", "with", "mappo", "vmas_balance", "num_envs=0"]))


# -- one measurement, in its own interpreter -----------------------------------------------
def system_config(algorithm: str, env: str, n_agents: int, num_envs: int, frames: int, threads: int,
                  device: str, overrides: dict | None = None):
    """The run of named config ``algorithm`` on ``env`` with the benchmark's budget; ``overrides``
    replace top-level keys after that (a learner's whole option block, say)."""
    from hmarl.run.experiment import CONFIG_DIR, RunConfig, load_yaml

    config = {**load_yaml(CONFIG_DIR / "default.yaml"), **load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm}.yaml"),
              **load_yaml(CONFIG_DIR / "envs" / f"{env}.yaml")}
    config.update(num_envs=num_envs, rollout_steps=100, total_steps=frames, eval_interval=0, eval_envs=3,
                  progress=False, n_agents=n_agents, threads=threads, device=device, checkpoint_interval=0)
    for learner in ("ppo", "mappo", "graph_ppo"):
        if learner in config:
            config[learner] = {**config[learner], "update_epochs": 4, "num_minibatches": 4}
    return RunConfig.from_config({**config, **(overrides or {})})


def training_throughput(run) -> dict:
    """Env steps per second over all training iterations (see the module docstring), and the
    off-policy learners' gradient steps per second over the same time."""
    from hmarl.run.experiment import Trainer

    seconds = []

    def log(name: str, value: float, step: int) -> None:
        if name == "perf/env_steps_per_s":
            seconds.append(run.steps_per_iteration / value)

    with Trainer(run, log) as trainer:
        trainer.fit()
    steps = sum(replay_learner_steps(trainer.hierarchy))
    return {"steps_per_s": run.iterations * run.steps_per_iteration / sum(seconds),
            "gradient_steps_per_s": steps / sum(seconds)}


def off_policy(learner) -> bool:
    """Whether ``learner`` learns from a replay by ``gradient_step`` (algorithms.offpolicy's
    ReplayLearner; recognised by its interface, as hmarl does not import algorithms)."""
    return hasattr(learner, "replay") and hasattr(learner, "gradient_step")


def replay_learner_steps(hierarchy) -> list[int]:
    """Gradient steps taken so far by each off-policy learner of ``hierarchy`` (0 for the others)."""
    return [level.learner.gradient_steps if off_policy(level.learner) else 0 for level in hierarchy.levels]


def limit_throughput(run) -> dict:
    """The update-bound limit of ``run``'s system: env steps/s and gradient steps/s of its
    learners' gradient steps alone (see the module docstring).

    One training iteration (rollout and update) fills the replays and gives each learner's
    gradient steps per iteration; then that many :meth:`gradient_step` calls per learner and
    iteration, for as many iterations as the run trains (a timing window as long as the
    system's), run on random minibatches drawn in advance, shaped like its replay rows (floats
    uniform in [0, 1), integers uniform up to the largest stored, booleans fair coins).
    """
    from hmarl.learner import UpdateContext
    from hmarl.run.experiment import Trainer

    hierarchy = Trainer(run).hierarchy
    hierarchy.train(True)
    hierarchy.reset(run.seed)
    per_iteration = [0] * len(hierarchy.levels)
    for _ in range(3):  # the iterations before one where every learner learns (replays filling)
        before = replay_learner_steps(hierarchy)
        hierarchy.rollout(run.rollout_steps)
        hierarchy.update(progress=0.0)
        per_iteration = [a - b for a, b in zip(replay_learner_steps(hierarchy), before)]
        if all(n or not off_policy(level.learner) for n, level in zip(per_iteration, hierarchy.levels)):
            break
    seconds = 0.0
    for index, (level, steps) in enumerate(zip(hierarchy.levels, per_iteration)):
        if not steps:
            continue
        learner = level.learner
        shape = learner.replay.sample(learner.config.batch_size)
        batches = [{key: random_like(value) for key, value in shape.items()} for _ in range(steps)]
        # in an update's context, as its update takes them (HRL-CG's manager reads the worker's critic)
        below = hierarchy.levels[index - 1].learner if index else None
        synchronize(run.device)
        tic = time.perf_counter()
        with learner.within(UpdateContext(below_learner=below)):
            for _ in range(run.iterations):
                for batch in batches:
                    learner.gradient_step(batch)
        synchronize(run.device)
        seconds += time.perf_counter() - tic
    return {"steps_per_s": run.iterations * run.steps_per_iteration / seconds,
            "gradient_steps_per_s": run.iterations * sum(per_iteration) / seconds}


def random_like(x):
    """Random values of ``x``'s shape and dtype (see :func:`limit_throughput`)."""
    import torch

    if x.dtype == torch.bool:
        return torch.rand(x.shape, device=x.device) < 0.5
    if x.is_floating_point():
        return torch.rand_like(x)
    return torch.randint_like(x, int(x.max()) + 1)


def raw_throughput(run) -> float:
    """Env steps per second of the env alone under uniformly random actions (drawn in advance)."""
    import torch

    from hmarl.envs import make_env

    env = make_env(run.env, num_envs=run.num_envs, n_agents=run.n_agents, max_steps=run.max_steps,
                   continuous_actions=run.continuous_actions, seed=0, device=run.device, **run.env_options)
    env.reset(seed=0)
    steps = max(1, run.total_steps // run.num_envs)
    spec = env.spec
    g = torch.Generator(device=run.device).manual_seed(0)
    shape = (steps, spec.num_envs, spec.n_agents)
    actions = (torch.randint(0, spec.action_dim, shape, generator=g, device=run.device) if spec.discrete
               else torch.rand(*shape, spec.action_dim, generator=g, device=run.device) * 2 - 1)
    synchronize(run.device)
    tic = time.perf_counter()
    for t in range(steps):
        env.step(actions[t])
    synchronize(run.device)
    return steps * spec.num_envs / (time.perf_counter() - tic)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that timings cover it."""
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def measure(system: str, env: str, n_agents: int, num_envs: int, frames: int, threads: int, device: str,
            of: str | None = None) -> dict:
    """Env steps/s of ``system`` (``raw``: the env alone, with the first system's env settings;
    ``limit``: the update-bound limit of system ``of``), gradient steps/s where it learns off
    policy, and the process's peak memory."""
    import torch

    from hmarl.run.experiment import flush_denormals

    flush_denormals()  # as a training process does, before torch's worker threads start
    torch.set_num_threads(threads)
    if system == "limit" and of is None:
        raise ValueError("the limit pseudo-system needs the system it bounds (--of)")
    name = {"raw": "mappo", "limit": of}.get(system, system)
    run = system_config(name, env, n_agents, num_envs, frames, threads, device)
    if system == "raw":
        result = {"steps_per_s": raw_throughput(run)}
    else:
        result = limit_throughput(run) if system == "limit" else training_throughput(run)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def measured(system: str, env: str, n_agents: int, num_envs: int, frames: int, args, of: str | None = None) -> dict:
    """:func:`measure` in a fresh interpreter (``python -m hmarl.studies.bench measure ...``)."""
    command = [sys.executable, "-m", "hmarl.studies.bench", "measure", system, env, str(n_agents), str(num_envs),
               str(frames), "--threads", str(args.threads), "--device", args.device] + (["--of", of] if of else [])
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- groups --------------------------------------------------------------------------------
def peer_throughput(python: str, num_envs: int, frames: int, threads: int) -> float | None:
    """BenchMARL MAPPO's env steps per second on VMAS balance, run by ``python`` (None if it fails)."""
    out = subprocess.run([python, str(PEER_SCRIPT), "--n-envs", str(num_envs), "--frames", str(frames),
                          "--threads", str(threads)], capture_output=True, text=True, cwd="/tmp")
    match = re.search(r"frames_per_s=(\d+)", out.stdout)
    if not match:
        print(f"peer failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return None
    return float(match.group(1))


def throughput_table(group: Group, args) -> str:
    """Raw env stepping, each system (in an update-bound group, followed by its limit) and (on
    VMAS balance, when given) the peer, in one run."""
    frames = max(group.num_envs * 100, group.frames // 4) if args.quick else group.frames
    rows = [("raw", measured("raw", group.env, group.n_agents, group.num_envs, frames, args))]
    for name in group.systems:
        rows.append((name, measured(name, group.env, group.n_agents, group.num_envs, frames, args)))
        if group.update_bound:
            rows.append((name + LIMIT, measured("limit", group.env, group.n_agents, group.num_envs, frames, args, of=name)))
    if group.reference:
        rows.append((f"raw env stepping, {group.reference}",
                     measured("raw", group.reference, group.n_agents, group.num_envs, frames, args)))
        rows.append((f"{group.systems[0]} on {group.reference}",
                     measured(group.systems[0], group.reference, group.n_agents, group.num_envs, frames, args)))
    peer = None
    if args.peer_python and group.env == "vmas_balance":
        peer = peer_throughput(args.peer_python, group.num_envs, frames, args.threads)
    raw = rows[0][1]["steps_per_s"]
    bound = " gradient steps/s | vs limit |" if group.update_bound else ""
    lines = [f"### {group.env}: {group.n_agents} agent(s), {group.num_envs} copies, {frames:,} env steps", "",
             "| system | env steps/s | vs raw env |" + (" vs peer |" if peer else "") + bound + " peak memory (MB) |",
             "|---|---:|---:|" + ("---:|" if peer else "") + ("---:|---:|" if bound else "") + "---:|"]
    limits = {name: result["steps_per_s"] for name, result in rows if name.endswith(LIMIT)}
    for name, result in rows:
        label = ("raw env stepping (the env's limit)" if bound else "raw env stepping (the limit)") if name == "raw" \
            else name
        value = result["steps_per_s"]
        cells = f"| {label} | {value:,.0f} | {value / raw:.2f} |" + (f" {value / peer:.2f} |" if peer else "")
        if bound:
            limit = limits.get(name if name.endswith(LIMIT) else name + LIMIT)
            steps = result.get("gradient_steps_per_s")
            cells += (f" {steps:,.0f} |" if steps is not None else " |") + (f" {value / limit:.2f} |" if limit else " |")
        lines.append(cells + f" {memory(result)} |")
    if peer:
        lines.append(f"| BenchMARL MAPPO (peer) | {peer:,.0f} | {peer / raw:.2f} | 1.00 | |")
    return "\n".join(lines)


def memory(result: dict) -> str:
    """Peak resident memory, and the GPU's peak allocation where there is one."""
    text = f"{result['peak_rss_mb']:,.0f}"
    return text + (f" (GPU {result['peak_cuda_mb']:,.0f})" if "peak_cuda_mb" in result else "")


def scaling_table(args) -> str:
    """Env steps/s of the scaling systems and of raw stepping at growing numbers of copies."""
    copies = SCALING_COPIES_CUDA if args.device.startswith("cuda") else SCALING_COPIES
    copies = copies[:-1] if args.quick else copies
    lines = ["### How cost grows with the number of copies", "",
             "Each cell: env steps/s, and the system's share of raw stepping on the same env; peak "
             "memory of the process in MB below. Two 100-step rollouts per copy (at least 64,000 env steps).", "",
             "| system | env | " + " | ".join(f"{n:,} copies" for n in copies) + " |",
             "|---|---|" + "---:|" * len(copies)]
    raws: dict[tuple[str, int], float] = {}
    envs = dict.fromkeys((env, n_agents) for _, env, n_agents in SCALING)
    for (env, n_agents) in envs:
        cells, mems = [], []
        for n in copies:
            result = measured("raw", env, n_agents, n, max(64_000, 200 * n), args)
            raws[env, n] = result["steps_per_s"]
            cells.append(f"{result['steps_per_s']:,.0f}")
            mems.append(memory(result))
        lines.append(f"| raw env stepping | {env} | " + " | ".join(cells) + " |")
        lines.append("| (peak memory) | | " + " | ".join(mems) + " |")
    for system, env, n_agents in SCALING:
        cells, mems = [], []
        for n in copies:
            result = measured(system, env, n_agents, n, max(64_000, 200 * n), args)
            cells.append(f"{result['steps_per_s']:,.0f} ({result['steps_per_s'] / raws[env, n]:.2f})")
            mems.append(memory(result))
        lines.append(f"| {system} | {env} | " + " | ".join(cells) + " |")
        lines.append("| (peak memory) | | " + " | ".join(mems) + " |")
    return "\n".join(lines)


def startup_table(args) -> str:
    """Median wall time of the command line's answers (5 runs each, after one warm-up)."""
    lines = ["### Start-up: `python -m hmarl ...` until it answers", "",
             "| command | median wall time (s) | min | max |", "|---|---:|---:|---:|"]
    for label, words in STARTUP:
        times = []
        for attempt in range(6):
            tic = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hmarl", *words], capture_output=True, cwd=REPO)
            if attempt:  # the first run warms the file cache
                times.append(time.perf_counter() - tic)
        lines.append(f"| `{label}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
    return "\n".join(lines)


def group_names() -> list[str]:
    """What ``--only`` accepts."""
    return [g.env for g in GROUPS] + ["scaling", "startup"]


def machine_line(args) -> str:
    """The page's line on where its figures come from: machine, torch, threads, device, commit."""
    import torch

    gpu = ""
    if args.device.startswith("cuda"):
        gpu = f", GPU {torch.cuda.get_device_name()}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, "
            f"{args.threads} torch threads, device {args.device}; commit {commit.stdout.strip() or 'unknown'}.")


def main(argv: list[str] | None = None) -> None:
    """``python -m hmarl.studies.bench``: print the tables and write them to ``--out``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        parser = argparse.ArgumentParser(prog="python -m hmarl.studies.bench measure")
        for name in ("system", "env"):
            parser.add_argument(name)
        for name in ("n_agents", "num_envs", "frames"):
            parser.add_argument(name, type=int)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--of", help="the system whose update-bound limit the limit pseudo-system measures")
        a = parser.parse_args(argv[1:])
        print(json.dumps(measure(a.system, a.env, a.n_agents, a.num_envs, a.frames, a.threads, a.device, a.of)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=group_names(), metavar="GROUP",
                        help=f"groups to run: {', '.join(group_names())} (default: all)")
    parser.add_argument("--quick", action="store_true", help="a quarter of the frames; scaling without its largest size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--peer-python", help="an interpreter with benchmarl installed (docs/scripts/peer_benchmarl.py)")
    parser.add_argument("--out", default="docs/benchmarks.md", help="the markdown page to write")
    args = parser.parse_args(argv)
    chosen = args.only or group_names()
    tables = []

    def show(table: str) -> None:
        # printed when done: a row failing later (its error is raised) leaves the tables before
        # it on the screen; the page is written only once all are there
        tables.append(table)
        print(table + "\n", flush=True)

    for group in GROUPS:
        if group.env in chosen:
            show(throughput_table(group, args))
    if "scaling" in chosen:
        show(scaling_table(args))
    if "startup" in chosen:
        show(startup_table(args))
    # this machine's paths stay out of the page: the peer's interpreter and the page itself
    shown = [{"--peer-python": "PEER_PYTHON", "--out": "OUT"}.get(before, a) for before, a in zip(["", *argv], argv)]
    command = "python -m hmarl.studies.bench " + " ".join(shown)
    header = (f"# Benchmarks\n\nGenerated by `{command.strip()}` on {datetime.date.today()}. {machine_line(args)}\n\n"
              "Figures are env steps per second of the training iterations (rollouts and updates, "
              "warm-up included; no evaluation, as in the peer's run), 100-step rollouts, on-policy "
              "updates of 4 epochs x 4 minibatches; the raw row steps the env alone with random actions "
              "(random play ends balance episodes early, so it resets more often than a policy does). "
              "The off-policy groups add the learners' gradient steps per second and each system's "
              "update-bound limit: its own gradient steps, at the schedule one training iteration gives "
              "them, on random minibatches shaped like its replay rows, with no env, rollout or replay; "
              "vs limit is the system's share of it. "
              "Each figure comes from its own interpreter; peak memory is that process's resident set.\n\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
