"""Tables, learning curves and a paper check from the sacred runs under a results folder.

    python -m hmarl.studies.report RESULTS_DIR [ARCHIVE.json ...] --out OUT_DIR [--claims FILE ...] [--metric NAME ...]
                           [--threshold ENV=VALUE ...] [--archive FILE] [--export-marl-eval FILE]

Reads every COMPLETED FileStorageObserver run below RESULTS_DIR and every run of a run archive
(the latest of duplicates of one env, label and seed), groups them by (env, label) with the seeds
as samples, and writes
OUT_DIR/README.md, ``curves_<env>.png``, with several envs the aggregate across them and
``aggregate_profiles.png``, and, for runs with a ``level_actions.npz`` artifact,
``correlation_<env>_<label>_seed<k>.png`` (TAG Sec. 5.3). ``--export-marl-eval`` also writes the
runs in marl-eval's JSON layout (``marl_eval_data``). Statistics live in ``hmarl.studies.analysis``.

``--archive FILE`` writes the runs the report read from results folders and from FILE itself to one
small JSON file (``archive_data``: each run's evaluation curves, throughput and TAG action record, no
checkpoints), and an archive is read back wherever a results folder is: a study run over several
sittings on machines whose ``results/`` does not last is reported whole by committing the archive
next to the page and passing it with the new runs. Runs read from other archives stay in theirs, so
a page that reads another study's archive (the paper check reading the cross-family runs) does not
copy it. marl-eval's layout cannot serve for this: it keeps neither the budget, nor the stop time
that decides between duplicates, nor the throughput and action records the page shows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib
import numpy as np
import yaml

# Figure objects render PNGs through Agg without pyplot, so importing this module leaves the user's backend alone.
from matplotlib.figure import Figure

from hmarl.studies.analysis import (
    BOOTSTRAP_METHOD,
    BOOTSTRAP_RESAMPLES,
    PROFILE_TAUS,
    Aggregate,
    Estimate,
    Interval,
    action_modes,
    aggregate,
    align_curves,
    bootstrap_ci,
    estimate,
    first_step_reaching,
    mode_stability,
    normalized_scores,
)
from hmarl.run.config import writable_folder
from hmarl.run.files import write_atomically

PRIMARY_METRIC = "eval/return"
MIN_SEEDS = 3  # per side, for a claim's verdict
THROUGHPUT_METRIC = "perf/env_steps_per_s"
AGGREGATE_MIN_SEEDS = 2  # per label and env: the fewest a bootstrap resamples
AGGREGATE_IMAGE = "aggregate_profiles.png"
MARL_EVAL_ENV = "hmarl"  # the environment_name level of the marl-eval export: every hmarl env is a task of it
LEVEL_ACTIONS = "level_actions.npz"
BRANCHES = ("connected", "unconnected")
CLAIM_FORMS = {"better": "than", "reaches": "target"}  # claim kind -> key naming the other label
CLAIM_KEYS = {"text", "env", "metric", *CLAIM_FORMS, *CLAIM_FORMS.values()}
# What a half-written, foreign or key-less run file raises while being read.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


@dataclass(frozen=True)
class Run:
    """One COMPLETED sacred run."""

    folder: Path
    env: str
    label: str
    seed: int
    total_steps: int
    stop_time: datetime
    metrics: dict[str, Curve]
    action_modes: "ActionModes | None" = None
    """An archived run's TAG action record; None for a run folder, whose ``level_actions.npz`` is
    read where a figure needs it (:func:`run_action_modes`)."""


@dataclass(frozen=True)
class Collection:
    """The runs a report uses, and how many run folders it left out."""

    runs: list[Run]
    skipped: int  # not COMPLETED, or unreadable
    superseded: int  # COMPLETED, but an env/label/seed that a later run repeated


def run_label(config: dict) -> str:
    """``algorithm``, or ``algorithm[variant]`` for a non-empty variant."""
    variant = config.get("variant") or ""
    return f"{config['algorithm']}[{variant}]" if variant else str(config["algorithm"])


def read_json(path: Path) -> dict:
    """A JSON file as a dict (errors propagate: the caller decides what unreadable means)."""
    with open(path) as f:
        return json.load(f)


def read_metrics(path: Path) -> dict[str, Curve]:
    """sacred's metrics.json as name -> (steps, values); metrics with no values are left out."""
    metrics = {}
    for name, logged in read_json(path).items():
        steps, values = np.asarray(logged["steps"]), np.asarray(logged["values"], dtype=float)
        if len(steps) != len(values):
            raise ValueError(f"{name} has {len(steps)} steps but {len(values)} values")
        if len(values):
            metrics[name] = (steps, values)
    return metrics


def read_run(folder: Path) -> Run | None:
    """The run in ``folder``, or None when it did not complete; raises one of UNREADABLE otherwise."""
    info = read_json(folder / "run.json")
    if info["status"] != "COMPLETED":
        return None
    config = read_json(folder / "config.json")
    return Run(folder, str(config["env"]), run_label(config), int(config["seed"]), int(config["total_steps"]),
               datetime.fromisoformat(info["stop_time"]), read_metrics(folder / "metrics.json"))


ARCHIVE_FORMAT = "hmarl-runs/1"
#: what an archive keeps of a run's metrics: what a page shows or a claim checks (the training return
#: too: claims on LBF read it, where greedy evaluation gets stuck)
ARCHIVED = re.compile(r"eval/.*|train/return|" + re.escape(THROUGHPUT_METRIC))


def archive_data(runs: list[Run]) -> dict:
    """The runs as a run archive: ``{"format": ARCHIVE_FORMAT, "runs": [...]}``, each run its env,
    label, seed, budget, stop time, its ``eval/*``, training-return and throughput curves, and TAG's
    action record (:class:`ActionModes`) where it has one."""
    def entry_of(run: Run) -> dict:
        entry = {"env": run.env, "label": run.label, "seed": run.seed, "total_steps": run.total_steps,
                 "stop_time": run.stop_time.isoformat(),
                 "metrics": {name: {"steps": steps.tolist(), "values": values.tolist()}
                             for name, (steps, values) in sorted(run.metrics.items()) if ARCHIVED.fullmatch(name)}}
        actions = run_action_modes(run)
        if actions is not None:  # the modes, not the raw actions: 100x smaller
            entry["action_modes"] = {"n_upper_actions": actions.n_upper_actions,
                                     "modes": {branch: m.tolist() for branch, m in actions.modes.items()}}
        return entry

    ordered = sorted(runs, key=lambda r: (r.env, r.label, r.seed))
    return {"format": ARCHIVE_FORMAT, "runs": [entry_of(run) for run in ordered]}


def read_archive(path: Path) -> list[Run]:
    """The runs of a run archive (:func:`archive_data`); ValueError naming the file when it is none."""
    try:
        data = read_json(path)
        if data.get("format") != ARCHIVE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {ARCHIVE_FORMAT!r}")
        return [Run(path, str(r["env"]), str(r["label"]), int(r["seed"]), int(r["total_steps"]),
                    datetime.fromisoformat(r["stop_time"]),
                    {name: (np.asarray(m["steps"]), np.asarray(m["values"], dtype=float))
                     for name, m in r["metrics"].items()},
                    ActionModes({branch: np.asarray(m, dtype=int) for branch, m in r["action_modes"]["modes"].items()},
                                int(r["action_modes"]["n_upper_actions"])) if "action_modes" in r else None)
                for r in data["runs"]]
    except UNREADABLE as error:
        raise ValueError(f"{path} is not a run archive (python -m hmarl.studies.report ... --archive FILE "
                         f"writes one): {type(error).__name__}: {error}") from None


def load_runs(*roots: Path) -> Collection:
    """Every COMPLETED run below the ``roots`` (folders, or run archives: :func:`read_archive`),
    the latest ``stop_time`` of each (env, label, seed).

    Unreadable runs are skipped with one warning line on stderr. Runs of one env and label
    with different budgets (``total_steps``, e.g. a sweep's quick and full runs) are an error:
    their statistics would mix.
    """
    latest: dict[tuple[str, str, int], Run] = {}
    budgets: dict[tuple[str, str], set[int]] = defaultdict(set)
    skipped = superseded = 0
    folders = sorted({p.parent for root in roots if root.is_dir() for p in root.rglob("run.json")
                      if "_sources" not in p.parts})
    archived = [run for root in roots if not root.is_dir() for run in read_archive(root)]

    def read(folder: Path) -> Run | None:
        try:
            return read_run(folder)
        except UNREADABLE as error:
            print(f"warning: skipping {folder}: {type(error).__name__}: {error}", file=sys.stderr)
            return None

    for run in archived + [read(folder) for folder in folders]:
        if run is None:
            skipped += 1
            continue
        budgets[run.env, run.label].add(run.total_steps)
        key = (run.env, run.label, run.seed)
        superseded += key in latest
        if key not in latest or run.stop_time > latest[key].stop_time:
            latest[key] = run
    mixed = {group: steps for group, steps in budgets.items() if len(steps) > 1}
    if mixed:
        (env, label), steps = next(iter(mixed.items()))
        raise ValueError(f"runs of {label} on {env} have different budgets ({', '.join(f'{s:,}' for s in sorted(steps))} "
                         "env steps); report them separately, e.g. one sweep folder (results/sweeps/<name>) at a time")
    return Collection(list(latest.values()), skipped, superseded)


def final_return(runs: list[Run], metric: str = PRIMARY_METRIC) -> Estimate | None:
    """Mean, 95% CI and IQM over seeds of each seed's last ``metric`` value; None if no seed logged it."""
    finals = [run.metrics[metric][1][-1] for run in runs if metric in run.metrics]
    return estimate(np.array(finals)) if finals else None


@dataclass(frozen=True)
class ThresholdSteps:
    """When the seeds first reached a threshold."""

    mean_step: float | None  # over the seeds that reached it
    reached: int
    seeds: int


def steps_to_threshold(runs: list[Run], threshold: float, metric: str = PRIMARY_METRIC) -> ThresholdSteps:
    """Per seed the first logged step with ``metric`` >= threshold; the mean over the seeds that got there."""
    steps = [first_step_reaching(*run.metrics[metric], threshold) for run in runs if metric in run.metrics]
    reached = [s for s in steps if s is not None]
    return ThresholdSteps(float(np.mean(reached)) if reached else None, len(reached), len(steps))


def env_steps_per_s(runs: list[Run]) -> float | None:
    """Mean over seeds of each seed's mean ``perf/env_steps_per_s``; None if no seed logged it."""
    per_seed = [run.metrics[THROUGHPUT_METRIC][1].mean() for run in runs if THROUGHPUT_METRIC in run.metrics]
    return float(np.mean(per_seed)) if per_seed else None


@dataclass(frozen=True)
class Claim:
    """``kind`` "better": ``a``'s CI lies above ``b``'s; "reaches": ``a``'s CI reaches ``b``'s mean;
    both on the final value of ``metric``."""

    text: str
    env: str
    kind: str
    a: str
    b: str
    metric: str = PRIMARY_METRIC


def parse_claim(entry: object, path: Path) -> Claim:
    """One entry of a claims file's ``claims:`` list; ValueError naming the file on a bad entry."""
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - CLAIM_KEYS, key=str)
        if unknown:
            raise ValueError(f"{path}: claim {entry.get('text', entry)!r} has unknown key {unknown[0]!r}")
        for kind, other in CLAIM_FORMS.items():
            if set(entry) - {"metric"} == {"text", "env", kind, other}:
                return Claim(str(entry["text"]), str(entry["env"]), kind, str(entry[kind]), str(entry[other]),
                             str(entry.get("metric", PRIMARY_METRIC)))
    raise ValueError(f"{path}: claim {entry!r} needs exactly text, env and either better+than or reaches+target "
                     "(and optionally metric)")


def load_claims(paths: list[Path]) -> tuple[list[Claim], dict[str, float]]:
    """The ``claims:`` and ``thresholds:`` (env -> value) of YAML files that may hold other keys too."""
    claims, thresholds = [], {}
    for path in paths:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping")
        claims += [parse_claim(entry, path) for entry in data.get("claims") or []]
        thresholds |= {str(env): float(value) for env, value in (data.get("thresholds") or {}).items()}
    return claims, thresholds


def verdict(claim: Claim, a: Estimate | None, b: Estimate | None) -> str:
    """The claim judged on the two groups' final estimates (None: the group was not run).

    Below ``MIN_SEEDS`` seeds a side's percentile-bootstrap interval covers the mean far less
    than 95% of the time (about half at 2 seeds), so no verdict is given.
    """
    if a is None or b is None:
        return "not run"
    if min(a.n, b.n) < MIN_SEEDS:
        return f"too few seeds (< {MIN_SEEDS})"
    if claim.kind == "reaches":
        return "holds" if a.high >= b.mean else "does not hold"
    if a.low > b.high:
        return "holds"
    if a.high < b.low:
        return "does not hold"
    return "within noise (A ahead)" if a.mean > b.mean else "within noise (B ahead)"


def save_figure(figure: Figure, path: Path) -> None:
    """Save ``figure`` as a PNG, atomically."""
    write_atomically(path, lambda temp: figure.savefig(temp, format="png", dpi=120))


def file_name(text: str) -> str:
    """``text`` with the characters that upset shells and links (``[`` of variants, ``/``) as ``-``."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-")


def plot_curves(path: Path, env: str, groups: dict[str, list[Run]], metric: str, threshold: float | None) -> None:
    """``metric`` against env steps per label: mean over seeds, shaded per-step 95% bootstrap CI.

    Seeds logged at different steps are interpolated onto the shortest run's steps (``align_curves``).
    """
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for label, runs in groups.items():
        curves = [run.metrics[metric] for run in runs if metric in run.metrics]
        if curves:
            steps, values = align_curves(curves)
            low, high = bootstrap_ci(values)
            (line,) = axes.plot(steps, values.mean(0), label=f"{label} ({len(curves)} seeds)")
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    if threshold is not None:
        axes.axhline(threshold, color="k", ls=":", lw=1, label="threshold")
    axes.set(xlabel="env steps", ylabel=metric, title=env)
    if axes.lines:
        axes.legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def plot_correlation(path: Path, title: str, modes: dict[str, np.ndarray], n_upper_actions: int) -> None:
    """One panel per branch: x episode, y bottom action, colour the upper level's mode, white where absent."""
    palette = "tab10" if n_upper_actions <= 10 else "tab20" if n_upper_actions <= 20 else "turbo"
    colours = matplotlib.colormaps[palette].resampled(n_upper_actions).with_extremes(bad="white")
    figure = Figure(figsize=(11, 4), layout="constrained")
    panels = figure.subplots(1, len(modes), sharey=True)
    for panel, (branch, branch_modes) in zip(panels, modes.items()):
        image = panel.imshow(np.ma.masked_less(branch_modes.T, 0), cmap=colours, vmin=-0.5,
                             vmax=n_upper_actions - 0.5, origin="lower", aspect="auto", interpolation="nearest")
        panel.set(title=f"{branch} (constant mode {mode_stability(branch_modes):.2f})", xlabel="episode")
    panels[0].set_ylabel("bottom action")
    figure.colorbar(image, ax=panels, ticks=range(n_upper_actions), label="upper-level action (mode)")
    figure.suptitle(title)
    save_figure(figure, path)


@dataclass(frozen=True)
class Correlation:
    """A run's correlation figure and its constant-mode shares per branch."""

    label: str
    seed: int
    image: str
    stability: dict[str, float]


@dataclass(frozen=True)
class ActionModes:
    """TAG Sec. 5.3's record of a run: per training episode and bottom action, the upper level's most
    frequent action (:func:`~hmarl.studies.analysis.action_modes`), per branch ``[episodes, n_actions]``."""

    modes: dict[str, np.ndarray]
    n_upper_actions: int


def read_action_modes(folder: Path) -> ActionModes | None:
    """The modes of ``folder``'s ``level_actions.npz`` (None when it has none or it does not load)."""
    source = folder / LEVEL_ACTIONS
    if not source.exists():
        return None
    try:
        with np.load(source) as data:
            bottom, n_actions, n_upper = data["bottom"], int(data["n_actions"]), int(data["n_upper_actions"])
            modes = {branch: action_modes(bottom, data[branch], n_actions) for branch in BRANCHES}
    except (*UNREADABLE, zipfile.BadZipFile, IndexError) as error:
        print(f"warning: no correlation figure from {source}: {type(error).__name__}: {error}", file=sys.stderr)
        return None
    return ActionModes(modes, n_upper)


def run_action_modes(run: Run) -> ActionModes | None:
    """The run's TAG action record: archived with it, or read from its folder."""
    return run.action_modes if run.action_modes is not None else read_action_modes(run.folder)


def correlation_figure(run: Run, out: Path) -> Correlation | None:
    """Plot the run's TAG action record (None when it has none or it does not load)."""
    record = run_action_modes(run)
    if record is None:
        return None
    modes, n_upper = record.modes, record.n_upper_actions
    image = f"correlation_{file_name(run.env)}_{file_name(run.label)}_seed{run.seed}.png"
    plot_correlation(out / image, f"{run.env}: {run.label}, seed {run.seed}", modes, n_upper)
    return Correlation(run.label, run.seed, image, {branch: mode_stability(m) for branch, m in modes.items()})


@dataclass(frozen=True)
class GroupSummary:
    """One table row: a label's statistics over its seeds."""

    label: str
    seeds: int
    budget: int  # env steps per run (one budget per group: load_runs refuses mixes)
    finals: dict[str, Estimate | None]  # per metric, the first one primary
    threshold: ThresholdSteps | None
    steps_per_s: float | None


def best_first(final: Estimate | None) -> float:
    """Sort key: highest final mean first, groups without the metric last."""
    return -final.mean if final is not None else np.inf


def summarize(label: str, runs: list[Run], metrics: list[str], threshold: float | None) -> GroupSummary:
    """The row of one (env, label) group; ``metrics[0]`` is the primary metric, the one the threshold applies to."""
    reached = steps_to_threshold(runs, threshold, metrics[0]) if threshold is not None else None
    return GroupSummary(label, len(runs), runs[0].total_steps, {m: final_return(runs, m) for m in metrics}, reached,
                        env_steps_per_s(runs))


def number(value: float | None) -> str:
    """3 significant figures, thousands separated from 1,000 up; "–" for missing."""
    if value is None or np.isnan(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def interval(value: Estimate | Interval) -> str:
    """The CI as ``[low, high]``."""
    return f"[{number(value.low)}, {number(value.high)}]"


def mean_and_interval(value: Estimate | None) -> str:
    """``mean [low, high]``, or "–"."""
    return "–" if value is None else f"{number(value.mean)} {interval(value)}"


def cell(text: str) -> str:
    """Escape a markdown table cell."""
    return str(text).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Markdown table lines: the first ``text_columns`` columns left-aligned, the numbers after them right-aligned."""
    return ([f"| {' | '.join(header)} |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
            + [f"| {' | '.join(cell(c) for c in row)} |" for row in rows])


def env_section(env: str, rows: list[GroupSummary], metrics: list[str], threshold: float | None,
                curves_image: str, correlations: list[Correlation]) -> list[str]:
    """One env's markdown: the table, its curves and its correlation figures."""
    primary, extras = metrics[0], metrics[1:]
    header = ["label", "seeds", "env steps", "final return mean", "95% CI", "IQM"]
    header += [f"steps to {primary} ≥ {threshold:g}"] if threshold is not None else []
    header += ["env steps/s", *extras]
    lines = [f"## {env}", ""]
    body = []
    for row in rows:
        final = row.finals[primary]
        cells = [row.label, str(row.seeds), number(row.budget)]
        cells += [number(final.mean), interval(final), number(final.iqm)] if final else ["–"] * 3
        if row.threshold is not None:
            cells.append(f"{number(row.threshold.mean_step)} ({row.threshold.reached}/{row.threshold.seeds} seeds)")
        cells.append(number(row.steps_per_s))
        cells += [mean_and_interval(row.finals[m]) for m in extras]
        body.append(cells)
    lines += table(header, body) + ["", f"![{primary} on {env}]({curves_image})", ""]
    if correlations:
        lines += [("Inter-level action correlation (TAG Sec. 5.3's analysis, for every run whose bottom level "
                   "takes discrete commands): share of consecutive episode pairs whose mode (the upper level's "
                   "most frequent action per bottom action) is unchanged."), ""]
        lines += table(["figure", *BRANCHES], [[f"[{c.label} seed {c.seed}]({c.image})",
                                               *(number(c.stability[b]) for b in BRANCHES)] for c in correlations])
        lines.append("")
    return lines


def paper_check(claims: list[Claim], groups: dict[str, dict[str, list[Run]]]) -> list[str]:
    """The "Paper check" section: each claim, both numbers and the verdict."""
    rows = []
    for claim in claims:
        runs = groups.get(claim.env, {})
        a, b = (final_return(runs[label], claim.metric) if label in runs else None for label in (claim.a, claim.b))
        numbers = f"{claim.a} {mean_and_interval(a)} vs {claim.b} {mean_and_interval(b)}"
        numbers += f" (seeds {a.n} vs {b.n})" if a and b else ""
        rows.append([claim.text, claim.env, claim.metric, numbers, verdict(claim, a, b)])
    header = ["claim", "env", "final", "A mean [95% CI] vs B mean [95% CI]", "verdict"]
    caveat = ("Each verdict holds at the budgets of the tables below (column *env steps*), which may be far "
              "below the papers'; *within noise*: the 95% intervals overlap; below "
              f"{MIN_SEEDS} seeds a side no verdict is given (bootstrap intervals over so few seeds are too narrow).")
    return ["## Paper check", "", caveat, ""] + table(header, rows, text_columns=len(header)) + [""]


@dataclass(frozen=True)
class AggregateScores:
    """What the aggregate across envs is computed on, and what it had to leave out."""

    envs: list[str]
    scores: dict[str, np.ndarray]  # label -> normalised finals [seeds run on every env, envs]
    left_out: list[str]  # one sentence per reason


def aggregate_scores(groups: dict[str, dict[str, list[Run]]], metric: str) -> AggregateScores:
    """Each label's normalised final ``metric`` per seed and env, for the labels run on every env
    with at least ``AGGREGATE_MIN_SEEDS`` seeds in common (``analysis.normalized_scores``)."""
    finals: dict[str, dict[str, dict[int, float]]] = {}
    for env, labels in groups.items():
        per_label = {label: {run.seed: float(run.metrics[metric][1][-1]) for run in runs if metric in run.metrics}
                     for label, runs in labels.items()}
        if any(per_label.values()):
            finals[env] = {label: seeds for label, seeds in per_label.items() if seeds}
    normalized = normalized_scores({env: {label: np.array(list(seeds.values())) for label, seeds in labels.items()}
                                    for env, labels in finals.items()})
    by_seed = {env: {label: dict(zip(finals[env][label], scores)) for label, scores in labels.items()}
               for env, labels in normalized.items()}
    left_out = []
    flat = sorted(set(finals) - set(by_seed))
    if flat:
        left_out.append(f"{', '.join(flat)}: every final value is the same, so it cannot be normalised.")
    envs = sorted(by_seed)
    everywhere = set.intersection(*(set(by_seed[env]) for env in envs)) if envs else set()
    elsewhere = sorted(set().union(*by_seed.values()) - everywhere)
    if elsewhere:
        left_out.append(f"Not run on every env: {', '.join(elsewhere)}.")
    scores, few = {}, []
    for label in sorted(everywhere):
        seeds = sorted(set.intersection(*(set(by_seed[env][label]) for env in envs)))
        if len(seeds) < AGGREGATE_MIN_SEEDS:
            few.append(label)
        else:
            scores[label] = np.array([[by_seed[env][label][seed] for env in envs] for seed in seeds])
    if few:
        left_out.append(f"Fewer than {AGGREGATE_MIN_SEEDS} seeds run on every env: {', '.join(few)}.")
    return AggregateScores(envs, scores, left_out)


def plot_profiles(path: Path, envs: list[str], result: Aggregate) -> None:
    """Performance profiles: per label the share of runs whose normalised score exceeds tau, with its 95% CI."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for label, (share, low, high) in result.profile.items():
        (line,) = axes.plot(PROFILE_TAUS, share, label=label)
        axes.fill_between(PROFILE_TAUS, low, high, color=line.get_color(), alpha=0.2)
    axes.set(xlabel="normalised score τ", ylabel="fraction of runs with score > τ", ylim=(-0.02, 1.02),
             title=f"performance profiles on {', '.join(envs)}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def aggregate_section(groups: dict[str, dict[str, list[Run]]], metric: str, out: Path, image: str) -> list[str]:
    """The "Aggregate across envs" section: IQM and mean, probabilities of improvement, performance profiles."""
    lines = ["## Aggregate across envs", ""]
    inputs = aggregate_scores(groups, metric)
    if len(inputs.envs) < 2 or not inputs.scores:
        reason = "fewer than 2 envs can be normalised" if len(inputs.envs) < 2 else "no label qualifies"
        return lines + [f"No aggregate: {reason}.", *inputs.left_out, ""]
    result = aggregate(inputs.scores)
    lines += [(f"Each seed's final `{metric}`, min-max normalised per env over every seed of every label "
               f"reported on it (0: the lowest final there, 1: the highest), on {', '.join(inputs.envs)}, "
               "for the seeds a label ran on every env. IQM: the mean of the middle half "
               "(`scipy.stats.trim_mean(scores, 0.25)`), and the mean, over every run of every env; "
               "P(X > Y): the probability of improvement, per env the chance that a run of X beats a run of Y "
               "(Mann-Whitney, ties count 1/2), averaged over envs; performance profile: the share of runs "
               "scoring above τ. These are rliable's definitions (Agarwal et al. 2021); the 95% CIs are "
               f"{BOOTSTRAP_METHOD} bootstraps ({BOOTSTRAP_RESAMPLES:,} resamples, `scipy.stats.bootstrap`) that "
               "resample each env's seeds separately, as rliable's stratified bootstrap does."), ""]
    lines += [" ".join(inputs.left_out), ""] if inputs.left_out else []
    ranked = sorted(result.iqm, key=lambda label: -result.iqm[label].value)
    lines += table(["label", "seeds", "IQM", "95% CI", "mean", "95% CI"],
                   [[label, str(len(inputs.scores[label])), number(result.iqm[label].value),
                     interval(result.iqm[label]), number(result.mean[label].value), interval(result.mean[label])]
                    for label in ranked]) + [""]
    if result.improvement:
        lines += table(["X", "Y", "P(X > Y)", "95% CI"],
                       [[x, y, number(p.value), interval(p)] for (x, y), p in result.improvement.items()],
                       text_columns=2) + [""]
    plot_profiles(out / AGGREGATE_IMAGE, inputs.envs, result)
    return lines + [f"![performance profiles]({image})", ""]


def marl_eval_name(metric: str) -> str:
    """A metric's name in the marl-eval export: ``eval/return`` -> ``return``, ``eval/success/a`` -> ``success_a``."""
    return metric.removeprefix("eval/").replace("/", "_")


def marl_eval_data(runs: list[Run], metrics: list[str]) -> dict:
    """The runs in marl-eval's raw-data JSON layout.

    ``{"hmarl": {env: {label: {"run_<seed>": {"step_1": {...}, ..., "absolute_metrics": {...}}}}}}``:
    every hmarl env is a task of one environment, so that marl-eval aggregates across all of them as the
    report does. ``step_<k>`` is the k-th logged step of ``metrics[0]``: ``{"step_count": env steps}``
    and, for each of ``metrics`` logged at that step, ``marl_eval_name(metric): [value]``: one value, the
    mean over the evaluation episodes that hmarl logs. ``absolute_metrics`` (last, where marl-eval
    looks for it) holds each metric's final value: hmarl runs no separate final evaluation of the best
    policy, which marl-eval's absolute metric stands for. Runs that never logged ``metrics[0]`` are left out.
    """
    data: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for run in sorted(runs, key=lambda r: (r.env, r.label, r.seed)):
        if metrics[0] not in run.metrics:
            continue
        logged = {m: dict(zip(run.metrics[m][0].tolist(), run.metrics[m][1].tolist())) for m in metrics
                  if m in run.metrics}
        record: dict[str, dict] = {
            f"step_{k}": {"step_count": int(step),
                          **{marl_eval_name(m): [values[step]] for m, values in logged.items() if step in values}}
            for k, step in enumerate(run.metrics[metrics[0]][0].tolist(), start=1)}
        record["absolute_metrics"] = {marl_eval_name(m): [float(run.metrics[m][1][-1])] for m in logged}
        data[run.env][run.label][f"run_{run.seed}"] = record
    return {MARL_EVAL_ENV: {env: dict(labels) for env, labels in data.items()}}


def write_report(collection: Collection, results: str, out: Path, metrics: list[str],
                 thresholds: dict[str, float], claims: list[Claim], page: Path | None = None,
                 command: str | None = None, title: str = "Results report") -> Path:
    """Write the figures into ``out`` and the markdown ``page`` (default ``out/README.md``), headed
    ``title``; returns the page."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / "README.md" if page is None else page

    def link(name: str) -> str:  # figures are linked relative to the page
        return Path(os.path.relpath(out / name, page.parent)).as_posix()

    by_group: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(collection.runs, key=lambda r: (r.env, r.label, r.seed)):
        by_group[run.env][run.label].append(run)
    read = (f"{len(collection.runs)} runs read from `{results}`; {collection.skipped} skipped (not COMPLETED or "
            f"unreadable), {collection.superseded} superseded by a later run of the same env, label and seed.")
    method = (f"Final values are each seed's last logged value; 95% CIs are {BOOTSTRAP_METHOD} bootstraps over seeds "
              f"(`scipy.stats.bootstrap`, method={BOOTSTRAP_METHOD!r}, {BOOTSTRAP_RESAMPLES:,} resamples); IQM is "
              "the interquartile mean as rliable defines it, `scipy.stats.trim_mean(finals, 0.25)` (a quarter of "
              "the seeds, rounded down, dropped at each end); "
              f"env steps/s is each seed's mean `{THROUGHPUT_METRIC}`, averaged.")
    lines = [f"# {title}", ""] + ([f"Generated by `{command}`.", ""] if command else []) + [read, "", method, ""]
    sections = []
    for env, groups in sorted(by_group.items()):
        threshold = thresholds.get(env)
        rows = [summarize(label, runs, metrics, threshold) for label, runs in groups.items()]
        rows.sort(key=lambda row: best_first(row.finals[metrics[0]]))
        curves_image = f"curves_{file_name(env)}.png"
        plot_curves(out / curves_image, env, {row.label: groups[row.label] for row in rows}, metrics[0], threshold)
        correlations = [dataclasses.replace(c, image=link(c.image))
                        for row in rows for run in groups[row.label] if (c := correlation_figure(run, out))]
        sections += env_section(env, rows, metrics, threshold, link(curves_image), correlations)
    if claims:
        lines += paper_check(claims, by_group)
    if len(by_group) > 1:
        lines += aggregate_section(by_group, metrics[0], out, link(AGGREGATE_IMAGE))
    text = "\n".join(lines + sections)
    write_atomically(page, lambda temp: temp.write_text(text, encoding="utf-8"))
    return page


def env_threshold(text: str) -> tuple[str, float]:
    """Parse ``ENV=VALUE`` (argparse type)."""
    env, _, value = text.partition("=")
    try:
        return env, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ENV=VALUE, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m hmarl.studies.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="folders searched recursively for sacred runs, or run archives (--archive)")
    parser.add_argument("--out", type=Path, required=True, help="folder for README.md and the figures")
    parser.add_argument("--page", type=Path, default=None,
                        help="where the markdown goes (default OUT/README.md), e.g. docs/results.md")
    parser.add_argument("--claims", type=Path, nargs="+", action="extend", default=[],
                        help="YAML files whose claims: and thresholds: are checked and used")
    parser.add_argument("--metric", action="append", default=[],
                        help=f"extra metric columns (final mean and CI) besides {PRIMARY_METRIC}")
    parser.add_argument("--threshold", type=env_threshold, action="append", default=[], metavar="ENV=VALUE",
                        help=f"steps to {PRIMARY_METRIC} >= VALUE on ENV (overrides the claims files)")
    parser.add_argument("--title", default="Results report",
                        help="the page's heading (say what the runs are: a pilot budget, a study)")
    parser.add_argument("--archive", type=Path, default=None, metavar="FILE",
                        help="also write the runs read from results folders and from FILE itself to FILE, a run "
                             "archive that can be read back in place of the results (commit it beside the page); "
                             "runs read from other archives stay in theirs")
    parser.add_argument("--export-marl-eval", type=Path, default=None, metavar="FILE",
                        help="also write the runs' metrics as marl-eval's raw-data JSON")
    args = parser.parse_args(argv)
    missing = [str(folder) for folder in args.results if not folder.exists()]
    if missing:
        parser.error(f"results folder or archive {', '.join(missing)} does not exist")
    where = ", ".join(str(folder) for folder in args.results)
    try:
        writable_folder(args.out, "--out folder")  # before reading every run, not after
        for option, path in (("--page", args.page), ("--archive", args.archive)):
            if path is not None:
                writable_folder(path.parent, f"{option} folder")
        claims, thresholds = load_claims(args.claims)
        collection = load_runs(*args.results)
    except ValueError as error:
        raise SystemExit(f"hmarl.studies.report: {error}") from None
    if not collection.runs:
        raise SystemExit(f"no COMPLETED sacred runs under {where} "
                         f"({collection.skipped} run folders skipped); nothing to report")
    metrics = list(dict.fromkeys([PRIMARY_METRIC, *args.metric]))
    command = "python -m hmarl.studies.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(write_report(collection, where, args.out, metrics, thresholds | dict(args.threshold), claims, args.page,
                       command, args.title))
    if args.archive is not None:
        # an archived run's folder is its archive; the runs of the other archives read stay in theirs
        others = {root.resolve() for root in args.results if not root.is_dir()} - {args.archive.resolve()}
        owned = [run for run in collection.runs if run.folder.resolve() not in others]
        text = json.dumps(archive_data(owned), separators=(",", ":"))
        write_atomically(args.archive, lambda temp: temp.write_text(text, encoding="utf-8"))
        print(args.archive)
    if args.export_marl_eval is not None:
        text = json.dumps(marl_eval_data(collection.runs, metrics), indent=1)
        write_atomically(args.export_marl_eval, lambda temp: temp.write_text(text, encoding="utf-8"))
        print(args.export_marl_eval)


if __name__ == "__main__":
    main()
