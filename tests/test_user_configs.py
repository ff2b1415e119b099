"""Configs outside the package: ``with path/to/file.yaml`` and the ``HMARL_CONFIG_PATH`` search path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hmarl.run import experiment
from hmarl.studies import sweep as sweeps

ROOT = Path(__file__).resolve().parents[1]
TINY = ["num_envs=2", "rollout_steps=10", "total_steps=40", "eval_envs=2", "max_steps=10", "progress=False",
        "eval_interval=0"]
MY_SYSTEM = {"algorithm": "my_ippo", "family": "flat", "levels": [{"learner": "ppo"}],
             "ppo": {"learning_rate": 0.002, "num_minibatches": 2}}
MY_ENV = {"env": "vmas_balance", "n_agents": 3, "max_steps": 10, "env_options": {}}


def cli(*args, cwd, **env):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "hmarl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path, **env})


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def search_path(tmp_path, monkeypatch):
    """A search-path folder; the experiment sees it (and forgets it after the test)."""
    folder = tmp_path / "my_configs"
    folder.mkdir()
    monkeypatch.setenv("HMARL_CONFIG_PATH", os.pathsep.join([str(tmp_path / "missing"), str(folder)]))
    yield folder
    monkeypatch.delenv("HMARL_CONFIG_PATH")
    experiment.register_named_configs()


def test_config_files_given_by_path_run_like_named_configs(tmp_path):
    write(tmp_path / "mine" / "my_system.yaml", MY_SYSTEM)
    write(tmp_path / "mine" / "my_env.yaml", MY_ENV)
    out = cli("with", "mine/my_system.yaml", "mine/my_env.yaml", *TINY, "-F", "runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "runs" / "1" / "config.json").read_text())
    assert config["algorithm"] == "my_ippo" and config["n_agents"] == 3 and config["ppo"]["learning_rate"] == 0.002


def test_a_config_file_and_a_named_config_that_both_set_the_env_are_refused(tmp_path):
    write(tmp_path / "my_env.yaml", MY_ENV)
    out = cli("with", "ippo", "vmas_balance", "my_env.yaml", *TINY, "-F", "runs", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("hmarl: vmas_balance, my_env.yaml all set env, and the last would silently win; "
                                  "name one env config (change single keys with key=value)")


def test_the_search_path_finds_subfolders_and_loose_files_first_match_wins(search_path):
    write(search_path / "algorithms" / "my_ippo.yaml", MY_SYSTEM)
    write(search_path / "my_env.yaml", MY_ENV)                               # loose: an env, by its keys
    write(search_path / "loose_system.yaml", MY_SYSTEM)                      # loose: a system
    write(search_path / "budget.yaml", {"total_steps": 80})                  # sets neither: every kind
    write(search_path / "mappo.yaml", {**MY_SYSTEM, "algorithm": "mine"})    # shadows the shipped mappo
    algorithms, envs = experiment.named_configs("algorithms"), experiment.named_configs("envs")
    assert algorithms["my_ippo"] == search_path / "algorithms" / "my_ippo.yaml"
    assert {"loose_system", "budget", "ippo"} <= set(algorithms) and "my_env" not in algorithms
    assert {"my_env", "budget", "vmas_balance"} <= set(envs) and "loose_system" not in envs
    assert algorithms["mappo"] == search_path / "mappo.yaml"
    assert set(experiment.named_configs()) == set(algorithms) | set(envs)


def test_search_path_configs_run_through_sacred_and_sweeps(search_path, tmp_path):
    write(search_path / "algorithms" / "my_ippo.yaml", MY_SYSTEM)
    write(search_path / "envs" / "my_env.yaml", MY_ENV)
    experiment.register_named_configs()
    run = experiment.ex.run(named_configs=["my_ippo", "my_env"], options={"--loglevel": "ERROR"},
                            config_updates={"num_envs": 2, "rollout_steps": 10, "total_steps": 20, "eval_envs": 1,
                                            "progress": False})
    assert run.status == "COMPLETED" and run.config["n_agents"] == 3
    path = write(tmp_path / "sweep.yaml", {"name": "mine", "algorithms": ["my_ippo"], "envs": ["my_env"], "seeds": 1})
    (spec,) = sweeps.prepare(sweeps.expand(sweeps.load_sweep(path), tmp_path / "results"))
    assert spec.name == "my_env/my_ippo/seed0"


def test_a_malformed_config_on_the_path_breaks_only_the_runs_that_use_it(tmp_path):
    write(tmp_path / "configs" / "envs" / "broken.yaml", "env: vmas_balance\nn_agents: [1, 2\n")
    write(tmp_path / "configs" / "loose_broken.yaml", "levels: {learner: ppo\n")
    env = {"HMARL_CONFIG_PATH": "configs"}
    fine = cli("with", "ippo", "vmas_balance", *TINY, "-u", cwd=tmp_path, **env)
    assert fine.returncode == 0, fine.stderr
    for name, line in (("broken", 3), ("loose_broken", 2)):
        out = cli("with", "ippo", name, *TINY, "-u", cwd=tmp_path, **env)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        (message,) = out.stderr.strip().splitlines()
        assert f"{name}.yaml, line {line}" in message and "not valid YAML" in message


def test_in_process_runs_report_a_malformed_named_config_by_file_and_line(search_path):
    write(search_path / "envs" / "broken.yaml", "env: vmas_balance\nn_agents: [1, 2\n")
    experiment.register_named_configs()
    with pytest.raises(ValueError, match=r"broken.yaml, line 3, column 1: not valid YAML"):
        experiment.ex.run(named_configs=["ippo", "broken"], options={"--loglevel": "ERROR"})
