"""hmarl's envs as PettingZoo ParallelEnvs: PettingZoo's own API and seed tests, and the episode ends."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo.test import parallel_api_test, parallel_seed_test

from hmarl.envs import make_env
from hmarl.envs.parallel import HmarlParallelEnv, to_parallel_env

ENVS = ["lbf", "lbfws_easy", "lbfws_hard", "savethecity", "point_maze"]


@pytest.mark.parametrize("name", ENVS)
def test_pettingzoo_parallel_api_test(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the test reports missing or extra agents' entries as warnings
        parallel_api_test(to_parallel_env(name, seed=0), num_cycles=1000)


@pytest.mark.parametrize("name", ENVS)
def test_pettingzoo_parallel_seed_test(name):
    parallel_seed_test(lambda: to_parallel_env(name))


def _episode(name: str, seed: int, **options) -> list:
    env = to_parallel_env(name, **options)
    obs, _ = env.reset(seed=seed)
    for i, agent in enumerate(env.possible_agents):
        env.action_space(agent).seed(seed + i)
    trajectory = [obs]
    while env.agents:
        trajectory.append(env.step({a: env.action_space(a).sample() for a in env.agents}))
    return trajectory


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(a, b)


@pytest.mark.parametrize("name", ENVS)
def test_a_seed_fixes_a_whole_episode(name):
    assert _equal(_episode(name, 3, max_steps=30), _episode(name, 3, max_steps=30))
    assert not _equal(_episode(name, 3, max_steps=30), _episode(name, 4, max_steps=30))


def test_spaces_observations_and_state():
    env = to_parallel_env("savethecity", n_agents=2, seed=0)
    hmarl = make_env("savethecity", num_envs=1, n_agents=2, seed=0)
    assert env.possible_agents == ["agent_0", "agent_1"] and env.render_mode is None and env.render() is None
    assert env.observation_space("agent_1") == spaces.Box(-np.inf, np.inf, (hmarl.spec.obs_dim,), np.float32)
    assert env.action_space("agent_0") == spaces.Discrete(12)
    assert env.action_space("agent_0") is not env.action_space("agent_1")  # seeded one by one
    obs, infos = env.reset(seed=5)
    ts = hmarl.reset(seed=5)
    assert obs["agent_1"].dtype == np.float32 and np.array_equal(obs["agent_1"], ts.obs[0, 1].numpy())
    assert np.array_equal(env.state(), ts.state[0].numpy()) and env.state_space.shape == (hmarl.spec.state_dim,)
    assert infos == {"agent_0": {}, "agent_1": {}}
    with pytest.raises(NotImplementedError, match="point_maze has no global state"):
        to_parallel_env("point_maze").state()


def test_the_last_step_returns_the_final_observation_and_ends_every_agent():
    env = to_parallel_env("point_maze", max_steps=2, seed=0)
    hmarl = make_env("point_maze", num_envs=1, max_steps=2, seed=0)
    env.reset(seed=1)
    hmarl.reset(seed=1)
    action = np.array([1.0, 0.5], np.float32)
    obs, rewards, terminated, truncated, _ = env.step({"agent_0": action})
    assert env.agents == ["agent_0"] and truncated == {"agent_0": False}
    obs, rewards, terminated, truncated, _ = env.step({"agent_0": action})
    hmarl.step(torch.from_numpy(action).view(1, 1, 2))
    ts = hmarl.step(torch.from_numpy(action).view(1, 1, 2))
    assert np.array_equal(obs["agent_0"], ts.info["final_obs"][0, 0].numpy())
    assert not np.array_equal(obs["agent_0"], ts.obs[0, 0].numpy())  # hmarl's env has already reset
    assert rewards == {"agent_0": pytest.approx(float(ts.reward[0, 0]))}
    assert (terminated, truncated, env.agents) == ({"agent_0": False}, {"agent_0": True}, [])
    with pytest.raises(ValueError, match="the episode has ended; call reset"):
        env.step({"agent_0": action})


def test_an_agent_that_dies_is_terminated_alone():
    env = to_parallel_env("lbfws_hard", n_agents=2, seed=0)
    env.reset(seed=0)
    food = np.zeros((8, 8), dtype=int)
    food[3, 3] = 2
    env.env.set_state(0, [[0, 0], [7, 7]], [1, 1], food, energy=[1.0, 0.04])  # agent_1 starves this step
    obs, rewards, terminated, truncated, _ = env.step({"agent_0": 0, "agent_1": 0})
    assert terminated == {"agent_0": False, "agent_1": True} and not any(truncated.values())
    assert env.agents == ["agent_0"] and set(obs) == set(rewards) == {"agent_0", "agent_1"}
    obs, *_ = env.step({"agent_0": 1})
    assert set(obs) == {"agent_0"}


@pytest.mark.parametrize("actions, message", [
    ({"agent_0": 0}, r"missing \['agent_1'\]"),
    ({"agent_0": 0, "agent_1": 0, "agent_7": 0}, r"not live \['agent_7'\]"),
    ({"agent_0": 0, "agent_1": 6}, r"agent_1's action 6 is not in Discrete\(6\)"),
])
def test_bad_actions_are_refused_in_one_line(actions, message):
    env = to_parallel_env("lbf", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=message):
        env.step(actions)


def test_bad_construction_is_refused_in_one_line():
    with pytest.raises(ValueError, match="lbf renders rgb_array frames only; render_mode must be None or 'rgb_array'"):
        to_parallel_env("lbf", render_mode="human")
    with pytest.raises(ValueError, match="wraps one copy; lbf has num_envs=2"):
        HmarlParallelEnv(make_env("lbf", num_envs=2))


def test_a_continuous_action_of_the_wrong_shape_is_refused():
    env = to_parallel_env("point_maze")
    env.reset()
    with pytest.raises(ValueError, match=r"point_maze: agent_0's action \[1.0\] is not in Box\(-1.0, 1.0, \(2,\)"):
        env.step({"agent_0": np.array([1.0])})


def test_round_trip_through_the_adapter_gives_the_batched_env_back():
    from hmarl.envs.pettingzoo import ParallelEnvAdapter

    adapted = ParallelEnvAdapter(lambda: to_parallel_env("lbf", n_agents=3), num_envs=1, max_steps=50)
    hmarl = make_env("lbf", num_envs=1, n_agents=3)
    assert (adapted.spec.obs_dim, adapted.spec.action_space, adapted.spec.state_dim) == \
        (hmarl.spec.obs_dim, hmarl.spec.action_space, hmarl.spec.state_dim)
    a, b = adapted.reset(seed=2), hmarl.reset(seed=2)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.state, b.state)
    actions = torch.Generator().manual_seed(0)
    for _ in range(5):  # within the first episode (the two reset differently after it)
        action = torch.randint(0, 6, (1, 3), generator=actions)
        a, b = adapted.step(action), hmarl.step(action)
        assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward) and not b.done.any()
