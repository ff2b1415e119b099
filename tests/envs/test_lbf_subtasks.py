"""Level-Based Foraging's ``subtasks`` option: stable food slots, the entity observation, the subtask info."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmarl.envs import make_env
from hmarl.envs.lbf import ENTITY_FEATURES, LOAD, NONE
from hmarl.run.experiment import Trainer
from hmarl.spec import Entities
from tests.test_systems import run_config


def field_with(rows, cols, *foods):
    field = np.zeros((rows, cols), dtype=np.int64)
    for row, col, level in foods:
        field[row, col] = level
    return field


def lbf(num_envs=1, n_agents=2, **options):
    defaults = dict(field_size=6, max_num_food=2, subtasks=True)
    return make_env("lbf", num_envs=num_envs, seed=0, n_agents=n_agents, max_steps=50, **{**defaults, **options})


def survival(num_envs=1, n_agents=2, **options):
    defaults = dict(field_size=6, max_num_food=2, min_player_level=1, max_player_level=1, energy_decay=0.25,
                    subtasks=True)
    return make_env("lbfws_easy", num_envs=num_envs, seed=0, n_agents=n_agents, max_steps=100,
                    **{**defaults, **options})


def step(env, *actions):
    return env.step(torch.tensor([list(actions)]))


def cell(env, row, col):
    return row * env.food_grid.shape[-1] + col


# ------------------------------------------------------------------------ food slots
def test_eaten_food_empties_its_slot_and_the_other_keeps_its_own():
    env = lbf()
    env.set_state(0, [[1, 2], [5, 0]], [1, 1], field_with(6, 6, (2, 2, 1), (4, 4, 1)))
    assert env.food_slots.tolist() == [[cell(env, 2, 2), cell(env, 4, 4)]]     # row-major
    ts = step(env, LOAD, NONE)
    # row-major, the food at (4, 4) would now come first; its slot stays 1
    assert env.food_slots.tolist() == [[-1, cell(env, 4, 4)]]
    assert ts.info["active_subtasks"].tolist() == [[False, True]]
    assert ts.info["entities"][0, 2].tolist() == [0, 0, 0, 0, 0, 1]              # gone, no position
    assert ts.obs[0, 0, 6 + 2 * 6:6 + 3 * 6].tolist() == [0, 0, 0, 0, 0, 1]
    assert ts.state[0, :3].tolist() == [4, 4, 1]                                 # the state lists row-major


def test_survival_respawn_reuses_the_eaten_foods_slot():
    env = survival()
    env.set_state(0, [[5, 0], [1, 4]], [2, 2], field_with(6, 6, (2, 2, 1), (2, 4, 2)))
    ts = step(env, NONE, LOAD)                                                   # eats slot 1 (level 2)
    slots = env.food_slots[0].tolist()
    assert ts.reward[0].tolist() == pytest.approx([0.0, 2 * 2 / (2 * 3)])
    assert slots[0] == cell(env, 2, 2) and slots[1] not in (-1, cell(env, 2, 4))
    assert env.food_grid[0].flatten()[slots].tolist() == [1, 2]                  # same level, same slot
    assert (env.food_grid[0] > 0).sum() == 2
    assert ts.info["active_subtasks"].tolist() == [[True, True]]
    rows, cols = divmod(slots[1], 6)
    assert ts.info["entities"][0, 3, :3].tolist() == pytest.approx([rows / 5, cols / 5, 2])


def test_spawned_slots_hold_the_foods():
    env = make_env("lbfws_hard", num_envs=64, seed=3, subtasks=True)
    slots, grid = env.food_slots, env.food_grid.flatten(1)
    assert (slots >= 0).all() and (grid.gather(1, slots) == 2).all()
    assert ((grid > 0).sum(-1) == 4).all() and (slots.sort(-1).values.diff(dim=-1) > 0).all()


@pytest.mark.parametrize("name", ["lbf", "lbfws_easy"])
def test_slots_track_the_grid_and_subtask_rewards_add_up_to_the_reward(name):
    env = make_env(name, num_envs=32, seed=1, n_agents=3, max_steps=20, field_size=6, max_num_food=3,
                   min_player_level=2, max_player_level=2, max_food_level=2, subtasks=True)
    actions = torch.randint(0, 6, (60, 32, 3), generator=torch.Generator().manual_seed(0))
    paid = 0
    for a in actions:
        ts = env.step(a)
        slots, grid = env.food_slots, env.food_grid.flatten(1)
        present = slots >= 0
        assert torch.equal(ts.info["active_subtasks"], present)
        assert (grid.gather(1, slots.clamp(min=0))[present] > 0).all()
        assert torch.equal(present.sum(-1), (grid > 0).sum(-1))                 # every food has a slot
        assert torch.allclose(ts.info["subtask_rewards"].sum(-1), ts.reward.sum(-1))
        paid += int((ts.info["subtask_rewards"] > 0).sum())
    assert paid > 0


# ------------------------------------------------------------------------ subtask rewards
def test_subtask_rewards_are_the_loaders_rewards_on_their_foods_slot():
    env = make_env("lbfws_hard", num_envs=2, seed=0, penalty=0.1, subtasks=True)
    food = field_with(8, 8, (2, 2, 2), (2, 5, 2), (5, 2, 2), (5, 5, 2))
    # players 0 and 1 load slot 1's food together; player 2 alone fails at slot 2's; player 3 idles
    env.set_state(1, [[1, 5], [2, 4], [4, 2], [7, 7]], [1, 1, 1, 1], food)
    ts = env.step(torch.tensor([[NONE] * 4, [LOAD, LOAD, LOAD, NONE]]))
    share = 1 * 2 / (2 * 8)                                                      # level * food / (group * spawned)
    assert ts.reward[1].tolist() == pytest.approx([share, share, -0.1, 0.0])
    assert ts.info["subtask_rewards"][1].tolist() == [0.0, 2 * share, 0.0, 0.0]
    assert ts.info["subtask_rewards"][0].tolist() == [0.0] * 4
    assert ts.info["active_subtasks"][1].tolist() == [True] * 4                   # respawned in slot 1
    assert env.food_slots[1, [0, 2, 3]].tolist() == [cell(env, 2, 2), cell(env, 5, 2), cell(env, 5, 5)]


def test_reset_info_has_zero_subtask_rewards():
    env = make_env("lbfws_hard", num_envs=3, seed=0, subtasks=True)
    info = env.reset(seed=1).info
    assert torch.equal(info["subtask_rewards"], torch.zeros(3, 4))
    assert info["active_subtasks"].all() and info["entities"].shape == (3, 8, 6)
    expected = torch.zeros(8, 4, dtype=torch.bool)
    expected[4:] = torch.eye(4, dtype=torch.bool)
    assert torch.equal(info["entity_subtask"], expected.expand(3, 8, 4))


# ------------------------------------------------------------------------ the entity observation
def test_entity_observation_of_a_hand_made_state():
    # 5 x 7: coordinates are divided by max(5, 7) - 1 = 6; the third food slot stays empty
    env = lbf(field_size=[5, 7], max_num_food=3, max_player_level=2, max_food_level=3)
    obs = env.set_state(0, [[0, 1], [4, 6]], [1, 2], field_with(5, 7, (2, 3, 3), (3, 5, 1)))
    assert env.spec.obs_dim == 6 + 5 * 6 and obs.shape == (1, 2, 36)
    absolute = torch.tensor([[0, 1], [4, 6], [2, 3], [3, 5], [0, 0]]) / torch.tensor(6.0)
    others = torch.tensor([[1, 1, 1, 0], [2, 1, 1, 0], [3, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
                          dtype=torch.float32)                                   # level, agent, energy, gone
    entities = torch.cat([absolute, others], -1)
    relative_0 = torch.tensor([[0, 0], [4, 5], [2, 2], [3, 4], [0, 0]]) / torch.tensor(6.0)
    relative_1 = torch.tensor([[-4, -5], [0, 0], [-2, -3], [-1, -1], [0, 0]]) / torch.tensor(6.0)
    expected = torch.stack([torch.cat([entities[0], torch.cat([relative_0, others], -1).flatten()]),
                            torch.cat([entities[1], torch.cat([relative_1, others], -1).flatten()])])
    assert torch.equal(obs[0], expected)
    ts = step(env, NONE, NONE)
    assert torch.equal(ts.obs[0], expected) and torch.equal(ts.info["entities"][0], entities)
    # the state is the one without the option
    plain = lbf(field_size=[5, 7], max_num_food=3, max_player_level=2, max_food_level=3, subtasks=False)
    plain.set_state(0, [[0, 1], [4, 6]], [1, 2], field_with(5, 7, (2, 3, 3), (3, 5, 1)))
    assert torch.equal(ts.state, plain.step(torch.zeros(1, 2, dtype=torch.long)).state)


def test_final_obs_is_entity_structured_and_info_describes_the_new_episode():
    env = lbf(max_num_food=1)
    env.set_state(0, [[1, 2], [5, 5]], [2, 2], field_with(6, 6, (2, 2, 2)))
    ts = step(env, LOAD, NONE)
    assert bool(ts.terminated[0]) and ts.final_obs.shape == ts.obs.shape == (1, 2, 6 + 3 * 6)
    assert ts.final_obs[0, 0, -6:].tolist() == [0, 0, 0, 0, 0, 1]                # the eaten food
    assert ts.obs[0, 0, -1] == 0 and ts.info["active_subtasks"].tolist() == [[True]]
    assert ts.info["subtask_rewards"].tolist() == [[1.0]]


def test_dead_agent_is_gone_with_zero_energy():
    env = survival()
    env.set_state(0, [[1, 2], [5, 0]], [1, 1], field_with(6, 6, (2, 2, 1), (4, 4, 1)), energy=[0.25, 1.0])
    ts = step(env, NONE, NONE)
    assert ts.info["alive"].tolist() == [[False, True]]
    assert ts.info["entities"][0, :2, 2:].tolist() == [[1, 1, 0, 1], [1, 1, 0.75, 0]]
    for agent in range(2):
        rows = ts.obs[0, agent, 6:].view(4, 6)
        assert rows[:2, 2:].tolist() == [[1, 1, 0, 1], [1, 1, 0.75, 0]]
    assert ts.obs[0, 0, 5] == 1 and ts.obs[0, 1, 5] == 0                         # own rows
    assert torch.equal(ts.obs[0, 1, 6:8], torch.tensor([-4, 2]) / torch.tensor(5.0))  # the body is still there


# ------------------------------------------------------------------------ spec and options
@pytest.mark.parametrize("name", ["lbf", "lbfws_easy", "lbfws_hard"])
def test_every_factory_takes_the_option_and_declares_the_entities(name):
    env = make_env(name, num_envs=2, seed=0, n_agents=3, max_num_food=4, subtasks=True)
    spec = env.spec
    assert spec.obs_dim == 6 + 7 * 6 and spec.optional == {}
    assert spec.entities == Entities(n_subtasks=4, subtask_of_entity=(-1, -1, -1, 0, 1, 2, 3), entity_dim=6, first=6,
                                     finished_feature=5,
                                     feature_names=("row", "col", "level", "agent", "energy", "gone"))
    assert ENTITY_FEATURES == spec.entities.feature_names and spec.entities.n_entities == 7
    assert spec.require("entities", "x").n_subtasks == 4
    assert env.reset().obs.shape == (2, 3, spec.obs_dim)


@pytest.mark.parametrize("name", ["lbf", "lbfws_easy", "lbfws_hard"])
def test_without_the_option_require_names_it(name):
    spec = make_env(name, num_envs=1).spec
    assert spec.entities is None and spec.optional == {"entities": "subtasks"}
    with pytest.raises(ValueError, match=r"x needs an env with entities; .*set env_options: \{subtasks: true\}"):
        spec.require("entities", "x")


@pytest.mark.parametrize("options, match", [
    (dict(field_size=8, sight=7), "sight >= field size 8"),
    (dict(field_size=[5, 9], sight=6), "sight >= field size 9"),
    (dict(field_size=8, observe_agent_levels=False), "observe_agent_levels"),
])
def test_subtasks_need_full_sight_and_levels(options, match):
    with pytest.raises(ValueError, match=match):
        make_env("lbf", num_envs=1, n_agents=2, subtasks=True, **options)
    make_env("lbf", num_envs=1, n_agents=2, field_size=8, sight=8, subtasks=True)


# ------------------------------------------------------------------------ systems
@pytest.mark.parametrize("algorithm", ["alma", "aqmix"])
def test_subtask_systems_train_on_lbfws_hard(algorithm, tmp_path):
    run = run_config(algorithm, "lbfws_hard", tmp_path, env_options={"subtasks": True})
    logs = []
    trainer = Trainer(run, lambda *entry: logs.append(entry))
    assert math.isfinite(trainer.fit())
    learned = {name.split("/")[0] for name, _, _ in logs if name.endswith("_loss")}
    assert learned == {f"level{i}" for i in range(len(trainer.hierarchy.levels))}   # every level trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    envs = [make_env("lbfws_hard", num_envs=8, seed=2, device=d, max_steps=20, subtasks=True) for d in ("cpu", "cuda")]
    actions = torch.randint(0, 6, (40, 8, 4), generator=torch.Generator().manual_seed(0))
    for a in actions:
        cpu, gpu = (env.step(a.to(env.spec.device)) for env in envs)
        assert torch.equal(cpu.obs, gpu.obs.cpu()) and torch.equal(cpu.done, gpu.done.cpu())
        for key in ("entities", "active_subtasks", "subtask_rewards"):
            assert torch.allclose(cpu.info[key].float(), gpu.info[key].cpu().float())
