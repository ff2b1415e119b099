"""Draw docs/figures/data_flow.svg: one Level's four strategies during a step, and the update context.

    python docs/scripts/data_flow.py
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: a small file that diffs
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "figures" / "data_flow.svg"
STRATEGY = "#dbe9f6"
DATA = "#fdf0d5"
UPDATE = "#e3f1df"


def box(ax, x, y, w, h, text, color, size=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="#444444", linewidth=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, start, end, text="", offset=(0.0, 0.0), style="-|>", color="#333333"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, linewidth=0.9, color=color))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, fontsize=7.5,
                ha="center", va="center", color="#333333")


def main() -> None:
    fig, ax = plt.subplots(figsize=(10.5, 6.2))
    ax.set_xlim(0, 10.5)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    # the step loop of one Level (left) ------------------------------------------------------
    ax.text(2.9, 5.95, "Level.step(command): the step loop", fontsize=10, ha="center", weight="bold")
    box(ax, 1.7, 5.05, 2.4, 0.55, "level above\n(its action = this level's command)", DATA, 8)
    box(ax, 0.2, 3.95, 2.3, 0.6, "CommandChannel\nencode / carry", STRATEGY)
    box(ax, 3.3, 3.95, 2.3, 0.6, "Termination\nEvery(k) stride, or decide", STRATEGY)
    box(ax, 1.7, 2.85, 2.4, 0.6, "learner.act(obs)\none call, all agents", DATA)
    box(ax, 0.2, 1.75, 2.3, 0.6, "ActionSplit\nJoint / PerChild", STRATEGY)
    box(ax, 3.3, 1.75, 2.3, 0.6, "Grouping\nFixed / Regroup", STRATEGY)
    box(ax, 1.7, 0.45, 2.4, 0.6, "level below (or the env)\nstep(children's actions)", DATA, 8)
    arrow(ax, (2.4, 5.05), (1.4, 4.55), "command", (-0.35, 0.05))
    arrow(ax, (1.4, 3.95), (2.3, 3.45), "features", (-0.45, 0.0))
    arrow(ax, (4.45, 3.95), (3.5, 3.45), "who acts now", (0.55, 0.0))
    arrow(ax, (2.3, 2.85), (1.4, 2.35), "action", (-0.4, 0.0))
    arrow(ax, (1.4, 1.75), (2.4, 1.05), "per child slot", (-0.55, 0.0))
    arrow(ax, (4.45, 1.75), (3.4, 1.05), "slot -> unit", (0.55, -0.05))
    arrow(ax, (3.9, 1.05), (4.9, 1.75), style="-|>", color="#777777")
    ax.text(4.75, 1.22, "obs, reward,\npositions", fontsize=7.5, color="#555555")
    arrow(ax, (4.45, 2.35), (3.5, 2.85), "children's obs", (0.6, 0.05))
    arrow(ax, (4.1, 5.45), (4.6, 5.7), style="<|-")
    ax.text(4.65, 5.72, "up: messages phi(children's obs),\nthe children's summed reward", fontsize=7.5,
            va="center")

    # the update (right) --------------------------------------------------------------------
    ax.text(8.3, 5.95, "Hierarchy.update(progress): top-down", fontsize=10, ha="center", weight="bold")
    box(ax, 6.9, 4.6, 2.8, 0.7, "level l+1 learner.update(rollout, ctx)\n-> UpdateResult(metrics, outputs)",
        UPDATE, 8)
    box(ax, 6.9, 3.15, 2.8, 0.85, "Published(outputs, parent, slot, stride)\ne.g. HiMPo's advantages\n"
        "[T, B, N, slots]", DATA, 8)
    box(ax, 6.9, 1.75, 2.8, 0.75, "level l reward rule: needs <= publishes\nrelabel(rollout, ctx)", UPDATE, 8)
    box(ax, 6.9, 0.45, 2.8, 0.75, "level l learner.update(rollout, ctx)\nctx = UpdateContext(progress,\n"
        "above, below, below_learner)", UPDATE, 7.5)
    arrow(ax, (8.3, 4.6), (8.3, 4.0))
    arrow(ax, (8.3, 3.15), (8.3, 2.5), "ctx.above", (0.45, 0.0))
    arrow(ax, (8.3, 1.75), (8.3, 1.2), "rewards", (0.4, 0.0))
    arrow(ax, (6.75, 0.8), (6.75, 4.75), style="-|>", color="#777777")
    ax.text(6.6, 2.8, "ctx.below, ctx.below_learner\n(read-only: HRL-CG's connected gradient)", fontsize=7.5,
            rotation=90, ha="center", va="center", color="#555555")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
