"""Statistics over seeds, and TAG's inter-level action correlation (Sec. 5.3).

Used by ``hmarl.report``; every function takes and returns plain arrays or numbers. Resampling is
``scipy.stats.bootstrap``'s (percentile method); the interquartile mean is rliable's.
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
    """``scipy.stats.bootstrap``'s percentile interval of a vectorized ``statistic`` over axis 0."""
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
