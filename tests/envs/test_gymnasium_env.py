"""The gymnasium adapter against plain gymnasium envs: shapes, replay, auto-reset, seeding."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from hmarl.envs import ENVS, make_env


def pendulum(**kwargs):
    return make_env("gymnasium", num_envs=3, max_steps=5, env_id="Pendulum-v1", **kwargs)


def random_actions(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 1, 1, generator=g) * 4 - 2 for _ in range(steps)]


def test_shapes_spec_and_obs_slices():
    env = pendulum(obs_slices={"position": [0, 1]})
    spec = env.spec
    assert "gymnasium" in ENVS and spec.name == "Pendulum-v1"
    assert (spec.n_agents, spec.obs_dim, spec.num_envs, spec.max_steps) == (1, 3, 3, 5)
    assert isinstance(spec.action_space, spaces.Box) and spec.action_dim == 1
    assert spec.obs_slices == {"position": slice(0, 2)}
    assert pendulum().spec.obs_slices == {}
    with pytest.raises(ValueError, match=r"Pendulum-v1: obs_slices\['position'\] must be consecutive observation dims"):
        pendulum(obs_slices={"position": [0, 2]})
    ts = env.reset(seed=0)
    assert ts.obs.shape == (3, 1, 3) and ts.obs.dtype == torch.float32
    ts = env.step(random_actions(1)[0])
    assert ts.reward.shape == (3, 1) and ts.reward.dtype == torch.float32
    assert ts.terminated.shape == ts.truncated.shape == (3,) and ts.truncated.dtype == torch.bool
    assert ts.info["final_obs"].shape == (3, 1, 3)


def test_replay_through_resets_equals_plain_gymnasium():
    actions = random_actions(12)
    env = pendulum()
    mine = [env.reset(seed=4).obs]
    for action in actions:
        ts = env.step(action)
        mine.append((ts.info["final_obs"], ts.reward, ts.terminated, ts.truncated, ts.obs))

    refs = [gymnasium.make("Pendulum-v1", max_episode_steps=5) for _ in range(3)]
    first = [ref.reset(seed=4 + i)[0] for i, ref in enumerate(refs)]
    assert np.array_equal(mine[0][:, 0].numpy(), np.stack(first))
    truncations = 0
    for action, got in zip(actions, mine[1:]):
        for i, ref in enumerate(refs):
            obs, reward, terminated, truncated, _ = ref.step(action[i, 0].numpy())
            final, rewards, terms, truncs, after = (x[i] for x in got)
            assert np.array_equal(final[0].numpy(), obs)
            assert rewards.item() == np.float32(reward)
            assert (terms.item(), truncs.item()) == (terminated, truncated)
            if terminated or truncated:
                truncations += 1
                obs, _ = ref.reset()
                assert not np.array_equal(final[0].numpy(), obs)
            assert np.array_equal(after[0].numpy(), obs)
    assert truncations == 3 * 2  # every copy hit the time limit at steps 5 and 10


def test_same_seed_same_trajectory():
    def trajectory(**kwargs):
        env = pendulum(seed=kwargs.pop("factory_seed", None))
        out = [env.reset(**kwargs).obs] + [env.step(a).obs for a in random_actions(7)]
        return torch.stack(out)

    a = trajectory(seed=1)
    assert torch.equal(a, trajectory(seed=1))
    assert torch.equal(a, trajectory(factory_seed=1))  # the factory seed seeds the first reset
    assert not torch.equal(a, trajectory(seed=2))


def test_discrete_actions_and_early_termination():
    env = make_env("gymnasium", num_envs=3, max_steps=100, env_id="CartPole-v1")
    assert env.spec.discrete and env.spec.action_dim == 2
    env.reset(seed=0)
    ended = torch.zeros(3, dtype=torch.bool)
    for _ in range(40):  # always pushing right topples the pole well before 40 steps
        ts = env.step(torch.ones(3, 1, dtype=torch.int64))
        ended |= ts.terminated
        if ts.terminated.any():
            i = ts.terminated.nonzero()[0, 0]
            assert not torch.equal(ts.info["final_obs"][i], ts.obs[i])
            assert ts.obs[i].abs().max() <= 0.05  # CartPole resets near upright
    assert ended.all() and not ts.truncated.any()


def test_more_than_one_agent_is_refused():
    with pytest.raises(ValueError, match="n_agents=1"):
        make_env("gymnasium", num_envs=1, n_agents=2)
