"""The sacred Experiment: config -> env + hierarchy -> train / evaluate -> metrics.

Every YAML under ``hmarl/configs/algorithms/`` and ``hmarl/configs/envs/`` is a named config::

    python -m hmarl with tag_3ppo vmas_simple_spread seed=2 total_steps=2000000

Metrics (``_run.log_scalar``, and the loggers of ``logger=``): ``train/return``,
``eval/return``, ``level{l}/{learner}/{loss}``, ``perf/env_steps_per_s``. The run's
result is the final mean evaluation return; its final model is the artifact ``model.pt``.
A run whose records could not be written, or whose losses became NaN, ends FAILED.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import math
import os
import re
import shlex
import subprocess
import tempfile
import traceback
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml

from sacred import Experiment
from sacred.config.config_dict import ConfigDict
from sacred.config.utils import normalize_or_die
from sacred.dependencies import PackageDependency
from sacred.host_info import host_info_gatherer
from sacred.observers import FileStorageObserver, SqlObserver
from sacred.utils import iterate_flattened

from hmarl.run.callbacks import CALLBACKS, Callback, LevelRollouts
from hmarl.run.config import bool_problem, from_dict, writable_folder
from hmarl.run.files import remove_stray_temps, write_atomically
from hmarl.run.loggers import MetricLogger, SacredLogger, logger_names, open_loggers
from hmarl.run.observer import WHAT_TO_DO, RecordsLost
from hmarl.run.observer import describe as describe_write_error  # (describe is the command below)

# torch and everything built on it are imported inside the functions that train, check or
# build a run, not here: ``python -m hmarl --help`` and ``print_config`` import this module
# (sacred's command line lives here) and must answer without torch's second of imports.
if TYPE_CHECKING:
    from hmarl.hierarchy import Hierarchy
    from hmarl.run.monitor import EpisodeMonitor
    from hmarl.spec import EnvSpec

PACKAGE_DIR = Path(str(importlib.resources.files("hmarl")))
"""The installed (or checked-out) ``hmarl`` package; its code is recorded with every run."""
ROOT = PACKAGE_DIR.parent
"""The folder above the package: the top of the git checkout when run from one (see :func:`git_state`)."""
CONFIG_DIR = PACKAGE_DIR / "configs"
"""The shipped named configs, package data of ``hmarl`` (``hmarl/configs/{algorithms,envs,sweeps}``)."""
KINDS = ("algorithms", "envs")
"""The kinds of named configs: a system (``algorithm``, ``levels``, ...) or an env (``env``, ...)."""
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
"""Config files sacred reads after ``with`` (JSON is YAML too)."""
logger = logging.getLogger("hmarl")
"""The runner's messages (sacred's run logger has the same name, so its lines and ours look alike)."""


def config_path() -> list[Path]:
    """Where named configs are looked up, first match wins: the folders of ``HMARL_CONFIG_PATH``
    (``os.pathsep``-separated, in order), then the shipped ``hmarl/configs/``."""
    folders = [Path(entry).resolve() for entry in os.environ.get("HMARL_CONFIG_PATH", "").split(os.pathsep) if entry]
    return [*folders, CONFIG_DIR]


def config_kind(path: Path) -> str | None:
    """``algorithms`` or ``envs`` by what a YAML file sets; None if it sets neither or cannot be read."""
    try:
        keys = load_yaml(path)
    except ValueError:
        return None
    if "algorithm" in keys or "levels" in keys:
        return "algorithms"
    return "envs" if "env" in keys else None


def named_configs(kind: str | None = None) -> dict[str, Path]:
    """Named configs of ``kind`` (``algorithms``, ``envs``; None: every named config): name -> YAML path.

    Every folder of ``config_path()`` contributes its ``algorithms/`` and ``envs/`` YAML files and,
    except the shipped ``hmarl/configs/``, the YAML files directly inside it, sorted by what they set
    (a file that sets neither ``algorithm`` nor ``env``, or that cannot be read, is listed under
    every kind, so that a run naming it gets its error). Only those loose files are read here;
    the others are read when a run uses them.
    """
    found: dict[str, Path] = {}
    for folder in config_path():
        for which in ([kind] if kind else KINDS):
            for path in sorted((folder / which).glob("*.yaml")):
                found.setdefault(path.stem, path)
        if folder != CONFIG_DIR:
            for path in sorted(folder.glob("*.yaml")):
                if kind is None or config_kind(path) in (kind, None):
                    found.setdefault(path.stem, path)
    return found


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict (empty file: ``{}``).

    Anything else is a one-line ValueError naming the file (and for bad syntax the line):
    an unreadable file, malformed YAML, or a file that is not a mapping of keys.
    """
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file is a mapping of keys (key: value lines), "
                         f"not a {type(data).__name__}; fix the file")
    return data


class YamlConfig(ConfigDict):
    """A named config read from its YAML file when a run uses it, not when hmarl is imported:
    a malformed file stops only the runs that name it (with ``load_yaml``'s one-line error)."""

    def __init__(self, path: Path):  # no ConfigDict.__init__: it would read the file now
        self.path = path
        self.__doc__ = None  # sacred's print_named_configs prints a named config's __doc__

    def __call__(self, fixed=None, preset=None, fallback=None):
        """Read the file, then merge it as sacred merges a config file."""
        self._conf = normalize_or_die(load_yaml(self.path))
        return super().__call__(fixed, preset, fallback)


@dataclass
class RunConfig:
    """The keys every run understands (``hmarl/configs/default.yaml`` documents each)."""

    seed: int
    total_steps: int
    num_envs: int
    rollout_steps: int
    device: str
    threads: int
    eval_interval: int
    eval_envs: int
    checkpoint_interval: int
    checkpoint_dir: str
    resume: bool
    progress: bool
    variant: str
    algorithm: str
    family: str
    levels: list
    env: str
    n_agents: int
    max_steps: int
    continuous_actions: bool
    env_options: dict = field(default_factory=dict)
    eval_env_options: dict = field(default_factory=dict)
    """Env options of the evaluation env only, over ``env_options`` (e.g. fixed targets)."""
    callbacks: list = field(default_factory=list)
    """Trainer callbacks by name (:data:`hmarl.run.callbacks.CALLBACKS`), e.g. TAG's ``action_trace``."""
    logger: str | list = ""
    """Metric loggers beside sacred's observers (``hmarl.run.loggers``): csv, tensorboard, wandb."""
    log_dir: str = ""
    """Where the loggers write; empty: the run's folder."""
    wandb_project: str = "hmarl"
    learner_options: dict = field(default_factory=dict, init=False)
    """Per-learner option blocks (``ppo:``, ``mappo:``, ...), collected from the top level."""
    family_options: dict = field(default_factory=dict, init=False)
    """The family's own top-level keys (e.g. ``cg_lambda``), validated by its options class."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "RunConfig":
        """Validate a merged config: run keys, learner option blocks (by learner name) and family keys."""
        from hmarl.algorithms import FAMILIES, LEARNERS

        config = {k: v for k, v in config.items() if k != "__doc__"}
        learner_options = {name: config.pop(name) for name in LEARNERS if name in config}
        family = FAMILIES.get(config.get("family"))
        family_options = {}
        if family is not None and family.options is not None:
            names = [f.name for f in dataclasses.fields(family.options)]
            family_options = asdict(from_dict(family.options, {k: config.pop(k) for k in names if k in config},
                                              f"{config['family']} options"))
        run = from_dict(cls, config, "config")
        run.learner_options, run.family_options = learner_options, family_options
        run.validate()
        return run

    def validate(self) -> None:
        """Fail with a message on impossible values (before anything is built)."""
        for key in ("total_steps", "num_envs", "rollout_steps", "eval_envs", "n_agents", "max_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        from hmarl.run.callbacks import CALLBACKS

        if not isinstance(self.callbacks, list):
            raise ValueError(f"callbacks must be a list of names, got {self.callbacks!r}")
        for name in self.callbacks:
            CALLBACKS.lookup(name, "callbacks")
        for key in ("eval_interval", "checkpoint_interval", "threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.total_steps < self.steps_per_iteration:
            raise ValueError(f"total_steps={self.total_steps} is less than one rollout "
                             f"(num_envs * rollout_steps = {self.steps_per_iteration})")
        import torch  # only here: the checks above stop a bad config without it

        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device} is not a device hmarl runs on; use device=cpu or device=cuda "
                             f"(cuda:N for the N-th GPU)")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device} but CUDA is not available here; use device=cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device={self.device} but this machine has {torch.cuda.device_count()} GPU(s); "
                             f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if self.checkpoint_interval:
            writable_folder(self.checkpoint_dir, "checkpoint_dir")
        logger_names(self.logger)

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` to its keys (``dataclasses.replace`` would drop the option blocks)."""
        copy = dataclasses.replace(self, **changes)
        copy.learner_options, copy.family_options = self.learner_options, self.family_options
        return copy

    @property
    def steps_per_iteration(self) -> int:
        """Env steps of one rollout, all copies together."""
        return self.num_envs * self.rollout_steps

    @property
    def iterations(self) -> int:
        """Rollout-update iterations to reach ``total_steps``."""
        return self.total_steps // self.steps_per_iteration

    def every(self, interval_steps: int) -> int:
        """An interval in env steps as a whole number of iterations (0 stays 0)."""
        return max(1, round(interval_steps / self.steps_per_iteration)) if interval_steps else 0

    def checkpoint_path(self) -> Path:
        """Where this config's checkpoints live: same training config -> same place."""
        identity = {k: v for k, v in asdict(self).items()
                    if k not in ("resume", "progress", "checkpoint_dir", "threads", "variant",
                                 "logger", "log_dir", "wandb_project")}
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return Path(self.checkpoint_dir) / f"{self.algorithm}-{self.env}-seed{self.seed}-{digest}"


SWITCH_OPTIONS = ("subtasks",)
"""Env options that turn a fact on (values of ``EnvSpec.optional``): they must be true or false."""


class ConfigError(SystemExit):
    """A config that cannot run, as one line ``hmarl: <what to change>``.

    A SystemExit, because sacred's command line prints a traceback for any Exception; raised
    while sacred merges the config (a config hook), before the run starts, so that no
    observer has made a run folder for it.
    """

    def __init__(self, error: Exception):
        super().__init__(f"hmarl: {error.args[0] if isinstance(error, KeyError) else error}")


class UnusedOptions(UserWarning):
    """A learner's option block that no level of the system uses: it changes nothing."""

    def __init__(self, learner: str, message: str):
        super().__init__(message)
        self.learner = learner


def check_config(config: dict[str, Any], warn: Callable[[Warning], None] = warnings.warn) -> RunConfig:
    """Everything a merged config can get wrong, found before anything trains or is written.

    Validates the keys (``RunConfig.from_config``: run keys, option blocks, family keys, the ``logger``
    names), builds the training env and the hierarchy (:func:`build`: unknown or ill-typed env options,
    an env's own refusals, impossible structures, a ``reward`` the family overwrote) and the
    evaluation env (:func:`make_checked_env`). These are the checks :class:`Trainer` makes when it
    builds the same objects, with the same messages; here they run on one env copy, so that the
    command line refuses a config before sacred starts the run. Problems are one-line ValueErrors;
    ``warn`` gets what does not stop a run (``UnusedOptions``). Returns the validated config.
    """
    run = RunConfig.from_config(config)
    import torch  # not before: a config that fails the checks above is refused without it

    # One env copy is enough to find what is wrong (nothing checked depends on the number of
    # copies) and much cheaper than building a big run's envs twice.
    probe = run.replace(num_envs=1, eval_envs=1)
    with torch.random.fork_rng(devices=[]):  # the check must not shift the run's random numbers
        hierarchy = build(probe)
        make_checked_env(probe, 1, evaluation=True)
    for warning in _unused_learner_options(run, hierarchy):
        warn(warning)
    return run


def make_checked_env(run: RunConfig, num_envs: int, seed_offset: int = 0, evaluation: bool = False) -> EpisodeMonitor:
    """:func:`make_run_env`, with what an env refuses as one line that names the keys to change:
    a switch option (``subtasks``) that is not true or false, an option a VMAS scenario would
    silently ignore, an env's bare ``assert``, an argument it cannot take; the evaluation env's
    refusals name ``eval_env_options``."""
    where = "eval_env_options" if evaluation else "env_options"
    options = {**run.env_options, **(run.eval_env_options if evaluation else {})}
    for name in SWITCH_OPTIONS:
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{where}.{name}: {bool_problem(options[name])}")
    given = f"n_agents={run.n_agents}, max_steps={run.max_steps}, {where}={options}"
    with warnings.catch_warnings():
        # VMAS only warns about scenario options it does not use; here they stop the run.
        warnings.filterwarnings("error", message="Scenario kwargs", category=UserWarning)
        try:
            return make_run_env(run, num_envs, seed_offset, evaluation=evaluation)
        except UserWarning as warning:
            unknown = re.search(r"\{.*\}", str(warning))
            names = ", ".join(map(str, ast.literal_eval(unknown.group()))) if unknown else str(warning)
            raise ValueError(f"{where}: {run.env} has no option {names} (its VMAS scenario ignores it); "
                             f"remove it") from None
        except AssertionError as error:  # an env's bare assert: show the check that failed
            frame = traceback.extract_tb(error.__traceback__)[-1]
            raise ValueError(f"{run.env} refuses {given}: its check `{frame.line}` failed "
                             f"({Path(frame.filename).name}, line {frame.lineno}); change these keys") from None
        except TypeError as error:
            raise ValueError(f"{where}: {run.env} cannot take {given}: {error}") from None
        except ValueError as error:  # the training env built with the same keys: the evaluation options are at fault
            raise ValueError(f"eval_env_options: {error}" if evaluation else str(error)) from None


def _check_family_levels(run: RunConfig, hierarchy: Hierarchy) -> None:
    """Refuse a ``reward`` or ``reward_options`` on a level that the family replaced with its own."""
    from hmarl.rewards import REWARD_RULES

    names = {rule: name for name, rule in REWARD_RULES.items()}
    for index, (entry, level) in enumerate(zip(run.levels, hierarchy.levels)):
        rule = level.reward_rule
        if "reward" in entry and type(rule) is not REWARD_RULES.get(entry["reward"]):
            raise ValueError(f"level {index}: the {run.family} family gives this level the reward "
                             f"{names.get(type(rule), type(rule).__name__)}, not the reward: {entry['reward']} "
                             f"set on it; remove reward from levels[{index}]")
        replaced = {key: getattr(rule, key) for key, value in entry.get("reward_options", {}).items()
                    if hasattr(rule, key) and getattr(rule, key) != value}
        if replaced:
            raise ValueError(f"level {index}: the {run.family} family sets this level's reward_options "
                             f"({', '.join(f'{k}={v}' for k, v in replaced.items())}) from its own keys; remove "
                             f"reward_options from levels[{index}] and set the family's keys instead")


def _unused_learner_options(run: RunConfig, hierarchy: Hierarchy) -> list[UnusedOptions]:
    """Warnings for option blocks of learners that no level uses, unless the block is one the
    system's own named config or the default config carries (HRL-CG's ``auto`` worker ships
    both ``td3`` and ``dqn``; every merged config carries the default system's ``ppo``)."""
    from hmarl.algorithms import LEARNERS

    # A used learner's class is loaded; a pending entry (graph_ppo: torch-geometric, 1.4 s) is
    # loaded only when the run carries its option block, to tell whether a level uses it.
    types = {type(level.learner) for level in hierarchy.levels}
    names = {LEARNERS[name]: name for name in LEARNERS if not LEARNERS.pending(name) or name in run.learner_options}
    used = {names.get(kind, kind.__name__) for kind in types}
    shipped = [BASE_SYSTEM]
    if run.algorithm in named_configs("algorithms"):
        try:
            shipped.append(load_yaml(named_configs("algorithms")[run.algorithm]))
        except ValueError:
            pass  # a config that could not be read has shipped nothing
    return [UnusedOptions(name, f"the {name} options have no effect: no level of {run.algorithm} uses {name} "
                                f"(its learners: {', '.join(sorted(used))}); remove them or name a learner it uses")
            for name, block in sorted(run.learner_options.items())
            if name not in used and not any(block == system.get(name) for system in shipped)]


def run_requires(run: RunConfig) -> dict[str, str]:
    """The facts of an env the run's system needs -> who needs each (the system's name for its
    family's needs, ``level i (learner)`` for a learner's): ``algorithms.system_requires``."""
    from hmarl.algorithms import system_requires

    needs = system_requires(run.family, run.levels, run.family_options)
    return {fact: run.algorithm if who == run.family else who for fact, who in needs.items()}


_SWITCHED_SAID: set[str] = set()
"""Switch messages already logged by this process (the run's env is built up to three times)."""


def switched_on(run: RunConfig, spec: EnvSpec) -> dict[str, bool]:
    """The env options (``EnvSpec.optional``) the run's system turns on because it needs a fact the
    env has only behind them, e.g. ALMA's ``entities`` (option ``subtasks``) on simple spread; each
    is logged once."""
    options = {}
    for fact, who in run_requires(run).items():
        if fact not in spec.facts and fact in spec.optional:
            option = spec.optional[fact]
            options[option] = True
            message = f"{who} needs {fact.replace('_', ' ')}: turning on {spec.name}'s option {option}"
            if message not in _SWITCHED_SAID:
                _SWITCHED_SAID.add(message)
                logger.info(message)
    return options


def unmet_requirement(run: RunConfig, spec: EnvSpec) -> str | None:
    """One line naming the first fact the run's system needs that the env lacks; None if none."""
    for fact, who in run_requires(run).items():
        message = spec.lacks(fact, who)
        if message is not None:
            return message
    return None


def make_run_env(run: RunConfig, num_envs: int, seed_offset: int = 0, evaluation: bool = False) -> EpisodeMonitor:
    """The run's env with ``num_envs`` copies, wrapped to measure episode returns; the options its
    system needs switched on (:func:`switched_on`)."""
    from hmarl.envs import ENVS, make_env
    from hmarl.run.monitor import EpisodeMonitor
    from hmarl.spec import EnvSpec

    if run.env not in ENVS:
        raise ValueError(f"unknown env {run.env!r}; available: {', '.join(sorted(ENVS))}")
    keys = dict(num_envs=num_envs, device=run.device, seed=run.seed + seed_offset, n_agents=run.n_agents,
                max_steps=run.max_steps, continuous_actions=run.continuous_actions,
                **{**run.env_options, **(run.eval_env_options if evaluation else {})})
    env = make_env(run.env, **keys)
    switches = switched_on(run, env.spec)
    if switches:
        env.close()
        env = make_env(run.env, **{**keys, **switches})
    return EpisodeMonitor(env)


def build(run: RunConfig) -> Hierarchy:
    """The run's hierarchy over its training env (:func:`make_checked_env`, ``num_envs`` copies).

    Every configuration error surfaces here as a one-line ValueError: the env's refusals, an env
    fact the system needs and the env lacks (:func:`unmet_requirement`, said of the system the
    user named), the family's own refusals, a rollout length the levels cannot divide, and a
    ``reward`` or ``reward_options`` set on a level that the family replaced with its own."""
    from hmarl.algorithms import FAMILIES

    if run.family not in FAMILIES:
        raise ValueError(f"unknown family {run.family!r}; available: {', '.join(FAMILIES)}")
    env = make_checked_env(run, run.num_envs)
    refusal = unmet_requirement(run, env.spec)
    if refusal is not None:
        raise ValueError(refusal)
    hierarchy = FAMILIES[run.family].build(env, run.levels, run.learner_options, **run.family_options)
    hierarchy.check_rollout_length(run.rollout_steps)
    _check_family_levels(run, hierarchy)
    return hierarchy.to(run.device)


def evaluate(hierarchy: Hierarchy, seed: int) -> dict[str, float]:
    """Deterministic episodes, every copy playing at least one: ``eval/return`` and, for envs
    that report them, ``eval/success`` (and per group of copies, ``eval/success/<group>``) and
    the env's episode metrics.

    Every copy counts once, by the first episode it finishes: a copy whose episodes end
    early fits more of them into the evaluation, and counting those too would favour short
    episodes. Episodes end by ``max_steps``, so every copy finishes one.
    """
    import torch

    monitor: EpisodeMonitor = hierarchy.env
    hierarchy.train(False)
    with torch.random.fork_rng(devices=[]):
        hierarchy.reset(seed)
        steps = math.ceil(monitor.spec.max_steps / hierarchy.top_stride)
        for _ in range(steps):
            hierarchy.top.step(None)
    first = monitor.first_episodes()
    metrics = {f"eval/{name}": first.mean(values) for name, values in first.metrics.items()}
    metrics["eval/return"] = first.mean(first.returns)
    if first.success is not None:
        metrics["eval/success"] = first.mean(first.success)
        groups = monitor.spec.eval_groups
        copy = torch.arange(monitor.spec.num_envs, device=first.finished.device)
        for index, group in enumerate(groups):  # copies are assigned to the groups in turn
            metrics[f"eval/success/{group}"] = first.mean(first.success, among=copy % len(groups) == index)
    return metrics


Log = Callable[[str, float, int], None]

#: Packages whose installed versions every run records (sacred adds those this module imports).
RECORDED_PACKAGES = ("hmarl", "torch", "vmas", "torch-geometric", "pettingzoo", "mpe2", "gymnasium", "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`RECORDED_PACKAGES` (None: not installed), read from their
    metadata, so that recording them imports none of them."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path = ROOT) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout whose top folder is ``root``; None
    outside one (an installed copy, no git). Dirty means tracked files differ from the commit."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None  # an installed copy that happens to sit inside some other repository
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


@host_info_gatherer("hmarl")
def hmarl_host_info() -> dict[str, Any]:
    """run.json's ``host.hmarl``: the hmarl version and the commit of its checkout, when the run starts."""
    git = git_state()
    return {"version": package_versions()["hmarl"], "git_commit": git and git["commit"],
            "git_dirty": git and git["dirty"]}


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: nothing sensible can be learned from there on."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a half-written checkpoint is never read back."""
    import torch

    write_atomically(path / "checkpoint.pt", lambda temp: torch.save(state, temp))


def flush_denormals() -> None:
    """Make this process's float arithmetic flush subnormal numbers to zero (x86 FTZ/DAZ).

    Off-policy learners grow subnormal values in their optimizers' states (TD3 on the point
    maze: thousands of Adam moments below 1.2e-38 from ~700 gradient steps on, from gradients
    of units that barely fire), and each op that reads or writes one takes a slow microcode
    assist: the same 300 TD3 gradient steps from such a state ran 1.0-1.17x faster flushed
    (one thread, interleaved). Only values below 1.2e-38 change (Adam divides by
    ``sqrt(v) + 1e-8``): 1200 TD3 gradient steps learn the same parameters, bit for bit
    (tests/test_denormals.py).

    The flag lives in each thread's floating-point control register, and a POSIX thread
    starts with its creator's: torch's intra-op (OpenMP) workers, created at the first
    parallel op, flush only if this ran before it. So it runs first in :class:`Trainer`
    (and at the start of a bench measurement), before anything builds or computes; a
    process that computed in parallel earlier keeps workers that do not flush.
    """
    import torch

    torch.set_flush_denormal(True)


class Trainer:
    """Trains one run: rollouts, coordinated updates, evaluations, checkpoints.

    ``Trainer(run)`` builds everything first and refuses an impossible config with the same
    one-line ValueErrors as the command line (:func:`check_config`): the env's refusals, the
    hierarchy's, the evaluation env's; ``warn`` gets the warnings (``UnusedOptions``; default
    ``warnings.warn``). Nothing trains before :meth:`fit`.

    Every ``checkpoint_interval`` the whole state is saved and all episodes
    restart (seeded by the iteration), so that a run resumed from a checkpoint
    replays exactly what the uninterrupted run would have done.

    Metrics go to ``log`` (a function of name, value, step) and to every logger of
    ``loggers`` (:mod:`hmarl.run.loggers`), flushed after each iteration. ``callbacks``
    (:class:`hmarl.run.callbacks.Callback`) watch each iteration: what every level observed, was
    commanded and was rewarded in the rollout, and the update's metrics.
    """

    def __init__(self, run: RunConfig, log: Log | None = None, loggers: Sequence[MetricLogger] = (),
                 callbacks: Sequence[Callback] = (), warn: Callable[[Warning], None] | None = warnings.warn):
        import torch

        flush_denormals()  # first: before torch's worker threads start (see flush_denormals)
        self.run, self.log, self.loggers = run, log, list(loggers)
        if run.threads:
            torch.set_num_threads(run.threads)
        torch.manual_seed(run.seed)
        self.hierarchy = build(run)
        """The trained stack over the training env (``num_envs`` copies): ``hierarchy.levels``
        bottom-up, ``hierarchy.env`` the env (an :class:`hmarl.run.monitor.EpisodeMonitor`)."""
        self.evaluator = self.hierarchy.attach(make_checked_env(run, run.eval_envs, seed_offset=10_000,
                                                                evaluation=True))
        """The same agents (shared modules) over the evaluation env (``eval_envs`` copies, with
        ``eval_env_options``): ``evaluate(trainer.evaluator, seed)`` plays the deterministic
        episodes that :meth:`fit` logs as ``eval/...``."""
        if warn is not None:
            for warning in _unused_learner_options(run, self.hierarchy):
                warn(warning)
        self.history: list[tuple[str, float, int]] = []
        self.named_callbacks: dict[str, Callback] = {}
        """The callbacks the config names (``callbacks``), built for this hierarchy (those with
        nothing to watch in it left out): their state travels with checkpoints."""
        for name in run.callbacks:
            made = CALLBACKS[name].from_trainer(self)
            if made is not None:
                self.named_callbacks[name] = made
        self.callbacks: list[Callback] = [*self.named_callbacks.values(), *callbacks]
        """What :meth:`fit` calls at every reset, rollout and update, in order: the named ones first."""
        self.start = 0
        self.step = 0
        """Env steps trained so far (all copies together)."""
        self.saved: int | None = None
        """Env step of the last checkpoint written or resumed from."""
        self.path = run.checkpoint_path()

    def close(self) -> None:
        """Close the training and the evaluation env (``MultiAgentEnv.close``): the run's ``main``
        does when it ends; a ``with Trainer(...) as trainer:`` block does on leaving it."""
        self.hierarchy.env.close()
        self.evaluator.env.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def total_steps(self) -> int:
        """Env steps the run trains in all (``total_steps`` rounded down to whole rollouts)."""
        return self.run.iterations * self.run.steps_per_iteration

    def record(self, name: str, value: float, step: int) -> None:
        """Log a metric and keep it in the history (checkpoints carry it)."""
        self.history.append((name, value, step))
        if self.log is not None:
            self.log(name, value, step)
        for each in self.loggers:
            each.log(name, value, step)

    def save(self, iteration: int) -> None:
        """Checkpoint everything needed to resume at ``iteration``."""
        import torch

        save_checkpoint(self.path, {"iteration": iteration, "history": self.history,
                                    "hierarchy": self.hierarchy.checkpoint_state(),
                                    "callbacks": {name: c.state() for name, c in self.named_callbacks.items()}, "rng": torch.get_rng_state()})
        self.saved = iteration * self.run.steps_per_iteration

    def restore(self) -> None:
        """Load the last checkpoint and replay its metric history into the log."""
        import torch

        state = torch.load(self.path / "checkpoint.pt", weights_only=False)
        self.hierarchy.load_checkpoint_state(state["hierarchy"])
        torch.set_rng_state(state["rng"])
        for name, callback in self.named_callbacks.items():
            callback.load_state(state["callbacks"][name])
        self.start = state["iteration"]
        self.step = self.saved = self.start * self.run.steps_per_iteration
        for name, value, step in state["history"]:  # the resumed run's metrics are complete
            self.record(name, value, step)

    def save_model(self, path: Path, **metadata: Any) -> None:
        """The trained model, written atomically: ``{"modules": hierarchy.state_dict()}`` plus
        ``hmarl_version``, ``env_steps`` and ``metadata``. A hierarchy built from the run's
        config loads it with ``load_state_dict(saved["modules"])``."""
        import torch

        state = {"modules": self.hierarchy.state_dict(), "hmarl_version": package_versions()["hmarl"],
                 "env_steps": self.step, **metadata}
        write_atomically(path, lambda temp: torch.save(state, temp))

    def finite(self, metrics: dict[str, Any], step: int) -> dict[str, float]:
        """An update's metrics as floats (one host sync per iteration, which logging them needs
        anyway); a NaN or infinite one stops training with where it happened and what to try."""
        values = {name: float(value) for name, value in metrics.items()}
        for name, value in values.items():
            if not math.isfinite(value):
                parts = name.split("/")
                knob = f"{parts[1]}.learning_rate" if len(parts) == 3 else "the learning rate"
                raise TrainingDiverged(f"{name} is {value} in the update at step {step} of {self.total_steps}: "
                                       f"lower the learning rate ({knob}) or check the env's rewards")
        return values

    def resume_or_start(self) -> None:
        """With ``resume=True``: continue from this config's checkpoint if there is one; say which."""
        run, checkpoint = self.run, self.path / "checkpoint.pt"
        if not run.resume:
            return
        if not run.checkpoint_interval:
            logger.warning("resume=True, but with checkpoint_interval=0 this config saves no checkpoints: nothing to "
                        "resume from (starting fresh), and this run cannot be resumed either; set checkpoint_interval "
                        "(env steps between checkpoints)")
        elif checkpoint.exists():
            self.restore()
            logger.info(f"resuming from step {self.step} of {self.total_steps} ({checkpoint})")
        else:
            logger.info(f"no checkpoint for this config: starting fresh (none at {checkpoint})")

    def interrupted(self, command: str) -> str:
        """The line an interrupted run prints: how far it got and ``command``, which resumes it."""
        run = self.run
        where = f"interrupted at step {self.step} of {self.total_steps}"
        if not run.checkpoint_interval:
            return f"{where}; nothing was saved (checkpoint_interval=0), so this starts over: {command}"
        if self.saved is None:
            return (f"{where}, before the first checkpoint (checkpoint_interval={run.checkpoint_interval}), "
                    f"so this starts over: {command}")
        return f"{where}; to resume from the checkpoint at step {self.saved}: {command}"

    def fit(self) -> float:
        """Train to ``total_steps``; returns the final mean evaluation return."""
        from tqdm import tqdm

        run, hierarchy = self.run, self.hierarchy
        monitor: EpisodeMonitor = hierarchy.env
        checkpoint_every, eval_every = run.every(run.checkpoint_interval), run.every(run.eval_interval)
        stray = remove_stray_temps(self.path / "checkpoint.pt")
        if stray:
            logger.info(f"removed {len(stray)} temporary file(s) of an interrupted checkpoint write from {self.path}")
        self.resume_or_start()
        bar = tqdm(total=run.iterations, initial=self.start, disable=not run.progress, unit="it",
                   desc=f"{run.algorithm} on {run.env}")
        for iteration in range(self.start, run.iterations):
            if iteration == self.start or (checkpoint_every and iteration % checkpoint_every == 0):
                if checkpoint_every and iteration > self.start:
                    self.save(iteration)
                hierarchy.train(True)
                hierarchy.reset(run.seed + iteration)
                for callback in self.callbacks:
                    callback.on_reset(self)
                monitor.pop_episode_metrics()
                monitor.pop()
            tic = time.perf_counter()
            hierarchy.rollout(run.rollout_steps)
            step = (iteration + 1) * run.steps_per_iteration
            if self.callbacks:
                rollouts = LevelRollouts(hierarchy, run.rollout_steps)
                for callback in self.callbacks:
                    callback.on_rollout(self, rollouts, step)
            metrics = self.finite(hierarchy.update(progress=iteration / run.iterations), step)
            for callback in self.callbacks:
                callback.on_update(self, metrics, step)
            self.record("perf/env_steps_per_s", run.steps_per_iteration / (time.perf_counter() - tic), step)
            episode_metrics = monitor.pop_episode_metrics()
            train_return, episodes = monitor.pop()
            if episodes:
                self.record("train/return", train_return, step)
                for name, value in episode_metrics.items():
                    self.record(f"train/{name}", value, step)
                bar.set_postfix(ret=f"{train_return:.2f}")
            for name, value in metrics.items():
                self.record(name, value, step)
            if (eval_every and (iteration + 1) % eval_every == 0) or iteration + 1 == run.iterations:
                for name, value in evaluate(self.evaluator, run.seed + 10_000).items():
                    self.record(name, value, step)
                hierarchy.train(True)
            self.step = step
            for each in self.loggers:
                each.flush()
            bar.update()
        bar.close()
        if checkpoint_every:
            self.save(run.iterations)
        # the last iteration always evaluates (a resumed finished run has it in its history)
        return [value for name, value, _ in self.history if name == "eval/return"][-1]


BASE_SYSTEM = load_yaml(CONFIG_DIR / "algorithms" / "tag_3ppo.yaml")
"""The default config's system (``python -m hmarl`` trains it). sacred merges the default config
under every run's own, so its ``ppo`` block is in every merged config, used or not."""

# base_dir: the whole package, so the sources sacred records are every hmarl module the run imports (by
# default it would be this file's folder, hmarl/run/, and leave the core and the algorithms out)
ex = Experiment("hmarl", base_dir=str(PACKAGE_DIR), save_git_info=False, additional_host_info=[hmarl_host_info])
ex.add_config(load_yaml(CONFIG_DIR / "default.yaml"))
ex.add_config(BASE_SYSTEM)
ex.add_config(load_yaml(CONFIG_DIR / "envs" / "vmas_balance.yaml"))


def register_named_configs() -> None:
    """Make every named config of ``config_path()`` known to the experiment (done at import;
    again after changing ``HMARL_CONFIG_PATH`` in a running process). Nothing is read yet."""
    ex.named_configs.clear()
    ex.named_configs.update({name: YamlConfig(path) for name, path in named_configs().items()})


register_named_configs()


@ex.command(unobserved=True)
def describe(_config: dict[str, Any]) -> None:
    """Print the resolved levels of a system on an env, top first: learner, sizes, grouping, command
    channel, action split, termination, communication and reward (``python -m hmarl describe with
    SYSTEM ENV``). Builds the hierarchy (every configuration check runs) and trains nothing."""
    from hmarl.hierarchy import describe_hierarchy

    try:
        hierarchy = build(RunConfig.from_config(dict(_config)))
    except (ValueError, KeyError) as error:
        raise SystemExit(f"hmarl: {error}") from None
    print(f"{_config['algorithm']} on {_config['env']}:")
    print(describe_hierarchy(hierarchy))


@ex.config_hook
def _refuse_bad_config(config: dict[str, Any], command_name: str, logger) -> dict[str, Any]:
    """Check a run's merged config before sacred starts it (``check_config``): a problem stops
    it with one line (``ConfigError``) before any observer writes; warnings go to the log.
    Other commands (``print_config``, ...) only show the config and are not checked."""
    if command_name == ex.default_command:
        try:
            check_config(dict(config), lambda warning: logger.warning(str(warning)))
        except (ValueError, KeyError) as error:
            raise ConfigError(error) from None
    return {}


# sacred only finds the modules this file imports; every run records all of the code it may run
for _path in sorted(PACKAGE_DIR.rglob("*.py")):  # the core, hmarl.algorithms and hmarl.envs
    ex.add_source_file(str(_path))
for _name, _version in package_versions().items():
    if _version is not None:  # not through add_package_dependency, which refuses local versions (2.3.0+cpu)
        ex.dependencies.add(PackageDependency(_name, _version))


def cli_value(value: Any) -> str:
    """``value`` as sacred's command line reads it back: a string that is no Python literal as
    itself (``device=cuda``), anything else as its repr."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return repr(value)


def resume_command(meta: dict[str, Any]) -> str:
    """The command that resumes a run, from sacred's ``meta_info``: its own command line (or,
    run from Python, its named configs and config updates) with ``resume=True``."""
    options = meta.get("options") or {}
    if "UPDATE" in options:  # parsed from sacred's command line: the user's own words
        command = [options["COMMAND"]] if options.get("COMMAND") else []
        updates = list(options["UPDATE"] or [])
    else:
        updated = iterate_flattened(meta.get("config_updates", {}))
        command = []
        updates = [*meta.get("named_configs", []), *(f"{key}={cli_value(value)}" for key, value in updated)]
    updates = [u for u in updates if u.partition("=")[0].strip() != "resume"]
    flags = [flag if value is True else f"{flag}={value}" for flag, value in options.items()
             if flag.startswith("--") and value not in (None, False)]
    return shlex.join(["python", "-m", "hmarl", *command, "with", *updates, "resume=True", *flags])


def log_folder(run: RunConfig, _run) -> Path:
    """Where the loggers write: ``log_dir``, else the run's folder (its file observer's), else
    beside a SQLite database (``runs.db``: ``runs-logs/<run id>/``), else a folder of its own
    under ``results/logs/``."""
    if run.log_dir:
        return Path(run.log_dir)
    for observer in _run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return Path(observer.dir)
    for observer in _run.observers:
        if isinstance(observer, SqlObserver) and observer.engine.url.get_backend_name() == "sqlite":
            database = Path(observer.engine.url.database or "")
            if database.name:  # not an in-memory database
                return database.parent / f"{database.stem}-logs" / str(_run._id)
    started = _run.start_time or datetime.datetime.now(datetime.timezone.utc)
    return Path("results") / "logs" / f"{started:%Y%m%d-%H%M%S}-{run.algorithm}-{run.env}-seed{run.seed}"


def close_loggers(loggers: Sequence[MetricLogger], ok: bool) -> None:
    """Close every logger. After a success the first failure is raised once all are closed; after
    a failure, errors are dropped (the run fails already)."""
    failure = None
    for each in loggers:
        try:
            each.close(ok=ok)
        except Exception as error:  # noqa: BLE001 - every logger gets closed, the first error wins
            failure = failure or error
    if failure is not None and ok:
        raise failure


def save_artifacts(trainer: Trainer, _run) -> None:
    """The run's final model (``model.pt``) and its named callbacks' files (TAG's inter-level action
    trace, ``level_actions.npz``), as sacred artifacts."""
    git = _run.host_info.get("hmarl") or {}
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "model.pt"
        trainer.save_model(model, git_commit=git.get("git_commit"), git_dirty=git.get("git_dirty"))
        _run.add_artifact(str(model), "model.pt")
        for callback in trainer.named_callbacks.values():
            for path in callback.artifacts(Path(folder)):
                _run.add_artifact(str(path), path.name)


@ex.main
def main(_config: dict[str, Any], _run) -> float:
    """The experiment's main function: validate the config, train, save the model, return the
    final eval return. Bad input, a failed write and a diverged loss each end the run with one
    line (FAILED); an interrupt says how to resume."""
    try:  # configuration errors: one message, no traceback, before any training
        run = RunConfig.from_config(dict(_config))
        names = logger_names(run.logger)
        trainer = Trainer(run, warn=None)  # the config hook (check_config) has logged the warnings
    except (ValueError, KeyError) as error:
        raise SystemExit(f"hmarl: {error}") from None
    folder = log_folder(run, _run)
    if not names and _run.observers and all(isinstance(o, SqlObserver) for o in _run.observers):
        names = ["csv"]
        logger.info(f"sacred's SQL observer stores no metrics: writing them to {folder / 'metrics.csv'} "
                    f"(logger= picks other loggers)")
    try:
        opened = open_loggers(names, folder, project=run.wandb_project, config=dict(_config),
                              name=f"{run.algorithm}-{run.env}-seed{run.seed}", group=f"{run.algorithm}-{run.env}")
    except ValueError as error:  # a logger that would not start (e.g. wandb without an account)
        raise SystemExit(f"hmarl: {error}") from None
    except OSError as error:
        raise SystemExit(f"hmarl: {write_failure(error)}") from None
    trainer.loggers = [*opened, SacredLogger(_run)]  # sacred's last: its final write can still fail the run
    if names:
        _run.info["log_dir"] = str(folder)
    try:
        try:
            result = trainer.fit()
            save_artifacts(trainer, _run)
        except BaseException:
            close_loggers(trainer.loggers, ok=False)
            raise
        finally:
            trainer.close()
        close_loggers(trainer.loggers, ok=True)
    except KeyboardInterrupt:
        logger.warning(trainer.interrupted(resume_command(_run.meta_info)))
        raise
    except TrainingDiverged as error:
        raise SystemExit(f"hmarl: {error}") from None
    except OSError as error:
        raise SystemExit(f"hmarl: {error if isinstance(error, RecordsLost) else write_failure(error)}") from None
    return result


def write_failure(error: OSError) -> str:
    """The line of a write that failed outside the observers (checkpoints, loggers, the model)."""
    return f"could not write {describe_write_error(error)}; {WHAT_TO_DO}"
