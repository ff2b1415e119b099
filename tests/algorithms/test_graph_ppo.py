"""graph_ppo's update on hand-made rollouts: value clipping with normalised values, sample masks."""
from __future__ import annotations

import copy

import torch
from gymnasium import spaces

import hmarl.algorithms.himpo.graph_ppo as graph_ppo
from hmarl.algorithms.himpo.graph_ppo import GraphPPO, GraphPPOConfig
from hmarl.learner import UpdateContext
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
    learner.update(rollout, UpdateContext(0.0))
    new, old, target, grad = seen[0]
    step = (target > 0).long()  # the minibatch is shuffled: the target -1 is step 0's, 1 is step 1's
    torch.testing.assert_close(target, step * 2.0 - 1.0)
    torch.testing.assert_close(new, before[step])
    torch.testing.assert_close(old, before[step])  # the window's centre: the critic's own output
    torch.testing.assert_close(grad, before[step] - target)  # nowhere cut off by the clip


def upper_io(n: int = 2, group: int = 2, obs_dim: int = 3) -> AgentIO:
    """Sub-managers: ``group`` child slots of (message, 2-d position, presence), goals for each child."""
    child = obs_dim + 2 + 1
    return AgentIO(n_agents=n, obs_dim=group * child + GOAL, child_obs_dim=group * child,
                   action_space=spaces.Box(-1.0, 1.0, (group * GOAL,)), group=group, position_dim=2, presence=True)


def with_presence(rollout: Rollout, io: AgentIO, present: torch.Tensor) -> Rollout:
    """Set each child slot's presence flag from ``present [N, group]`` (same at every step)."""
    for obs in (rollout.obs, rollout.final_obs, rollout.last_obs):
        slots = obs[..., :io.child_obs_dim].unflatten(-1, (io.group, io.child_dim))
        slots[..., -1] = present.float()
        obs[..., :io.child_obs_dim] = slots.flatten(-2)
    return rollout


def updated(learner: GraphPPO, rollout: Rollout) -> tuple[GraphPPO, torch.Tensor]:
    """A copy of ``learner`` after one update on ``rollout`` (same minibatch order every call), and
    the advantages it published."""
    learner = copy.deepcopy(learner)
    torch.manual_seed(1)
    return learner, learner.update(rollout, UpdateContext(0.0)).outputs["advantages"]


def assert_same_learning(a: GraphPPO, b: GraphPPO) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


def test_a_step_that_leads_into_a_left_out_one_has_no_bootstrap():
    """Dead agents are out of every loss while dead (issue 12; LBFwS agents die, spec
    Environments). Tiny case by hand: one agent, rewards 1, 2, 100; it dies during step 1,
    so step 2 is left out; a zero critic, gamma 0.5, lambda 1. Step 1 is the agent's
    last: A_1 = 2 and A_0 = 1 + 0.5 * 2 = 2 (without the mask: 52 and 27); the left-out
    step publishes 0, so it trains nothing below."""
    learner = GraphPPO(worker_io(1), GraphPPOConfig(gamma=0.5, gae_lambda=1.0, critic_out_gain=0.0))
    mask = torch.tensor([True, True, False]).view(3, 1, 1)
    result = learner.update(hand_rollout(learner, torch.tensor([1.0, 2.0, 100.0]).view(3, 1, 1), mask),
                            UpdateContext(0.0))
    torch.testing.assert_close(result.outputs["advantages"].flatten(), torch.tensor([2.0, 2.0, 0.0]))


def test_left_out_samples_with_huge_rewards_change_nothing():
    """``Rollout.mask`` (issue 12): samples that do not count, here with rewards of 1e6,
    leave the update exactly as if they held rewards of 0: every parameter, Adam's
    moments, the return statistics and the published advantages. Agent 1 of copy 0
    dies after step 2, agent 2 of copy 1 is dead throughout, copy 3's last step is left
    out (its command belongs to an ended episode)."""
    torch.manual_seed(0)
    learner = GraphPPO(worker_io(3), GraphPPOConfig(graph="complete", num_minibatches=2, update_epochs=2,
                                                    ent_coef=0.01))
    mask = torch.ones(6, 4, 3, dtype=torch.bool)
    mask[3:, 0, 1] = False
    mask[:, 1, 2] = False
    mask[5, 3] = False
    reward = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(2))
    calm = hand_rollout(learner, reward.masked_fill(~mask, 0.0), mask)
    wild = copy.copy(calm)
    wild.reward = reward.masked_fill(~mask, 1e6)
    (a, a_advantages), (b, b_advantages) = updated(learner, calm), updated(learner, wild)
    assert_same_learning(a, b)
    torch.testing.assert_close(a.optimizer.state_dict(), b.optimizer.state_dict())
    torch.testing.assert_close(a_advantages, b_advantages)
    assert not a_advantages[~mask].any()


def test_a_rollout_in_which_nothing_counts_changes_nothing():
    """Weighted means with no valid sample are 0, not NaN: the update leaves every parameter
    and the return statistics as they were and reports finite metrics."""
    torch.manual_seed(0)
    learner = GraphPPO(worker_io(2), GraphPPOConfig(ent_coef=0.01))
    before = copy.deepcopy(learner)
    metrics = learner.update(hand_rollout(learner, torch.ones(4, 2, 2), torch.zeros(4, 2, 2, dtype=torch.bool)),
                             UpdateContext(0.0)).metrics
    assert all(torch.isfinite(v) for v in metrics.values())
    assert_same_learning(learner, before)


def test_edges_to_dead_children_are_left_out_at_an_upper_level():
    """A superior's per-child terms (spec Rewards: the superior's critic values each
    (superior, child) pair) leave out edges to children that were dead when the goal was
    given (``Rollout.child_mask``). Regrouped children: sub-manager 0 owns workers 2 and 0
    (slots 0, 1), sub-manager 1 owns 1 and 3; worker 3 is dead at upper steps 2 and 3 of
    copy 0, so edge (1, slot 1) is out there. By hand, with a zero critic and gamma 0, every
    other edge's advantage is its agent's reward; the dead edges' goals, set to 50, change nothing."""
    torch.manual_seed(0)
    io = upper_io()
    learner = GraphPPO(io, GraphPPOConfig(gamma=0.0, critic_out_gain=0.0, num_minibatches=2))
    reward = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(3))
    rollout = with_presence(hand_rollout(learner, reward), io, torch.ones(2, 2, dtype=torch.bool))
    rollout.parent, rollout.slot = torch.tensor([0, 1, 0, 1]).expand(4, 2, 4), torch.tensor([1, 0, 0, 1]).expand(4, 2, 4)
    dead = torch.zeros(4, 2, 2, 2, dtype=torch.bool)
    dead[2:, 0, 1, 1] = True
    rollout.child_mask = ~dead
    other_goals = copy.copy(rollout)
    other_goals.action = rollout.action.unflatten(-1, (2, GOAL)).masked_fill(dead.unsqueeze(-1), 50.0).flatten(-2)
    (a, a_advantages), (b, _) = updated(learner, rollout), updated(learner, other_goals)
    assert_same_learning(a, b)
    torch.testing.assert_close(a_advantages, reward.unsqueeze(-1).expand(4, 2, 2, 2).masked_fill(dead, 0.0))
    assert torch.equal(learner.edge_mask(rollout), ~dead)


def test_empty_slots_and_dead_children_are_out():
    """Fixed children in blocks (``groups``: 5 workers over 2 sub-managers own {0, 1, 2} and
    {3, 4}; the last slot of sub-manager 1 is empty): the empty slot is out throughout, and
    a dead child's slot (``child_mask``) where it is dead."""
    io = upper_io(group=3)
    learner = GraphPPO(io, GraphPPOConfig())
    present = torch.tensor([[True, True, True], [True, True, False]])
    rollout = with_presence(hand_rollout(learner, torch.zeros(2, 1, 2)), io, present)
    rollout.child_mask = torch.ones(2, 1, 2, 3, dtype=torch.bool)
    rollout.child_mask[1, 0, 1, 1] = False
    expected = present.expand(2, 1, 2, 3).clone()
    expected[1, 0, 1, 1] = False
    assert torch.equal(learner.edge_mask(rollout), expected)


def test_one_critic_pass_gives_the_values_of_every_step_and_of_the_next():
    """The update's critic outputs on each step's observation and on the one after it come from
    one pass over the steps, the bootstrap observation and the ends of episodes
    (``rollout_outputs``): the same as the two passes over ``obs`` and ``next_obs()`` (to 1e-6:
    GEMMs may round a row differently in a batch of another size), episode ends included."""
    torch.manual_seed(0)
    for io, graph in ((worker_io(4), "knn"), (upper_io(), "complete")):
        learner = GraphPPO(io, GraphPPOConfig(graph=graph, knn=2))
        rollout = hand_rollout(learner, torch.zeros(7, 5, io.n_agents), seed=3)
        rollout.final_obs = torch.randn_like(rollout.obs)
        rollout.done = torch.rand(7, 5, generator=torch.Generator().manual_seed(4)) < 0.3
        rollout.done[-1, 0] = True  # an episode that ends at the rollout's last step
        current, after = learner.rollout_outputs(rollout)
        with torch.no_grad():
            torch.testing.assert_close(current, learner.critic_output(rollout.obs), rtol=0, atol=1e-6)
            torch.testing.assert_close(after, learner.critic_output(rollout.next_obs()), rtol=0, atol=1e-6)
