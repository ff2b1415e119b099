"""Every bad input gets one line before training: through the real command lines, in subprocesses.

Each case runs ``python -m hmarl`` (``-F`` to a temporary folder), ``python -m hmarl.studies.sweep`` or
``python -m hmarl.studies.report`` and is classified: *clear* (exit code != 0, exactly one line on
stderr that names what to change, no traceback, nothing left behind: not even an empty
results folder; for the cases
marked as warnings: the run goes on and one warning line names the problem), *traceback*,
*silent* (it ran as if nothing were wrong) or *unclear* (anything else). The test asserts
*clear* for every case; ``python tests/test_cli_inputs.py [CODE_ROOT]`` prints the table for
any checkout (e.g. the main branch, to compare).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["num_envs=2", "rollout_steps=10", "total_steps=40", "eval_envs=2", "max_steps=10", "progress=False",
        "eval_interval=0"]
SWEEP = {"algorithms": ["ippo"], "envs": ["vmas_balance"], "seeds": 1,
         "config": {"num_envs": 2, "rollout_steps": 10, "total_steps": 40, "eval_envs": 2, "max_steps": 10,
                    "n_agents": 2}}
MALFORMED = "env: vmas_balance\nn_agents: [1, 2\nmax_steps: 10\n"


@dataclass
class Case:
    """One bad input: the command, the files it needs, and what its one line must name."""

    name: str
    tool: str  # hmarl, hmarl.studies.sweep or hmarl.studies.report
    args: list[str]
    names: str
    """A regex the error (or warning) line must match: what to change."""
    files: dict[str, str] = field(default_factory=dict)
    """Files written into the case's folder first (relative path -> text)."""
    warning: bool = False
    """The run goes on with one warning line instead of stopping."""
    env: dict[str, str] = field(default_factory=dict)


def sweep_file(**keys) -> str:
    return json.dumps({"name": "tiny", **SWEEP, **keys})  # JSON is YAML


CASES = [
    Case("seed=abc", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "seed=abc"], r"seed.*integer.*'abc'"),
    Case("device=tpu", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "device=tpu"], r"device=tpu.*cpu"),
    Case("malformed YAML file", "hmarl", ["with", "ippo", "my_env.yaml", *TINY], r"my_env\.yaml.*line 3",
         files={"my_env.yaml": MALFORMED}),
    Case("malformed YAML on HMARL_CONFIG_PATH", "hmarl", ["with", "ippo", "my_env", *TINY],
         r"envs/my_env\.yaml.*line 3", files={"configs/envs/my_env.yaml": MALFORMED},
         env={"HMARL_CONFIG_PATH": "configs"}),
    Case("list-shaped YAML", "hmarl", ["with", "ippo", "my_env.yaml", *TINY], r"my_env\.yaml.*mapping",
         files={"my_env.yaml": "- env: vmas_balance\n- n_agents: 2\n"}),
    Case("two algorithm configs", "hmarl", ["with", "mappo", "ippo", "vmas_balance", *TINY], r"mappo.*ippo"),
    Case("n_agents=1 on vmas_balance", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "n_agents=1"],
         r"n_agents"),
    Case("unknown env_options", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "env_options.wind=3"],
         r"env_options.*wind"),
    Case("unknown eval_env_options", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "eval_env_options.wind=3"],
         r"eval_env_options.*wind"),
    Case("subtasks=maybe", "hmarl", ["with", "alma", "vmas_simple_spread", *TINY, "env_options.subtasks=maybe"],
         r"subtasks.*true.*false"),
    Case("family overwrites a level's reward", "hmarl",
         ["with", "alma", "savethecity", *TINY, 'levels=[{"learner": "aqmix", "reward": "sum_up"}, '
                                                '{"learner": "allocator"}]'], r"level 0.*reward"),
    Case("options of an unused learner (warns)", "hmarl", ["with", "ippo", "vmas_balance", *TINY,
                                                           "td3.learning_rate=0.1"], r"td3", warning=True),
    Case("unwritable -F folder", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "-F", "a_file/runs"],
         r"a_file/runs", files={"a_file": ""}),
    Case("unwritable checkpoint_dir", "hmarl", ["with", "ippo", "vmas_balance", *TINY, "checkpoint_interval=20",
                                                "checkpoint_dir=a_file/checkpoints"], r"checkpoint_dir.*a_file",
         files={"a_file": ""}),
    Case("empty sweep file", "hmarl.studies.sweep", ["sweep.yaml", "--results", "sweeps"], r"sweep\.yaml.*empty",
         files={"sweep.yaml": ""}),
    Case("sweep file without name", "hmarl.studies.sweep", ["sweep.yaml", "--results", "sweeps"], r"sweep\.yaml.*name",
         files={"sweep.yaml": json.dumps(SWEEP)}),
    Case("sweep name escaping --results", "hmarl.studies.sweep", ["sweep.yaml", "--results", "sweeps"],
         r"sweep\.yaml.*name.*\.\./x", files={"sweep.yaml": sweep_file(name="../x")}),
    Case("sweep with unknown env_options", "hmarl.studies.sweep", ["sweep.yaml", "--results", "sweeps"], r"env_options.*wind",
         files={"sweep.yaml": sweep_file(config={**SWEEP["config"], "env_options": {"wind": 3}})}),
    Case("sweep with unknown eval_env_options", "hmarl.studies.sweep", ["sweep.yaml", "--results", "sweeps"],
         r"eval_env_options.*wind",
         files={"sweep.yaml": sweep_file(config={**SWEEP["config"], "eval_env_options": {"wind": 3}})}),
    Case("unwritable report --out", "hmarl.studies.report", ["results", "--out", "a_file/report"], r"--out.*a_file",
         files={"a_file": "", "results/1/run.json": "{}"}),
]


def run_case(case: Case, folder: Path, root: Path = ROOT) -> subprocess.CompletedProcess:
    """Write the case's files into ``folder`` and run its command there with ``root``'s code."""
    for name, text in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    args = list(case.args)
    if case.tool == "hmarl" and "-F" not in args:
        args += ["-F", "runs"]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", case.tool, *args], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path, **case.env})


def leftovers(case: Case, folder: Path) -> list[str]:
    """What a refused input left behind: the folders runs, sweeps and reports write to (``-F runs``,
    ``results/``, ``--results sweeps``), unless the case wrote them itself as its input."""
    given = {Path(name).parts[0] for name in case.files}
    return sorted(name for name in ("runs", "results", "sweeps") if (folder / name).exists() and name not in given)


def classify(case: Case, out: subprocess.CompletedProcess, folder: Path) -> str:
    """clear, traceback, silent or unclear (see the module docstring)."""
    text = out.stdout + out.stderr
    if "Traceback" in text:
        return "traceback"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    if case.warning:
        warned = [line for line in lines if "warning" in line.lower() and re.search(case.names, line)]
        if out.returncode != 0:
            return "unclear"
        return "clear" if len(warned) == 1 else "silent"
    if out.returncode == 0:
        return "silent"
    if len(lines) == 1 and re.search(case.names, lines[0]) and not leftovers(case, folder):
        return "clear"
    return "unclear"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_before_training(case, tmp_path):
    out = run_case(case, tmp_path)
    verdict = classify(case, out, tmp_path)
    assert verdict == "clear", (f"{verdict}: exit {out.returncode}\n{out.stderr[-3000:]}\n"
                                f"left: {leftovers(case, tmp_path)}")


if __name__ == "__main__":
    import tempfile

    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    counts: dict[str, int] = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            out = run_case(case, Path(folder), root)
            verdict = classify(case, out, Path(folder))
        counts[verdict] = counts.get(verdict, 0) + 1
        last = (out.stderr.strip().splitlines() or [""])[-1][:150]
        print(f"{verdict:9s} {case.name:40s} | {last}", flush=True)
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
