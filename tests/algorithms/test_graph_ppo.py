"""graph_ppo's update on hand-made rollouts: value clipping with normalised values, sample masks."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

import algorithms.graph_ppo as graph_ppo
from algorithms.graph_ppo import GraphPPO, GraphPPOConfig
from hmarl import AgentIO, Rollout

GOAL = 4


def worker_io(n: int, obs_dim: int = 3) -> AgentIO:
    """Workers: one child each (obs + 2-d position), a goal appended, four actions."""
    child = obs_dim + 2
    return AgentIO(n_agents=n, obs_dim=child + GOAL, child_obs_dim=child, action_space=spaces.Discrete(4),
                   group=1, position_dim=2)


def hand_rollout(learner: GraphPPO, reward: torch.Tensor, mask: torch.Tensor | None = None,
                 seed: int = 0) -> Rollout:
    """Random observations and the learner's own actions for ``reward [T, B, N]``; no episode ends."""
    g = torch.Generator().manual_seed(seed)
    t, b, n = reward.shape
    obs = torch.randn(t, b, n, learner.io.obs_dim, generator=g)
    action, log_prob = learner.act(obs)
    never = torch.zeros(t, b, dtype=torch.bool)
    return Rollout(obs=obs, action=action, log_prob=log_prob, reward=reward, terminated=never,
                   done=never.clone(), final_obs=obs.clone(), last_obs=torch.randn(b, n, learner.io.obs_dim,
                                                                                    generator=g), mask=mask)


def test_value_clip_window_is_centred_on_the_critics_own_output(monkeypatch):
    """PPO's clipped value loss (spec: PPO at every level) with ``normalize_value``: the clip
    window is centred on the critic's own old output. Before the first optimizer step the
    critic's output *is* its old output, so the old values handed to the loss must equal
    it, and the loss's gradient must be that of the unclipped loss, ``new - target``.

    Tiny case by hand: one agent, two steps with rewards 0 and 10, gamma 0, so the
    returns are the rewards; the running statistics start empty and take in exactly
    these two (mean 5, standard deviation 5): the standardised targets are -1 and 1."""
    torch.manual_seed(0)
    learner = GraphPPO(worker_io(1), GraphPPOConfig(gamma=0.0, num_minibatches=1, update_epochs=1,
                                                    clip_coef=0.2, normalize_value=True))
    rollout = hand_rollout(learner, torch.tensor([0.0, 10.0]).view(2, 1, 1))
    with torch.no_grad():
        before = learner.critic_output(rollout.obs).reshape(-1)
    seen = []

    def record(new_log_prob, old_log_prob, advantages, new_value, old_value, returns, *args, **kwargs):
        terms = clipped_losses(new_log_prob, old_log_prob, advantages, new_value, old_value, returns, *args,
                               **kwargs)
        grad, = torch.autograd.grad(terms[1].sum(), new_value, retain_graph=True)
        seen.append((new_value.detach(), old_value, returns, grad))
        return terms

    clipped_losses = graph_ppo.clipped_losses
    monkeypatch.setattr(graph_ppo, "clipped_losses", record)
    learner.update(rollout, progress=0.0)
    new, old, target, grad = seen[0]
    step = (target > 0).long()  # the minibatch is shuffled: the target -1 is step 0's, 1 is step 1's
    torch.testing.assert_close(target, step * 2.0 - 1.0)
    torch.testing.assert_close(new, before[step])
    torch.testing.assert_close(old, before[step])  # the window's centre: the critic's own output
    torch.testing.assert_close(grad, before[step] - target)  # nowhere cut off by the clip
