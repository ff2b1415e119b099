"""Learning curves and a results table from a sacred results folder.

    python docs/scripts/learning_curves.py RESULTS_DIR --env vmas_simple_spread --out docs/learning_vmas_simple_spread

Reads every completed run's config.json and metrics.json; plots eval/return against env
steps per algorithm (mean over seeds, min-max band) with each heuristic run as a line;
writes OUT.png and prints a markdown table of final returns.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load_runs(folder: Path, env: str):
    runs = defaultdict(list)
    for run_dir in sorted(folder.iterdir()):
        run_file = run_dir / "run.json"
        if not run_file.exists() or json.loads(run_file.read_text())["status"] != "COMPLETED":
            continue
        config = json.loads((run_dir / "config.json").read_text())
        if config["env"] != env:
            continue
        curve = json.loads((run_dir / "metrics.json").read_text())["eval/return"]
        runs[config["algorithm"]].append((np.array(curve["steps"]), np.array(curve["values"])))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--env", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = load_runs(args.results, args.env)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for algorithm, curves in sorted(runs.items()):
        finals = [values[-1] for _, values in curves]
        rows.append((algorithm, np.mean(finals), len(curves), curves[0][0][-1]))
        if algorithm == "heuristic":
            ax.axhline(np.mean(finals), color="k", ls="--", label="heuristic")
            continue
        length = min(len(s) for s, _ in curves)
        steps = curves[0][0][:length]
        values = np.stack([v[:length] for _, v in curves])
        ax.plot(steps, values.mean(0), label=algorithm)
        if len(curves) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (mean over agents and episodes)")
    ax.set_title(args.env)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{args.out}.png", dpi=120)
    print("| algorithm | final eval return | seeds | env steps |\n|---|---:|---:|---:|")
    for algorithm, final, seeds, steps in sorted(rows, key=lambda r: -r[1]):
        print(f"| {algorithm} | {final:.1f} | {seeds} | {steps:,} |")


if __name__ == "__main__":
    main()
