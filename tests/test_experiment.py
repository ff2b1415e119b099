"""The sacred runner: CLI, results on disk, resume, and bad input caught before training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hmarl.run.experiment import Trainer, ex
from tests.test_systems import run_config
from tests.toys import fit_interrupted

TINY = ["num_envs=4", "rollout_steps=20", "total_steps=160", "eval_envs=2", "max_steps=20", "progress=False"]
ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd):
    """``python -m hmarl *args`` in ``cwd``, importing this checkout's code (not whichever copy
    is installed: an editable install may point at another checkout)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "hmarl", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})


def test_cli_run_writes_metrics_and_result(tmp_path):
    out = cli("with", "ippo", "vmas_balance", *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "results" / "1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/return", "eval/return", "perf/env_steps_per_s", "level0/ppo/pg_loss"} <= set(metrics)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "COMPLETED" and run["result"] == metrics["eval/return"]["values"][-1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "ippo" and config["env"] == "vmas_balance"


def test_cli_file_storage_flag_replaces_the_default_folder(tmp_path):
    out = cli("with", "mappo", "vmas_balance", *TINY, "-F", "elsewhere", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "elsewhere" / "1" / "metrics.json").exists()
    assert not (tmp_path / "results" / "1").exists()


def test_cli_sql_observer_records_the_run(tmp_path):
    import sqlite3

    out = cli("with", "ippo", "vmas_balance", *TINY, "-s", "sqlite:///runs.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = list(sqlite3.connect(tmp_path / "runs.db").execute("select run_id, status, result from run"))
    assert len(rows) == 1 and rows[0][1] == "COMPLETED" and isinstance(rows[0][2], float)
    assert not (tmp_path / "results").exists()
    # the SQL observer stores no metrics: a csv beside the database has them, under the run's id
    metrics = (tmp_path / "runs-logs" / str(rows[0][0]) / "metrics.csv").read_text().splitlines()
    assert metrics[0] == "name,step,value" and any(line.startswith("eval/return,160,") for line in metrics)


def test_print_config_shows_named_configs_and_overrides(tmp_path):
    out = cli("print_config", "with", "mappo", "vmas_simple_spread", "n_agents=5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "algorithm = 'mappo'" in out.stdout and "n_agents = 5" in out.stdout


def test_unknown_named_config_lists_what_exists(tmp_path):
    out = cli("with", "tag_9ppo", cwd=tmp_path)
    assert out.returncode != 0
    assert "unknown named config 'tag_9ppo'" in out.stderr and "tag_3ppo" in out.stderr
    assert "vmas_balance" in out.stderr and "Traceback" not in out.stderr


def test_cli_config_error_is_one_message(tmp_path):
    out = cli("with", "mappo", "vmas_balance", "total_steps=0", cwd=tmp_path)
    assert out.returncode != 0
    assert "hmarl: total_steps must be positive, got 0" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("updates, message", [
    ({"env": "gridworld"}, "unknown env 'gridworld'; available: gymnasium, lbf, lbfws_easy, lbfws_hard, mpe2_simple_spread, mpe_simple_spread"),
    ({"family": "feudal"}, "unknown family 'feudal'; available: tag, flat, hrl_cg"),
    ({"total_steps": 0}, "total_steps must be positive"),
    ({"total_steps": 10}, "less than one rollout"),
    ({"num_envs": -2}, "num_envs must be positive"),
    ({"rollout_steps": 6}, "not a whole number of top-level steps"),
    ({"ppo": {"lr": 0.1}}, "unknown option(s) lr; known options: learning_rate"),
    ({"ppo": {"clip_coef": "big"}}, "clip_coef: expected a number"),
    ({"levels": [{"learner": "ppo"}, {"learner": "sac", "group_size": 2, "command": "discrete(5)"}]},
     "unknown learner 'sac'; available: ppo, mappo, td3, dqn, goal_manager, heuristic"),
    ({"levels": [{"learner": "ppo"}, {"learner": "ppo", "children": [[0, 1], [1, 2, 3]], "command": "discrete(5)"}]},
     "unit 1 has several parents"),
    ({"levels": [{"learner": "ppo", "group_size": "all"}], "family": "flat", "n_agents": 6},
     "joint actions"),
    ({"lr": 0.1}, "unknown option(s) lr"),
])
def test_bad_input_fails_before_training(updates, message, tmp_path):
    with pytest.raises(ValueError) as error:
        Trainer(run_config("tag_3ppo", "vmas_balance", tmp_path, **updates), lambda *entry: None)
    assert message in str(error.value)


def test_cli_refuses_a_connected_gradient_over_coded_messages_in_one_line(tmp_path):
    """Pins that the CLI reports HRL-CG's manager over autoencoder messages (its connected gradient reads
    its worker's env observation) as one line, before training, with no traceback."""
    out = cli("with", "hrl_cg", "point_maze", *TINY,
              'levels=[{"learner": "auto", "comm": "autoencoder"}, {"learner": "goal_manager", "period": 10}]',
              cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert ("hmarl: level 1: goal_manager reads the env agents' observations from its children's messages, "
            "but level 0 sends autoencoder messages" in out.stderr)


def test_missing_env_fact_says_what_to_change(tmp_path):
    with pytest.raises(ValueError, match=r"level 0 \(heuristic\) needs an env with obs_slices.landmarks; "
                                         r"vmas_balance has obs_slices.position, positions"):
        Trainer(run_config("heuristic", "vmas_balance", tmp_path), lambda *entry: None)


def test_named_configs_run_in_process_through_sacred():
    run = ex.run(named_configs=["tag_2ppo", "vmas_balance"], options={"--loglevel": "ERROR"},
                 config_updates={"num_envs": 2, "rollout_steps": 20, "total_steps": 40, "eval_envs": 1,
                                 "max_steps": 20, "progress": False})
    assert run.status == "COMPLETED" and isinstance(run.result, float)


def parameters(trainer):
    return {k: v.clone() for k, v in trainer.hierarchy.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize("algorithm, env", [("tag_3ppo_comm", "vmas_balance"), ("hrl_cg", "point_maze"),
                                            ("himppo", "lbfws_hard")])
def test_resume_reproduces_the_uninterrupted_run(algorithm, env, tmp_path):
    updates = dict(total_steps=6 * 80, rollout_steps=20, checkpoint_interval=160, eval_interval=160)
    uninterrupted = Trainer(run_config(algorithm, env, tmp_path / "a", **updates),
                            lambda *entry: None)
    uninterrupted.fit()

    logs = []
    first = Trainer(run_config(algorithm, env, tmp_path / "b", **updates),
                    lambda *entry: logs.append(entry))
    fit_interrupted(first, at_update=4)
    assert (first.path / "checkpoint.pt").exists() and not list(first.path.glob("*.tmp"))

    resumed_logs = []
    resumed = Trainer(run_config(algorithm, env, tmp_path / "b", resume=True, **updates),
                      lambda *entry: resumed_logs.append(entry))
    resumed.fit()
    assert resumed.start == 2  # checkpoints every 2 iterations; the crash came in the fourth
    expected, got = parameters(uninterrupted), parameters(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    evals = lambda history: [v for n, v, s in history if n == "eval/return"]  # noqa: E731
    assert evals(resumed_logs) == evals(uninterrupted.history)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    trainer = Trainer(run_config("ippo", "vmas_balance", tmp_path, resume=True, checkpoint_interval=160),
                      lambda *entry: None)
    trainer.fit()
    assert trainer.start == 0 and (trainer.path / "checkpoint.pt").exists()


def test_the_embedded_default_leaks_no_option_into_other_systems():
    """sacred merges a named config over the embedded default (tag_3ppo on vmas_balance), so an
    option block of another system must list every key the default's block of that name
    sets, or the default's value (e.g. TAG's 2,048-transition buffer) silently applies there."""
    from hmarl.run.experiment import CONFIG_DIR, load_yaml, named_configs

    default = load_yaml(CONFIG_DIR / "algorithms" / "tag_3ppo.yaml")
    blocks = {k: set(v) for k, v in default.items() if isinstance(v, dict)}
    for name, path in named_configs("algorithms").items():
        config = load_yaml(path)
        for block, keys in blocks.items():
            if isinstance(config.get(block), dict):
                missing = keys - set(config[block])
                assert not missing, f"{name}: its {block} block inherits {sorted(missing)} from tag_3ppo"


def test_describe_prints_the_resolved_levels_and_writes_no_run(tmp_path):
    out = cli("describe", "with", "alma", "savethecity", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "alma on savethecity:" and lines[1].startswith("level 1: 1 x Allocator")
    assert "  termination  OnSubtaskChange(5)" in lines and "  reward       SubtaskReward" in lines
    assert "  channel      OneHot(4)" in lines  # the allocation reaches each agent as a one-hot of its building
    assert not (tmp_path / "results").exists()
    bad = cli("describe", "with", "alma", "savethecity", "action_length=0", cwd=tmp_path)
    assert bad.returncode != 0 and "action_length must be >= 1" in bad.stderr.strip().splitlines()[-1]
