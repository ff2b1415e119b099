"""TD3 batched over the agents of a level: the target by hand, a bandit, warm-up, frozen critics, errors."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms import LEARNERS, td3
from hmarl.learner import UpdateContext
from hmarl.algorithms.td3 import TD3, TD3Config
from hmarl.buffers import Rollout
from tests.toys import Fn, _io, bandit_rollout


def test_registered():
    assert LEARNERS["td3"] is TD3 and TD3.config_class is TD3Config


# -- the critic target ---------------------------------------------------------------------------

def test_critic_target_by_hand():
    gamma = 0.9
    learner = TD3(_io(2, 1, spaces.Box(-2.0, 2.0, (1,))),
                  TD3Config(gamma=gamma, target_noise=0.0, reward_scale=10.0, hidden_sizes=[8]))
    learner.actor_target = Fn(lambda obs: obs)  # pi'(s) = 2 tanh(s)
    # Q1'(s, a) = s + a, Q2'(s, a) = 2s - a: the two heads of the stacked target critics
    learner.critics_target = Fn(lambda x: torch.stack([x[..., :1] + x[..., 1:], 2 * x[..., :1] - x[..., 1:]]))

    T, B, N = 2, 2, 2
    obs = torch.arange(T * B * N, dtype=torch.float).view(T, B, N, 1) / 10
    reward = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    terminated = torch.tensor([[False, True], [False, False]])  # copy 1 terminates at t=0
    done = torch.tensor([[True, True], [False, False]])  # copy 0 is truncated at t=0
    final_obs = torch.full((T, B, N, 1), 99.0)
    final_obs[0, 0] = torch.tensor([[-0.5], [0.7]])  # truncated: bootstrap from here
    final_obs[0, 1] = torch.tensor([[0.3], [0.4]])  # terminal: not bootstrapped
    last_obs = torch.tensor([[[0.25], [-0.25]], [[1.5], [-1.0]]])
    rollout = Rollout(obs=obs, action=torch.zeros(T, B, N, 1), log_prob=torch.zeros(T, B, N),
                      reward=reward, terminated=terminated, done=done, final_obs=final_obs,
                      last_obs=last_obs)

    batch = learner.transitions(rollout, None)
    assert batch["obs"].shape == (T * B, N, 1) and batch["action"].shape == (T * B, N, 1)
    assert batch["reward"].shape == (T * B, N) and batch["terminated"].shape == (T * B, 1)
    assert batch["terminated"].dtype == torch.float32
    torch.testing.assert_close(batch["reward"], reward.view(T * B, N) * 10.0)

    next_obs = torch.stack([final_obs[0, 0], final_obs[0, 1], last_obs[0], last_obs[1]])[..., 0]  # [4, N]
    not_terminal = torch.tensor([1.0, 0.0, 1.0, 1.0])[:, None]
    a = 2 * torch.tanh(next_obs)
    expected = reward.view(4, N) * 10.0 + gamma * not_terminal * torch.minimum(next_obs + a, 2 * next_obs - a)
    torch.testing.assert_close(learner.critic_target(batch), expected)


def test_target_smoothing_noise_is_clipped_and_actions_stay_in_the_box():
    torch.manual_seed(0)
    learner = TD3(_io(1, 1, spaces.Box(-2.0, 2.0, (1,))),
                  TD3Config(gamma=1.0, target_noise=100.0, target_noise_clip=0.25, hidden_sizes=[8]))
    learner.actor_target = Fn(lambda obs: torch.zeros_like(obs))  # pi'(s) = 0
    learner.critics_target = Fn(lambda x: torch.stack([x[..., 1:], x[..., 1:]]))  # Q1'(s, a) = Q2'(s, a) = a
    m = 2000
    batch = {"reward": torch.zeros(m, 1), "terminated": torch.zeros(m, 1), "next_obs": torch.zeros(m, 1, 1)}
    next_action = learner.critic_target(batch)
    # Huge noise clipped to +-0.25 half-ranges = +-0.5 around pi'(s) = 0.
    assert next_action.abs().max() <= 0.5 + 1e-6
    assert (next_action.abs() > 0.5 - 1e-6).float().mean() > 0.9


# -- learning --------------------------------------------------------------------------------------

def test_td3_solves_continuous_bandit_per_agent():
    torch.manual_seed(0)
    n = 2
    learner = TD3(_io(n, 1, spaces.Box(-1.0, 1.0, (1,))),
                  TD3Config(learning_rate=1e-3, hidden_sizes=[64, 64], share_params=False, random_steps=256,
                            batch_size=128, buffer_size=10_000, updates_per_step=1 / 32))

    def make_obs(b, n):
        target = torch.rand(b, n, 1) * 1.6 - 0.8  # each agent sees its own target
        return target, target

    def reward_fn(action, target):
        return -(action - target).pow(2).sum(-1)

    for i in range(50):  # 50 * T * B / 32 = 400 gradient steps
        rollout = bandit_rollout(learner, make_obs, reward_fn, T=8, B=32, n=n)
        assert rollout.log_prob.shape == (8, 32, n) and not rollout.log_prob.any()
        assert rollout.action.shape == (8, 32, n, 1)
        stats = learner.update(rollout, UpdateContext(i / 50)).metrics
        assert set(stats) == {"q_loss", "actor_loss", "q1"}
        assert all(torch.isfinite(v) for v in stats.values())
    assert learner.gradient_steps == 400

    obs, target = make_obs(1000, n)
    action, _ = learner.act(obs, deterministic=True)
    error = (action - target).abs().mean((0, 2))
    assert (error < 0.1).all(), error


def count_steps(learner: TD3, monkeypatch) -> dict[str, int]:
    """Counts of the learner's critic steps, actor steps and target updates, as they happen."""
    calls = {"actor": 0, "critic": 0, "targets": 0}
    for name, optimizer in (("actor", learner.actor_optimizer), ("critic", learner.critic_optimizer)):
        step = optimizer.step

        def counted(*args, _step=step, _name=name, **kwargs):
            calls[_name] += 1
            return _step(*args, **kwargs)

        optimizer.step = counted
    update = td3.soft_update

    def counted_update(target, source, tau):
        calls["targets"] += target is learner.actor_target  # one of the three per target update
        return update(target, source, tau)

    monkeypatch.setattr(td3, "soft_update", counted_update)
    return calls


def random_rollout(T, B, n, obs_dim=3, act_dim=2, mask=None):
    obs = torch.randn(T, B, n, obs_dim)
    no = torch.zeros(T, B, dtype=torch.bool)
    return Rollout(obs=obs, action=torch.rand(T, B, n, act_dim) * 2 - 1, log_prob=torch.zeros(T, B, n),
                   reward=torch.randn(T, B, n), terminated=no, done=no.clone(), final_obs=obs.clone(),
                   last_obs=torch.randn(B, n, obs_dim), mask=mask)


def test_update_schedule_is_per_env_step_of_each_copy(monkeypatch):
    """HRL-CG Section 6.2 (worker): the critic learns every env step, the actor and the target
    networks every 2. A rollout of T = 4 steps of B = 3 copies is 12 env steps: with
    updates_per_step u = 3 that is u * T * B = 36 critic steps and 18 actor and target steps
    (not one per vector step: T * u = 12 critic steps, 6 actor steps)."""
    torch.manual_seed(0)
    learner = TD3(_io(2, 3, spaces.Box(-1.0, 1.0, (2,))),
                  TD3Config(batch_size=20, updates_per_step=3, policy_delay=2, hidden_sizes=[8]))
    calls = count_steps(learner, monkeypatch)
    T, B, n = 4, 3, 2
    assert learner.update(random_rollout(T, B, n), UpdateContext(0.0)).metrics == {} and len(learner.replay) == 12
    assert calls == {"actor": 0, "critic": 0, "targets": 0}
    stats = learner.update(random_rollout(T, B, n), UpdateContext(0.1)).metrics
    assert len(learner.replay) == 24 and calls == {"actor": 18, "critic": 36, "targets": 18}
    assert learner.gradient_steps == 36
    assert stats["q_loss"].dim() == 0 and stats["actor_loss"].dim() == 0
    learner.config.updates_per_step = 0.5  # a multiplier of the same schedule
    learner.update(random_rollout(T, B, n), UpdateContext(0.2))
    assert calls == {"actor": 21, "critic": 42, "targets": 21}


# -- acting ----------------------------------------------------------------------------------------

def test_warm_up_is_uniform_in_the_box_and_ignores_the_actor():
    torch.manual_seed(0)
    space = spaces.Box(low=torch.tensor([0.0, -3.0]).numpy(), high=torch.tensor([1.0, 3.0]).numpy())
    b, n = 500, 2
    learner = TD3(_io(n, 4, space), TD3Config(random_steps=3 * b, exploration_noise=0.1, hidden_sizes=[8]))
    with torch.no_grad():  # the actor says: the top corner of the box, always
        learner.actor.biases[-1].fill_(50.0)
        learner.actor.weights[-1].zero_()
    corner = torch.tensor([1.0, 3.0])
    obs = torch.randn(b, n, 4)
    torch.testing.assert_close(learner.policy(obs), corner.expand(b, n, 2))

    actions = torch.cat([learner.act(obs)[0] for _ in range(3)])  # 3 calls of b env steps
    assert learner.acted == 3 * b and not learner.warming_up
    assert actions.shape == (3 * b, n, 2)
    low, high = torch.tensor([0.0, -3.0]), torch.tensor([1.0, 3.0])
    assert ((actions >= low) & (actions <= high)).all()
    flat = actions.reshape(-1, 2)
    torch.testing.assert_close(flat.mean(0), (low + high) / 2, atol=0.05 * (high - low).max(), rtol=0)
    torch.testing.assert_close(flat.std(0), (high - low) / 12 ** 0.5, atol=0.03 * (high - low).max(), rtol=0)

    # Warm-up over: the actor, plus noise of 0.1 half-range, clipped to the box.
    action, log_prob = learner.act(obs)
    assert log_prob.shape == (b, n)
    assert ((action >= low) & (action <= high)).all()
    assert ((corner - action).abs() <= 4 * 0.1 * (high - low) / 2).all()
    assert (action < corner).float().mean() > 0.4  # noise moved about half of them inside the box


def test_warm_up_counts_env_steps_at_every_level():
    """HRL-CG Section 6.2: "initial purely random exploration for the first 10,000 time steps",
    for both controllers. A step of a level with stride k (a manager deciding every k env steps)
    is k env steps of each copy, whatever the number of agents: with k = 10, B = 4 copies and
    N = 3 agents, random_steps = 400 lasts 400 / (10 * 4) = 10 decisions (not 400 / (4 * 3))."""
    learner = TD3(_io(3, 2, spaces.Box(-1.0, 1.0, (1,))), TD3Config(random_steps=400, hidden_sizes=[8]))
    learner.stride = 10
    obs = torch.randn(4, 3, 2)
    for _ in range(9):
        learner.act(obs)
    assert learner.acted == 360 and learner.warming_up
    learner.act(obs)
    assert learner.acted == 400 and not learner.warming_up


def test_deterministic_act_is_the_actor_even_in_warm_up():
    learner = TD3(_io(3, 2, spaces.Box(-1.0, 1.0, (1,))), TD3Config(hidden_sizes=[8]))
    obs = torch.randn(7, 3, 2)
    action, _ = learner.act(obs, deterministic=True)
    torch.testing.assert_close(action, learner.policy(obs))
    assert learner.acted == 0 and learner.warming_up


# -- gradients -------------------------------------------------------------------------------------

def test_actor_step_moves_only_the_actor():
    torch.manual_seed(0)
    learner = TD3(_io(2, 3, spaces.Box(-1.0, 1.0, (2,))),
                  TD3Config(batch_size=8, policy_delay=1, hidden_sizes=[16]))
    critic = list(learner.critics.parameters())
    seen = {}
    critic_step, actor_step = learner.critic_optimizer.step, learner.actor_optimizer.step

    def after_critic_step(*args, **kwargs):
        out = critic_step(*args, **kwargs)
        seen["critic"] = [p.detach().clone() for p in critic]
        seen["critic_grads"] = [p.grad.clone() for p in critic]
        seen["actor"] = [p.detach().clone() for p in learner.actor.parameters()]
        return out

    def check_actor_step(*args, **kwargs):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.actor.parameters())
        out = actor_step(*args, **kwargs)
        seen["checked"] = True
        for p, before, grad in zip(critic, seen["critic"], seen["critic_grads"], strict=True):
            assert torch.equal(p, before)  # the actor step left the critics alone
            assert torch.equal(p.grad, grad)  # and sent them no gradient
        assert any(not torch.equal(p, before) for p, before in zip(learner.actor.parameters(), seen["actor"]))
        return out

    learner.critic_optimizer.step = after_critic_step
    learner.actor_optimizer.step = check_actor_step
    T, B, n = 1, 8, 2
    obs = torch.randn(T, B, n, 3)
    no = torch.zeros(T, B, dtype=torch.bool)
    learner.update(Rollout(obs=obs, action=torch.rand(T, B, n, 2), log_prob=torch.zeros(T, B, n),
                           reward=torch.randn(T, B, n), terminated=no, done=no, final_obs=obs,
                           last_obs=torch.randn(B, n, 3)), UpdateContext(0.0))
    assert seen.get("checked")
    assert all(p.requires_grad for p in critic)  # unfrozen again for the next critic step
    assert not any(p.requires_grad for p in learner.actor_target.parameters())


def test_policy_and_q_value_are_differentiable_and_batched():
    learner = TD3(_io(3, 4, spaces.Box(-2.0, 2.0, (2,))), TD3Config(hidden_sizes=[8], share_params=False))
    obs = torch.randn(5, 6, 3, 4, requires_grad=True)
    action = learner.policy(obs)
    assert action.shape == (5, 6, 3, 2) and action.abs().max() <= 2.0
    q = learner.q_value(obs, action)
    assert q.shape == (5, 6, 3)
    q.sum().backward()
    assert obs.grad is not None and obs.grad.abs().sum() > 0


def test_counters_survive_state_dict():
    config = TD3Config(hidden_sizes=[8], batch_size=4)
    learner = TD3(_io(2, 3, spaces.Box(-1.0, 1.0, (1,))), config)
    learner.act(torch.randn(5, 2, 3))
    learner.update(random_rollout(2, 3, 2, act_dim=1), UpdateContext(0.0))
    learner.gradient_steps = 7
    other = TD3(_io(2, 3, spaces.Box(-1.0, 1.0, (1,))), config)
    other.load_state_dict(learner.state_dict())
    assert (other.acted, other.gradient_steps, other.env_steps, len(other.replay)) == (5, 7, 6, 6)
    assert other.optimizers() == [other.actor_optimizer, other.critic_optimizer]


# -- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("tau", 0.0, "tau"), ("gamma", 1.5, "gamma"), ("learning_rate", 0.0, "learning_rate"),
    ("policy_delay", 0, "policy_delay"), ("batch_size", 300_000, "buffer_size"),
    ("target_noise", -0.1, "target_noise"), ("random_steps", -1, "random_steps"),
    ("hidden_sizes", [], "hidden_sizes"), ("reward_scale", 0.0, "reward_scale")])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        TD3Config(**{field: value})


def test_discrete_or_unbounded_space_is_refused():
    with pytest.raises(ValueError, match="dqn"):
        TD3(_io(2, 3, spaces.Discrete(4)), TD3Config())
    with pytest.raises(ValueError, match="bounded"):
        TD3(_io(2, 3, spaces.Box(-float("inf"), float("inf"), (2,))), TD3Config())


# -- masks -----------------------------------------------------------------------------------------

def test_masked_transitions_stay_out_of_the_replay_and_the_losses():
    """TD3 (Fujimoto et al. 2018, Eq. 10 and the DPG actor step) over the transitions that count:
    L_Q = mean over (row, agent) with mask 1 of sum_j huber(Q_j(s, a) - y). With Q = 0 and a
    zero target critic, y = r, so L_Q = mean 2 huber(r) over the counting transitions: a row
    where no agent counts is not stored, a masked agent's reward (here 1e6) weighs nothing."""
    T, B, n = 2, 2, 2
    rollout = random_rollout(T, B, n, act_dim=1)
    rollout.reward = torch.tensor([[[0.5, 2.0], [1e6, 1e6]], [[-3.0, 1e6], [0.25, -0.5]]])
    rollout.mask = torch.tensor([[[True, True], [False, False]], [[True, False], [True, True]]])
    learner = TD3(_io(n, 3, spaces.Box(-1.0, 1.0, (1,))), TD3Config(batch_size=3, hidden_sizes=[8]))
    learner.store(learner.transitions(rollout), rollout.mask.flatten(0, 1))
    assert len(learner.replay) == 3  # the row of copy 1 at t = 0 is left out
    batch = learner.replay.state_dict()["data"]
    assert batch["reward"].tolist() == [[0.5, 2.0], [-3.0, 1e6], [0.25, -0.5]]
    assert batch["weight"].tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]

    zero = Fn(lambda x: torch.stack([x[..., :1] * 0, x[..., :1] * 0]))  # both heads: Q = 0
    learner.critics = learner.critics_target = zero
    counting = torch.tensor([0.5, 2.0, -3.0, 0.25, -0.5])
    huber = torch.where(counting.abs() < 1, 0.5 * counting ** 2, counting.abs() - 0.5)
    q_loss, _ = learner.critic_loss(batch)
    torch.testing.assert_close(q_loss, 2 * huber.mean())


def test_without_a_mask_every_transition_counts():
    """The same insertion with ``mask = None``: every row is stored with weight 1, and the loss
    is the plain mean of sum_j huber(Q_j(s, a) - y) (TD3 as in CleanRL)."""
    learner = TD3(_io(2, 3, spaces.Box(-1.0, 1.0, (1,))),
                  TD3Config(batch_size=3, target_noise=0.0, hidden_sizes=[8]))
    learner.update(random_rollout(2, 2, 2, act_dim=1), UpdateContext(0.0))
    assert len(learner.replay) == 4 and bool((learner.replay.state_dict()["data"]["weight"] == 1).all())
    batch = learner.replay.state_dict()["data"]
    inputs = torch.cat([batch["obs"], batch["action"]], -1)
    q1, q2 = learner.critics(inputs).squeeze(-1)
    y = learner.critic_target(batch)
    expected = torch.nn.functional.smooth_l1_loss(q1, y) + torch.nn.functional.smooth_l1_loss(q2, y)
    torch.testing.assert_close(learner.critic_loss(batch)[0], expected)
