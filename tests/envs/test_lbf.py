"""Level-Based Foraging: replays against lbforaging 2.0, hand-made rule cases, Survival, shapes, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hmarl.envs import ENVS, make_env
from hmarl.envs.lbf import EAST, LOAD, NONE, NORTH, SOUTH, WEST, LevelBasedForaging

lbforaging = pytest.importorskip("lbforaging.foraging.environment")


def package_env(n_agents, size, n_food, *, sight=None, max_steps=50, max_player_level=2, max_food_level=None,
                force_coop=False, penalty=0.0, normalize_reward=True):
    return lbforaging.ForagingEnv(
        players=n_agents, min_player_level=1, max_player_level=max_player_level, min_food_level=1,
        max_food_level=max_food_level, field_size=(size, size), max_num_food=n_food, sight=sight or size,
        max_episode_steps=max_steps, force_coop=force_coop, penalty=penalty, normalize_reward=normalize_reward)


def our_env(n_agents, size, n_food, *, num_envs=2, sight=None, max_steps=50, seed=0, **options):
    return make_env("lbf", num_envs=num_envs, seed=seed, n_agents=n_agents, max_steps=max_steps,
                    field_size=size, max_num_food=n_food, sight=sight, **options)


def copy_package_state(ours, package, index=0):
    """Put the package's current state into copy ``index`` of ours; returns our obs."""
    return ours.set_state(index, [p.position for p in package.players], [p.level for p in package.players],
                          package.field, step=package.current_step, food_spawned=package._food_spawned)


def set_package_state(package, positions, levels, field):
    """A hand-made state in the package env (reset it first)."""
    for player, position, level in zip(package.players, positions, levels):
        player.setup(tuple(position), level, package.field_size)
    package.field = np.array(field, dtype=np.int32)
    package._food_spawned = package.field.sum()
    package.current_step = 0
    package._game_over = False
    package._gen_valid_moves()
    return np.stack(package._make_gym_obs())


def step_both(ours, package, actions, index=0):
    """Step both with the same actions in copy ``index``; assert equal obs, rewards and ends."""
    full = torch.zeros(ours.spec.num_envs, ours.spec.n_agents, dtype=torch.long)
    full[index] = torch.as_tensor(actions)
    ts = ours.step(full)
    obs, reward, done, _, _ = package.step(list(actions))
    np.testing.assert_array_equal(ts.final_obs[index].numpy(), np.stack(obs))
    np.testing.assert_allclose(ts.reward[index].numpy(), np.asarray(reward, dtype=np.float64), atol=1e-6)
    assert bool(ts.done[index]) == done
    if done and package.current_step < package._max_episode_steps:
        assert bool(ts.terminated[index]) and not bool(ts.truncated[index])
    elif done:  # the package's time limit is its `done`; ours reports it as truncation
        assert bool(ts.truncated[index]) != bool(ts.terminated[index])
    return ts, reward


def greedy_actions(package, rng):
    """Noisy walks to the nearest food and LOADs next to it: many (joint) loads, all six actions."""
    foods = np.argwhere(package.field > 0)
    actions = []
    for player in package.players:
        row, col = player.position
        if len(foods) == 0 or rng.random() < 0.3:
            actions.append(int(rng.integers(6)))
            continue
        distance = np.abs(foods - [row, col]).sum(1)
        food_row, food_col = foods[distance.argmin()]
        if distance.min() == 1:
            actions.append(LOAD)
            continue
        moves = [a for a, ok in ((NORTH, food_row < row), (SOUTH, food_row > row), (WEST, food_col < col),
                                 (EAST, food_col > col)) if ok]
        actions.append(int(rng.choice(moves)))
    return actions


# ------------------------------------------------------------------------ (a) replays vs lbforaging
REPLAYS = {
    "8x8-2p-2f": dict(n_agents=2, size=8, n_food=2),
    "5x5-4p-2f": dict(n_agents=4, size=5, n_food=2),
    "8x8-3p-3f-sight2": dict(n_agents=3, size=8, n_food=3, sight=2),
    "6x6-3p-2f-coop": dict(n_agents=3, size=6, n_food=2, force_coop=True),
    "7x7-3p-3f-penalty": dict(n_agents=3, size=7, n_food=3, penalty=0.1, max_food_level=3),
    "7x7-3p-2f-unnormalised": dict(n_agents=3, size=7, n_food=2, normalize_reward=False, max_player_level=3),
}


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_replays_match_lbforaging(name):
    cfg = REPLAYS[name]
    loads = joint = 0
    for seed in range(4):
        package = package_env(**cfg)
        obs, _ = package.reset(seed=seed)
        ours = our_env(**cfg, seed=seed)
        np.testing.assert_array_equal(copy_package_state(ours, package)[0].numpy(), np.stack(obs))
        rng = np.random.default_rng(seed)
        for _ in range(50):
            actions = greedy_actions(package, rng)
            ts, reward = step_both(ours, package, actions)
            paid = sum(r > 0 for r in reward)
            loads, joint = loads + (paid > 0), joint + (paid > 1)
            if ts.done[0]:
                break
    assert loads > 0
    if name != "8x8-2p-2f":
        assert joint > 0  # two or more players loaded one food together


def test_random_actions_match_lbforaging():
    package = package_env(3, 6, 2)
    obs, _ = package.reset(seed=7)
    ours = our_env(3, 6, 2)
    copy_package_state(ours, package, index=1)
    rng = np.random.default_rng(7)
    for _ in range(50):
        ts, _ = step_both(ours, package, rng.integers(6, size=3).tolist(), index=1)
        if ts.done[1]:
            break


# ------------------------------------------------------------------------ (b) hand-made rules
def twins(n_agents, size=6, n_food=2, **options):
    package = package_env(n_agents, size, n_food, **options)
    package.reset(seed=0)
    return our_env(n_agents, size, n_food, num_envs=1, **options), package


def load_both(ours, package, positions, levels, field):
    expected = set_package_state(package, positions, levels, field)
    np.testing.assert_array_equal(ours.set_state(0, positions, levels, field)[0].numpy(), expected)


def field_with(size, *foods):
    field = np.zeros((size, size), dtype=np.int64)
    for row, col, level in foods:
        field[row, col] = level
    return field


def positions(ts):
    return ts.info["positions"][0].long().tolist()


def test_walls_food_and_players_block_moves():
    ours, package = twins(3)
    field = field_with(6, (2, 2, 1), (4, 4, 1))
    load_both(ours, package, [[0, 0], [2, 1], [5, 3]], [1, 1, 1], field)
    ts, _ = step_both(ours, package, [NORTH, EAST, SOUTH])   # wall, food, wall
    assert positions(ts) == [[0, 0], [2, 1], [5, 3]]
    ts, _ = step_both(ours, package, [WEST, NORTH, EAST])     # wall, free, free
    assert positions(ts) == [[0, 0], [1, 1], [5, 4]]
    ts, _ = step_both(ours, package, [EAST, NONE, NORTH])     # free, stay, food
    assert positions(ts) == [[0, 1], [1, 1], [5, 4]]
    ts, _ = step_both(ours, package, [SOUTH, NONE, NONE])     # into a player that stays
    assert positions(ts) == [[0, 1], [1, 1], [5, 4]]


def test_players_heading_for_one_cell_both_stay_chains_and_swaps_move():
    ours, package = twins(3)
    field = field_with(6, (3, 3, 1), (1, 4, 1))
    load_both(ours, package, [[0, 0], [0, 2], [5, 0]], [1, 1, 1], field)
    ts, _ = step_both(ours, package, [EAST, WEST, NONE])
    assert positions(ts) == [[0, 0], [0, 2], [5, 0]]
    # a chain: the first follows the second into the cell it leaves
    load_both(ours, package, [[0, 0], [0, 1], [5, 0]], [1, 1, 1], field)
    ts, _ = step_both(ours, package, [EAST, EAST, NONE])
    assert positions(ts) == [[0, 1], [0, 2], [5, 0]]
    # a swap succeeds in lbforaging too (each claims a cell nobody else claims)
    load_both(ours, package, [[0, 0], [0, 1], [5, 0]], [1, 1, 1], field)
    ts, _ = step_both(ours, package, [EAST, WEST, NONE])
    assert positions(ts) == [[0, 1], [0, 0], [5, 0]]


def test_load_needs_enough_level_and_joint_load_splits_by_level():
    ours, package = twins(3, max_food_level=3)
    field = field_with(6, (2, 2, 3), (4, 4, 1))
    load_both(ours, package, [[1, 2], [2, 3], [5, 5]], [1, 2, 1], field)
    ts, reward = step_both(ours, package, [LOAD, NONE, LOAD])     # level 1 < 3; no food next to player 2
    assert reward == [0, 0, 0] and ours.food_grid[0, 2, 2] == 3
    ts, reward = step_both(ours, package, [NONE, LOAD, NONE])     # level 2 < 3
    assert reward == [0, 0, 0] and ours.food_grid[0, 2, 2] == 3
    ts, reward = step_both(ours, package, [LOAD, LOAD, NONE])     # 1 + 2 >= 3
    # level * food / (group level * total food spawned): 1 * 3 / (3 * 4) and 2 * 3 / (3 * 4)
    assert reward == pytest.approx([0.25, 0.5, 0.0])
    assert torch.allclose(ts.reward[0], torch.tensor([0.25, 0.5, 0.0]))
    assert ours.food_grid[0, 2, 2] == 0 and not ts.done[0]
    ts, reward = step_both(ours, package, [NONE, NONE, NORTH])
    ts, reward = step_both(ours, package, [NONE, NONE, LOAD])     # the last food ends the episode
    assert reward == pytest.approx([0, 0, 0.25]) and bool(ts.terminated[0]) and not bool(ts.truncated[0])


def test_failed_load_penalty_and_unnormalised_reward():
    ours, package = twins(2, max_food_level=3, penalty=0.1, normalize_reward=False)
    field = field_with(6, (2, 2, 3), (4, 4, 1))
    load_both(ours, package, [[1, 2], [4, 3]], [2, 1], field)
    _, reward = step_both(ours, package, [LOAD, LOAD])
    assert reward == pytest.approx([-0.1, 1.0])                   # 1 * 1 without normalisation


def test_time_limit_is_truncation_and_the_copy_resets():
    ours, package = twins(2, max_steps=3)
    load_both(ours, package, [[0, 0], [5, 5]], [1, 1], field_with(6, (2, 2, 1)))
    for _ in range(2):
        ts, _ = step_both(ours, package, [NONE, NONE])
    ts, _ = step_both(ours, package, [EAST, NONE])
    assert bool(ts.truncated[0]) and not bool(ts.terminated[0])
    assert ts.final_obs[0, 0, 6:8].tolist() == [0, 1]               # own position at the end
    assert not torch.equal(ts.obs, ts.final_obs)                    # a fresh episode
    assert (ours.food_grid[0] > 0).sum() == 2


# ------------------------------------------------------------------------ (c) survival
def survival(n_agents=2, num_envs=1, **options):
    defaults = dict(field_size=6, max_num_food=2, min_player_level=1, max_player_level=1, energy_decay=0.25)
    return make_env("lbfws_easy", num_envs=num_envs, seed=0, n_agents=n_agents, max_steps=100,
                    **{**defaults, **options})


def energies(ts):
    return ts.obs[0, :, -2:].tolist()  # [own, other] per agent


def test_survival_energy_decays_load_refills_and_food_respawns():
    env = survival()
    food = field_with(6, (2, 2, 1), (4, 4, 1))
    obs = env.set_state(0, [[1, 2], [5, 0]], [1, 1], food, energy=[0.5, 1.0])
    assert obs.shape[-1] == 3 * 2 + 3 * 2 + 2 and obs[0, :, -2:].tolist() == [[0.5, 1.0], [1.0, 0.5]]
    ts = env.step(torch.tensor([[NONE, NONE]]))
    assert energies(ts) == [[0.25, 0.75], [0.75, 0.25]]
    ts = env.step(torch.tensor([[LOAD, NONE]]))
    assert ts.reward[0].tolist() == [0.5, 0.0]                      # 1 * 1 / (1 * 2)
    assert energies(ts) == [[1.0, 0.5], [0.5, 1.0]]
    grid = env.food_grid[0]
    assert sorted(grid[grid > 0].tolist()) == [1, 1]               # respawned, same level
    assert grid[4, 4] == 1 and all(cell not in positions(ts) for cell in (grid > 0).nonzero().tolist())
    assert ts.info["alive"].tolist() == [[True, True]]


def test_survival_energy_gain_adds_and_caps():
    env = survival(energy_gain=0.5)
    env.set_state(0, [[1, 2], [5, 0]], [1, 1], field_with(6, (2, 2, 1), (4, 4, 1)), energy=[0.5, 0.9])
    ts = env.step(torch.tensor([[LOAD, NONE]]))
    assert ts.info["energy"][0].tolist() == pytest.approx([0.75, 0.65])


def test_dead_agent_is_a_frozen_obstacle_with_zero_reward():
    env = survival(energy_decay=0.1)
    food = field_with(6, (2, 2, 1), (4, 4, 1))
    env.set_state(0, [[1, 2], [0, 0]], [1, 1], food, energy=[0.1, 1.0])
    ts = env.step(torch.tensor([[NONE, NONE]]))
    assert ts.info["alive"].tolist() == [[False, True]] and ts.info["energy"][0, 0] == 0
    assert not ts.done[0]
    # the dead agent ignores its LOAD (no reward, the food stays) and its moves
    ts = env.step(torch.tensor([[LOAD, EAST]]))
    assert ts.reward[0].tolist() == [0.0, 0.0] and env.food_grid[0, 2, 2] == 1
    ts = env.step(torch.tensor([[WEST, EAST]]))
    assert positions(ts) == [[1, 2], [0, 2]]
    ts = env.step(torch.tensor([[NONE, SOUTH]]))                    # blocked by the body
    assert positions(ts) == [[1, 2], [0, 2]]
    assert ts.obs[0, 0, -2:].tolist() == pytest.approx([0.0, 0.6])  # own energy, the other's
    assert ts.obs[0, 1, -2:].tolist() == pytest.approx([0.6, 0.0])
    assert not ts.done[0]


def test_episode_ends_when_all_agents_are_dead():
    env = survival(num_envs=2)
    env.set_state(0, [[1, 2], [0, 0]], [1, 1], field_with(6, (2, 2, 1), (4, 4, 1)), energy=[0.25, 0.25])
    ts = env.step(torch.zeros(2, 2, dtype=torch.long))
    assert ts.terminated.tolist() == [True, False] and ts.truncated.tolist() == [False, False]
    assert ts.final_obs[0, :, -2:].abs().sum() == 0                 # everyone dead at the end
    assert ts.info["alive"].all() and ts.obs[0, :, -2:].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_survival_respawn_falls_back_to_any_free_cell_on_a_crowded_grid():
    # a 4 x 4 grid has room for one spaced food in its interior; the second must go elsewhere
    env = survival(field_size=4, energy_decay=0.01)
    env.set_state(0, [[0, 1], [3, 3]], [1, 1], field_with(4, (1, 1, 1), (2, 2, 1)))
    for _ in range(5):
        ts = env.step(torch.tensor([[LOAD, NONE]]))
        grid = env.food_grid[0]
        assert (grid > 0).sum() == 2 and all(cell not in positions(ts) for cell in (grid > 0).nonzero().tolist())


def test_presets():
    easy = make_env("lbfws_easy", num_envs=64, seed=1)
    hard = make_env("lbfws_hard", num_envs=64, seed=1)
    for env, name in ((easy, "lbfws_easy"), (hard, "lbfws_hard")):
        assert name in ENVS and env.spec.name == name
        assert (env.spec.n_agents, env.spec.max_steps, env.spec.obs_dim) == (4, 100, 3 * 4 + 3 * 4 + 4)
        assert ((env.food_grid > 0).sum((1, 2)) == 4).all()
    assert (easy.levels == 2).all() and set(easy.food_grid.unique().tolist()) <= {0, 1, 2}
    assert (hard.levels == 1).all() and set(hard.food_grid.unique().tolist()) == {0, 2}   # two agents a food
    ts = hard.step(torch.zeros(64, 4, dtype=torch.long))
    assert torch.allclose(ts.info["energy"], torch.full((64, 4), 0.96))
    ts = easy.step(torch.zeros(64, 4, dtype=torch.long))
    assert torch.allclose(ts.info["energy"], torch.full((64, 4), 0.98))


# ------------------------------------------------------------------------ (d) shapes, seeding, spawning
def test_shapes_spec_and_registry():
    env = make_env("lbf", num_envs=3, seed=0, n_agents=3, max_steps=5, field_size=7, max_num_food=2)
    spec = env.spec
    assert "lbf" in ENVS and spec.name == "lbf" and spec.discrete
    assert isinstance(spec.action_space, spaces.Discrete) and spec.action_space.n == 6
    assert (spec.n_agents, spec.obs_dim, spec.state_dim, spec.num_envs) == (3, 15, 15, 3)
    assert spec.positions == 2 and spec.obs_slices == {"position": slice(6, 8)} and spec.entities is None
    ts = env.reset(seed=0)
    assert ts.obs.shape == (3, 3, 15) and ts.reward.shape == (3, 3) and ts.state.shape == (3, 15)
    assert ts.info["positions"].shape == (3, 3, 2)
    # full sight: the observer's own (row, col, level) follows the food slots
    assert torch.equal(ts.obs[:, :, 6:8], ts.info["positions"])
    ts = env.step(torch.randint(0, 6, (3, 3)))
    assert ts.terminated.dtype == ts.truncated.dtype == torch.bool and ts.terminated.shape == (3,)
    assert ts.info["final_obs"].shape == (3, 3, 15)
    no_levels = make_env("lbf", num_envs=1, n_agents=3, field_size=7, observe_agent_levels=False)
    assert no_levels.spec.obs_dim == 3 * 2 + 2 * 3


def rollout(seed, steps=30):
    env = make_env("lbf", num_envs=4, seed=seed, n_agents=3, max_steps=10, field_size=6, max_num_food=2)
    actions = torch.randint(0, 6, (steps, 4, 3), generator=torch.Generator().manual_seed(0))
    out = [env.reset().obs]
    for a in actions:
        ts = env.step(a)
        out += [ts.obs, ts.reward, ts.done]
    return out


def test_same_seed_same_trajectory():
    first, again, other = rollout(3), rollout(3), rollout(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    env = make_env("lbf", num_envs=4, seed=0, n_agents=3, field_size=6)
    assert torch.equal(env.reset(seed=5).obs, env.reset(seed=5).obs)


def test_auto_reset_only_ends_finished_copies():
    env = make_env("lbf", num_envs=2, seed=0, n_agents=2, max_steps=50, field_size=6, max_num_food=1)
    env.set_state(0, [[1, 2], [5, 5]], [2, 2], field_with(6, (2, 2, 2)))
    env.set_state(1, [[1, 2], [5, 5]], [2, 2], field_with(6, (3, 3, 2)))
    ts = env.step(torch.tensor([[LOAD, NONE], [LOAD, NONE]]))
    assert ts.terminated.tolist() == [True, False] and ts.reward[0, 0] == 1.0
    assert ts.final_obs[0, 0, :3].tolist() == [-1, -1, 0]          # no food left at the end
    assert ts.obs[0, 0, 2] > 0                                      # a new episode with food
    assert torch.equal(ts.obs[1], ts.final_obs[1])


def test_spawns_follow_lbforaging_rules():
    env = make_env("lbf", num_envs=300, seed=0, n_agents=4, field_size=8, max_num_food=3,
                   min_player_level=1, max_player_level=3)
    pos = env.reset().info["positions"].long()
    grid, levels = env.food_grid, env.levels
    assert ((levels >= 1) & (levels <= 3)).all() and set(levels.unique().tolist()) == {1, 2, 3}
    three_lowest = levels.sort(-1).values[:, :3].sum(-1)
    assert (grid.flatten(1).max(-1).values <= three_lowest).all()   # max_food_level=None
    assert (grid[:, 0] == 0).all() and (grid[:, -1] == 0).all() and (grid[:, :, 0] == 0).all()
    assert (grid[:, :, -1] == 0).all()
    assert ((grid > 0).sum((1, 2)) == 3).all()
    for b in range(0, 300, 7):
        cells = (grid[b] > 0).nonzero().tolist()
        for i, (r1, c1) in enumerate(cells):
            assert [r1, c1] not in pos[b].tolist()
            for r2, c2 in cells[i + 1:]:
                near = max(abs(r1 - r2), abs(c1 - c2)) <= 1 or (abs(r1 - r2) + abs(c1 - c2) == 2 and
                                                                 (r1 == r2 or c1 == c2))
                assert not near
        assert len({tuple(p) for p in pos[b].tolist()}) == 4
    coop = make_env("lbf", num_envs=50, seed=0, n_agents=3, field_size=8, force_coop=True, max_food_level=4)
    assert set(coop.food_grid.unique().tolist()) == {0, 4}


# ------------------------------------------------------------------------ (e) bad options
@pytest.mark.parametrize("options, match", [
    (dict(continuous_actions=True), "discrete"),
    (dict(field_size=2), "field_size"),
    (dict(field_size=[6, 6, 6]), "field_size"),
    (dict(sight=0), "sight"),
    (dict(min_player_level=3, max_player_level=2), "min_player_level"),
    (dict(min_food_level=3, max_food_level=2), "min_food_level"),
    (dict(max_player_level=[1, 2, 3]), "one per agent"),
    (dict(max_num_food=0), "max_num_food"),
    (dict(n_agents=30, field_size=5), "do not fit"),
    (dict(energy_decay=0.1), "survival=True"),
    (dict(survival=True, energy_decay=0.0), "energy_decay"),
    (dict(max_episode_steps=10), "max_steps"),
    (dict(grid_observation=True), "grid_observation"),
    (dict(food_count=3), "no option 'food_count'"),
])
def test_bad_options_fail_clearly(options, match):
    with pytest.raises(ValueError, match=match):
        make_env("lbf", **{"num_envs": 1, "n_agents": 2, **options})


def test_env_class_is_importable_directly():
    env = LevelBasedForaging(2, n_agents=2, field_size=5, max_num_food=1)
    assert env.reset(seed=0).obs.shape == (2, 2, 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    envs = [make_env("lbfws_hard", num_envs=8, seed=2, device=d, max_steps=20) for d in ("cpu", "cuda")]
    actions = torch.randint(0, 6, (40, 8, 4), generator=torch.Generator().manual_seed(0))
    for a in actions:
        cpu, gpu = (env.step(a.to(env.spec.device)) for env in envs)
        assert torch.equal(cpu.obs, gpu.obs.cpu()) and torch.equal(cpu.done, gpu.done.cpu())
        assert torch.allclose(cpu.reward, gpu.reward.cpu())


@pytest.mark.parametrize("options", [{}, {"subtasks": True}, {"survival": True}])
def test_the_position_slice_holds_the_observers_own_position(options):
    """Pins HRL-CG's goal dims on LBF: the observer's own (row, col), which move with it step by
    step (grid units in the vector observation, scaled by 1 / (size - 1) in the subtasks one)."""
    env = make_env("lbf", num_envs=4, n_agents=3, max_steps=50, seed=1, **options)
    goal = env.spec.obs_slices["position"]
    scale = 1 / env._span if options.get("subtasks") else 1.0
    ts = env.reset(seed=1)
    for _ in range(5):
        assert torch.allclose(ts.obs[..., goal], ts.info["positions"] * scale)
        ts = env.step(torch.randint(0, 6, (4, 3)))


def test_no_position_slice_when_part_of_the_grid_is_out_of_sight():
    """With a smaller sight the observer's coordinates are relative to its view corner: no goals."""
    env = make_env("lbf", num_envs=1, n_agents=2, max_steps=50, seed=1, sight=2)
    assert "position" not in env.spec.obs_slices
