"""Every named system builds and trains a few hundred steps on every env it supports."""
from __future__ import annotations

import math

import pytest
import torch

from hmarl.experiment import CONFIG_DIR, RunConfig, Trainer, load_yaml, named_configs

SPREAD_ENVS = {"vmas_simple_spread", "mpe_simple_spread"}
SINGLE_AGENT_ENVS = {"point_maze"}
CONTINUOUS_ENVS = {"point_maze"}  # the others are configured with discrete actions
NO_GOAL_ENVS = {"lbf", "lbfws_easy", "lbfws_hard", "savethecity"}  # HRL-CG needs goal_indices
SUBTASK_ENVS = {"savethecity"}
SUBTASK_SYSTEMS = {"alma", "alma_nomask", "alma_heuristic", "aqmix"}  # A-QMIX reads entities by subtask
TAG_SYSTEMS = {name for name in named_configs("algorithms") if name.startswith("tag_")}
OFF_POLICY_BLOCKS = ("td3", "goal_manager", "dqn", "qmix", "aqmix", "allocator")
Q_LEARNING_SYSTEMS = {"iql", "qmix"}  # an argmax over actions: discrete-action envs only
# mpe2 itself behind the PettingZoo adapter: the task of mpe_simple_spread (its torch port, which
# runs the whole matrix), so a few systems suffice to cover the adapter; it has no positions
REFERENCE_ENVS = {"mpe2_simple_spread": {"ippo", "tag_3ppo", "heuristic"}}
HIMPO_SUB_MANAGERS = {"himppo", "himppo_fl", "himppo_sg", "himppo_nl"}  # 2 sub-managers clustered by position


def supported(algorithm: str, env: str) -> bool:
    if env in REFERENCE_ENVS:
        return algorithm in REFERENCE_ENVS[env]
    if algorithm == "heuristic":
        return env in SPREAD_ENVS
    if algorithm in SUBTASK_SYSTEMS:
        return env in SUBTASK_ENVS
    if algorithm in Q_LEARNING_SYSTEMS:
        return env not in CONTINUOUS_ENVS
    if algorithm in HIMPO_SUB_MANAGERS and env in SINGLE_AGENT_ENVS:
        return False
    if env in SINGLE_AGENT_ENVS:  # TAG systems pair agents up
        return algorithm not in TAG_SYSTEMS
    if env in NO_GOAL_ENVS and algorithm in ("hrl", "hrl_cg"):
        return False
    return algorithm != "td3" or env == "point_maze"  # the flat TD3 needs continuous actions


def run_config(algorithm_name: str, env_name: str, tmp_path, **updates) -> RunConfig:
    """Default config + the two named configs (as sacred merges them) + tiny budgets + ``updates``."""
    config = {**load_yaml(CONFIG_DIR / "default.yaml"),
              **load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm_name}.yaml"),
              **load_yaml(CONFIG_DIR / "envs" / f"{env_name}.yaml")}
    # 4 agents where there can be several: the 3-level TAG systems pair agents up
    config.update(n_agents=1 if env_name in SINGLE_AGENT_ENVS else 4, num_envs=4, rollout_steps=40,
                  total_steps=320, eval_envs=3, eval_interval=0, max_steps=40, progress=False,
                  checkpoint_dir=str(tmp_path / "ckpt"))
    for block in OFF_POLICY_BLOCKS:  # small replays that fill within the budget
        if block in config:
            config[block] = {**config[block], "buffer_size": 2000, "batch_size": 16}
            config[block].update({"random_steps": 100} if block in ("td3", "goal_manager") else {"learning_starts": 100})
    for block in ("ppo", "mappo", "graph_ppo"):  # Appendix A's buffers never fill in 320 steps: update every rollout
        if block in config:
            config[block] = {**config[block], "transitions_per_update": None}
    if "allocator" in config:  # meta-transitions: one per copy and decision
        config["allocator"].update(learning_starts=10)
    config.update(updates)
    return RunConfig.from_config(config)


CASES = [(a, e) for a in named_configs("algorithms") for e in named_configs("envs") if supported(a, e)]


@pytest.mark.parametrize("algorithm, env", CASES)
def test_system_trains_on_env(algorithm, env, tmp_path):
    logs = []
    trainer = Trainer(run_config(algorithm, env, tmp_path), lambda *entry: logs.append(entry))
    before = {k: v.clone() for k, v in trainer.hierarchy.state_dict().items() if torch.is_tensor(v)}
    result = trainer.fit()
    assert math.isfinite(result)
    names = {name for name, _, _ in logs}
    assert {"train/return", "eval/return", "perf/env_steps_per_s"} <= names
    learning = [i for i, lv in enumerate(trainer.hierarchy.levels)
                if lv.learner.__class__.__name__ not in ("SpreadHeuristic", "HeuristicAllocator")]
    for index in learning:
        assert any(n.startswith(f"level{index}/") and n.endswith("_loss") for n in names)
    after = trainer.hierarchy.state_dict()
    assert all(v.equal(after[k]) for k, v in before.items()) == (not learning)


def test_himppo_on_an_env_without_positions_clusters_by_index(tmp_path):
    run = run_config("himppo", "mpe2_simple_spread", tmp_path, grouping="static")
    assert math.isfinite(Trainer(run, lambda *entry: None).fit())


@pytest.mark.parametrize("algorithm", ["ippo", "mappo", "tag_2mappo_ppo", "himppo"])
def test_continuous_env_actions(algorithm, tmp_path):
    run = run_config(algorithm, "vmas_balance", tmp_path, continuous_actions=True)
    assert math.isfinite(Trainer(run, lambda *entry: None).fit())


def test_heuristic_beats_random_on_simple_spread(tmp_path):
    def mean_return(algorithm):
        run = run_config(algorithm, "vmas_simple_spread", tmp_path, max_steps=100, rollout_steps=100,
                         total_steps=400, eval_envs=8)
        return Trainer(run, lambda *entry: None).fit()

    assert mean_return("heuristic") > 0.5 * mean_return("ippo")  # returns are negative


@pytest.mark.parametrize("algorithm", ["alma", "alma_nomask", "aqmix"])
@pytest.mark.parametrize("env", sorted(SPREAD_ENVS))
def test_subtask_systems_on_simple_spread_landmarks(algorithm, env, tmp_path):
    run = run_config(algorithm, env, tmp_path, env_options={"subtasks": True})
    assert math.isfinite(Trainer(run, lambda *entry: None).fit())


def test_subtask_systems_need_the_option_on_shared_envs(tmp_path):
    with pytest.raises(ValueError, match=r"set env_options: \{subtasks: true\}"):
        Trainer(run_config("alma", "vmas_simple_spread", tmp_path), lambda *entry: None)
    with pytest.raises(ValueError, match="the heuristic allocator reads SaveTheCity's entity features"):
        Trainer(run_config("alma_heuristic", "vmas_simple_spread", tmp_path, env_options={"subtasks": True}),
                lambda *entry: None)
