"""Statistics over seeds, their aggregate across envs, and TAG's inter-level action correlation (Sec. 5.3).

Used by ``hmarl.studies.report``; every function takes and returns plain arrays or numbers. Resampling is
``scipy.stats.bootstrap``'s (percentile method); the interquartile mean, the probability of improvement
and performance profiles follow rliable's definitions (Agarwal et al. 2021, *Deep RL at the Edge of the
Statistical Precipice*), and ``tests/test_report.py`` checks them against rliable where it is installed
(``pip install -e ".[stats]"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed so that a report is the same every time it is rebuilt
# Resamples are drawn this many at a time, so a long curve's [resamples, seeds, steps] never sits in memory whole.
BOOTSTRAP_BATCH = 1_000
BOOTSTRAP_METHOD = "percentile"
#: The thresholds at which performance profiles are evaluated (normalised scores).
PROFILE_TAUS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with its 95% bootstrap CI and interquartile mean."""

    mean: float
    low: float
    high: float
    iqm: float
    n: int


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, confidence: float, resamples: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.stats.bootstrap``'s percentile interval of a vectorized ``statistic``; each sample (axis 0)
    is resampled on its own, which for one sample per env is rliable's stratified bootstrap."""
    result = stats.bootstrap(samples, statistic, n_resamples=resamples, confidence_level=confidence,
                             method=BOOTSTRAP_METHOD, axis=0, batch=BOOTSTRAP_BATCH,
                             rng=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def bootstrap_ci(samples: np.ndarray, confidence: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean over axis 0 (seeds), by ``scipy.stats.bootstrap``.

    Percentile rather than scipy's default BCa: BCa's acceleration is a jackknife estimate that is
    undefined when every seed has the same value (a solved task) and erratic over the 2-5 seeds
    a sweep runs; percentile is also what rliable reports. Trailing axes (e.g. steps) are kept and
    every column uses the same resamples of seeds. One seed gives CI = [value, value].

    Shapes:
        samples ``[seeds, ...]`` -> low, high ``[...]``
    """
    samples = np.asarray(samples, dtype=float)
    if len(samples) == 1:
        return samples[0], samples[0]
    low, high = _bootstrap((samples,), np.mean, confidence, resamples, seed)
    # A resampled mean cannot leave [min, max]; clipping removes rounding that would
    # otherwise put the CI of identical values a hair away from the value.
    return np.clip(low, samples.min(0), samples.max(0)), np.clip(high, samples.min(0), samples.max(0))


def interquartile_mean(values: np.ndarray) -> float:
    """rliable's IQM (``metrics.aggregate_iqm``): ``scipy.stats.trim_mean(values, 0.25)``.

    The mean after dropping ``int(n / 4)`` whole values at each end of the sorted values, so for
    fewer than 4 values the plain mean. E.g. the 7 values ``0, 1, 4, 9, 16, 25, 36`` drop 0 and 36:
    (1 + 4 + 9 + 16 + 25) / 5 = 11.

    Shapes:
        values ``[n]``
    """
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def estimate(values: np.ndarray) -> Estimate:
    """Mean, 95% bootstrap CI and IQM of per-seed values ``[seeds]``."""
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values)
    return Estimate(float(values.mean()), float(low), float(high), interquartile_mean(values), len(values))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap CI."""

    value: float
    low: float
    high: float


def _interval(samples: tuple[np.ndarray, ...], statistic) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vectorized statistic of per-task run scores, with its 95% stratified bootstrap CI."""
    return statistic(*samples, axis=-1), *_bootstrap(samples, statistic, 0.95, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)


def _runs_by_tasks(per_task: tuple[np.ndarray, ...]) -> np.ndarray:
    """What a vectorized statistic receives, one ``[..., runs]`` per task -> ``[..., runs * tasks]``."""
    return np.stack(per_task, -1).reshape(*per_task[0].shape[:-1], -1)


def _iqm_and_mean(*per_task: np.ndarray, axis: int = -1) -> np.ndarray:
    """rliable's ``aggregate_iqm`` and ``aggregate_mean`` over every run of every task ``[2, ...]``."""
    scores = _runs_by_tasks(per_task)
    return np.stack([stats.trim_mean(scores, 0.25, axis=-1), scores.mean(-1)])


def _improvement(*per_task: np.ndarray, axis: int = -1) -> np.ndarray:
    """rliable's ``probability_of_improvement``: per task the Mann-Whitney U of X over Y divided by
    ``runs_x * runs_y`` (ties count 1/2), averaged over tasks. ``per_task`` is X's tasks, then Y's."""
    xs, ys = per_task[:len(per_task) // 2], per_task[len(per_task) // 2:]
    tasks = [((x[..., :, None] > y[..., None, :]) + 0.5 * (x[..., :, None] == y[..., None, :])).mean((-2, -1))
             for x, y in zip(xs, ys)]
    return np.mean(tasks, axis=0)


def _profile(*per_task: np.ndarray, axis: int = -1) -> np.ndarray:
    """rliable's score-distribution performance profile: the share of runs (of every task) whose
    score exceeds each of ``PROFILE_TAUS`` ``[taus, ...]``."""
    scores = _runs_by_tasks(per_task)
    return np.moveaxis((scores[..., None, :] > PROFILE_TAUS[:, None]).mean(-1), -1, 0)


@dataclass(frozen=True)
class Aggregate:
    """rliable's aggregate of normalised scores across envs, with 95% stratified bootstrap CIs."""

    iqm: dict[str, Interval]
    mean: dict[str, Interval]
    improvement: dict[tuple[str, str], Interval]  # (x, y) -> P(x > y), x ranked above y by IQM
    profile: dict[str, np.ndarray]  # [3, taus]: the share of runs above each tau, its CI's low and high


def normalized_scores(finals: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Min-max normalisation per env over every value reported on it: env -> label -> scores.

    0 is the lowest value of any seed of any label on the env, 1 the highest (marl-eval's
    normalisation, with final values only). An env whose values are all equal is left out:
    normalisation is undefined there.

    Shapes:
        ``finals[env][label]`` ``[seeds]`` -> the same, in ``[0, 1]``
    """
    normalized = {}
    for env, labels in finals.items():
        values = np.concatenate(list(labels.values()))
        low, high = values.min(), values.max()
        if high > low:
            normalized[env] = {label: (scores - low) / (high - low) for label, scores in labels.items()}
    return normalized


def aggregate(scores: dict[str, np.ndarray]) -> Aggregate:
    """IQM, mean, probabilities of improvement and performance profiles of each label's scores.

    ``scores[label]`` is ``[runs, tasks]``: the same tasks for every label, at least 2 runs (the
    bootstrap's minimum), which may differ between labels. Each task's runs are resampled on their
    own (rliable's stratified bootstrap; for a pair, each label's independently) by
    ``scipy.stats.bootstrap``, percentile method. Why not rliable's own ``get_interval_estimates``:
    it calls the statistic once per resample through ``arch`` (about 12 s for one pair's probability
    of improvement at 2,000 resamples here, so minutes for a sweep's labels) and draws its resamples
    from numpy's global RNG whatever ``random_state`` it is given; scipy runs the vectorized
    statistics above on all resamples at once, from a seeded generator.

    Shapes:
        ``scores[label]`` ``[runs, tasks]``
    """
    columns = {}
    for label, values in scores.items():
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or len(values) < 2:
            raise ValueError(f"aggregate: {label} needs scores [runs >= 2, tasks], got shape {values.shape}")
        columns[label] = tuple(values.T)
    iqm, mean, profile = {}, {}, {}
    for label, tasks in columns.items():
        value, low, high = _interval(tasks, _iqm_and_mean)
        iqm[label] = Interval(float(value[0]), float(low[0]), float(high[0]))
        mean[label] = Interval(float(value[1]), float(low[1]), float(high[1]))
        profile[label] = np.stack(_interval(tasks, _profile))
    ranked = sorted(columns, key=lambda label: -iqm[label].value)
    improvement = {}
    for i, x in enumerate(ranked):
        for y in ranked[i + 1:]:
            improvement[x, y] = Interval(*map(float, _interval((*columns[x], *columns[y]), _improvement)))
    return Aggregate(iqm, mean, improvement, profile)


def first_step_reaching(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first logged step whose value is >= threshold; None if the curve never gets there."""
    reached = np.flatnonzero(np.asarray(values) >= threshold)
    return int(steps[reached[0]]) if len(reached) else None


def align_curves(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' (steps, values) curves on shared steps -> (steps, values [seeds, steps]).

    Seeds of one config log at the same steps and are stacked as they are. Otherwise
    every curve is linearly interpolated onto the steps of the curve that ends first,
    where all seeds have data.
    """
    steps = min((s for s, _ in curves), key=lambda s: s[-1])
    if all(np.array_equal(s, steps) for s, _ in curves):
        return steps, np.stack([v for _, v in curves])
    return steps, np.stack([np.interp(steps, s, v) for s, v in curves])


def action_modes(bottom: np.ndarray, upper: np.ndarray, n_actions: int) -> np.ndarray:
    """Per episode and bottom action a, the most frequent upper action at the steps where a was taken.

    ``bottom`` and ``upper`` are [episodes, T] ints padded with -1. Returns [episodes, n_actions]:
    ties go to the smallest upper action, -1 where the bottom agent never took a.
    """
    bottom, upper = np.asarray(bottom), np.asarray(upper)
    valid = (bottom >= 0) & (upper >= 0)
    episode = np.nonzero(valid)[0]
    counts = np.zeros((len(bottom), n_actions, int(upper.max(initial=0)) + 1), dtype=int)
    np.add.at(counts, (episode, bottom[valid], upper[valid]), 1)
    modes = counts.argmax(-1)  # argmax returns the first maximum: the smallest tied action
    modes[counts.sum(-1) == 0] = -1
    return modes


def mode_stability(modes: np.ndarray) -> float:
    """Share of consecutive episode pairs whose mode is unchanged, over cells present in both.

    The paper's "constant mode across episodes"; NaN when no cell is present in two consecutive episodes.
    """
    before, after = modes[:-1], modes[1:]
    present = (before >= 0) & (after >= 0)
    return float((before == after)[present].mean()) if present.any() else float("nan")
