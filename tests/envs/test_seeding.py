"""Seeding of the MPE envs (the torch port and the mpe2 adapter): a seed fixes every episode,
auto-resets included, and copies play different episodes."""
import pytest
import torch

from hmarl.envs import make_env


def trajectory(name: str, seed: int, steps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations ``[steps + 1, 2, 4, obs]`` and rewards of 2 copies under fixed random actions."""
    env = make_env(name, num_envs=2, max_steps=10)
    generator = torch.Generator().manual_seed(123)
    obs, rewards = [env.reset(seed=seed).obs], []
    for _ in range(steps):
        ts = env.step(torch.randint(0, env.spec.action_dim, (2, 4), generator=generator))
        obs.append(ts.obs)
        rewards.append(ts.reward)
    return torch.stack(obs), torch.stack(rewards)


@pytest.mark.parametrize("name", ["mpe_simple_spread", "mpe2_simple_spread"])
def test_same_seed_same_trajectory_across_auto_resets(name):
    obs_a, rew_a = trajectory(name, seed=5)
    obs_b, rew_b = trajectory(name, seed=5)
    obs_c, rew_c = trajectory(name, seed=6)
    assert torch.equal(obs_a, obs_b) and torch.equal(rew_a, rew_b)
    assert not torch.equal(obs_a, obs_c) and not torch.equal(rew_a, rew_c)
    assert not torch.equal(obs_a[:, 0], obs_a[:, 1])  # copies are different episodes
    assert not torch.equal(obs_a[10], obs_a[20])      # each auto-reset starts a new one
