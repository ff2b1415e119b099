"""PPO's losses on hand-made batches: value clipping under value normalisation."""
from __future__ import annotations

import torch
from gymnasium import spaces

from hmarl.algorithms.ppo import PPO, PPOConfig
from hmarl.learner import UpdateContext
from hmarl.buffers import Rollout
from tests.toys import _io

N, D = 2, 3


def one_step_rollout(reward: torch.Tensor, learner: PPO, mask: torch.Tensor | None = None) -> Rollout:
    """Every step a terminated one-step episode, so GAE gives A = r - V and returns R = r.

    Shapes: reward ``[T, B, N]`` -> a Rollout of ``T`` steps of ``B`` copies.
    """
    t, b, n = reward.shape
    obs = torch.randn(t, b, n, D)
    action, log_prob = learner.act(obs)
    done = torch.ones(t, b, dtype=torch.bool)
    return Rollout(obs=obs, action=action, log_prob=log_prob, reward=reward, terminated=done,
                   done=done.clone(), final_obs=obs.clone(), last_obs=torch.randn(b, n, D), mask=mask)


def first_step_gradients(learner: PPO, rollout: Rollout) -> list[torch.Tensor]:
    """The gradients of the first optimizer step of ``learner.update(rollout)``."""
    seen: list[list[torch.Tensor]] = []
    step = learner.optimizer.step
    learner.optimizer.step = lambda: (seen.append([p.grad.clone() for p in learner.parameters()]), step())
    learner.update(rollout, UpdateContext(0.0))
    return seen[0]


def single_step_config(**over) -> PPOConfig:
    """One gradient step over the whole batch, no clipping of gradients, no entropy term."""
    return PPOConfig(**{**dict(num_minibatches=1, update_epochs=1, anneal_lr=False, ent_coef=0.0,
                               vf_coef=1.0, max_grad_norm=1e9), **over})


def test_value_clip_window_is_centred_on_the_critics_old_output():
    """PPO's clipped value loss (Schulman et al. 2017; CleanRL ppo.py) with MAPPO's ValueNorm
    (Yu et al. 2022, Sec. 4 "value normalization"):

        L^V = 1/2 max((v - R')^2, (v_old + clip(v - v_old, -eps, eps) - R')^2),

    where v is the critic's (standardised) output, v_old the output it gave for the same
    observation when the rollout was collected, and R' = (R - mu) / sigma the return
    standardised with the running statistics updated by this rollout. At the first gradient
    step the critic has not moved, v = v_old, so every sample is inside the window and
    dL^V/dv = v - R' for every sample: the critic's gradient is that of the unclipped loss
    1/2 mean_m (v - R')^2 summed over agents. Returns of ~100 (VMAS's scale) move mu far from
    0; a window centred anywhere but on v_old would clip (and zero the gradient of) most samples.
    """
    torch.manual_seed(0)
    learner = PPO(_io(N, D, spaces.Discrete(2)), single_step_config(normalize_value=True))
    reward = 100.0 + 10.0 * torch.randn(4, 8, N)
    rollout = one_step_rollout(reward, learner)
    critic = list(learner.critic.parameters())

    out = learner.critic_output(rollout.obs)  # [T, B, N]: v = v_old before the update
    returns = reward.flatten(0, 1)  # R = r for one-step episodes, [M, N]
    mu, sigma = returns.mean(0), returns.var(0, unbiased=False).sqrt()  # first update: the batch's stats
    target = (returns - mu) / (sigma + 1e-8)
    expected_loss = (0.5 * (out.flatten(0, 1) - target).pow(2)).mean(0).sum()
    expected = torch.autograd.grad(expected_loss, critic)

    grads = first_step_gradients(learner, rollout)
    got = grads[-len(critic):]  # the critic's parameters come last
    assert all(g.abs().sum() > 0 for g in expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


# -- masks ---------------------------------------------------------------------------------------

def rows(rollout: Rollout, keep: torch.Tensor) -> Rollout:
    """The one-step rollout's ``keep`` rows (flat over ``T x B``) as one step of ``len(keep)`` copies."""
    pick = lambda x: x.flatten(0, 1)[keep].unsqueeze(0)  # noqa: E731
    return Rollout(obs=pick(rollout.obs), action=pick(rollout.action), log_prob=pick(rollout.log_prob),
                   reward=pick(rollout.reward), terminated=pick(rollout.terminated), done=pick(rollout.done),
                   final_obs=pick(rollout.final_obs), last_obs=rollout.last_obs[:1].expand(len(keep), -1, -1))


def test_masked_samples_leave_the_gradient_unchanged():
    """Masked-out transitions (dead agents, commands of an ended episode) count in no loss:
    every term is a weighted mean over agent i's valid samples,

        L_i = sum_m w_mi l_mi / sum_m w_mi,   w_mi = mask[m, i],

    with the advantages standardised over the valid samples only (CleanRL's
    ``(A - mean) / (std + 1e-8)`` restricted to w = 1) and the return statistics of the value
    normalisation taken over them too. So agent i's gradient from a batch whose masked samples
    carry rewards of 1e30 equals its gradient from the batch with those samples removed.
    One-step episodes keep GAE (which runs over every step) from carrying a masked reward into a
    valid sample's advantage.
    """
    torch.manual_seed(0)
    config = single_step_config(ent_coef=0.01)
    init = PPO(_io(N, D, spaces.Discrete(3)), config)
    reward = torch.randn(4, 3, N)
    mask = torch.ones(4, 3, N, dtype=torch.bool)
    dropped = {0: [1, 5], 1: [2, 5, 7, 8, 11]}  # flat rows (t * 3 + b) each agent is masked on
    for agent, flat_rows in dropped.items():
        mask.view(-1, N)[flat_rows, agent] = False
    reward[~mask] = 1e30
    rollout = one_step_rollout(reward, init, mask)

    def gradients(batch: Rollout) -> list[torch.Tensor]:
        learner = PPO(_io(N, D, spaces.Discrete(3)), config)
        learner.load_state_dict(init.state_dict())
        return first_step_gradients(learner, batch)

    masked = gradients(rollout)
    assert all(torch.isfinite(g).all() for g in masked)
    for agent, flat_rows in dropped.items():
        keep = torch.tensor([r for r in range(12) if r not in flat_rows])
        reference = gradients(rows(rollout, keep))
        for g, r in zip(masked, reference):
            torch.testing.assert_close(g[agent], r[agent], rtol=1e-4, atol=1e-6)


def test_an_agent_without_valid_samples_contributes_nothing():
    """A column with no valid sample: every weighted mean is 0 / max(0, 1) = 0, so the agent's
    parameters get a zero gradient, the other agent's are untouched and nothing is NaN."""
    torch.manual_seed(0)
    config = single_step_config(ent_coef=0.01)
    learner = PPO(_io(N, D, spaces.Discrete(3)), config)
    mask = torch.ones(4, 3, N, dtype=torch.bool)
    mask[..., 1] = False
    rollout = one_step_rollout(torch.randn(4, 3, N), learner, mask)
    grads = first_step_gradients(learner, rollout)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g[1].abs().max() == 0 for g in grads)
    assert all(g[0].abs().max() > 0 for g in grads)
    assert all(torch.isfinite(p).all() for p in learner.parameters())


# -- explained variance --------------------------------------------------------------------------

def test_explained_variance_by_hand():
    """``explained_variance = 1 - Var(R - V) / Var(R)`` (CleanRL's ppo.py metric), in return units,
    pooled over the level's agents and the valid samples. With V(o) = o (critic replaced) and
    one-step episodes (R = r):

        agent 0: R = 1, 2, 3, 4      V = 1, 1, 3, 3   R - V = 0, 1, 0, 1
        agent 1: R = 2, 0, [100], 2  V = 1, 0, [0], 1 R - V = 1, 0, [-], 1   ([.]: masked)

    Var(R) = 10/7 and Var(R - V) = 12/49 over the 7 valid samples, so EV = 1 - 6/35 = 29/35.
    """
    torch.manual_seed(0)
    learner = PPO(_io(2, 1, spaces.Discrete(2)), single_step_config(normalize_value=False))
    learner.critic_output = lambda obs: obs[..., 0]
    reward = torch.tensor([[1.0, 2.0], [2.0, 0.0], [3.0, 100.0], [4.0, 2.0]]).view(4, 1, 2)
    values = torch.tensor([[1.0, 1.0], [1.0, 0.0], [3.0, 0.0], [3.0, 1.0]]).view(4, 1, 2, 1)
    mask = torch.ones(4, 1, 2, dtype=torch.bool)
    mask[2, 0, 1] = False
    action, log_prob = learner.act(values)
    done = torch.ones(4, 1, dtype=torch.bool)
    rollout = Rollout(obs=values, action=action, log_prob=log_prob, reward=reward, terminated=done,
                      done=done.clone(), final_obs=values.clone(), last_obs=values[0], mask=mask)
    metrics = learner.update(rollout, UpdateContext(0.0)).metrics
    torch.testing.assert_close(metrics["explained_variance"], torch.tensor(29 / 35))
