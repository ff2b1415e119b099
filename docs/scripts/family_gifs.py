"""The family GIFs of the docs: a short training run per family, then one rendered episode.

    python docs/scripts/family_gifs.py [FAMILY ...] [--out docs/figures] [--scratch /tmp/hmarl_family_gifs]

Each family trains through the command line a user would type (``python -m hmarl with
SYSTEM ENV ...``, a few minutes on two CPU cores: tiny runs, so the agents have learned a
little, not much) and ``python -m hmarl.run.evaluate RUN --render OUT.gif`` draws one greedy
episode with the hierarchy over the env (every family, or those named). The runs' folders go to
``--scratch/<family>`` (emptied first).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

#: family -> the system, the env and the keys of its training run
RUNS = {
    "tag": ["tag_3ppo", "vmas_balance", "total_steps=100000", "num_envs=32"],
    "himpo": ["himppo", "vmas_simple_spread", "total_steps=64000", "num_envs=32"],
    "hrl_cg": ["hrl_cg", "point_maze", "total_steps=48000", "num_envs=16", "td3.random_steps=2000",
               "goal_manager.random_steps=2000"],
    "alma": ["alma", "savethecity", "total_steps=16000", "num_envs=16", "aqmix.learning_starts=500",
             "allocator.learning_starts=50"],
}


def main() -> None:
    """Train and render every family of ``RUNS``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", metavar="FAMILY", help=f"any of {', '.join(RUNS)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/hmarl_family_gifs"))
    args = parser.parse_args()
    unknown = sorted(set(args.families) - set(RUNS))
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; known: {', '.join(RUNS)}")
    for family in args.families or RUNS:
        system, env, *keys = RUNS[family]
        runs = args.scratch / family
        shutil.rmtree(runs, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "hmarl", "with", system, env, *keys, "eval_interval=0", "eval_envs=8",
                        "progress=False", "-F", str(runs)], check=True)
        subprocess.run([sys.executable, "-m", "hmarl.run.evaluate", str(runs / "1"), "--episodes", "8",
                        "--render", str(args.out / f"{family}.gif")], check=True)


if __name__ == "__main__":
    main()
