"""Sweeps: algorithms x envs x seeds x override grids, run locally or on a Ray cluster.

    python -m hmarl.studies.sweep tag_paper                  # a shipped sweep by name; local pool, 2 workers
    python -m hmarl.studies.sweep tag_paper --quick --workers 4
    python -m hmarl.studies.sweep my_sweep.yaml --backend ray --address auto

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
import fcntl
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from hmarl.run.config import from_dict
from hmarl.run.files import write_atomically


@dataclass
class QuickBudget:
    """What ``--quick`` changes: fewer seeds and smaller budgets, for a look in minutes."""

    seeds: int | list[int] | None = None
    config: dict = field(default_factory=dict)


@dataclass
class SweepFile:
    """A sweep definition (``hmarl/configs/sweeps/*.yaml``)."""

    name: str
    algorithms: list[str]
    """Named configs of ``hmarl/configs/algorithms/``."""
    envs: list[str]
    """Named configs of ``hmarl/configs/envs/``."""
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
    """The papers' claims, checked by ``python -m hmarl.studies.report --claims``."""
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
    checkpoint: str = ""
    """Where the run's checkpoint lands (set by ``prepare``): a run that finds it resumes."""
    device: str = "cpu"

    @property
    def label(self) -> str:
        """The algorithm, with the variant in brackets if a grid made one."""
        return f"{self.algorithm}[{self.variant}]" if self.variant else self.algorithm

    @property
    def name(self) -> str:
        """``env/label/seed<k>``, as in the results folder."""
        return f"{self.env}/{self.label}/seed{self.seed}"


def shipped_sweeps() -> list[str]:
    """The names of the sweeps shipped in ``hmarl/configs/sweeps/``."""
    from hmarl.run.experiment import CONFIG_DIR

    return sorted(path.stem for path in (CONFIG_DIR / "sweeps").glob("*.yaml"))


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file; every problem is a ValueError naming the file."""
    from hmarl.run.experiment import CONFIG_DIR, load_yaml, named_configs

    shipped = CONFIG_DIR / "sweeps" / f"{path}.yaml"
    if not Path(path).exists() and shipped.exists():  # a shipped sweep by name: tag_paper
        path = shipped
    raw = load_yaml(path)
    if not raw:
        raise ValueError(f"{path} is empty; a sweep file names at least name, algorithms and envs "
                         f"(see hmarl/configs/sweeps/)")
    raw["quick"] = from_dict(QuickBudget, raw.get("quick"), f"{path}: quick")
    sweep = from_dict(SweepFile, raw, str(path))
    if sweep.name in ("", ".", "..") or Path(sweep.name).name != sweep.name or "\\" in sweep.name:
        raise ValueError(f"{path}: name {sweep.name!r} must be a plain folder name (no / or ..): the runs go "
                         f"to <--results>/<name>/")
    for kind, names in (("algorithms", sweep.algorithms), ("envs", sweep.envs)):
        known = named_configs(kind)
        if not names:
            raise ValueError(f"{path}: {kind} is empty; name at least one of: {', '.join(known)}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{path}: unknown {kind} {', '.join(unknown)}; available: {', '.join(known)}")
        if len(set(names)) < len(names):
            raise ValueError(f"{path}: {kind} lists a name twice: {names}")
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
        if rule.get("algorithm", sweep.algorithms[0]) not in sweep.algorithms or rule.get("env", sweep.envs[0]) \
                not in sweep.envs:
            raise ValueError(f"{path}: exclude {rule!r} names an algorithm or env the sweep does not run")
    for name, seeds in (("seeds", sweep.seeds), ("quick.seeds", sweep.quick.seeds)):
        seeds = seeds if isinstance(seeds, list) or seeds is None else list(range(seeds))
        if seeds is not None and (not seeds or len(set(seeds)) < len(seeds)):
            raise ValueError(f"{path}: {name} must be a positive count or a list of distinct seeds, got {seeds}")
    check_claims(sweep, path)
    return sweep


def check_claims(sweep: SweepFile, path: str | Path) -> None:
    """Claims must parse and name labels the sweep produces (else the report would say "not run")."""
    from hmarl.studies.report import parse_claim

    labels = {(run.env, run.label) for run in expand(sweep, "results")}
    for entry in sweep.claims:
        claim = parse_claim(entry, Path(path))
        missing = [label for label in (claim.a, claim.b) if (claim.env, label) not in labels]
        if missing:
            raise ValueError(f"{path}: claim {claim.text!r} names {', '.join(missing)} on {claim.env}, which the sweep "
                             f"does not run; its labels there: "
                             f"{', '.join(sorted(label for env, label in labels if env == claim.env))}")


def expand(sweep: SweepFile, results: str | Path, quick: bool = False) -> list[RunSpec]:
    """Every run of the sweep, in algorithm, env, variant, seed order."""
    seeds = sweep.quick.seeds if quick and sweep.quick.seeds is not None else sweep.seeds
    seeds = seeds if isinstance(seeds, list) else list(range(seeds))
    root = Path(results).resolve() / (f"{sweep.name}_quick" if quick else sweep.name)  # Ray workers run elsewhere
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
        directory = root / env / (f"{algorithm}[{variant}]" if variant else algorithm) / f"seed{seed}"
        updates = {**sweep.config, **sweep.per_env.get(env, {}), **(sweep.quick.config if quick else {}),
                   **point, "seed": seed, "variant": variant, "progress": False,
                   "checkpoint_dir": str(directory / "checkpoints"), "resume": True}
        runs.append(RunSpec(algorithm, env, seed, variant, updates, str(directory)))
    return runs


#: Config keys that change how a run is carried out (and where it logs), not what it computes.
NOT_IDENTITY = ("progress", "threads", "resume", "checkpoint_dir", "logger", "log_dir", "wandb_project", "__doc__")


def sacred_config(run: RunSpec) -> dict[str, Any]:
    """The run's full config exactly as sacred will merge it (not checked: ``prepare`` checks
    the config it completes, and sacred checks only the runs of its ``main`` command)."""
    from sacred.initialize import create_run

    from hmarl.run.experiment import ex

    return dict(create_run(ex, "print_config", run.updates, [run.algorithm, run.env], log_level="ERROR").config)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same experiment, as JSON would store it."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in NOT_IDENTITY}, default=str))


def warn(message: str) -> None:
    """A problem that does not stop the sweep, as one line on stderr."""
    print(f"hmarl.studies.sweep: warning: {message}", file=sys.stderr)


def prepare(runs: list[RunSpec], warn: Callable[[str], None] = warn) -> list[RunSpec]:
    """Check every run before anything trains and fill in what a run needs to resume.

    Checks each distinct config once as a run of ``python -m hmarl`` is checked
    (``hmarl.run.experiment.check_config``: keys, env options, the hierarchy; bad input fails here,
    naming the run), warns of learner options that no run uses (a sweep's shared ``config``
    may well set options that only some of its systems use), sets the default checkpoint interval (a
    fifth of the budget, at least one episode of every copy, since checkpoints restart
    episodes) and refuses a results folder that holds a completed run of a different config
    (an edited sweep file, or two sweeps of one name).
    """
    from hmarl.run.experiment import RunConfig, check_config

    configs: dict[tuple[str, str, str], dict[str, Any]] = {}
    unused: dict[str, list[str]] = {}  # learner -> the runs whose system does not use its options
    prepared = []
    for run in runs:
        key = (run.algorithm, run.env, run.variant)
        if key not in configs:
            try:
                config = sacred_config(run)
                if "checkpoint_interval" not in run.updates:
                    config["checkpoint_interval"] = max(config["total_steps"] // 5,
                                                        config["num_envs"] * config["max_steps"])
                check_config(config, lambda warning, name=run.name: unused.setdefault(warning.learner, []).append(name))
            except Exception as error:  # any failure here is the config's: name the run
                raise ValueError(f"{run.name}: {error}") from error
            configs[key] = config
        config = {**configs[key], "seed": run.seed, "checkpoint_dir": run.updates["checkpoint_dir"]}  # seeds differ
        earlier = completed_config(run.directory)
        if earlier is not None and identity(earlier) != identity(config):
            changed = sorted(k for k in identity(config).keys() | identity(earlier).keys()
                             if identity(config).get(k) != identity(earlier).get(k))
            raise ValueError(f"{run.directory} holds a completed run of another config (differs in "
                             f"{', '.join(changed)}); move it away or give the sweep another name")
        run = replace(run, updates={**run.updates, "checkpoint_interval": config["checkpoint_interval"]},
                                  checkpoint=str(RunConfig.from_config(config).checkpoint_path() / "checkpoint.pt"),
                                  device=str(config["device"]))
        prepared.append(run)
    for learner, names in unused.items():
        if len(names) == len(configs):
            warn(f"no run of the sweep uses {learner}, so its options have no effect; remove them from the sweep file")
    return prepared


def completed_config(directory: str | Path) -> dict[str, Any] | None:
    """The config of a sacred run in ``directory`` that completed, or None."""
    for path in sorted(Path(directory).glob("*/run.json")):
        try:
            if json.loads(path.read_text()).get("status") == "COMPLETED":
                return json.loads((path.parent / "config.json").read_text())
        except (OSError, ValueError):
            continue
    return None


#: Exit codes of a run's process besides 0 (trained) and 1 (failed): another process holds the
#: run's lock (``execute`` without ``wait``), or another process completed the run meanwhile.
BUSY, DONE_ELSEWHERE = 75, 76


def execute(run: RunSpec, wait: bool = False) -> None:
    """Run one sweep run in this process (the child process of ``run_isolated``).

    A lock on the run folder keeps two processes (two sweeps on one folder, or a restart
    while an orphan still runs) from training the same run at once. Without ``wait`` a busy
    lock exits with ``BUSY``; with it, this waits for the lock. Under the lock the run is
    checked for completion again (another sweep may have finished it since this sweep
    looked): then the process exits with ``DONE_ELSEWHERE`` and trains nothing.
    """
    from hmarl.run.experiment import ex
    from hmarl.run.observer import AtomicFileStorageObserver

    Path(run.directory).mkdir(parents=True, exist_ok=True)
    with open(Path(run.directory) / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            print(f"{run.name} is being run by another process", file=sys.stderr)
            raise SystemExit(BUSY) from None
        if completed_config(run.directory) is not None:
            raise SystemExit(DONE_ELSEWHERE)
        ex.observers[:] = [AtomicFileStorageObserver(run.directory)]
        ex.run(config_updates=run.updates, named_configs=[run.algorithm, run.env])


_children: set[subprocess.Popen] = set()  # the runs in flight, stopped if the sweep is interrupted
_children_lock = threading.Lock()


def stop_children() -> None:
    """Terminate the runs in flight (they can resume from their checkpoints later)."""
    with _children_lock:
        children = list(_children)
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    with _children_lock:  # (their pool threads discard them too, but may not have run yet)
        _children.difference_update(children)


def remove_resume_state(run: RunSpec) -> None:
    """Delete a completed run's checkpoint (replays make it large, and nothing resumes from it
    any more) and the folders it leaves empty; everything else, the final model included, stays."""
    checkpoints = Path(run.directory) / "checkpoints"
    for path in [*checkpoints.rglob("checkpoint.pt"), *checkpoints.rglob(".checkpoint.pt.*.tmp")]:
        path.unlink(missing_ok=True)
    for folder in sorted((p for p in checkpoints.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


def run_isolated(run: RunSpec, wait: bool = False) -> dict[str, Any]:
    """Run ``run`` in a fresh Python process; returns its outcome (never raises for the run's failure).

    A completed run is SKIPPED, also when another sweep completes it while this one waits;
    a run another process holds is BUSY (without ``wait``; with it, this waits its turn). Once
    a run completes, its resume state is deleted (``remove_resume_state``).
    """
    tic = time.perf_counter()
    outcome = {"run": run.name, "resumed": bool(run.checkpoint) and Path(run.checkpoint).exists()}
    if completed_config(run.directory) is not None:
        return {**outcome, "status": "SKIPPED", "seconds": 0.0, "error": None}
    command = [sys.executable, "-m", "hmarl.studies.sweep", "--execute", json.dumps(asdict(run)), *(["--wait"] if wait else [])]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        with _children_lock:
            _children.add(child)
        try:
            _, stderr = child.communicate()
        finally:
            with _children_lock:
                _children.discard(child)
    if child.returncode in (BUSY, DONE_ELSEWHERE):
        return {**outcome, "status": "BUSY" if child.returncode == BUSY else "SKIPPED", "seconds": 0.0, "error": None}
    ok = child.returncode == 0 and completed_config(run.directory) is not None
    if ok:
        remove_resume_state(run)
    error = None if ok else "\n".join((stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-20:])
    return {**outcome, "status": "COMPLETED" if ok else "FAILED", "seconds": round(time.perf_counter() - tic, 1),
            "error": error}


def local_backend(runs: list[RunSpec], workers: int) -> Iterable[dict[str, Any]]:
    """Outcomes as runs finish, ``workers`` runs at a time on this machine; an interruption
    cancels the queued runs and stops the running ones.

    A run that another process is training (a second sweep on the same folder) goes to the
    back of the queue and is then waited for, so that two sweeps split the work between them.
    """
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending = {pool.submit(run_isolated, run): run for run in runs}
        while pending:
            done, _ = wait_for(pending, return_when=FIRST_COMPLETED)
            for future in done:
                run, outcome = pending.pop(future), future.result()
                if outcome["status"] == "BUSY":
                    pending[pool.submit(run_isolated, run, True)] = run
                else:
                    yield outcome
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_children()


def ray_backend(runs: list[RunSpec], address: str | None) -> Iterable[dict[str, Any]]:
    """Outcomes as runs finish, one Ray task (one CPU) per run, on the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise SystemExit("the ray backend needs Ray: pip install 'hmarl[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_isolated)
    # a run another sweep is training is waited for in its task (no queue to put it back in)
    pending = {remote.options(num_gpus=1 if run.device.startswith("cuda") else 0).remote(run, True): run
               for run in runs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as error:  # the task itself died (node lost, worker killed)
                yield {"run": run.name, "resumed": False, "status": "FAILED", "seconds": None, "error": f"ray: {error}"}
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def run_sweep(sweep: SweepFile, results: str | Path = "results/sweeps", quick: bool = False, backend: str = "local",
              workers: int = 2, address: str | None = None,
              on_outcome: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Check, then run every run of ``sweep``; returns the outcomes (also in ``sweep.json``)."""
    return run_prepared(sweep, prepare(expand(sweep, results, quick)), results, quick, backend, workers, address,
                        on_outcome)


def run_prepared(sweep: SweepFile, runs: list[RunSpec], results: str | Path = "results/sweeps", quick: bool = False,
                 backend: str = "local", workers: int = 2, address: str | None = None,
                 on_outcome: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the checked ``runs`` (``prepare``) of ``sweep``; returns the outcomes (also in ``sweep.json``)."""
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
        record_outcome(summary, sweep.name, quick, runs, outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def record_outcome(summary: Path, name: str, quick: bool, runs: list[RunSpec], outcome: dict[str, Any]) -> None:
    """Add ``outcome`` to ``sweep.json``, the latest outcome of each of the sweep's runs.

    Every sweep on the folder updates the same file, under a lock, so that two sweeps that
    split the runs both leave it whole. A SKIPPED outcome does not replace the record of the
    run's completion (which says how long it took), whichever sweep completed it.
    """
    names = {run.name for run in runs}
    summary.parent.mkdir(parents=True, exist_ok=True)
    with open(summary.parent / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            earlier = {o["run"]: o for o in json.loads(summary.read_text())["outcomes"]}
        except (OSError, ValueError, KeyError, TypeError):
            earlier = {}  # no summary yet (or one from an unreadable older version): start a new one
        known = {run: o for run, o in earlier.items() if run in names}
        if not (outcome["status"] == "SKIPPED" and known.get(outcome["run"], {}).get("status") == "COMPLETED"):
            known[outcome["run"]] = outcome
        text = json.dumps({"sweep": name, "quick": quick, "runs": len(runs),
                           "outcomes": sorted(known.values(), key=lambda o: o["run"])}, indent=2)
        write_atomically(summary, lambda temp: temp.write_text(text))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); exits with 1 if a run failed."""
    parser = argparse.ArgumentParser(prog="python -m hmarl.studies.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", nargs="?", help="a sweep file, or the name of a shipped one (tag_paper: hmarl/configs/sweeps/tag_paper.yaml)")
    parser.add_argument("--quick", action="store_true", help="the sweep's reduced budget (its quick: block)")
    parser.add_argument("--results", default="results/sweeps", help="results root (default: results/sweeps)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int, default=2, help="local backend: runs at a time (default 2)")
    parser.add_argument("--address", default=None, help="ray backend: cluster address, e.g. auto")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--execute", help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)  # ... waiting for its lock
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a killed sweep stops its runs as Ctrl-C does
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    if args.execute:
        execute(RunSpec(**json.loads(args.execute)), args.wait)
        return
    if args.sweep is None:
        parser.error("name a sweep file or a shipped sweep (" + ", ".join(shipped_sweeps()) + ")")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        sweep = load_sweep(args.sweep)
        if args.list:
            for run in expand(sweep, args.results, args.quick):
                print(run.name)
            return
        runs = prepare(expand(sweep, args.results, args.quick))  # bad input stops here, before the progress bar
        bar = tqdm(total=len(runs), unit="run", desc=sweep.name)
        failed = []

        def progress(outcome: dict[str, Any]) -> None:
            bar.update()
            if outcome["status"] == "FAILED":
                failed.append(outcome)
                last = (outcome["error"] or "").strip().splitlines()
                bar.write(f"FAILED {outcome['run']}: {last[-1] if last else 'no error text'}")

        tic = time.perf_counter()
        outcomes = run_prepared(sweep, runs, args.results, args.quick, args.backend, args.workers, args.address,
                                progress)
    except (ValueError, OSError) as error:
        raise SystemExit(f"hmarl.studies.sweep: {error}") from None
    bar.close()
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("COMPLETED", "SKIPPED", "FAILED")}
    print(f"{sweep.name}: {len(outcomes)} runs in {time.perf_counter() - tic:.0f} s: {counts['COMPLETED']} completed, "
          f"{counts['SKIPPED']} already done, {counts['FAILED']} failed")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
