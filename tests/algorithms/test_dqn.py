"""Double DQN batched over the agents of a level: the target by hand, a bandit, epsilon, errors."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms import LEARNERS
from hmarl.learner import UpdateContext
from hmarl.algorithms.dqn import DQN, DQNConfig
from hmarl.buffers import Rollout
from tests.toys import Fn, _io, bandit_rollout


def test_registered():
    assert LEARNERS["dqn"] is DQN and DQN.config_class is DQNConfig


# -- the target ----------------------------------------------------------------------------------

def test_double_dqn_target_by_hand():
    gamma = 0.5
    learner = DQN(_io(2, 3, spaces.Discrete(3)), DQNConfig(gamma=gamma, reward_scale=2.0, hidden_sizes=[8]))
    # Online Q(s) = s (obs_dim = K = 3): it picks argmax s. Target Q'(s) = 10 - 3 s: it would pick argmin s.
    learner.q_network = Fn(lambda obs: obs)
    learner.target_network = Fn(lambda obs: 10 - 3 * obs)

    T, B, N = 1, 3, 2
    obs = torch.zeros(T, B, N, 3)
    next_obs = torch.tensor([[[0.0, 2.0, 1.0], [5.0, 4.0, 3.0]],
                             [[1.0, 0.0, 0.5], [0.0, 0.0, 9.0]],
                             [[3.0, 3.5, 4.0], [2.0, 1.0, 0.0]]]).unsqueeze(0)
    reward = torch.tensor([[[1.0, -1.0], [0.5, 0.0], [2.0, 3.0]]])
    terminated = torch.tensor([[False, True, False]])
    done = torch.tensor([[False, True, True]])  # copy 2 is truncated: bootstrap from its final obs
    final_obs = torch.full((T, B, N, 3), 99.0)
    final_obs[0, 1] = next_obs[0, 1]
    final_obs[0, 2] = next_obs[0, 2]
    last_obs = next_obs[0].clone()
    last_obs[1:] = -7.0  # copies 1, 2 were reset: what they see now is not their next obs
    rollout = Rollout(obs=obs, action=torch.zeros(T, B, N, dtype=torch.long), log_prob=torch.zeros(T, B, N),
                      reward=reward, terminated=terminated, done=done, final_obs=final_obs, last_obs=last_obs)

    batch = learner.transitions(rollout, None)
    assert batch["action"].shape == (B, N) and batch["action"].dtype == torch.long
    torch.testing.assert_close(batch["next_obs"], next_obs[0])

    # Online argmax per (copy, agent): [[1, 0], [0, 2], [2, 0]]; target value 10 - 3 * s at that index.
    picked = torch.tensor([[2.0, 5.0], [1.0, 9.0], [4.0, 2.0]])
    not_terminal = torch.tensor([[1.0], [0.0], [1.0]])
    expected = 2.0 * reward[0] + gamma * not_terminal * (10 - 3 * picked)
    torch.testing.assert_close(learner.td_target(batch), expected)


# -- exploration ---------------------------------------------------------------------------------

def test_epsilon_schedule_and_act():
    torch.manual_seed(0)
    learner = DQN(_io(2, 4, spaces.Discrete(5)), DQNConfig(hidden_sizes=[8]))  # 1.0 -> 0.05 over half
    assert learner.epsilon(0.0) == pytest.approx(1.0)
    assert learner.epsilon(0.25) == pytest.approx(1.0 - 0.95 * 0.5)
    assert learner.epsilon(1.0) == pytest.approx(0.05)
    assert learner.epsilon() == pytest.approx(1.0)  # no update yet: progress 0

    obs = torch.randn(4000, 2, 4)
    greedy, log_prob = learner.act(obs, deterministic=True)
    assert greedy.shape == (4000, 2) and greedy.dtype == torch.long and log_prob.shape == (4000, 2)
    torch.testing.assert_close(greedy, learner.q_values(obs).argmax(-1))
    action, _ = learner.act(obs)  # epsilon 1: uniform
    counts = torch.bincount(action.flatten(), minlength=5).float() / action.numel()
    assert (counts - 0.2).abs().max() < 0.02

    T, B = 2, 4  # act follows the progress of the latest update
    no = torch.zeros(T, B, dtype=torch.bool)
    learner.update(Rollout(obs=torch.randn(T, B, 2, 4), action=torch.zeros(T, B, 2, dtype=torch.long),
                           log_prob=torch.zeros(T, B, 2), reward=torch.zeros(T, B, 2), terminated=no,
                           done=no, final_obs=torch.zeros(T, B, 2, 4), last_obs=torch.zeros(B, 2, 4)), UpdateContext(0.75))
    assert learner.epsilon() == pytest.approx(0.05)
    action, _ = learner.act(obs)
    assert (action != greedy).float().mean() == pytest.approx(0.05 * 0.8, abs=0.015)


def test_epsilon_over_env_steps():
    """With exploration_steps (EPyMARL's epsilon_anneal_time) epsilon decays linearly over the env
    steps stored, all copies together, whatever the share of training: 1 -> 0.05 over 40 steps."""
    learner = DQN(_io(2, 4, spaces.Discrete(5)), DQNConfig(hidden_sizes=[8], exploration_steps=40, learning_starts=10**6))
    T, B = 2, 5  # 10 env steps per rollout
    no = torch.zeros(T, B, dtype=torch.bool)
    rollout = Rollout(obs=torch.randn(T, B, 2, 4), action=torch.zeros(T, B, 2, dtype=torch.long),
                      log_prob=torch.zeros(T, B, 2), reward=torch.zeros(T, B, 2), terminated=no, done=no,
                      final_obs=torch.zeros(T, B, 2, 4), last_obs=torch.zeros(B, 2, 4))
    epsilons = []
    for _ in range(5):
        learner.update(rollout, UpdateContext(0.99))
        epsilons.append(learner.epsilon(0.0))  # progress ignored
    assert epsilons == pytest.approx([1.0 - 0.95 * s / 40 for s in (10, 20, 30)] + [0.05, 0.05])


# -- learning ------------------------------------------------------------------------------------

def test_dqn_solves_contextual_bandit_for_each_agent():
    torch.manual_seed(0)
    n, k = 2, 4
    shift = torch.arange(n)  # agent i is paid for (target + i) % k: independent networks must differ
    learner = DQN(_io(n, k, spaces.Discrete(k)),
                  DQNConfig(learning_rate=1e-3, hidden_sizes=[64], share_params=False, learning_starts=128,
                            batch_size=64, target_network_frequency=50, exploration_fraction=0.5,
                            updates_per_step=1 / 16))

    def make_obs(b, n):
        target = torch.randint(0, k, (b, n))
        return torch.nn.functional.one_hot(target, k).float(), target

    iterations, T, B = 40, 8, 16
    for i in range(iterations):  # T * B / 16 = 8 gradient steps each: 320
        rollout = bandit_rollout(learner, make_obs, lambda a, target: (a == (target + shift) % k).float(), T, B, n)
        stats = learner.update(rollout, UpdateContext(i / iterations)).metrics
        if i == 0:  # 8 * 16 = 128 env steps: learning starts with the first update
            assert set(stats) == {"q_loss", "q", "epsilon"}
        assert all(torch.isfinite(v) for v in stats.values())

    obs, target = make_obs(1000, n)
    action, _ = learner.act(obs, deterministic=True)
    accuracy = (action == (target + shift) % k).float().mean(0)
    assert (accuracy > 0.9).all(), accuracy


def test_learning_starts_and_target_updates():
    """The double-DQN schedule per env step of each copy (as TD3's, HRL-CG Section 6.2): a rollout
    of T = 3 steps of B = 4 copies is 12 env steps, so updates_per_step 0.5 gives 6 gradient
    steps; learning starts once learning_starts = 20 env steps are stored (agents do not count:
    2 agents x 12 env steps would pass 20 in the first rollout)."""
    torch.manual_seed(0)
    learner = DQN(_io(2, 3, spaces.Discrete(2)),
                  DQNConfig(batch_size=4, learning_starts=20, updates_per_step=0.5, target_network_frequency=5,
                            hidden_sizes=[8]))
    T, B = 3, 4

    def rollout():
        obs = torch.randn(T, B, 2, 3)
        no = torch.zeros(T, B, dtype=torch.bool)
        return Rollout(obs=obs, action=torch.randint(0, 2, (T, B, 2)), log_prob=torch.zeros(T, B, 2),
                       reward=torch.randn(T, B, 2), terminated=no, done=no, final_obs=obs,
                       last_obs=torch.randn(B, 2, 3))

    assert learner.update(rollout(), UpdateContext(0.0)).metrics == {}  # 12 env steps < 20
    assert learner.gradient_steps == 0 and learner.env_steps == 12
    stats = learner.update(rollout(), UpdateContext(0.1)).metrics  # 24 >= 20: T * B * 0.5 = 6 gradient steps
    assert learner.gradient_steps == 6 and stats["q_loss"].dim() == 0
    # A hard target copy happened at step 5; step 6 moved the online network again.
    online = list(learner.q_network.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(online, learner.target_network.parameters()))
    assert not any(p.requires_grad for p in learner.target_network.parameters())
    learner.update(rollout(), UpdateContext(0.2))  # steps 7..12: copy at 10, then 11, 12
    learner.config.learning_rate = 0.0
    for group in learner.optimizer.param_groups:
        group["lr"] = 0.0
    learner.update(rollout(), UpdateContext(0.3))  # steps 13..18 with no movement; copy at 15
    assert all(torch.equal(a, b) for a, b in zip(online, learner.target_network.parameters()))


def test_masked_transitions_stay_out_of_the_replay_and_the_loss():
    """Double DQN's loss L = mean huber(Q(s, a) - y) over the (row, agent) pairs whose transition
    counts. With Q = 0 and a zero target network y = r: L is the mean huber(r) of the counting
    transitions; a row where no agent counts is not stored, a masked reward (1e6) weighs nothing."""
    T, B, n = 2, 2, 2
    obs = torch.randn(T, B, n, 3)
    no = torch.zeros(T, B, dtype=torch.bool)
    rollout = Rollout(obs=obs, action=torch.zeros(T, B, n, dtype=torch.long), log_prob=torch.zeros(T, B, n),
                      reward=torch.tensor([[[0.5, 2.0], [1e6, 1e6]], [[-3.0, 1e6], [0.25, -0.5]]]),
                      terminated=no, done=no, final_obs=obs, last_obs=torch.randn(B, n, 3),
                      mask=torch.tensor([[[True, True], [False, False]], [[True, False], [True, True]]]))
    learner = DQN(_io(n, 3, spaces.Discrete(2)), DQNConfig(batch_size=3, learning_starts=0, hidden_sizes=[8]))
    learner.update(rollout, UpdateContext(0.0))
    assert len(learner.replay) == 3 and learner.env_steps == 4  # masked steps are still env steps
    batch = learner.replay.state_dict()["data"]
    assert batch["weight"].tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    learner.q_network = learner.target_network = Fn(lambda x: x[..., :2] * 0)
    counting = torch.tensor([0.5, 2.0, -3.0, 0.25, -0.5])
    huber = torch.where(counting.abs() < 1, 0.5 * counting ** 2, counting.abs() - 0.5)
    torch.testing.assert_close(learner.loss(batch)[0], huber.mean())


def test_q_values_differentiable_and_batched():
    learner = DQN(_io(3, 4, spaces.Discrete(6)), DQNConfig(hidden_sizes=[8], share_params=False))
    obs = torch.randn(5, 7, 3, 4, requires_grad=True)
    q = learner.q_values(obs)
    assert q.shape == (5, 7, 3, 6)
    (q.softmax(-1) * q).sum().backward()
    assert obs.grad.abs().sum() > 0


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("tau", 1.5, "tau"), ("gamma", -0.1, "gamma"), ("end_e", 2.0, "end_e"),
    ("exploration_fraction", 1.5, "exploration_fraction"), ("target_network_frequency", 0, "frequency"),
    ("batch_size", 200_000, "buffer_size"), ("learning_starts", -1, "learning_starts"),
    ("exploration_steps", -1, "exploration_steps")])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        DQNConfig(**{field: value})


def test_box_space_is_refused():
    with pytest.raises(ValueError, match="td3"):
        DQN(_io(2, 3, spaces.Box(-1.0, 1.0, (2,))), DQNConfig())
    with pytest.raises(ValueError, match="Discrete"):
        DQN(_io(2, 3, spaces.MultiDiscrete([2, 2])), DQNConfig())


def test_fractional_updates_per_step():
    assert DQNConfig(updates_per_step=0.25).gradient_steps(100) == 25
    assert DQNConfig(updates_per_step=2).gradient_steps(7) == 14


def test_linear_schedule():
    from hmarl.algorithms.offpolicy import linear_schedule

    assert [linear_schedule(1.0, 0.05, 0.2, p) for p in (0.0, 0.1, 0.2, 0.9)] == pytest.approx([1.0, 0.525, 0.05, 0.05])
    assert linear_schedule(1.0, 0.0, 0.0, 0.0) == 0.0  # no anneal: the end value from the start


def test_epsilon_greedy_takes_the_greedy_action_or_a_uniform_one():
    from hmarl.algorithms.offpolicy import epsilon_greedy

    torch.manual_seed(0)
    q = torch.tensor([0.0, 3.0, 1.0]).expand(2000, 3)
    assert torch.equal(epsilon_greedy(q, 0.0), torch.ones(2000, dtype=torch.long))
    counts = torch.bincount(epsilon_greedy(q, 1.0), minlength=3).float() / 2000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.05)
    greedy_share = (epsilon_greedy(q, 0.3) == 1).float().mean()
    assert abs(greedy_share - (0.7 + 0.3 / 3)) < 0.05
