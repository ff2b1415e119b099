"""The VMAS adapter against VMAS itself: shapes, replays, auto-reset, seeding."""
from __future__ import annotations

import pytest
import torch
import vmas
from gymnasium import spaces

from hmarl.envs import ENVS, make_env


def random_actions(env, steps, seed):
    g = torch.Generator().manual_seed(seed)
    b, n = env.spec.num_envs, env.spec.n_agents
    if env.spec.discrete:
        return [torch.randint(0, env.spec.action_dim, (b, n), generator=g) for _ in range(steps)]
    return [torch.rand(b, n, env.spec.action_dim, generator=g) * 2 - 1 for _ in range(steps)]


@pytest.mark.parametrize("name, obs_dim", [("vmas_balance", 16), ("vmas_simple_spread", 18),
                                           ("vmas_sampling", None), ("vmas_navigation", None)])
@pytest.mark.parametrize("continuous", [False, True])
def test_shapes_and_spaces(name, obs_dim, continuous):
    env = make_env(name, num_envs=3, n_agents=4, max_steps=10, continuous_actions=continuous)
    spec = env.spec
    assert spec.n_agents == 4 and spec.num_envs == 3 and spec.name == name
    assert isinstance(spec.action_space, spaces.Box if continuous else spaces.Discrete)
    if not continuous:
        assert spec.action_space.n == 9
    ts = env.reset(seed=0)
    assert ts.obs.shape == (3, 4, spec.obs_dim) and (obs_dim is None or spec.obs_dim == obs_dim)
    ts = env.step(random_actions(env, 1, 0)[0])
    assert ts.reward.shape == (3, 4) and ts.terminated.dtype == torch.bool
    assert ts.info["positions"].shape == (3, 4, 2)


def reference_rollout(scenario, actions, continuous, seed=3):
    """VMAS's own step, with finished copies reset the way the adapter does."""
    ref = vmas.make_env(scenario, num_envs=4, n_agents=4, max_steps=30, seed=seed,
                        continuous_actions=continuous, terminated_truncated=True)
    out = [torch.stack(ref.reset(seed=seed), 1)]
    for action in actions:
        obs, rew, terminated, truncated, _ = ref.step(list(action.unbind(1)))
        done = terminated | truncated
        final = torch.stack(obs, 1)
        if done.all():
            obs = ref.reset()
        else:
            for index in done.nonzero().squeeze(-1).tolist():
                ref.reset_at(index, return_observations=False)
            obs = ref.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                        get_dones=False)[0]
        out.append((final, torch.stack(rew, 1), terminated, truncated, torch.stack(obs, 1)))
    return out


@pytest.mark.parametrize("name", ["vmas_balance", "vmas_simple_spread", "vmas_sampling", "vmas_navigation"])
@pytest.mark.parametrize("continuous", [False, True])
def test_replay_through_resets_equals_vmas(name, continuous):
    ours = make_env(name, num_envs=4, n_agents=4, max_steps=30, seed=3, continuous_actions=continuous)
    assert ours._forces is not None  # the batched path is the one under test
    actions = random_actions(ours, 70, 1)
    mine = [ours.reset(seed=3).obs]
    for action in actions:  # ours first, then the reference: VMAS keeps one random stream
        ts = ours.step(action)
        mine.append((ts.info["final_obs"], ts.reward, ts.terminated, ts.truncated, ts.obs))
    reference = reference_rollout(name.removeprefix("vmas_"), actions, continuous)
    assert torch.equal(mine[0], reference[0])
    for got, expected in zip(mine[1:], reference[1:]):
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-6), name


def test_all_copies_truncate_and_reset_together():
    env = make_env("vmas_simple_spread", num_envs=3, n_agents=3, max_steps=5)
    env.reset(seed=0)
    for actions in random_actions(env, 5, 0):
        ts = env.step(actions)
    assert ts.truncated.all() and not ts.terminated.any()
    assert not torch.equal(ts.info["final_obs"], ts.obs)
    assert torch.equal(env._env.steps, torch.zeros(3))


def test_only_finished_copies_reset():
    env = make_env("vmas_simple_spread", num_envs=3, n_agents=3, max_steps=5)
    env.reset(seed=0)
    env.step(random_actions(env, 1, 0)[0])
    env._env.steps[1] = 4  # copy 1 reaches its time limit on the next step
    ts = env.step(random_actions(env, 1, 1)[0])
    assert ts.truncated.tolist() == [False, True, False]
    assert env._env.steps.tolist() == [2, 0, 2]
    final, obs = ts.info["final_obs"], ts.obs
    assert torch.equal(final[[0, 2]], obs[[0, 2]]) and not torch.equal(final[1], obs[1])


def test_same_seed_same_trajectory():
    def trajectory(seed):
        env = make_env("vmas_balance", num_envs=2, n_agents=4, max_steps=100, seed=seed)
        out = [env.reset(seed=seed).obs]
        out += [env.step(a).obs for a in random_actions(env, 10, 5)]
        return torch.stack(out)

    assert torch.equal(trajectory(1), trajectory(1))
    assert not torch.equal(trajectory(1), trajectory(2))


def test_continuous_actions_are_clamped_to_the_box():
    def after(action_value):
        env = make_env("vmas_navigation", num_envs=2, n_agents=2, max_steps=10, continuous_actions=True, seed=0)
        env.reset(seed=0)
        return env.step(torch.full((2, 2, 2), action_value)).obs

    assert torch.equal(after(5.0), after(1.0))  # 1.0 is the box's bound
    assert not torch.equal(after(0.5), after(1.0))


def test_registry_lists_names_on_unknown_env():
    with pytest.raises(KeyError, match="available: .*vmas_balance"):
        make_env("vmas_nope", num_envs=1)
    assert {"vmas_balance", "vmas_simple_spread", "vmas_sampling", "vmas_navigation",
            "mpe_simple_spread"} <= set(ENVS)


def test_the_position_slice_is_the_agents_positions():
    for name in ("vmas_balance", "vmas_simple_spread", "vmas_sampling", "vmas_navigation"):
        env = make_env(name, num_envs=2, n_agents=4, max_steps=10)
        goal = env.spec.obs_slices["position"]
        ts = env.reset(seed=0)
        for actions in random_actions(env, 3, 0):
            ts = env.step(actions)
        assert torch.equal(ts.obs[..., goal], ts.info["positions"]), name
