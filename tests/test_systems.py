"""Every named system builds and trains a few hundred steps on every env it supports (a few costly
pairs only with `pytest -m slow`: SLOW_ENVS)."""
from __future__ import annotations

import functools
import logging
import math

import pytest
import torch

from hmarl.run import experiment
from hmarl.envs import make_env
from hmarl.run.experiment import CONFIG_DIR, RunConfig, Trainer, build, load_yaml, named_configs, run_requires

OFF_POLICY_BLOCKS = ("td3", "goal_manager", "dqn", "qmix", "aqmix", "allocator")
# mpe2 itself behind the PettingZoo adapter (one copy at a time): the task of mpe_simple_spread (its
# torch port, which runs the whole matrix), so a few systems suffice to cover the adapter. A cost
# choice, not a refusal: the other systems the facts allow on it are left out of the tiny matrix.
REFERENCE_ENVS = {"mpe2_simple_spread": {"ippo", "tag_3ppo", "heuristic", "alma"}}
# VMAS sampling costs about 22 s a pair on a 2-core AVX2 machine (its grid of samples), so by default
# the flagships and the two flat PPO baselines train on it; `pytest -m slow` runs every pair. Also
# a cost choice, not a refusal.
SLOW_ENVS = {"vmas_sampling": {"tag_3ppo", "himppo", "hrl_cg", "alma", "ippo", "mappo"}}
FLAGSHIPS = ("tag_3ppo", "himppo", "hrl_cg", "alma")
SYSTEMS, ENVS = sorted(named_configs("algorithms")), sorted(named_configs("envs"))


def merged(algorithm_name: str, env_name: str) -> dict:
    """Default config + the two named configs, as sacred merges them."""
    return {**load_yaml(CONFIG_DIR / "default.yaml"),
            **load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm_name}.yaml"),
            **load_yaml(CONFIG_DIR / "envs" / f"{env_name}.yaml")}


@functools.cache
def env_provides(env_name: str) -> frozenset[str]:
    """What an env config provides (``EnvSpec.facts``), and what it has behind a switch that a system
    turns on: read off the env its config builds."""
    config = load_yaml(CONFIG_DIR / "envs" / f"{env_name}.yaml")
    spec = make_env(env_name, num_envs=1, seed=0, n_agents=config["n_agents"], max_steps=config["max_steps"],
                    continuous_actions=config["continuous_actions"], **config["env_options"]).spec
    return spec.facts | frozenset(spec.optional)


@functools.cache
def system_needs(algorithm_name: str) -> frozenset[str]:
    """The facts a named system declares it needs (its family's and its learners' ``requires``)."""
    run = RunConfig.from_config({**merged(algorithm_name, "vmas_balance"), "checkpoint_dir": "unused"})
    return frozenset(run_requires(run))


def supported(algorithm: str, env: str) -> bool:
    """Whether the env provides (or can switch on) every fact the system needs."""
    return system_needs(algorithm) <= env_provides(env)


def run_config(algorithm_name: str, env_name: str, tmp_path, **updates) -> RunConfig:
    """Default config + the two named configs (as sacred merges them) + tiny budgets + ``updates``."""
    config = merged(algorithm_name, env_name)
    # each env's own number of agents (3 on LBF, SaveTheCity and VMAS sampling: TAG's unequal groups)
    config.update(num_envs=4, rollout_steps=40, total_steps=320, eval_envs=3, eval_interval=0, max_steps=40,
                  progress=False, checkpoint_dir=str(tmp_path / "ckpt"))
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


CASES = [(a, e) if a in SLOW_ENVS.get(e, {a}) else pytest.param(a, e, marks=pytest.mark.slow)
         for a in SYSTEMS for e in ENVS if supported(a, e) and a in REFERENCE_ENVS.get(e, {a})]
REFUSED = [(a, e) for a in SYSTEMS for e in ENVS if not supported(a, e)]


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


@pytest.mark.parametrize("algorithm, env", REFUSED)
def test_refusal_is_one_line_naming_the_missing_fact(algorithm, env, tmp_path):
    """Every pair the declared facts rule out is refused at build time, in one line that names
    (one of) the facts the env lacks."""
    missing = system_needs(algorithm) - env_provides(env)
    with pytest.raises(ValueError) as error:
        build(run_config(algorithm, env, tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert any(fact in message or fact.replace("_", " ") in message for fact in missing), (missing, message)


@pytest.mark.parametrize("algorithm", FLAGSHIPS)
def test_flagship_systems_run_on_seven_envs_or_more(algorithm):
    """The swap promise: every family's flagship system on every env where it makes sense."""
    assert sum(supported(algorithm, env) for env in ENVS) >= 7


def test_matrix_is_derived_from_declared_facts():
    """Spot checks of what the declarations give (a wrong declaration would show up here first)."""
    assert system_needs("alma") == {"entities", "discrete_actions"}
    assert system_needs("td3") == {"continuous_actions"} and system_needs("hrl_cg") == {"obs_slices.position"}
    assert supported("alma", "lbf") and supported("alma", "vmas_simple_spread") and not supported("alma", "vmas_balance")
    assert supported("td3", "vmas_balance") and not supported("td3", "lbf")
    assert supported("tag_3ppo", "savethecity") and not supported("tag_3ppo", "point_maze")


@pytest.mark.parametrize("algorithm", ["tag_3ppo", "tag_2mappo_ppo"])
def test_tag_on_three_agents_groups_them_two_and_one(algorithm, tmp_path):
    """3PPO's middle level over 3 env agents: a pair and a single, the single's empty child slot
    flagged absent (TAG's balanced unequal groups)."""
    trainer = Trainer(run_config(algorithm, "vmas_sampling", tmp_path), lambda *entry: None)
    bottom, middle, top = trainer.hierarchy.levels
    assert trainer.hierarchy.env.spec.n_agents == 3
    assert middle.children == [[0, 1], [2]] and middle.io.presence and top.children == [[0, 1]]
    assert math.isfinite(trainer.fit())


def test_families_switch_on_what_they_need_and_say_so(tmp_path, caplog):
    """ALMA on simple spread turns the env's subtasks option on by itself, logging one line; flat TD3
    turns VMAS's continuous actions on."""
    experiment._SWITCHED_SAID.clear()  # each message is logged once per process
    with caplog.at_level(logging.INFO, logger="hmarl"):
        alma = Trainer(run_config("alma", "vmas_simple_spread", tmp_path), lambda *entry: None)
        td3 = Trainer(run_config("td3", "vmas_balance", tmp_path), lambda *entry: None)
    assert alma.hierarchy.env.spec.entities is not None and not td3.hierarchy.env.spec.discrete
    said = [r.getMessage() for r in caplog.records if "turning on" in r.getMessage()]
    assert "alma needs entities: turning on vmas_simple_spread's option subtasks" in said
    assert "level 0 (td3) needs continuous actions: turning on vmas_balance's option continuous_actions" in said
    assert len(said) == len(set(said)) == 2  # once each, though the training and evaluation envs are both built


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
