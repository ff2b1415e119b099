"""Learning curves and a results table from a sacred results folder.

    python docs/scripts/learning_curves.py RESULTS_DIR --env vmas_simple_spread --out docs/learning_vmas_simple_spread
    python docs/scripts/learning_curves.py RESULTS_DIR --env point_maze --metric eval/success --out docs/learning_point_maze

Reads every completed run's config.json and metrics.json; runs are grouped by algorithm
(and ``cg_lambda`` where it is not the named config's default). Plots ``--metric`` against
env steps (mean over seeds, min-max band; heuristic runs as a line), writes OUT.png, and
prints a markdown table of the final values of ``--metric`` and of every metric below it
(e.g. ``eval/success/16,0``), mean over seeds (each seed's mean of its last ``--last`` values).
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

DEFAULT_LAMBDA = {"hrl_cg": 0.005, "hrl": 0.0}


def label(config: dict) -> str:
    name, cg_lambda = config["algorithm"], config.get("cg_lambda")
    if cg_lambda is not None and cg_lambda != DEFAULT_LAMBDA.get(name):
        return f"{name} (cg_lambda={cg_lambda:g})"
    return name


def load_runs(folder: Path, env: str) -> dict[str, list[dict]]:
    runs = defaultdict(list)
    for run_dir in sorted(folder.iterdir()):
        run_file = run_dir / "run.json"
        if not run_file.exists() or json.loads(run_file.read_text())["status"] != "COMPLETED":
            continue
        config = json.loads((run_dir / "config.json").read_text())
        if config["env"] == env:
            runs[label(config)].append(json.loads((run_dir / "metrics.json").read_text()))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--env", required=True)
    parser.add_argument("--metric", default="eval/return")
    parser.add_argument("--out", required=True)
    parser.add_argument("--last", type=int, default=1, help="table: mean of the last LAST logged values")
    args = parser.parse_args()
    runs = load_runs(args.results, args.env)
    columns = sorted({m for metrics in sum(runs.values(), []) for m in metrics
                      if m == args.metric or m.startswith(args.metric + "/")})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for name, seeds in sorted(runs.items()):
        finals = [np.mean([np.mean(metrics[c]["values"][-args.last:]) for metrics in seeds]) for c in columns]
        rows.append((name, finals, len(seeds), seeds[0][args.metric]["steps"][-1]))
        if name == "heuristic":
            ax.axhline(finals[0], color="k", ls="--", label="heuristic")
            continue
        length = min(len(m[args.metric]["steps"]) for m in seeds)
        steps = np.array(seeds[0][args.metric]["steps"][:length])
        values = np.stack([m[args.metric]["values"][:length] for m in seeds])
        ax.plot(steps, values.mean(0), label=name)
        if len(seeds) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel(args.metric)
    ax.set_title(args.env)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{args.out}.png", dpi=120)
    print("| algorithm | " + " | ".join(columns) + " | seeds | env steps |")
    print("|---|" + "---:|" * (len(columns) + 2))
    for name, finals, seeds, steps in sorted(rows, key=lambda r: -r[1][0]):
        print(f"| {name} | " + " | ".join(f"{v:.4g}" for v in finals) + f" | {seeds} | {steps:,} |")


if __name__ == "__main__":
    main()
