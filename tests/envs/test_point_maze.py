"""The point U-maze: walls, the corridor, reward, success, seeding and shapes."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from hmarl.envs import ENVS, make_env
from hmarl.envs.point_maze import EVAL_TARGETS


def maze(num_envs=1, max_steps=500, **options):
    return make_env("point_maze", num_envs=num_envs, max_steps=max_steps, **options)


def move(env, *xy):
    """Step with one (dx, dy) per copy."""
    return env.step(torch.tensor(xy, dtype=torch.float32).reshape(-1, 1, 2))


def positions(ts):
    return ts.obs[:, 0, :2].tolist()


def test_shapes_spec_and_registry():
    env = maze(num_envs=3, max_steps=4)
    spec = env.spec
    assert "point_maze" in ENVS and spec.name == "point_maze"
    assert (spec.n_agents, spec.obs_dim, spec.num_envs, spec.max_steps) == (1, 4, 3, 4)
    assert isinstance(spec.action_space, spaces.Box) and spec.action_space.shape == (2,)
    assert spec.obs_slices == {"position": slice(0, 2), "context": slice(2, 4)} and spec.positions == 2
    assert spec.episode_metrics == ("success",) and spec.eval_groups == () and spec.entities is None
    ts = env.reset(seed=0)
    assert ts.obs.shape == (3, 1, 4) and ts.reward.shape == (3, 1)
    assert torch.equal(ts.obs[:, 0, :2], torch.zeros(3, 2))
    ts = env.step(torch.zeros(3, 1, 2))
    assert ts.reward.shape == (3, 1) and ts.terminated.shape == ts.truncated.shape == (3,)
    assert ts.terminated.dtype == ts.truncated.dtype == ts.info["success"].dtype == torch.bool
    assert ts.info["positions"].shape == (3, 1, 2) and ts.info["final_obs"].shape == (3, 1, 4)
    assert torch.equal(ts.info["positions"], ts.obs[..., :2])


def test_wall_rejects_one_axis_and_slides_on_the_other():
    env = maze(num_envs=2)
    env.reset(seed=0)
    for _ in range(3):
        move(env, (0, 1), (-1, -1))
    assert positions(env.step(torch.zeros(2, 1, 2))) == [[0, 3], [-3, -3]]
    # y = 4 is the inner wall's lower face, x = -5 / y = -5 lie outside the maze
    ts = move(env, (1, 1), (-1, -1))
    assert positions(ts) == [[1, 3], [-4, -4]]
    ts = move(env, (1, 1), (-1, 1))
    assert positions(ts) == [[2, 3], [-4, -3]]


def test_actions_are_clamped_and_scaled_by_speed():
    env = maze(num_envs=2, speed=2.0)
    env.reset(seed=0)
    assert positions(move(env, (5, 0), (0.25, 0))) == [[2, 0], [0.5, 0]]


def test_corridor_is_walkable_from_start_to_the_top_left():
    env = maze(num_envs=1, speed=2.0)
    env.reset(seed=0)
    for direction, corner in [((1, 0), [16, 0]), ((0, 1), [16, 16]), ((-1, 0), [0, 16])]:
        for _ in range(8):
            ts = move(env, direction)
        assert positions(ts) == [corner]
    # the top-left end is closed: x = -4 and y = 12 are the last free coordinates
    assert positions(move(env, (-1, 0))) == [[-2, 16]]
    assert positions(move(env, (-1, 0))) == [[-4, 16]]
    assert positions(move(env, (-1, -1))) == [[-4, 14]]
    assert positions(move(env, (-1, -1))) == [[-4, 12]]
    assert positions(move(env, (-1, -1))) == [[-4, 12]]


def test_reward_is_minus_the_distance_to_the_target():
    env = maze(num_envs=2)
    env.reset(seed=0)
    env._target = torch.tensor([[4.0, 4.0], [-2.0, 0.0]])
    ts = move(env, (1, 0), (1, 0))
    assert ts.reward.tolist() == [[-5.0], [-3.0]]
    scaled = maze(num_envs=3, eval_targets=True, reward_scale=0.1)
    scaled.reset()
    ts = move(scaled, (1, 0), (1, 0), (1, 0))
    expected = -0.1 * torch.tensor([[15.0], [481.0 ** 0.5], [257.0 ** 0.5]])
    assert torch.allclose(ts.reward, expected)


def test_success_only_within_the_radius_at_the_final_step():
    # with speed 4 the copies reach (12, 0) at the 3rd and final step
    env = maze(num_envs=3, max_steps=3, speed=4.0, eval_targets=True, success_radius=9.0)
    env.reset()
    ts = move(env, (1, 0), (1, 0), (1, 0))
    ts = move(env, (1, 0), (1, 0), (1, 0))  # (8, 0): within 9 of (16, 0) but not final
    assert not ts.info["success"].any() and not ts.truncated.any()
    ts = move(env, (1, 0), (1, 0), (1, 0))
    assert ts.truncated.all() and not ts.terminated.any()
    assert ts.info["success"].tolist() == [True, False, False]
    assert ts.info["final_obs"][:, 0, :2].tolist() == [[12, 0]] * 3
    assert positions(ts) == [[0, 0]] * 3  # reset inside step
    ts = move(env, (0, 0), (0, 0), (0, 0))
    assert not ts.info["success"].any() and not ts.truncated.any()

    at_radius = maze(num_envs=1, max_steps=3, speed=4.0, eval_targets=True, success_radius=4.0)
    at_radius.reset()
    for _ in range(3):
        ts = move(at_radius, (1, 0))
    assert ts.truncated.all() and not ts.info["success"].any()  # distance 4 is not < 4


def test_eval_targets_round_robin_across_resets():
    env = maze(num_envs=5, max_steps=2, eval_targets=True)
    expected = [list(EVAL_TARGETS[i % 3]) for i in range(5)]
    assert EVAL_TARGETS == ((16.0, 0.0), (16.0, 16.0), (0.0, 16.0))
    assert env.reset(seed=1).obs[:, 0, 2:].tolist() == expected
    for _ in range(2):
        ts = env.step(torch.zeros(5, 1, 2))
    assert ts.truncated.all() and ts.obs[:, 0, 2:].tolist() == expected


def test_same_seed_same_targets():
    def targets(env, seed=None):
        first = env.reset(seed=seed).obs[:, 0, 2:]
        for _ in range(2):
            ts = env.step(torch.zeros(4, 1, 2))
        return torch.cat([first, ts.obs[:, 0, 2:]])

    a = targets(maze(num_envs=4, max_steps=2), seed=3)
    assert torch.equal(a, targets(maze(num_envs=4, max_steps=2, seed=3)))
    assert torch.equal(a, targets(maze(num_envs=4, max_steps=2, seed=9), seed=3))
    assert not torch.equal(a, targets(maze(num_envs=4, max_steps=2), seed=4))
    assert not torch.equal(a[:4], a[4:])  # each episode draws new targets
    assert a.min() >= -4 and a.max() <= 20


@pytest.mark.parametrize("kwargs, match", [({"n_agents": 2}, "n_agents=1"),
                                           ({"continuous_actions": False}, "continuous_actions=True"),
                                           ({"speed": 9.0}, "speed")])
def test_bad_requests_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_env("point_maze", num_envs=1, **kwargs)
