"""Tabulate runs of two results folders side by side (e.g. before and after a fix).

    python docs/scripts/compare_runs.py results/before results/after --metric eval/return \
        --metric "level*/ppo/explained_variance" --last 10

Runs are sacred run folders (``config.json``, ``metrics.json``, ``run.json``) anywhere below
each folder; only COMPLETED ones count. Rows are (env, algorithm); per folder, a cell is the
mean over seeds of each run's metric (the final value, or the mean of its last ``--last``
values), with the per-seed values and the seed count. A metric pattern with ``*`` matches
several names (one column each, e.g. one per level).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
from pathlib import Path


def completed_runs(folder: Path) -> list[tuple[dict, dict]]:
    """(config, metrics) of every COMPLETED sacred run below ``folder``."""
    runs = []
    for run_file in sorted(folder.rglob("run.json")):
        if json.loads(run_file.read_text()).get("status") != "COMPLETED":
            continue
        runs.append((json.loads((run_file.parent / "config.json").read_text()),
                     json.loads((run_file.parent / "metrics.json").read_text())))
    return runs


def summary(values: list[float], last: int) -> float:
    """The final value, or the mean of the last ``last`` values."""
    return statistics.fmean(values[-last:]) if last > 1 else values[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--metric", action="append", default=None, help="metric name or pattern (repeatable)")
    parser.add_argument("--last", type=int, default=1, help="average each run's last N values")
    args = parser.parse_args()
    patterns = args.metric or ["eval/return"]
    tables = {folder: completed_runs(folder) for folder in args.folders}
    names = sorted({name for runs in tables.values() for _, metrics in runs for name in metrics
                    if any(fnmatch.fnmatch(name, p) for p in patterns)})
    rows = sorted({(c["env"], c["algorithm"]) for runs in tables.values() for c, _ in runs})
    print("| env | algorithm | metric | " + " | ".join(f"{f} (mean; per seed)" for f in args.folders) + " |")
    print("|---|---|---|" + "---|" * len(args.folders))
    for env, algorithm in rows:
        for name in names:
            cells = []
            for folder in args.folders:
                seeds = sorted((c["seed"], summary(m[name]["values"], args.last)) for c, m in tables[folder]
                               if c["env"] == env and c["algorithm"] == algorithm and name in m)
                cells.append(f"{statistics.fmean(v for _, v in seeds):.3g}; "
                             + ", ".join(f"{v:.3g}" for _, v in seeds) + f" ({len(seeds)} seeds)" if seeds else "-")
            print(f"| {env} | {algorithm} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
