"""PPO / MAPPO batched over the agents of a level: GAE by hand, small learning problems, shapes."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms.onpolicy import log_softmax
from hmarl.algorithms.ppo import MAPPO, MAPPOConfig, PPO, PPOConfig
from hmarl.learner import UpdateContext
from hmarl.buffers import Rollout
from tests.toys import _io, bandit_rollout


# -- GAE ---------------------------------------------------------------------------------------

def test_gae_by_hand(monkeypatch):
    learner = PPO(_io(1, 1, spaces.Discrete(2)), PPOConfig(gamma=0.9, gae_lambda=0.5))
    monkeypatch.setattr(learner, "value", lambda obs: obs[..., 0] * 1.0)  # V(o) = o: [..., N]

    T, B = 3, 2
    # obs[t, b]: copy 0 sees 1, 2, 3; copy 1 sees 10, 20, 30.
    obs = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]).view(T, B, 1, 1)
    reward = torch.tensor([[1.0, 0.5], [0.0, 1.0], [2.0, -1.0]]).view(T, B, 1)
    # Copy 0 terminates at t=1 (obs[2, 0] starts a new episode); copy 1 is truncated at t=0.
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    done = torch.tensor([[False, True], [True, False], [False, False]])
    final_obs = torch.full((T, B, 1, 1), 999.0)  # only read where done
    final_obs[1, 0] = 5.0  # terminal observation: must not be bootstrapped from
    final_obs[0, 1] = 7.0  # truncated: bootstrap from V(7), not V(obs[1, 1]) = 20
    last_obs = torch.tensor([4.0, 40.0]).view(B, 1, 1)
    rollout = Rollout(obs=obs, action=torch.zeros(T, B, 1, dtype=torch.long),
                      log_prob=torch.zeros(T, B, 1), reward=reward, terminated=terminated,
                      done=done, final_obs=final_obs, last_obs=last_obs)

    gamma, gl = 0.9, 0.9 * 0.5
    # Copy 0.
    d00 = 1.0 + gamma * 2.0 - 1.0  # 1.8: next obs is obs[1]
    d10 = 0.0 + 0.0 - 2.0  # -2.0: terminated, no bootstrap
    d20 = 2.0 + gamma * 4.0 - 3.0  # 2.6: last step bootstraps from last_obs
    a20 = d20
    a10 = d10  # done: the recursion restarts
    a00 = d00 + gl * a10  # 0.9
    # Copy 1.
    d01 = 0.5 + gamma * 7.0 - 10.0  # -3.2: truncated, bootstrap from final_obs
    d11 = 1.0 + gamma * 30.0 - 20.0  # 8.0
    d21 = -1.0 + gamma * 40.0 - 30.0  # 5.0
    a21 = d21
    a11 = d11 + gl * a21  # 10.25
    a01 = d01  # done: nothing flows back from t=1
    expected = torch.tensor([[a00, a01], [a10, a11], [a20, a21]]).view(T, B, 1)
    torch.testing.assert_close(expected.view(T, B), torch.tensor([[0.9, -3.2], [-2.0, 10.25], [2.6, 5.0]]))

    advantages, values = learner.advantages(rollout)
    assert advantages.shape == (T, B, 1)
    torch.testing.assert_close(advantages, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(values, obs[..., 0])


def test_gae_per_agent_rewards():
    """Two agents share done flags but not rewards or values; gamma=lambda=1 sums rewards."""
    learner = PPO(_io(2, 1, spaces.Discrete(2)), PPOConfig(gamma=1.0, gae_lambda=1.0))
    learner.value = lambda obs: torch.zeros(obs.shape[:-1])
    T, B = 3, 1
    reward = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]]).view(T, B, 2)
    done = torch.tensor([[False], [True], [False]])
    rollout = Rollout(obs=torch.zeros(T, B, 2, 1), action=torch.zeros(T, B, 2, dtype=torch.long),
                      log_prob=torch.zeros(T, B, 2), reward=reward, terminated=done.clone(), done=done,
                      final_obs=torch.zeros(T, B, 2, 1), last_obs=torch.zeros(B, 2, 1))
    advantages, _ = learner.advantages(rollout)
    torch.testing.assert_close(advantages.view(T, 2), torch.tensor([[3.0, 30.0], [2.0, 20.0], [4.0, 40.0]]))


# -- learning ----------------------------------------------------------------------------------

def test_ppo_solves_contextual_bandit_for_each_agent():
    torch.manual_seed(0)
    n, k = 2, 4
    shift = torch.arange(n)  # agent i is paid for action (target + i) % k: the agents need different maps
    learner = PPO(_io(n, k, spaces.Discrete(k)),
                  PPOConfig(learning_rate=3e-3, anneal_lr=False, ent_coef=0.0))

    def make_obs(b, n):
        target = torch.randint(0, k, (b, n))
        return torch.nn.functional.one_hot(target, k).float(), target

    def reward_fn(action, target):
        return (action == (target + shift) % k).float()

    iterations = 40
    for i in range(iterations):
        rollout = bandit_rollout(learner, make_obs, reward_fn, T=16, B=64, n=n)
        assert rollout.action.shape == (16, 64, n) and rollout.action.dtype == torch.long
        assert rollout.log_prob.shape == (16, 64, n)
        stats = learner.update(rollout, UpdateContext(i / iterations)).metrics
        assert all(torch.isfinite(v) for v in stats.values())

    obs, target = make_obs(1000, n)
    action, _ = learner.act(obs, deterministic=True)
    accuracy = (action == (target + shift) % k).float().mean(0)
    assert (accuracy > 0.9).all(), accuracy


def test_ppo_continuous_regresses_target():
    torch.manual_seed(0)
    learner = PPO(_io(1, 1, spaces.Box(-1.0, 1.0, (1,))),
                  PPOConfig(learning_rate=3e-3, anneal_lr=False, ent_coef=0.0))

    def make_obs(b, n):
        target = torch.rand(b, n, 1) - 0.5
        return target, target

    def reward_fn(action, target):
        return -(action - target).pow(2).sum(-1)

    iterations = 40
    for i in range(iterations):
        rollout = bandit_rollout(learner, make_obs, reward_fn, T=16, B=64, n=1)
        assert rollout.action.shape == (16, 64, 1, 1)
        learner.update(rollout, UpdateContext(i / iterations))

    obs, target = make_obs(1000, 1)
    action, _ = learner.act(obs, deterministic=True)
    error = (action - target).abs().mean().item()
    assert error < 0.1, error
    assert learner.log_std.item() < 0.0  # exploration noise shrank


# -- critic --------------------------------------------------------------------------------------

def test_mappo_value_sees_all_agents_decentralized_does_not():
    torch.manual_seed(0)
    n, d = 3, 2
    mappo = MAPPO(_io(n, d, spaces.Discrete(2)), MAPPOConfig())
    ppo = PPO(_io(n, d, spaces.Discrete(2)), PPOConfig())
    assert mappo.config.centralized_critic and mappo.config.activation == "relu"
    obs = torch.randn(5, n, d)
    other = obs.clone()
    other[:, 1] += 1.0  # change only agent 1's observation

    v = mappo.value(obs)
    assert v.shape == (5, n)
    assert mappo.value(torch.randn(4, 5, n, d)).shape == (4, 5, n)
    v_other = mappo.value(other)
    assert not torch.allclose(v[:, 0], v_other[:, 0])
    assert not torch.allclose(v[:, 2], v_other[:, 2])

    v = ppo.value(obs)
    assert v.shape == (5, n)
    assert ppo.value(torch.randn(4, 5, n, d)).shape == (4, 5, n)
    v_other = ppo.value(other)
    assert torch.equal(v[:, 0], v_other[:, 0]) and torch.equal(v[:, 2], v_other[:, 2])
    assert not torch.allclose(v[:, 1], v_other[:, 1])


# -- target_kl -----------------------------------------------------------------------------------

def _random_rollout(learner, n, d, T=8, B=16) -> Rollout:
    obs = torch.randn(T, B, n, d)
    action, log_prob = learner.act(obs)
    done = torch.rand(T, B) < 0.2
    return Rollout(obs=obs, action=action, log_prob=log_prob, reward=torch.randn(T, B, n),
                   terminated=done, done=done.clone(), final_obs=torch.randn(T, B, n, d),
                   last_obs=torch.randn(B, n, d))


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return sum((p - q).pow(2).sum() for p, q in zip(a.parameters(), b.parameters())).sqrt().item()


def test_target_kl_stops_after_first_epoch():
    torch.manual_seed(0)
    n, d = 2, 3
    kw = dict(learning_rate=3e-3, anneal_lr=False, update_epochs=4, num_minibatches=2)
    init = PPO(_io(n, d, spaces.Discrete(3)), PPOConfig(**kw))
    rollout = _random_rollout(init, n, d)

    def trained(**over):
        learner = PPO(_io(n, d, spaces.Discrete(3)), PPOConfig(**{**kw, **over}))
        learner.load_state_dict(init.state_dict())
        torch.manual_seed(123)  # the same minibatch order in every run
        stats = learner.update(rollout, UpdateContext(0.0)).metrics
        return learner, stats

    free, _ = trained(target_kl=None)
    stopped, stats = trained(target_kl=1e-8)
    one_epoch, _ = trained(target_kl=None, update_epochs=1)
    assert stats["approx_kl"].item() > 1e-8  # so every agent stops after its first epoch
    assert 0 < _distance(stopped, init) < _distance(free, init)
    # Stopping after epoch 1 is exactly one epoch's update.
    for p, q in zip(stopped.parameters(), one_epoch.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# -- action spaces -------------------------------------------------------------------------------

def test_multidiscrete_act_and_log_prob():
    torch.manual_seed(0)
    n, d, B = 2, 3, 50
    learner = PPO(_io(n, d, spaces.MultiDiscrete([3, 3])), PPOConfig())
    with torch.no_grad():  # make the policy far from uniform
        learner.actor.weights[-1].mul_(300.0)
    obs = torch.randn(B, n, d)
    action, log_prob = learner.act(obs)
    assert action.shape == (B, n, 2) and action.dtype == torch.long
    assert log_prob.shape == (B, n)
    assert ((action >= 0) & (action < 3)).all()

    log_p = learner._log_probs(obs).detach()[..., 0, :, :]  # one sample per agent: [B, N, heads, k]
    assert log_p.shape == (B, n, 2, 3)
    expected = torch.empty(B, n)
    for b in range(B):
        for i in range(n):
            expected[b, i] = log_p[b, i, 0, action[b, i, 0]] + log_p[b, i, 1, action[b, i, 1]]
    torch.testing.assert_close(log_prob, expected)
    torch.testing.assert_close(learner.evaluate(obs, action)[0].detach(), expected)
    entropy = learner.evaluate(obs, action)[1].detach()
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum((-1, -2)))

    greedy, greedy_lp = learner.act(obs, deterministic=True)
    assert torch.equal(greedy, log_p.argmax(-1))
    torch.testing.assert_close(greedy_lp, log_p.max(-1).values.sum(-1))

    # Sampling follows the policy: empirical frequencies of one observation's actions.
    one = obs[:1].expand(20000, n, d)
    samples, _ = learner.act(one)
    freq = torch.nn.functional.one_hot(samples, 3).float().mean(0)  # [N, heads, k]
    torch.testing.assert_close(freq, log_p[0].exp(), rtol=0, atol=0.02)


def test_discrete_shapes_and_log_prob():
    torch.manual_seed(0)
    learner = PPO(_io(3, 2, spaces.Discrete(5)), PPOConfig())
    with torch.no_grad():
        learner.actor.weights[-1].mul_(100.0)
    obs = torch.randn(7, 3, 2)
    action, log_prob = learner.act(obs)
    assert action.shape == (7, 3) and action.dtype == torch.long and log_prob.shape == (7, 3)
    log_p = learner._log_probs(obs).detach()[..., 0, :, :]
    assert log_p.shape == (7, 3, 1, 5)
    expected = log_p[..., 0, :].gather(-1, action.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(log_prob, expected)
    torch.testing.assert_close(learner.evaluate(obs, action)[0].detach(), expected)


@pytest.mark.parametrize("share_params", [False, True])
def test_box_log_prob_and_entropy_match_normal(share_params):
    torch.manual_seed(0)
    n, act_dim = 2, 3
    learner = PPO(_io(n, 2, spaces.Box(-1.0, 1.0, (act_dim,))), PPOConfig(share_params=share_params))
    assert learner.log_std.shape == (1 if share_params else n, act_dim)
    with torch.no_grad():
        learner.log_std.copy_(torch.linspace(-1.0, 0.5, learner.log_std.numel()).view_as(learner.log_std))
    obs = torch.randn(7, n, 2)
    action, log_prob = learner.act(obs)
    assert action.shape == (7, n, act_dim) and log_prob.shape == (7, n)
    normal = torch.distributions.Normal(learner.actor(obs).detach(), learner.log_std.exp().detach())
    torch.testing.assert_close(log_prob, normal.log_prob(action).sum(-1))
    greedy, _ = learner.act(obs, deterministic=True)
    torch.testing.assert_close(greedy, normal.mean)
    new_log_prob, entropy = learner.evaluate(obs, action)
    torch.testing.assert_close(new_log_prob.detach(), log_prob)
    torch.testing.assert_close(entropy.detach(), normal.entropy().sum(-1))


# -- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(clip_coef=0.0), dict(learning_rate=0.0), dict(gamma=1.5),
                                 dict(gae_lambda=-0.1), dict(num_minibatches=0), dict(update_epochs=0),
                                 dict(max_grad_norm=0.0), dict(target_kl=0.0)])
def test_invalid_config_raises(bad):
    with pytest.raises(ValueError):
        PPOConfig(**bad)


def test_multidiscrete_unequal_heads_raises():
    with pytest.raises(ValueError, match="one size"):
        PPO(_io(1, 2, spaces.MultiDiscrete([2, 3])), PPOConfig())


@pytest.mark.parametrize("k", [1, 2, 6, 9, 15, 16, 25])
def test_log_softmax_equals_torchs(k):
    """The short-row path gives torch's values and gradients to float32 rounding. They are bitwise
    equal where torch's row kernel and the transposed one add a row in the same order: for every
    k here on an AVX-512 CPU; on an AVX2 one (8 lanes) k = 9 and 15 differ in the last bit or two."""
    g = torch.Generator().manual_seed(k)
    logits = (torch.randn(300, 4, 1, k, generator=g) * 5).requires_grad_()
    weights = torch.randn(300, 4, 1, k, generator=g)
    ours, = torch.autograd.grad((log_softmax(logits) * weights).sum(), logits)
    torch_grad, = torch.autograd.grad((logits.log_softmax(-1) * weights).sum(), logits)
    assert ours.is_contiguous()
    torch.testing.assert_close(log_softmax(logits), logits.log_softmax(-1), rtol=0, atol=4e-6)
    assert log_softmax(logits).is_contiguous()
    torch.testing.assert_close(ours, torch_grad, rtol=0, atol=4e-6)
