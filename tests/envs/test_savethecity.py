"""SaveTheCity: hand-made rule cases with exact numbers, episode ends, resets, spawning, shapes, options."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from gymnasium import spaces

from hmarl.envs import ENVS, make_env
from hmarl.envs.savethecity import (FEATURES, BUILD, EAST, EAST2, EXTINGUISH, FREEZE, LATTICE, NORTH, NORTH2, SOUTH, SOUTH2, STAY,
                              WEST, WEST2, SaveTheCity)
from hmarl.spec import Entities

F = 12                                      # entity features
FIRE, HEALTH, FAST, FROZEN, FINISHED = 7, 8, 9, 10, 11
SCALE3 = 20 / (6 * 4 + 20)                  # 3 agents, 4 buildings
# the building under test at (7, 7); its neighbours are (6, 7), (8, 7), (7, 6), (7, 8)
BUILDINGS = [[7, 7], [1, 1], [1, 13], [13, 13]]
FAR = [0, 15]                               # next to no building


def city(n_agents=3, num_envs=1, max_steps=150, seed=0, **options):
    return make_env("savethecity", num_envs=num_envs, seed=seed, n_agents=n_agents, max_steps=max_steps, **options)


def put(env, agents, types, health, fire=None, *, buildings=BUILDINGS, index=0, timers=(99, 99, 99, 99), **kw):
    return env.set_state(index, agents, types, buildings, health, fire, timers=timers, **kw)


def act(env, *actions):
    full = torch.zeros(env.spec.num_envs, env.spec.n_agents, dtype=torch.long)
    full[0] = torch.tensor(actions)
    return env.step(full)


def building(ts, k, feature, index=0):
    """A building's feature after the step (before any auto-reset), from agent 0's final obs."""
    n = ts.obs.shape[1]
    return float(ts.final_obs[index, 0, F + (n + k) * F + feature])


def positions(ts):
    return ts.info["positions"][0].long().tolist()


# ------------------------------------------------------------------------ (a) fire and health
def test_fire_grows_ten_percent_caps_at_one_and_damages_by_burn_rate():
    env = city()
    put(env, [FAR, FAR, FAR], ["builder"] * 3, [0.5, 0.5, 0.5, 0.5], [0.5, 0.95, 0.0, 1.0],
        fast_burn=[False, True, False, True])
    ts = act(env, STAY, STAY, STAY)
    assert building(ts, 0, FIRE) == pytest.approx(0.55)
    assert building(ts, 1, FIRE) == pytest.approx(1.0)               # 1.045 capped
    assert building(ts, 2, FIRE) == 0 and building(ts, 3, FIRE) == 1.0
    damage = [0.55 * 0.5 * 0.035, 1.0 * 1.0 * 0.035, 0.0, 1.0 * 1.0 * 0.035]
    for k in range(4):
        assert building(ts, k, HEALTH) == pytest.approx(0.5 - damage[k])
    assert ts.reward[0].tolist() == pytest.approx([10 * -sum(damage) * SCALE3] * 3)
    assert ts.info["subtask_rewards"][0].tolist() == pytest.approx([10 * -d * SCALE3 for d in damage])
    ts = act(env, STAY, STAY, STAY)
    assert building(ts, 0, FIRE) == pytest.approx(0.605)
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 - damage[0] - 0.605 * 0.5 * 0.035)


def test_extinguishing_by_one_and_two_firefighters():
    env = city()
    # firefighters at (6, 7) and (5, 7) (two cells away: not adjacent), a builder far away
    put(env, [[6, 7], [5, 7], FAR], ["firefighter", "firefighter", "builder"], [0.5, 0.5, 0.5, 0.5],
        [0.8, 0, 0, 0], fast_burn=[True, False, False, False])
    ts = act(env, EXTINGUISH, EXTINGUISH, STAY)                     # only the adjacent one acts
    assert building(ts, 0, FIRE) == pytest.approx(0.55)              # 0.8 - 1.0 * 0.25
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 - 0.55 * 0.035)
    assert ts.reward[0, 0] == pytest.approx(10 * -0.55 * 0.035 * SCALE3)
    ts = act(env, STAY, SOUTH2, STAY)                                # firefighter moves by 1: (6, 7) too
    assert positions(ts)[1] == [6, 7]
    act(env, STAY, WEST, STAY)
    ts = act(env, STAY, SOUTH, STAY)                                 # (7, 6): west of the building
    assert positions(ts)[1] == [7, 6]
    fire = 0.55 * 1.1 ** 3
    health = 0.5 - 0.55 * 0.035 - 0.035 * (0.55 * 1.1 + 0.55 * 1.1 ** 2 + fire)
    assert building(ts, 0, FIRE) == pytest.approx(fire)
    ts = act(env, EXTINGUISH, EXTINGUISH, STAY)                      # 2 * 0.25 off
    assert building(ts, 0, FIRE) == pytest.approx(fire - 0.5)
    health -= (fire - 0.5) * 0.035
    assert building(ts, 0, HEALTH) == pytest.approx(health)
    ts = act(env, EXTINGUISH, EXTINGUISH, STAY)                      # out: no damage, +0.5
    assert building(ts, 0, FIRE) == 0 and building(ts, 0, HEALTH) == pytest.approx(health)
    assert ts.reward[0, 0] == pytest.approx(0.5 * SCALE3)
    assert ts.info["subtask_rewards"][0].tolist() == pytest.approx([0.5 * SCALE3, 0, 0, 0])
    ts = act(env, EXTINGUISH, EXTINGUISH, STAY)                      # nothing to put out: no bonus
    assert ts.reward[0, 0] == 0 and building(ts, 0, FIRE) == 0


def test_generalist_boosts_the_weak_ability_of_the_others_at_its_building():
    env = city(n_agents=4)
    buildings = BUILDINGS + [[13, 1]]
    kw = dict(buildings=buildings, timers=[99] * 5)
    health, fire = [0.5] * 5, [0.8, 0, 0, 0, 0]
    # without a generalist next to it, a builder extinguishes at 0.05
    put(env, [[6, 7], [8, 7], FAR, [2, 1]], ["builder", "firefighter", "generalist", "builder"], health, fire, **kw)
    ts = act(env, EXTINGUISH, BUILD, STAY, STAY)
    assert building(ts, 0, FIRE) == pytest.approx(0.8 - 0.05 * 0.25)
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 + 0.05 * 0.125 - 0.7875 * 0.5 * 0.035)
    # with a generalist adjacent (whatever it does), both weak abilities become 0.5
    put(env, [[6, 7], [8, 7], [7, 8], [2, 1]], ["builder", "firefighter", "generalist", "builder"], health, fire, **kw)
    ts = act(env, EXTINGUISH, BUILD, BUILD, STAY)                    # the generalist builds at 0
    assert building(ts, 0, FIRE) == pytest.approx(0.8 - 0.5 * 0.25)
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 + 0.5 * 0.125 - 0.675 * 0.5 * 0.035)
    # boosts count from where the generalist stands after this step's move
    put(env, [[6, 7], [8, 7], [7, 9], [2, 1]], ["builder", "firefighter", "generalist", "builder"], health, fire, **kw)
    ts = act(env, EXTINGUISH, STAY, WEST, STAY)                      # (7, 9) -> (7, 8): boosts already
    assert building(ts, 0, FIRE) == pytest.approx(0.8 - 0.5 * 0.25)
    ts = act(env, EXTINGUISH, STAY, EAST, STAY)                      # walks away: no boost
    assert building(ts, 0, FIRE) == pytest.approx(0.675 - 0.05 * 0.25)
    # the strong ability is not boosted; a generalist at another building boosts nobody here
    put(env, [[6, 7], [8, 7], [0, 1], [2, 1]], ["builder", "firefighter", "generalist", "builder"], health, fire, **kw)
    ts = act(env, BUILD, EXTINGUISH, STAY, BUILD)
    assert building(ts, 0, FIRE) == pytest.approx(0.8 - 0.25)
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 + 0.125 - 0.55 * 0.5 * 0.035)
    assert building(ts, 1, HEALTH) == pytest.approx(0.5 + 0.125)     # builder at (1, 1), generalist too
    # two generalists: no stacking (the builder 0.5, not 0.95) and the firefighter's 1.0 stays 1.0
    put(env, [[6, 7], [8, 7], [7, 8], [7, 6]], ["builder", "firefighter", "generalist", "generalist"], health, fire,
        **kw)
    ts = act(env, EXTINGUISH, EXTINGUISH, STAY, STAY)
    assert building(ts, 0, FIRE) == pytest.approx(0.8 - (0.5 + 1.0) * 0.25)


def test_generalist_freeze_skips_the_damage_of_that_step():
    env = city()
    put(env, [[6, 7], [0, 1], [7, 8]], ["builder", "generalist", "generalist"], [0.5, 0.5, 0.5, 0.5],
        [0.5, 0.5, 0, 0], fast_burn=[True, True, False, False])
    ts = act(env, STAY, FREEZE, FREEZE)                              # (0, 1) is next to building 1
    for k in (0, 1):
        assert building(ts, k, FIRE) == pytest.approx(0.55)          # the fire still grows
        assert building(ts, k, HEALTH) == pytest.approx(0.5)         # but does no damage
        assert building(ts, k, FROZEN) == 1.0
    assert ts.reward[0, 0] == 0
    ts = act(env, FREEZE, STAY, STAY)                                # a builder cannot freeze
    assert building(ts, 0, FROZEN) == 0 and building(ts, 1, FROZEN) == 0
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 - 0.605 * 0.035)
    # a building that is not burning is not frozen
    put(env, [[6, 7], FAR, [7, 8]], ["builder", "generalist", "generalist"], [0.5] * 4)
    ts = act(env, STAY, STAY, FREEZE)
    assert building(ts, 0, FROZEN) == 0


def test_health_gain_and_fire_damage_formula():
    env = city()
    put(env, [[7, 6], [8, 7], FAR], ["builder", "firefighter", "builder"], [0.5, 0.5, 0.5, 0.5],
        [0.4, 0, 0, 0], fast_burn=[True, False, False, False])
    ts = act(env, BUILD, BUILD, STAY)                                # Bd = 1.0 + 0.05
    change = 1.05 * 0.125 - 0.44 * 1.0 * 0.035
    assert building(ts, 0, FIRE) == pytest.approx(0.44)
    assert building(ts, 0, HEALTH) == pytest.approx(0.5 + change)
    assert ts.reward[0].tolist() == pytest.approx([10 * change * SCALE3] * 3)
    assert ts.info["subtask_rewards"][0, 0] == pytest.approx(10 * change * SCALE3)


# ------------------------------------------------------------------------ (b) episode ends
def test_completion_bonuses_terminate_and_succeed():
    env = city()
    put(env, [[6, 7], [2, 1], FAR], ["builder", "builder", "firefighter"], [0.95, 0.9, 0.5, 0.5],
        [0.3, 0, 0, 0], fast_burn=[True, False, False, False])
    ts = act(env, BUILD, BUILD, STAY)                                # both complete (clipped at 1)
    gain = [0.05, 0.1]
    assert building(ts, 0, HEALTH) == 1.0 and building(ts, 1, HEALTH) == 1.0
    assert building(ts, 0, FINISHED) == 1.0 and building(ts, 2, FINISHED) == 0.0
    assert ts.reward[0, 0] == pytest.approx((10 * sum(gain) + 2 * 1) * SCALE3)
    assert ts.info["subtask_rewards"][0].tolist() == pytest.approx([(10 * g + 20) * SCALE3 for g in gain] + [0, 0])
    assert ts.info["active_subtasks"][0].tolist() == [False, False, True, True]
    assert not ts.done[0] and not ts.info["success"][0] and ts.info["completed"][0] == 0
    # a finished building never changes again: no fire growth, building or damage
    ts = act(env, BUILD, STAY, STAY)
    assert building(ts, 0, FIRE) == pytest.approx(0.33) and building(ts, 0, HEALTH) == 1.0
    assert ts.reward[0, 0] == 0 and ts.info["subtask_rewards"][0].abs().sum() == 0
    # the last one: +1, subtask +20, all complete +20, terminated, success
    put(env, [[6, 7], FAR, FAR], ["builder", "builder", "firefighter"], [0.9, 1.0, 1.0, 1.0])
    ts = act(env, BUILD, STAY, STAY)
    assert ts.reward[0].tolist() == pytest.approx([(10 * 0.1 + 1 + 20) * SCALE3] * 3)
    assert ts.info["subtask_rewards"][0].tolist() == pytest.approx([(10 * 0.1 + 20) * SCALE3, 0, 0, 0])
    assert bool(ts.terminated[0]) and not bool(ts.truncated[0])
    assert bool(ts.info["success"][0]) and ts.info["completed"][0] == 1.0


def test_burn_down_penalty_and_no_success():
    env = city(num_envs=2)
    put(env, [FAR, FAR, FAR], ["builder"] * 3, [0.02, 1.0, 1.0, 1.0], [1.0, 0, 0, 0], fast_burn=[True] * 4)
    put(env, [FAR, FAR, FAR], ["builder"] * 3, [0.02, 0.5, 0.5, 0.5], [1.0, 0, 0, 0], fast_burn=[True] * 4, index=1)
    ts = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert building(ts, 0, HEALTH, index=1) == 0 and building(ts, 0, FINISHED, index=1) == 1.0
    assert ts.reward[:, 0].tolist() == pytest.approx([(10 * -0.02 - 20) * SCALE3] * 2)
    assert ts.info["subtask_rewards"][1].tolist() == pytest.approx([(10 * -0.02 - 20) * SCALE3, 0, 0, 0])
    assert ts.terminated.tolist() == [True, False]                   # copy 0: all finished, one burned
    assert ts.info["success"].tolist() == [False, False]
    assert ts.info["completed"].tolist() == [0.75, 0.0]
    assert ts.info["active_subtasks"][1].tolist() == [False, True, True, True]
    ts = env.step(torch.zeros(2, 3, dtype=torch.long))               # burned stays burned, no more penalty
    assert building(ts, 0, HEALTH, index=1) == 0 and ts.info["subtask_rewards"][1, 0] == 0


def test_truncation_success_means_nothing_burned():
    env = city(num_envs=2, max_steps=2)
    put(env, [FAR, FAR, FAR], ["builder"] * 3, [0.5] * 4)
    put(env, [FAR, FAR, FAR], ["builder"] * 3, [0.01, 0.5, 0.5, 0.5], [1.0, 0, 0, 0], fast_burn=[True] * 4, index=1)
    ts = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert not ts.done.any() and not ts.info["success"].any()
    ts = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert ts.truncated.tolist() == [True, True] and not ts.terminated.any()
    assert ts.info["success"].tolist() == [True, False] and ts.info["completed"].tolist() == [0.0, 0.0]


def test_reignition_timer_counts_down_only_while_not_burning():
    env = city()
    put(env, [[6, 7], FAR, FAR], ["firefighter", "builder", "builder"], [0.5, 0.5, 0.5, 1.0], [0.3, 0, 0, 0],
        fast_burn=[False, True, False, False], timers=[2, 2, 3, 1])
    ts = act(env, STAY, STAY, STAY)
    assert env.timers[0].tolist() == [2, 1, 2, 1]                    # burning / finished: no countdown
    ts = act(env, EXTINGUISH, STAY, STAY)                            # 0.33 - 0.25: still burning
    assert env.timers[0, 0] == 2
    assert building(ts, 1, FIRE) >= 0.2 and building(ts, 1, FIRE) <= 0.5   # timer 1 -> 0: ignites
    assert 60 <= env.timers[0, 1] <= 80                              # FastBurn: a new draw
    assert env.timers[0, 2] == 1 and building(ts, 2, FIRE) == 0
    health1 = building(ts, 1, HEALTH)
    assert health1 == 0.5                                            # ignited at the end of the step
    ts = act(env, EXTINGUISH, STAY, STAY)                            # put out: counts down this step
    assert building(ts, 0, FIRE) == 0 and env.timers[0, 0] == 1
    assert building(ts, 2, FIRE) > 0 and 10 <= env.timers[0, 2] <= 30   # SlowBurn: a new draw
    assert building(ts, 1, HEALTH) < health1                         # damage from the next step on
    assert building(ts, 3, FIRE) == 0 and env.timers[0, 3] == 1      # finished: never ignites
    ts = act(env, STAY, STAY, STAY)
    assert 0.2 <= building(ts, 0, FIRE) <= 0.5 and 10 <= env.timers[0, 0] <= 30


# ------------------------------------------------------------------------ (c) movement
def test_moves_are_blocked_by_buildings_and_walls_and_generalists_move_two():
    env = city()
    put(env, [[7, 6], [7, 10], [0, 0]], ["firefighter", "generalist", "builder"], [0.5] * 4)
    ts = act(env, EAST, WEST2, NORTH)                                # building; 2 cells; wall
    assert positions(ts) == [[7, 6], [7, 8], [0, 0]]
    ts = act(env, NORTH2, WEST2, WEST2)                              # range 1: by 1; first cell blocked; wall
    assert positions(ts) == [[6, 6], [7, 8], [0, 0]]
    ts = act(env, SOUTH, NORTH2, EAST2)
    assert positions(ts) == [[7, 6], [5, 8], [0, 1]]
    ts = act(env, STAY, NORTH, SOUTH2)                               # a 1-move of a generalist is by 1
    assert positions(ts) == [[7, 6], [4, 8], [0, 1]]                # (1, 1) is a building
    put(env, [[14, 15], [14, 15], [13, 12]], ["firefighter", "generalist", "builder"], [0.5] * 4)
    ts = act(env, SOUTH, SOUTH2, EAST)                               # cell shared; wall after 1; building
    assert positions(ts) == [[15, 15], [15, 15], [13, 12]]
    ts = act(env, WEST, WEST2, SOUTH2)
    assert positions(ts) == [[15, 14], [15, 13], [14, 12]]
    ts = act(env, NORTH, NORTH2, EAST2)                              # (14, 13) free, (13, 13) a building
    assert positions(ts) == [[14, 14], [14, 13], [14, 13]]


# ------------------------------------------------------------------------ (d) scaling, shapes, options
@pytest.mark.parametrize("n_agents", [2, 3, 4, 5])
def test_rewards_are_scaled_by_the_number_of_buildings(n_agents):
    env = city(n_agents=n_agents)
    s = n_agents + 1
    buildings = LATTICE[:s]
    agents = [[15, 15]] * n_agents
    health = [0.5] + [0.9] * (s - 1)
    fire = [1.0] + [0.0] * (s - 1)
    env.set_state(0, agents, ["builder"] * n_agents, buildings, health, fire, fast_burn=[True] * s,
                  timers=[99] * s)
    ts = act(env, *[STAY] * n_agents)
    scale = 20 / (6 * s + 20)
    assert ts.reward[0].tolist() == pytest.approx([-0.35 * scale] * n_agents)
    assert env.spec.obs_dim == F + (2 * n_agents + 1) * F


def test_shapes_spec_facts_and_observation_layout():
    env = city(num_envs=3, seed=1)
    spec = env.spec
    assert "savethecity" in ENVS and spec.name == "savethecity" and spec.discrete
    assert isinstance(spec.action_space, spaces.Discrete) and spec.action_space.n == 12
    assert (spec.n_agents, spec.max_steps, spec.num_envs) == (3, 150, 3)
    assert (spec.obs_dim, spec.state_dim) == (12 + 7 * 12, 7 * 12)
    assert spec.entities == Entities(n_subtasks=4, subtask_of_entity=(-1, -1, -1, 0, 1, 2, 3), entity_dim=12,
                                     first=12, finished_feature=11, feature_names=FEATURES)
    assert spec.positions == 2 and spec.obs_slices == {"position": slice(0, 2)}
    assert spec.episode_metrics == ("success", "completed") and spec.optional == {}
    ts = env.reset()
    assert ts.obs.shape == (3, 3, 96) and ts.state.shape == (3, 84) and ts.reward.shape == (3, 3)
    info = ts.info
    assert info["positions"].shape == (3, 3, 2) and info["entities"].shape == (3, 7, 12)
    assert info["entity_subtask"].shape == (3, 7, 4) and info["entity_subtask"].dtype == torch.bool
    assert info["active_subtasks"].shape == (3, 4) and info["active_subtasks"].all()
    assert info["subtask_rewards"].shape == (3, 4)
    expected = torch.zeros(7, 4, dtype=torch.bool)
    expected[3:] = torch.eye(4, dtype=torch.bool)
    assert (info["entity_subtask"] == expected).all()
    entities = info["entities"]
    assert torch.equal(ts.state, entities.flatten(1))
    assert torch.allclose(entities[:, :3, :2] * 15, info["positions"])
    assert (entities[:, :3, 2] == 1).all() and (entities[:, 3:, 3] == 1).all()
    assert (entities[:, :3, 4:7].sum(-1) == 1).all() and (entities[:, 3:, 4:7] == 0).all()
    for i in range(3):
        assert torch.equal(ts.obs[:, i, :F], entities[:, i])
        relative = ts.obs[:, i, F:].reshape(3, 7, F)
        assert torch.allclose(relative[..., :2], entities[..., :2] - entities[:, i:i + 1, :2])
        assert torch.equal(relative[..., 2:], entities[..., 2:])
    ts = env.step(torch.randint(0, 12, (3, 3)))
    assert ts.terminated.dtype == ts.truncated.dtype == ts.info["success"].dtype == torch.bool
    assert ts.terminated.shape == (3,) and ts.info["completed"].shape == (3,)
    assert ts.info["final_obs"].shape == (3, 3, 96) and ts.info["final_positions"].shape == (3, 3, 2)
    assert ts.reward.shape == (3, 3) and (ts.reward == ts.reward[:, :1]).all()   # shared reward
    assert isinstance(SaveTheCity(2, n_agents=2).reset(seed=0).obs, torch.Tensor)


def test_config_file_matches_the_registered_defaults():
    config = yaml.safe_load((Path(__file__).parents[2] / "hmarl" / "configs" / "envs" / "savethecity.yaml").read_text())
    assert config == {"env": "savethecity", "n_agents": 3, "max_steps": 150, "continuous_actions": False,
                      "env_options": {}, "eval_env_options": {}}
    env = make_env(config["env"], num_envs=1, continuous_actions=config["continuous_actions"],
                   **config["env_options"])
    assert (env.spec.n_agents, env.spec.max_steps) == (config["n_agents"], config["max_steps"])


@pytest.mark.parametrize("options, match", [
    (dict(continuous_actions=True), "discrete"),
    (dict(n_agents=1), "n_agents"),
    (dict(n_agents=6), "n_agents"),
    (dict(agent_types=["firefighter", "builder"]), "one per agent"),
    (dict(agent_types=["firefighter", "builder", "pilot"]), "unknown agent type 'pilot'"),
    (dict(max_steps=0), "max_steps"),
    (dict(n_buildings=4), "no option 'n_buildings'; options: agent_types"),
])
def test_bad_options_fail_clearly(options, match):
    with pytest.raises(ValueError, match=match):
        make_env("savethecity", **{"num_envs": 1, **options})


def test_set_state_rejects_impossible_states():
    env = city()
    with pytest.raises(ValueError, match="lattice"):
        put(env, [FAR] * 3, ["builder"] * 3, [0.5] * 4, buildings=[[7, 7], [1, 1], [1, 13], [12, 13]])
    with pytest.raises(ValueError, match="stand on a building"):
        put(env, [[7, 7], FAR, FAR], ["builder"] * 3, [0.5] * 4)
    with pytest.raises(ValueError, match="leave the grid"):
        put(env, [[16, 0], FAR, FAR], ["builder"] * 3, [0.5] * 4)


# ------------------------------------------------------------------------ (e) resets, seeding, spawning
def test_auto_reset_gives_final_obs_and_a_new_episode_only_in_finished_copies():
    env = city(num_envs=3, max_steps=5)
    put(env, [[6, 7], FAR, FAR], ["builder"] * 3, [0.9, 1.0, 1.0, 1.0])
    put(env, [[6, 7], FAR, FAR], ["builder"] * 3, [0.5, 0.5, 0.5, 0.5], index=1)
    put(env, [[6, 7], FAR, FAR], ["builder"] * 3, [0.5, 0.5, 0.5, 0.5], index=2, step=4)
    ts = env.step(torch.tensor([[BUILD, STAY, STAY]] * 3))
    assert ts.terminated.tolist() == [True, False, False] and ts.truncated.tolist() == [False, False, True]
    # the ended episodes, as they ended
    assert building(ts, 0, FINISHED) == 1.0 and building(ts, 0, HEALTH, index=2) == 0.625
    assert ts.info["final_positions"][0].tolist() == [[6, 7], FAR, FAR]
    assert ts.info["subtask_rewards"][0, 0] == pytest.approx((10 * 0.1 + 20) * SCALE3)
    assert ts.info["subtask_rewards"][2, 0] == pytest.approx(10 * 0.125 * SCALE3)
    # new episodes in copies 0 and 2: agents in the centre, every building unfinished
    for i in (0, 2):
        assert not torch.equal(ts.obs[i], ts.final_obs[i])
        assert ((ts.info["positions"][i] >= 6) & (ts.info["positions"][i] <= 9)).all()
        assert ts.info["active_subtasks"][i].all()
        assert torch.equal(ts.state[i], ts.info["entities"][i].flatten())
        assert torch.allclose(ts.obs[i, :, :F], ts.info["entities"][i, :3])
    assert torch.equal(ts.obs[1], ts.final_obs[1])
    assert torch.equal(ts.info["positions"][1], ts.info["final_positions"][1])
    assert ts.info["active_subtasks"][1].all() and building(ts, 0, HEALTH, index=1) == 0.625
    ts = env.step(torch.zeros(3, 3, dtype=torch.long))
    assert not ts.done.any()                                          # copy 1 is at step 2 of 5


def rollout(seed, steps=40):
    env = city(num_envs=4, seed=seed, max_steps=15)
    actions = torch.randint(0, 12, (steps, 4, 3), generator=torch.Generator().manual_seed(0))
    out = [env.reset().obs]
    for a in actions:
        ts = env.step(a)
        out += [ts.obs, ts.reward, ts.done, ts.info["subtask_rewards"]]
    return out


def test_same_seed_same_trajectory():
    first, again, other = rollout(3), rollout(3), rollout(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    env = city(num_envs=4)
    assert torch.equal(env.reset(seed=5).obs, env.reset(seed=5).obs)


def test_spawns_follow_the_rules():
    env = city(num_envs=2000, seed=0, n_agents=5)
    ts = env.reset()
    entities = ts.info["entities"]
    pos = ts.info["positions"].long()
    bpos = (entities[:, 5:, :2] * 15).round().long()
    lattice = torch.tensor(LATTICE)
    assert (bpos.unsqueeze(2) == lattice).all(-1).any(-1).all()                      # on the lattice
    assert ((bpos.unsqueeze(1) == bpos.unsqueeze(2)).all(-1).sum((1, 2)) == 6).all()  # distinct
    assert ((pos >= 6) & (pos <= 9)).all()
    assert ((pos.unsqueeze(1) == pos.unsqueeze(2)).all(-1).sum((1, 2)) == 5).all()    # distinct
    assert not (pos.unsqueeze(2) == bpos.unsqueeze(1)).all(-1).any()                 # not on buildings
    fire, health, fast = entities[:, 5:, FIRE], entities[:, 5:, HEALTH], entities[:, 5:, FAST]
    low = (health >= 0.25) & (health <= 0.4)
    high = (health >= 0.6) & (health <= 0.75)
    assert (low | high).all() and abs(float(low.float().mean()) - 0.5) < 0.03
    burning = fire > 0
    assert abs(float(burning.float().mean()) - 0.4) < 0.03
    assert ((fire[burning] >= 0.2) & (fire[burning] <= 0.5)).all()
    assert abs(float(fast.mean()) - 0.5) < 0.03
    timers, is_fast = env.timers, env.fast_burn
    assert ((timers[is_fast] >= 60) & (timers[is_fast] <= 80)).all()
    assert ((timers[~is_fast] >= 10) & (timers[~is_fast] <= 30)).all()
    assert set(timers[~is_fast].unique().tolist()) == set(range(10, 31))
    types = env.agent_types
    for t in range(3):
        assert abs(float((types == t).float().mean()) - 1 / 3) < 0.03
        assert torch.equal(entities[:, :5, 4 + t], (types == t).float())
    pinned = city(num_envs=50, agent_types=["generalist", "builder", "builder"])
    assert pinned.agent_types.tolist() == [[2, 1, 1]] * 50
    ts = pinned.step(torch.zeros(50, 3, dtype=torch.long))
    assert pinned.agent_types.tolist() == [[2, 1, 1]] * 50


# ------------------------------------------------------------------------ (f) a scripted good policy
def scripted_actions(ts):
    """Builder: nearest unfinished building, build. Firefighter: nearest burning one, extinguish, else
    help the builder. Generalist: follow the builder, freeze its building when it burns."""
    entities = ts.info["entities"][0]
    pos = (entities[:3, :2] * 15).round().long().tolist()
    kinds = entities[:3, 4:7].argmax(-1).tolist()
    bpos = (entities[3:, :2] * 15).round().long().tolist()
    fire, done = entities[3:, FIRE].tolist(), entities[3:, FINISHED].tolist()
    blocked = {tuple(b) for b in bpos}

    def nearest(p, candidates):
        return min(candidates, key=lambda k: abs(bpos[k][0] - p[0]) + abs(bpos[k][1] - p[1]), default=None)

    def adjacent(p, k):
        return abs(bpos[k][0] - p[0]) + abs(bpos[k][1] - p[1]) == 1

    def free(c):
        return 0 <= c[0] < 16 and 0 <= c[1] < 16 and c not in blocked

    def toward(p, k, two=False):
        """A move toward the nearest free neighbour cell of building ``k`` (a 2-move if ``two``)."""
        spots = [(bpos[k][0] + dr, bpos[k][1] + dc) for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1))]
        goal = min(filter(free, spots), key=lambda c: abs(c[0] - p[0]) + abs(c[1] - p[1]))
        d_row, d_col = goal[0] - p[0], goal[1] - p[1]
        moves = sorted([(-d_row, NORTH, (-1, 0)), (d_row, SOUTH, (1, 0)), (-d_col, WEST, (0, -1)),
                        (d_col, EAST, (0, 1))], key=lambda m: -m[0])       # furthest towards the goal first
        for gain, action, (dr, dc) in moves:
            one, two_cells = (p[0] + dr, p[1] + dc), (p[0] + 2 * dr, p[1] + 2 * dc)
            if free(one):
                return action + 4 if two and gain >= 2 and free(two_cells) else action
        return STAY

    unfinished = [k for k in range(4) if not done[k]]
    builder = kinds.index(1)
    target = nearest(pos[builder], unfinished)
    actions = []
    for i in range(3):
        if target is None:
            actions.append(STAY)
            continue
        if kinds[i] == 1:
            actions.append(BUILD if adjacent(pos[i], target) else toward(pos[i], target))
        elif kinds[i] == 0:
            burning = [k for k in unfinished if fire[k] > 0]
            k = nearest(pos[i], burning) if burning else target
            if adjacent(pos[i], k):
                actions.append(EXTINGUISH if burning else BUILD)
            else:
                actions.append(toward(pos[i], k))
        else:
            if adjacent(pos[i], target):
                actions.append(FREEZE if fire[target] > 0 else STAY)
            else:
                actions.append(toward(pos[i], target, two=True))
    return actions


def test_scripted_good_policy_saves_the_city():
    env = city(max_steps=150)
    env.set_state(0, [[7, 7], [8, 8], [6, 9]], ["firefighter", "builder", "generalist"],
                  [[4, 4], [4, 10], [10, 4], [10, 10]], [0.7, 0.65, 0.6, 0.75], [0.3, 0.0, 0.45, 0.0],
                  fast_burn=[False, True, False, True], timers=[5, 12, 8, 30])
    ts = act(env, STAY, STAY, STAY)
    total, ignitions, steps = float(ts.reward[0, 0]), 0, 1
    while not bool(ts.done[0]):
        before = ts.info["entities"][0, 3:, FIRE]
        ts = act(env, *scripted_actions(ts))
        after = ts.final_obs[0, 0, F + 3 * F + FIRE::F]
        ignitions += int(((before == 0) & (after > 0)).sum())
        total += float(ts.reward[0, 0])
        steps += 1
    assert bool(ts.terminated[0]) and bool(ts.info["success"][0]) and ts.info["completed"][0] == 1.0
    assert ignitions >= 1 and steps < 150          # fires did start again, and were dealt with
    assert total > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    envs = [city(num_envs=8, seed=2, device=d, max_steps=20) for d in ("cpu", "cuda")]
    actions = torch.randint(0, 12, (60, 8, 3), generator=torch.Generator().manual_seed(0))
    for a in actions:
        cpu, gpu = (env.step(a.to(env.spec.device)) for env in envs)
        assert torch.allclose(cpu.obs, gpu.obs.cpu(), atol=1e-6) and torch.equal(cpu.done, gpu.done.cpu())
        assert torch.allclose(cpu.reward, gpu.reward.cpu())
        assert torch.allclose(cpu.info["subtask_rewards"], gpu.info["subtask_rewards"].cpu())


def test_the_position_slice_holds_the_agents_own_position():
    """Pins HRL-CG's goal dims on SaveTheCity: the agent's own (row, col) / 15, first in its row."""
    env = make_env("savethecity", num_envs=4, n_agents=3, max_steps=50, seed=1)
    goal = env.spec.obs_slices["position"]
    ts = env.reset(seed=1)
    for _ in range(5):
        assert torch.allclose(ts.obs[..., goal], ts.info["positions"] / 15)
        ts = env.step(torch.randint(0, 12, (4, 3)))
