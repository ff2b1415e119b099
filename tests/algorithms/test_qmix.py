"""QMIX (Rashid et al. 2018): the mixer by hand, monotonicity, the double-Q target by hand,
masks, a team-reward bandit IQL cannot solve, errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from gymnasium import spaces
from torch import nn

from hmarl.algorithms import LEARNERS
from hmarl.learner import UpdateContext
from hmarl.algorithms.dqn import DQN, DQNConfig
from hmarl.algorithms.qmix import QMIX, QMIXConfig, QMixer
from hmarl.buffers import Rollout
from tests.toys import Fn, _io, bandit_rollout


def test_registered():
    assert LEARNERS["qmix"] is QMIX and QMIX.config_class is QMIXConfig


def set_linear(layer: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


# -- the mixing network --------------------------------------------------------------------------

def test_mixer_by_hand():
    """Section 4, Figure 2: Q_tot = W_2^T ELU(W_1^T Q + b_1) + b_2, W_1 = |h_1(s)|, W_2 = |h_2(s)|,
    b_1 linear in s, b_2 = Linear(ReLU(Linear(s))). N = 2 agents, D = 2, one-layer hypernetworks
    of a 1-d state s = 1:
    h_1(s) = (1, -2, 0.5, 3) -> W_1 = [[1, 2], [0.5, 3]] (row i: agent i); Q = (1, -1)
    W_1^T Q = (1 - 0.5, 2 - 3) = (0.5, -1); + b_1 = (0.5, 0) -> ELU(1, -1) = (1, e^-1 - 1)
    h_2(s) = (-1, 2) -> W_2 = (1, 2): 1 + 2 (e^-1 - 1) = 2 e^-1 - 1
    b_2 = (3, 5) . ReLU(1, -1) + 0.25 = 3.25;  Q_tot = 2 e^-1 + 2.25."""
    mixer = QMixer(n_agents=2, state_dim=1, embed_dim=2, hypernet_layers=1)
    set_linear(mixer.hyper_w1, [[1.0], [-2.0], [0.5], [3.0]], [0.0] * 4)
    set_linear(mixer.hyper_b1, [[0.0], [0.0]], [0.5, 0.0])
    set_linear(mixer.hyper_w2, [[-1.0], [2.0]], [0.0, 0.0])
    set_linear(mixer.hyper_b2[0], [[1.0], [-1.0]], [0.0, 0.0])
    set_linear(mixer.hyper_b2[2], [[3.0, 5.0]], [0.25])
    q_tot = mixer(torch.tensor([1.0, -1.0]), torch.tensor([1.0]))
    assert q_tot.shape == ()
    torch.testing.assert_close(q_tot, torch.tensor(2 * math.exp(-1) + 2.25))


@pytest.mark.parametrize("layers", [1, 2])
def test_mixer_is_monotonic_and_its_argmax_is_the_agents(layers):
    """Eq. 5: dQ_tot/dQ_i >= 0 for every state and utilities (random, untrained mixer whose
    hypernetworks do output negative numbers before the abs); hence Eq. 4: the joint action
    maximising Q_tot is the agents' own argmaxes, checked over all 3^3 joint actions."""
    torch.manual_seed(0)
    n, k, m = 3, 3, 64
    mixer = QMixer(n_agents=n, state_dim=5, embed_dim=8, hypernet_layers=layers, hypernet_embed=16)
    state = torch.randn(m, 5) * 3
    assert (mixer.hyper_w1(state) < 0).any()  # the abs is what makes the weights non-negative
    q = (torch.randn(m, n) * 5).requires_grad_()
    grad, = torch.autograd.grad(mixer(q, state).sum(), q)
    assert (grad >= 0).all() and (grad > 0).any()

    utilities = torch.randn(m, n, k)
    joint = torch.tensor(list(itertools.product(range(k), repeat=n)))  # [27, N]
    chosen = utilities.unsqueeze(1).expand(m, len(joint), n, k).gather(-1, joint.expand(m, -1, -1).unsqueeze(-1))
    values = mixer(chosen.squeeze(-1), state.unsqueeze(1).expand(-1, len(joint), -1))  # [m, 27]
    torch.testing.assert_close(joint[values.argmax(-1)], utilities.argmax(-1))


# -- the target ----------------------------------------------------------------------------------

def test_double_q_target_by_hand():
    """y = r + gamma (1 - d) Q'_tot({Q'_i(o'_i, argmax_u Q_i(o'_i, u))}, s'), r the mean reward
    of the counting agents (Section 4's TD target with EPyMARL's double Q). Online Q(o) = o
    (obs_dim = K = 3) picks argmax o; target Q'(o) = 10 - 3 o; the target mixer is replaced by
    Q'_tot(q, s) = sum q + 0.1 sum s, so each term is visible. gamma = 0.5; agent 1 of row 1 is
    masked: its value and observation enter neither Q'_tot nor the state, its reward (1e6) not r.
      row 0: picks (1, 0) -> Q' = (10 - 6, 10 - 15) = (4, -5); sum s' = 15; r = 0
             y = 0 + 0.5 (-1 + 1.5) = 0.25
      row 1: picks agent 0's 0 -> Q' = 7 (agent 1 masked); sum s' = 1.5; r = 0.5
             y = 0.5 + 0.5 (7 + 0.15) = 4.075
      row 2: terminated, r = (3 + 1) / 2 -> y = 2."""
    learner = QMIX(_io(2, 3, spaces.Discrete(3)), QMIXConfig(gamma=0.5, hidden_sizes=[8]))
    learner.q_network = Fn(lambda obs: obs)
    learner.target_network = Fn(lambda obs: 10 - 3 * obs)

    class SumMixer(nn.Module):
        def forward(self, q, state):
            return q.sum(-1) + 0.1 * state.sum(-1)

    learner.target_mixer = SumMixer()
    next_obs = torch.tensor([[[0.0, 2.0, 1.0], [5.0, 4.0, 3.0]],
                             [[1.0, 0.0, 0.5], [0.0, 0.0, 9.0]],
                             [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]])
    batch = {"obs": torch.zeros(3, 2, 3), "action": torch.zeros(3, 2, dtype=torch.long), "next_obs": next_obs,
             "reward": torch.tensor([[1.0, -1.0], [0.5, 1e6], [3.0, 1.0]]),
             "terminated": torch.tensor([[0.0], [0.0], [1.0]]),
             "weight": torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])}
    torch.testing.assert_close(learner.td_target(batch), torch.tensor([0.25, 4.075, 2.0]))


def test_transitions_bootstrap_from_the_final_observation():
    """The rows QMIX stores are DQN's: a truncated copy's next observation is its final one,
    not the reset's; the team reward is taken at the loss, so the agents' rewards are stored."""
    learner = QMIX(_io(2, 3, spaces.Discrete(2)), QMIXConfig(hidden_sizes=[8], reward_scale=2.0))
    T, B, N = 1, 2, 2
    obs, final_obs = torch.zeros(T, B, N, 3), torch.randn(T, B, N, 3)
    rollout = Rollout(obs=obs, action=torch.zeros(T, B, N, dtype=torch.long), log_prob=torch.zeros(T, B, N),
                      reward=torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), terminated=torch.tensor([[False, False]]),
                      done=torch.tensor([[False, True]]), final_obs=final_obs, last_obs=torch.ones(B, N, 3))
    rows = learner.transitions(rollout)
    torch.testing.assert_close(rows["next_obs"], torch.stack([torch.ones(N, 3), final_obs[0, 1]]))
    torch.testing.assert_close(rows["reward"], torch.tensor([[2.0, 4.0], [6.0, 8.0]]))


# -- masks ---------------------------------------------------------------------------------------

def test_masked_transitions_change_nothing():
    """A masked (agent, step) changes neither the loss nor its gradient, whatever its
    observation, action, next observation and reward; a row where no agent counts is not
    stored (env steps still count), and an empty row in a batch weighs nothing."""
    torch.manual_seed(0)
    n, d, k = 3, 4, 5
    learner = QMIX(_io(n, d, spaces.Discrete(k)), QMIXConfig(hidden_sizes=[16], mixing_embed_dim=8,
                                                            hypernet_embed=8, batch_size=4, learning_starts=0))
    T, B = 2, 3
    mask = torch.tensor([[[True, False, True], [False, False, False], [True, True, True]],
                         [[False, True, False], [True, True, False], [True, True, True]]])
    obs = torch.randn(T, B, n, d)
    no = torch.zeros(T, B, dtype=torch.bool)
    rollout = Rollout(obs=obs, action=torch.randint(0, k, (T, B, n)), log_prob=torch.zeros(T, B, n),
                      reward=torch.randn(T, B, n), terminated=no, done=no, final_obs=obs,
                      last_obs=torch.randn(B, n, d), mask=mask)
    rows = learner.transitions(rollout)
    learner.store(rows, mask.flatten(0, 1))
    assert len(learner.replay) == 5 and learner.env_steps == 6
    batch = learner.replay.state_dict()["data"]

    def loss_and_grads(batch):
        learner.optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.loss(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in learner.params]

    masked = batch["weight"] == 0
    garbage = {**batch,
               "obs": torch.where(masked[..., None], 1e3, batch["obs"]),
               "next_obs": torch.where(masked[..., None], -1e3, batch["next_obs"]),
               "action": torch.where(masked, k - 1 - batch["action"], batch["action"]),
               "reward": torch.where(masked, 1e6, batch["reward"])}
    loss, grads = loss_and_grads(batch)
    loss_garbage, grads_garbage = loss_and_grads(garbage)
    torch.testing.assert_close(loss_garbage, loss)
    for g, h in zip(grads, grads_garbage):
        torch.testing.assert_close(h, g)

    padded = {key: torch.cat([value, value[:1]]) for key, value in batch.items()}  # plus an empty row
    padded["weight"][-1] = 0
    padded["reward"][-1] = 1e6
    torch.testing.assert_close(loss_and_grads(padded)[0], loss)


# -- schedule ------------------------------------------------------------------------------------

def test_targets_follow_together_and_epsilon_counts_env_steps():
    """Agents and mixer are copied to their targets every target_network_frequency gradient
    steps; epsilon decays over exploration_steps env steps (EPyMARL's epsilon_anneal_time)."""
    torch.manual_seed(0)
    learner = QMIX(_io(2, 3, spaces.Discrete(2)),
                   QMIXConfig(hidden_sizes=[8], mixing_embed_dim=4, hypernet_embed=4, batch_size=4,
                              learning_starts=0, updates_per_step=0.5, target_network_frequency=3,
                              exploration_steps=24))
    assert learner.epsilon() == pytest.approx(1.0)
    T, B = 2, 3
    obs = torch.randn(T, B, 2, 3)
    no = torch.zeros(T, B, dtype=torch.bool)
    rollout = Rollout(obs=obs, action=torch.randint(0, 2, (T, B, 2)), log_prob=torch.zeros(T, B, 2),
                      reward=torch.randn(T, B, 2), terminated=no, done=no, final_obs=obs,
                      last_obs=torch.randn(B, 2, 3))
    stats = learner.update(rollout, UpdateContext(0.9)).metrics  # 6 env steps, 3 gradient steps: a copy at step 3
    assert learner.gradient_steps == 3 and set(stats) == {"q_loss", "q_tot", "grad_norm", "epsilon"}
    assert learner.epsilon() == pytest.approx(1.0 - 0.95 * 6 / 24)  # not progress 0.9's
    for target, online in ((learner.target_network, learner.q_network), (learner.target_mixer, learner.mixer)):
        assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))
        assert not any(p.requires_grad for p in target.parameters())
    learner.learn(1, 4)  # step 4: the online networks move, the targets wait until step 6
    assert not all(torch.equal(a, b) for a, b in zip(learner.target_mixer.parameters(), learner.mixer.parameters()))


# -- learning ------------------------------------------------------------------------------------

def test_qmix_credits_an_agent_paid_only_through_the_team():
    """A one-step team game where only agent 0 is paid: r_0 = [a_0 = c_0] + [a_1 = c_1] for
    one-hot contexts c_i, r_1 = 0. Team reward (the mean): ([a_0 = c_0] + [a_1 = c_1]) / 2,
    monotonic in each agent's term, so QMIX learns both agents' best actions; IQL's agent 1,
    paid nothing, cannot (it stays at chance, 1/K)."""
    n, k = 2, 4

    def make_obs(b, n):
        context = torch.randint(0, k, (b, n))
        return torch.nn.functional.one_hot(context, k).float(), context

    def reward(action, context):
        hits = (action == context).float()
        return torch.stack([hits.sum(-1), torch.zeros(len(hits))], dim=-1)

    def accuracy(learner):
        torch.manual_seed(1)
        obs, context = make_obs(2000, n)
        action, _ = learner.act(obs, deterministic=True)
        return (action == context).float().mean(0)

    options = dict(learning_rate=1e-3, hidden_sizes=[32], share_params=False, learning_starts=128, batch_size=64,
                   target_network_frequency=50, exploration_fraction=0.5, updates_per_step=1 / 16)
    trained = []
    for learner in (QMIX(_io(n, k, spaces.Discrete(k)), QMIXConfig(**options, mixing_embed_dim=8, hypernet_embed=16,
                                                                    exploration_steps=0)),
                    DQN(_io(n, k, spaces.Discrete(k)), DQNConfig(**options))):
        torch.manual_seed(0)
        iterations, T, B = 40, 8, 16
        for i in range(iterations):  # 8 gradient steps each: 320
            learner.update(bandit_rollout(learner, make_obs, reward, T, B, n), UpdateContext(i / iterations))
        trained.append(accuracy(learner))
    qmix, iql = trained
    assert (qmix > 0.9).all(), qmix
    assert iql[0] > 0.9 and iql[1] < 0.5, iql


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("mixing_embed_dim", 0, "mixing_embed_dim"), ("hypernet_layers", 3, "hypernet_layers"),
    ("hypernet_embed", 0, "hypernet_embed"), ("max_grad_norm", 0.0, "max_grad_norm"),
    ("exploration_steps", -1, "exploration_steps"), ("tau", 0.0, "tau")])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        QMIXConfig(**{field: value})


def test_continuous_actions_are_refused_in_one_line():
    with pytest.raises(ValueError) as error:
        QMIX(_io(2, 3, spaces.Box(-1.0, 1.0, (2,))), QMIXConfig())
    message = str(error.value)
    assert message.startswith("QMIX needs a Discrete action space") and "\n" not in message
    assert "use td3 for a Box one, or continuous_actions: false" in message
