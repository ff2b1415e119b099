"""Every named system builds and trains a few hundred steps on every env it supports."""
from __future__ import annotations

import math

import pytest

from hmarl.experiment import CONFIG_DIR, RunConfig, Trainer, load_yaml, named_configs

SPREAD_ENVS = {"vmas_simple_spread", "mpe_simple_spread"}


def supported(algorithm: str, env: str) -> bool:
    return algorithm != "heuristic" or env in SPREAD_ENVS


def run_config(algorithm_name: str, env_name: str, tmp_path, **updates) -> RunConfig:
    """Default config + the two named configs (as sacred merges them) + tiny budgets + ``updates``."""
    config = {**load_yaml(CONFIG_DIR / "default.yaml"),
              **load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm_name}.yaml"),
              **load_yaml(CONFIG_DIR / "envs" / f"{env_name}.yaml")}
    # 4 agents everywhere: the 3-level TAG systems pair agents up
    config.update(n_agents=4, num_envs=4, rollout_steps=40, total_steps=320, eval_envs=2, eval_interval=0,
                  max_steps=40, progress=False, checkpoint_dir=str(tmp_path / "ckpt"))
    config.update(updates)
    return RunConfig.from_config(config)


CASES = [(a, e) for a in named_configs("algorithms") for e in named_configs("envs") if supported(a, e)]


@pytest.mark.parametrize("algorithm, env", CASES)
def test_system_trains_on_env(algorithm, env, tmp_path):
    logs = []
    trainer = Trainer(run_config(algorithm, env, tmp_path), lambda *entry: logs.append(entry))
    before = {k: v.clone() for k, v in trainer.hierarchy.state_dict().items()}
    result = trainer.fit()
    assert math.isfinite(result)
    names = {name for name, _, _ in logs}
    assert {"train/return", "eval/return", "perf/env_steps_per_s"} <= names
    learning = [i for i, lv in enumerate(trainer.hierarchy.levels) if lv.learner.__class__.__name__ != "SpreadHeuristic"]
    for index in learning:
        assert any(n.startswith(f"level{index}/") and n.endswith("pg_loss") for n in names)
    after = trainer.hierarchy.state_dict()
    assert all(v.equal(after[k]) for k, v in before.items()) == (not learning)


@pytest.mark.parametrize("algorithm", ["ippo", "mappo", "tag_2mappo_ppo"])
def test_continuous_env_actions(algorithm, tmp_path):
    run = run_config(algorithm, "vmas_balance", tmp_path, continuous_actions=True)
    assert math.isfinite(Trainer(run, lambda *entry: None).fit())


def test_heuristic_beats_random_on_simple_spread(tmp_path):
    def mean_return(algorithm):
        run = run_config(algorithm, "vmas_simple_spread", tmp_path, max_steps=100, rollout_steps=100,
                         total_steps=400, eval_envs=8)
        return Trainer(run, lambda *entry: None).fit()

    assert mean_return("heuristic") > 0.5 * mean_return("ippo")  # returns are negative
