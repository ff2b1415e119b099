"""Sweeps: algorithms x envs x seeds x override grids, run locally or on a Ray cluster.

    python -m hmarl.sweep configs/sweeps/tag_paper.yaml                  # local pool, 2 workers
    python -m hmarl.sweep configs/sweeps/tag_paper.yaml --quick --workers 4
    python -m hmarl.sweep configs/sweeps/tag_paper.yaml --backend ray --address auto

A sweep file (YAML, validated into ``SweepFile``) names sacred named configs and
overrides; each combination is one sacred run of the same experiment as ``python -m
hmarl``, stored under ``<results>/<name>/<env>/<label>/seed<k>/`` (``--results``, default
``results/sweeps``) by sacred's file observer (atomic writes). Every run is a fresh Python process: a crash, a wrong config
or a kill takes down that run only; its error goes to ``<results>/<name>/sweep.json``
and the sweep goes on. Starting the same sweep again skips the runs that completed and
resumes the others from their last checkpoint (``checkpoint_interval``, by default a
fifth of the budget). Every run's config is built and its hierarchy constructed before
anything trains, so a bad name or an impossible hierarchy stops the sweep at once.

On a Ray cluster every node must see ``--results`` (shared storage) and have hmarl installed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from tqdm import tqdm

from hmarl.config import from_dict


@dataclass
class QuickBudget:
    """What ``--quick`` changes: fewer seeds and smaller budgets, for a look in minutes."""

    seeds: int | list[int] | None = None
    config: dict = field(default_factory=dict)


@dataclass
class SweepFile:
    """A sweep definition (``configs/sweeps/*.yaml``)."""

    name: str
    algorithms: list[str]
    """Named configs of ``configs/algorithms/``."""
    envs: list[str]
    """Named configs of ``configs/envs/``."""
    seeds: int | list[int] = 3
    """A count (seeds 0..n-1) or the seeds themselves."""
    config: dict = field(default_factory=dict)
    """Overrides for every run (dotted keys reach into blocks: ``ppo.learning_rate``)."""
    per_env: dict = field(default_factory=dict)
    """env -> overrides for that env's runs (e.g. ``env_options``)."""
    grid: dict = field(default_factory=dict)
    """key -> list of values; every combination is a variant of each algorithm in ``grid_algorithms``."""
    grid_algorithms: list[str] | None = None
    """The algorithms the grid applies to (default: all); the others run once, without a variant."""
    exclude: list = field(default_factory=list)
    """Combinations to leave out: ``{algorithm: heuristic, env: vmas_balance}`` (any subset of keys)."""
    quick: QuickBudget = field(default_factory=QuickBudget)
    description: str = ""
    claims: list = field(default_factory=list)
    """The papers' claims, checked by ``python -m hmarl.report --claims``."""
    thresholds: dict = field(default_factory=dict)
    """env -> return threshold for the report's steps-to-threshold."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what sacred gets and where it writes."""

    algorithm: str
    env: str
    seed: int
    variant: str
    updates: dict
    directory: str

    @property
    def name(self) -> str:
        """``env/label/seed<k>``, as in the results folder."""
        label = f"{self.algorithm}[{self.variant}]" if self.variant else self.algorithm
        return f"{self.env}/{label}/seed{self.seed}"


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file; every problem is a ValueError naming the file."""
    from hmarl.experiment import named_configs

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep file is a mapping of keys, got {type(raw).__name__}")
    raw["quick"] = from_dict(QuickBudget, raw.get("quick"), f"{path}: quick")
    sweep = from_dict(SweepFile, raw, str(path))
    for kind, names in (("algorithms", sweep.algorithms), ("envs", sweep.envs)):
        known = named_configs(kind)
        if not names:
            raise ValueError(f"{path}: {kind} is empty; name at least one of: {', '.join(known)}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{path}: unknown {kind} {', '.join(unknown)}; available: {', '.join(known)}")
    for key, values in sweep.grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key} must be a non-empty list of values, got {values!r}")
    stray = [a for a in sweep.grid_algorithms or [] if a not in sweep.algorithms]
    if stray:
        raise ValueError(f"{path}: grid_algorithms names {', '.join(stray)}, not among algorithms "
                         f"({', '.join(sweep.algorithms)})")
    for env in sweep.per_env:
        if env not in sweep.envs:
            raise ValueError(f"{path}: per_env names {env!r}, which is not among envs ({', '.join(sweep.envs)})")
    for rule in sweep.exclude:
        if not isinstance(rule, dict) or not set(rule) <= {"algorithm", "env", "seed", "variant"}:
            raise ValueError(f"{path}: exclude entries are mappings of algorithm/env/seed/variant, got {rule!r}")
    seeds = sweep.seeds if isinstance(sweep.seeds, list) else list(range(sweep.seeds))
    if not seeds:
        raise ValueError(f"{path}: seeds is empty")
    return sweep


def expand(sweep: SweepFile, results: str | Path, quick: bool = False) -> list[RunSpec]:
    """Every run of the sweep, in algorithm, env, variant, seed order."""
    seeds = sweep.quick.seeds if quick and sweep.quick.seeds is not None else sweep.seeds
    seeds = seeds if isinstance(seeds, list) else list(range(seeds))
    root = Path(results) / (f"{sweep.name}_quick" if quick else sweep.name)
    keys = list(sweep.grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))]
    gridded = sweep.algorithms if sweep.grid_algorithms is None else sweep.grid_algorithms
    runs = []
    for algorithm, env, point, seed in itertools.product(sweep.algorithms, sweep.envs, points, seeds):
        if algorithm not in gridded:
            if point != points[0]:
                continue
            point = {}
        variant = ",".join(f"{k}={v}" for k, v in point.items())
        candidate = {"algorithm": algorithm, "env": env, "seed": seed, "variant": variant}
        if any(all(candidate[k] == v for k, v in rule.items()) for rule in sweep.exclude):
            continue
        label = f"{algorithm}[{variant}]" if variant else algorithm
        directory = root / env / label / f"seed{seed}"
        updates = {**sweep.config, **sweep.per_env.get(env, {}), **(sweep.quick.config if quick else {}),
                   **point, "seed": seed, "variant": variant, "progress": False,
                   "checkpoint_dir": str(directory / "checkpoints"), "resume": True}
        runs.append(RunSpec(algorithm, env, seed, variant, updates, str(directory)))
    return runs


def sacred_config(run: RunSpec) -> dict[str, Any]:
    """The run's full config exactly as sacred will merge it, with the default checkpoint interval."""
    from sacred.initialize import create_run

    from hmarl.experiment import ex

    config = dict(create_run(ex, ex.default_command, run.updates, [run.algorithm, run.env], log_level="ERROR").config)
    if "checkpoint_interval" not in run.updates:
        config["checkpoint_interval"] = max(config["total_steps"] // 5, 1)
    return config


def check(runs: list[RunSpec]) -> None:
    """Build every distinct run config and hierarchy once: bad input fails before anything trains."""
    from hmarl.experiment import RunConfig, build

    seen = set()
    for run in runs:
        key = (run.algorithm, run.env, run.variant)
        if key in seen:
            continue
        seen.add(key)
        try:
            build(RunConfig.from_config(sacred_config(run)))
        except Exception as error:  # any failure here is the config's: name the run
            raise ValueError(f"{run.name}: {error}") from error


def completed(directory: str | Path) -> bool:
    """Whether a run folder holds a sacred run that completed."""
    for path in Path(directory).glob("*/run.json"):
        try:
            if json.loads(path.read_text()).get("status") == "COMPLETED":
                return True
        except (OSError, ValueError):
            continue
    return False


def execute(run: RunSpec) -> None:
    """Run one sweep run in this process (the child process of ``run_isolated``)."""
    from hmarl.experiment import ex
    from hmarl.observer import AtomicFileStorageObserver

    updates = {**run.updates, "checkpoint_interval": sacred_config(run)["checkpoint_interval"]}
    ex.observers[:] = [AtomicFileStorageObserver(run.directory)]
    ex.run(config_updates=updates, named_configs=[run.algorithm, run.env])


def run_isolated(run: RunSpec) -> dict[str, Any]:
    """Run ``run`` in a fresh Python process; returns its outcome (never raises for the run's failure)."""
    tic = time.perf_counter()
    if completed(run.directory):
        return {"run": run.name, "status": "SKIPPED", "seconds": 0.0, "error": None}
    resumed = any(Path(run.directory, "checkpoints").glob("*/checkpoint.pt"))
    Path(run.directory).mkdir(parents=True, exist_ok=True)
    child = subprocess.run([sys.executable, "-m", "hmarl.sweep", "--execute", json.dumps(asdict(run))],
                           capture_output=True, text=True)
    ok = child.returncode == 0 and completed(run.directory)
    error = None if ok else (child.stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-20:]
    return {"run": run.name, "status": "COMPLETED" if ok else "FAILED", "resumed": resumed,
            "seconds": round(time.perf_counter() - tic, 1), "error": None if ok else "\n".join(error)}


def local_backend(runs: list[RunSpec], workers: int) -> Iterable[dict[str, Any]]:
    """Outcomes as runs finish, ``workers`` runs at a time on this machine."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(run_isolated, run) for run in runs]):
            yield future.result()


def ray_backend(runs: list[RunSpec], address: str | None) -> Iterable[dict[str, Any]]:
    """Outcomes as runs finish, one Ray task (one CPU) per run, on the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise SystemExit("the ray backend needs Ray: pip install 'hmarl[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_isolated)
    pending = {remote.remote(run): run for run in runs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(done[0])
        try:
            yield ray.get(done[0])
        except Exception as error:  # the task itself died (node lost, worker killed)
            yield {"run": run.name, "status": "FAILED", "seconds": None, "error": f"ray: {error}"}


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file next to ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def run_sweep(sweep: SweepFile, results: str | Path = "results/sweeps", quick: bool = False, backend: str = "local",
              workers: int = 2, address: str | None = None,
              on_outcome: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Check, then run every run of ``sweep``; returns the outcomes (also in ``sweep.json``)."""
    runs = expand(sweep, results, quick)
    check(runs)
    if backend == "local":
        outcomes_as_they_come = local_backend(runs, workers)
    elif backend == "ray":
        outcomes_as_they_come = ray_backend(runs, address)
    else:
        raise ValueError(f"unknown backend {backend!r}; available: local, ray")
    summary = Path(results) / (f"{sweep.name}_quick" if quick else sweep.name) / "sweep.json"
    outcomes = []
    for outcome in outcomes_as_they_come:
        outcomes.append(outcome)
        write_json_atomically(summary, {"sweep": sweep.name, "quick": quick, "runs": len(runs),
                                        "outcomes": sorted(outcomes, key=lambda o: o["run"])})
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); exits with 1 if a run failed."""
    parser = argparse.ArgumentParser(prog="python -m hmarl.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", nargs="?", help="a sweep file, e.g. configs/sweeps/tag_paper.yaml")
    parser.add_argument("--quick", action="store_true", help="the sweep's reduced budget (its quick: block)")
    parser.add_argument("--results", default="results/sweeps", help="results root (default: results/sweeps)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int, default=2, help="local backend: runs at a time (default 2)")
    parser.add_argument("--address", default=None, help="ray backend: cluster address, e.g. auto")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--execute", help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    if args.execute:
        execute(RunSpec(**json.loads(args.execute)))
        return
    if args.sweep is None:
        parser.error("name a sweep file (configs/sweeps/*.yaml)")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        sweep = load_sweep(args.sweep)
        if args.list:
            for run in expand(sweep, args.results, args.quick):
                print(run.name)
            return
        bar = tqdm(total=len(expand(sweep, args.results, args.quick)), unit="run", desc=sweep.name)
        failed = []

        def progress(outcome: dict[str, Any]) -> None:
            bar.update()
            if outcome["status"] == "FAILED":
                failed.append(outcome)
                bar.write(f"FAILED {outcome['run']}: {(outcome['error'] or '').splitlines()[-1:]}")

        tic = time.perf_counter()
        outcomes = run_sweep(sweep, args.results, args.quick, args.backend, args.workers, args.address, progress)
    except (ValueError, OSError) as error:
        raise SystemExit(f"hmarl.sweep: {error}") from None
    bar.close()
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("COMPLETED", "SKIPPED", "FAILED")}
    print(f"{sweep.name}: {len(outcomes)} runs in {time.perf_counter() - tic:.0f} s: {counts['COMPLETED']} completed, "
          f"{counts['SKIPPED']} already done, {counts['FAILED']} failed")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
