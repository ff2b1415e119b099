"""ALMA's allocator: valid proposals, autoregression, best-of-N, meta-transitions, learning."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms.alma.allocator import Allocator, AllocatorConfig, HeuristicAllocator, HeuristicAllocatorConfig, PopArt
from hmarl.learner import UpdateContext
from hmarl import AgentIO, EnvSpec, Rollout
from hmarl.spec import Entities

N, S, F = 3, 4, 3  # agents, subtasks, entity features: [x, is_agent, finished]
E = N + S


def env_spec(subtask_of_entity=(-1,) * N + tuple(range(S))):
    entities = Entities(n_subtasks=S, subtask_of_entity=subtask_of_entity, entity_dim=F, first=0, finished_feature=2)
    return EnvSpec(n_agents=N, obs_dim=len(subtask_of_entity) * F, action_space=spaces.Discrete(5), max_steps=50,
                   num_envs=2, entities=entities, name="toy subtasks")


def allocator(**options):
    io = AgentIO(n_agents=1, obs_dim=N * E * F, child_obs_dim=N * E * F, action_space=spaces.MultiDiscrete([S] * N),
                 group=N)
    return Allocator(io, AllocatorConfig(**{"n_proposals": 8, "embedding": 16, "heads": 2,
                                            "hidden_sizes": [16], **options}), env_spec())


def observation(batch: int, finished=(), generator=None) -> torch.Tensor:
    """Every agent sees the same entity rows; subtasks in ``finished`` are done."""
    rows = torch.zeros(batch, E, F)
    rows[..., 0] = torch.rand(batch, E, generator=generator)
    rows[:, :N, 1] = 1.0
    for k in finished:
        rows[:, N + k, 2] = 1.0
    return rows.flatten(1).repeat(1, N).unsqueeze(1)  # [B, 1, N * E * F]


def test_proposals_give_every_agent_one_active_subtask():
    torch.manual_seed(0)
    learner = allocator()
    entities, active = learner.view(observation(64, finished=(1, 3)))
    assert active[0].tolist() == [True, False, True, False]
    proposals, log_probs, _ = learner.proposal(entities, active, 32)
    assert proposals.shape == (64, 32, N) and log_probs.shape == (64, 32, N)
    assert set(proposals.unique().tolist()) == {0, 2}  # one subtask each, never a finished one
    action, _ = learner.act(observation(64, finished=(1, 3)))  # exploration included
    assert action.shape == (64, 1, N) and set(action.unique().tolist()) <= {0, 2}


def test_later_agents_see_earlier_choices():
    torch.manual_seed(0)
    learner = allocator()
    entities, active = learner.view(observation(1))
    given = torch.tensor([[[0, 1, 1], [2, 1, 1]]])  # only agent 0's choice differs
    _, log_probs, _ = learner.proposal(entities, active, 2, given=given)
    assert log_probs[0, 0, 0] != log_probs[0, 1, 0]
    assert not torch.allclose(log_probs[0, 0, 1:], log_probs[0, 1, 1:])  # agents 1 and 2 react to it
    # agent 0 has nobody before it: its probabilities do not depend on the others' choices
    _, again, _ = learner.proposal(entities, active, 2, given=torch.tensor([[[0, 3, 3], [2, 0, 2]]]))
    torch.testing.assert_close(again[..., 0], log_probs[..., 0])


def test_uniform_active_draws_what_the_categorical_it_replaces_draws():
    from hmarl.algorithms.alma.allocator import uniform_active

    active = torch.rand(64, S) < 0.6
    active[:, 0] = True
    shape = torch.Size((64, N))
    torch.manual_seed(5)
    expected = torch.distributions.Categorical(logits=torch.where(active, 0.0, -1e9).unsqueeze(-2)
                                               .expand(*shape, -1)).sample()
    torch.manual_seed(5)
    got = uniform_active(active, shape)
    assert got.shape == shape and torch.equal(got, expected)
    assert bool(active.gather(-1, got).all())


@pytest.mark.parametrize("progress", [0.0, 0.01, 0.04, 0.1, 0.5])
def test_act_allocates_as_scoring_every_proposal_first_did(progress):
    """act skips the critic where exploration replaces its pick; the allocations and the RNG
    stream are those of the act that scored every proposal before drawing."""
    from hmarl.algorithms.alma.allocator import uniform_active

    def scoring_act(learner, obs):  # the act before
        entities, active = learner.view(obs)
        alloc, _, proposals = learner.best_proposal(entities, active, learner.critic)
        prop_eps, alloc_eps = learner.exploration()
        unscored = torch.rand(alloc.shape[:-1]) < prop_eps
        alloc = torch.where(unscored.unsqueeze(-1), proposals[..., 0, :], alloc)
        uniform = uniform_active(active, alloc.shape)
        random = torch.rand(alloc.shape) < alloc_eps
        return torch.where(random, uniform, alloc).unsqueeze(-2)

    torch.manual_seed(0)
    learner = allocator()
    learner.progress = progress
    calls, scored = [], 0
    learner.critic.register_forward_hook(lambda *args: calls.append(1))
    for batch in (1, 3, 40):
        obs = observation(batch, finished=(1,))
        torch.manual_seed(batch)
        expected, after = scoring_act(learner, obs), torch.rand(3)
        torch.manual_seed(batch)
        calls.clear()
        got, _ = learner.act(obs)
        scored += len(calls)
        assert torch.equal(got, expected) and torch.equal(torch.rand(3), after)
    if progress == 0.0:  # both epsilons 1 at the start: nothing to score
        assert scored == 0
    if progress >= 0.1:  # prop_alloc_eps 0.53 or less, alloc_eps 0: the critic picks for most
        assert scored > 0


def test_proposals_sample_and_score_as_with_one_hot_updates():
    """The earlier agents' updates enter the logits as ``one_hot(chosen) * dot`` did, bit for bit."""
    from torch import nn

    def one_hot_forward(self, entities, active, n_samples, given=None):  # the forward before, one_hot and all
        n_agents = self.view.n_agents
        embedded = self.encode(entities)
        agents = embedded[..., :n_agents, :]
        subtask = torch.einsum("...ed,es->...sd", embedded, self.view.membership)
        base = (agents @ subtask.transpose(-1, -2) * self.scale).unsqueeze(-3)
        first, last = self.residual[0], self.residual[2]
        half = first.weight.shape[1] // 2
        agent_part = nn.functional.linear(agents, first.weight[:, half:], first.bias).unsqueeze(-2)
        inactive = ~active.unsqueeze(-2)
        lead = (*base.shape[:-3], n_samples)
        choices, updates, log_probs, entropy = [], [], [], 0.0
        for i in range(n_agents):
            logits = base[..., i, :].expand(*lead, base.shape[-1])
            for chosen, delta in zip(choices, updates):
                dot = (delta * agents[..., i, :].unsqueeze(-2)).sum(-1, keepdim=True) * self.scale
                logits = logits + nn.functional.one_hot(chosen, logits.shape[-1]) * dot
            log_p = logits.masked_fill(inactive, -1e9).log_softmax(-1)
            if given is None:
                choice = torch.multinomial(log_p.exp().reshape(-1, log_p.shape[-1]), 1).view(lead)
            else:
                choice = given[..., i]
            log_probs.append(log_p.gather(-1, choice.unsqueeze(-1)).squeeze(-1))
            entropy = entropy - (log_p.exp() * log_p).sum(-1)
            picked = subtask.gather(-2, choice.unsqueeze(-1).expand(*lead, subtask.shape[-1]))
            for chosen, delta in zip(choices, updates):
                picked = picked + (chosen == choice).unsqueeze(-1) * delta
            hidden = torch.relu(nn.functional.linear(picked, first.weight[:, :half]) + agent_part[..., i, :, :])
            updates.append(last(hidden))
            choices.append(choice)
        return torch.stack(choices, -1), torch.stack(log_probs, -1), entropy

    torch.manual_seed(0)
    learner = allocator()
    entities, active = learner.view(observation(16, finished=(2,)))
    for given in (None, torch.randint(0, S, (16, 5, N))):
        torch.manual_seed(1)
        expected = one_hot_forward(learner.proposal, entities, active, 5, given)
        torch.manual_seed(1)
        got = learner.proposal(entities, active, 5, given)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_exploration_schedules_by_hand():
    """Sec. 4.3 / spec (ALMA's code): prop_alloc_eps 1.0 -> 0.05 over the first 20% of
    training, alloc_eps 1.0 -> 0 over the first 5%: at progress 0.1, 1 - 0.95 / 2 = 0.525 and
    0; at 0.025, 1 - 0.95 / 8 and 0.5; from 0.2 on, 0.05 and 0."""
    learner = allocator()
    assert learner.exploration(0.0) == pytest.approx((1.0, 1.0))
    assert learner.exploration(0.025) == pytest.approx((1.0 - 0.95 / 8, 0.5))
    assert learner.exploration(0.1) == pytest.approx((0.525, 0.0))
    assert learner.exploration(0.5) == pytest.approx((0.05, 0.0))


def test_best_of_n_takes_the_critics_argmax():
    torch.manual_seed(0)
    learner = allocator()
    class PreferHighSubtasks(torch.nn.Module):
        def forward(self, entities, alloc):
            return alloc.float().sum(-1)

    critic = PreferHighSubtasks()
    entities, active = learner.view(observation(16))
    alloc, value, proposals = learner.best_proposal(entities, active, critic)
    assert torch.equal(value, proposals.sum(-1).float().max(-1).values)
    assert torch.equal(alloc.sum(-1).float(), value)


def test_the_critic_values_many_allocations_as_it_values_each_alone():
    """Proposals go through the critic's distinct-token attention (AllocationCritic.shared_tokens),
    one allocation through nn.MultiheadAttention: the same Q(s, alloc), and the same gradients."""
    torch.manual_seed(0)
    critic = allocator().critic
    entities = torch.randn(5, E, F)
    allocs = torch.randint(0, S, (5, 6, N))  # 6 x 7 tokens > 3 x 4 + 4 distinct ones: the shared path
    together = critic(entities, allocs)
    alone = torch.cat([critic(entities, allocs[:, i:i + 1]) for i in range(6)], -1)
    torch.testing.assert_close(together, alone)
    params = list(critic.parameters())
    for a, b in zip(torch.autograd.grad(together.square().sum(), params),
                    torch.autograd.grad(alone.square().sum(), params), strict=True):
        torch.testing.assert_close(a, b)


def test_meta_transitions_between_decisions():
    """Sec. 4.1 / spec: a meta-transition's reward is the team reward per step of its segment.
    The level's reward is the sum of its N = 3 children's, each carrying the team reward R
    (as SaveTheCity's agents do), so the level sees 3 R; by hand with R = 1, 3, 5, 7, 9, 11:
    segments [0, 2) -> (1 + 3) / 2 = 2, [2, 4) -> 6, [4, 5) -> 9, not 3x that."""
    # one copy, T = 6: decisions at 0, 2 and 5; the episode ends (terminated) at step 3
    decision = torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool).view(6, 1)
    terminated = torch.tensor([0, 0, 0, 1, 0, 0], dtype=torch.bool).view(6, 1)
    obs = torch.arange(6.0).view(6, 1, 1, 1)
    rollout = Rollout(obs=obs, action=torch.arange(6).view(6, 1, 1, 1).expand(6, 1, 1, N),
                      log_prob=torch.zeros(6, 1, 1), reward=N * torch.tensor([1.0, 3, 5, 7, 9, 11]).view(6, 1, 1),
                      terminated=terminated, done=terminated.clone(), final_obs=obs + 100,
                      last_obs=torch.full((1, 1, 1), 6.0), decision=decision)
    batch = allocator().meta_transitions(rollout)
    # segments [0, 2), [2, 4) (ends with the episode), [4, 5); the one from 5 is incomplete
    assert batch["obs"].flatten().tolist() == [0.0, 2.0, 4.0]
    assert batch["alloc"][:, 0].tolist() == [0, 2, 4]
    assert batch["reward"].tolist() == [2.0, 6.0, 9.0]
    assert batch["next_obs"].flatten().tolist() == [2.0, 103.0, 5.0]
    assert batch["terminated"].tolist() == [0.0, 1.0, 0.0]


def test_popart_rescales_targets_and_preserves_outputs_by_hand():
    """van Hasselt et al. 2016 (Pop-Art), the paper's appendix D: one layer n(h) = 2 h + 1 at
    mu = 0, nu = 1, step beta = 0.5, targets y = (4, 6). ART: mu' = 0.5 * 0 + 0.5 * 5 = 2.5,
    nu' = 0.5 * 1 + 0.5 * 26 = 13.5, sigma' = sqrt(13.5 - 2.5^2) = sqrt(7.25). POP:
    w' = 2 / sigma', b' = (1 * 1 + 0 - 2.5) / sigma' = -1.5 / sigma', so sigma' n'(h) + mu'
    = 2 h + 1 for every h; the target 5 normalises to 2.5 / sigma'."""
    layer = PopArt(1, beta=0.5)
    with torch.no_grad():
        layer.linear.weight.fill_(2.0)
        layer.linear.bias.fill_(1.0)
    h = torch.tensor([[-1.0], [0.0], [3.0]])
    before = layer.denormalize(layer(h))
    torch.testing.assert_close(before, torch.tensor([-1.0, 1.0, 7.0]))
    layer.update(torch.tensor([4.0, 6.0]))
    sigma = 7.25 ** 0.5
    torch.testing.assert_close(torch.stack([layer.mu, layer.nu, layer.sigma]), torch.tensor([2.5, 13.5, sigma]))
    torch.testing.assert_close(layer.linear.weight, torch.tensor([[2.0 / sigma]]))
    torch.testing.assert_close(layer.linear.bias, torch.tensor([-1.5 / sigma]))
    torch.testing.assert_close(layer.denormalize(layer(h)), before)  # outputs preserved
    torch.testing.assert_close(layer.normalize(torch.tensor(5.0)), torch.tensor(2.5 / sigma))


def test_the_critic_learns_popart_normalised_targets_and_keeps_its_values():
    """Appendix D (Pop-Art on the allocator's value), on terminal meta-transitions, so the
    target is y = r = 100 exactly. With beta = 0.1, one loss moves mu 0 -> 10 and nu 1 ->
    0.9 + 0.1 * 100^2 = 1000.9 (sigma = sqrt(900.9)); the critic's unnormalised Q(s, alloc)
    is unchanged by it (POP), and the loss is the mean of (n - (100 - 10) / sigma)^2. Off,
    the statistics stay at mu 0, sigma 1 and the loss is the mean of (Q - 100)^2."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": observation(16, generator=g), "alloc": torch.randint(0, S, (16, N), generator=g),
             "reward": torch.full((16,), 100.0), "next_obs": observation(16, generator=g),
             "terminated": torch.ones(16)}
    for on in (True, False):
        learner = allocator(popart=on, popart_beta=0.1, huber_loss=False)
        entities, _ = learner.view(batch["obs"])
        alloc = batch["alloc"].unsqueeze(-2)
        q_before = learner.critic(entities, alloc).squeeze(-1).detach()
        q_loss, _, q_mean = learner.loss(batch)
        popart = learner.critic.value
        torch.testing.assert_close(learner.critic(entities, alloc).squeeze(-1), q_before)  # preserved
        torch.testing.assert_close(q_mean, q_before.mean())
        n = learner.critic(entities, alloc, normalized=True).squeeze(-1)
        if on:
            sigma = 900.9 ** 0.5
            torch.testing.assert_close(torch.stack([popart.mu, popart.nu, popart.sigma]),
                                       torch.tensor([10.0, 1000.9, sigma]))
            torch.testing.assert_close(q_loss, ((n - 90.0 / sigma) ** 2).mean())
        else:
            assert popart.mu == 0 and popart.sigma == 1
            torch.testing.assert_close(n, q_before)
            torch.testing.assert_close(q_loss, ((q_before - 100.0) ** 2).mean())


def test_allocator_learns_a_one_step_allocation_bandit():
    """Reward = agents on subtask 2 minus agents on subtask 0; every segment one step long."""
    torch.manual_seed(0)
    learner = allocator(learning_rate=3e-3, batch_size=64, learning_starts=0, updates_per_step=4,
                        target_update_episodes=32)
    g = torch.Generator().manual_seed(0)
    for iteration in range(25):
        obs = observation(32, generator=g)
        learner.progress = iteration / 25
        action, _ = learner.act(obs)
        alloc = action[:, 0]
        reward = ((alloc == 2).sum(-1) - (alloc == 0).sum(-1)).float()
        steps = torch.ones(1, 32, dtype=torch.bool)
        rollout = Rollout(obs=obs.unsqueeze(0), action=action.unsqueeze(0), log_prob=torch.zeros(1, 32, 1),
                          reward=reward.view(1, 32, 1), terminated=steps, done=steps.clone(),
                          final_obs=obs.unsqueeze(0), last_obs=obs, decision=steps.clone())
        learner.update(rollout, UpdateContext(iteration / 25))
    greedy, _ = learner.act(observation(64, generator=g), deterministic=True)
    assert (greedy == 2).float().mean() > 0.9


def test_critic_target_follows_every_50_episodes_counted_over_copies():
    """Spec / ALMA's code: the allocator's target critic is copied every 50 episodes (here 3),
    counted over the B = 2 copies, not every so many gradient steps. Each rollout of T = 2
    steps decides at both steps and ends copy 0's episode at its last step: one episode per
    rollout, so the target is copied after the 3rd update and after the 6th, not between."""
    torch.manual_seed(0)
    learner = allocator(batch_size=2, learning_starts=0, updates_per_step=1, target_update_episodes=3,
                        learning_rate=1e-2)
    g = torch.Generator().manual_seed(0)
    done = torch.tensor([[False, False], [True, False]])

    def rollout():
        obs = torch.stack([observation(2, generator=g), observation(2, generator=g)])
        action = torch.randint(0, S, (2, 2, 1, N), generator=g)
        return Rollout(obs=obs, action=action, log_prob=torch.zeros(2, 2, 1), reward=torch.randn(2, 2, 1, generator=g),
                       terminated=done, done=done.clone(), final_obs=obs, last_obs=obs[-1],
                       decision=torch.ones(2, 2, dtype=torch.bool))

    def copied():
        return all(torch.equal(a, b) for a, b in zip(learner.critic.state_dict().values(),
                                                     learner.critic_target.state_dict().values()))

    history = []
    for _ in range(6):
        learner.update(rollout(), UpdateContext(0.0))
        history.append(copied())
    assert learner.episodes == 6 and learner.gradient_steps == 12
    assert history == [False, False, True, False, False, True]


def test_bad_input():
    io = AgentIO(n_agents=1, obs_dim=10, child_obs_dim=10, action_space=spaces.MultiDiscrete([S] * N), group=N)
    no_subtasks = EnvSpec(n_agents=N, obs_dim=10, action_space=spaces.Discrete(5), max_steps=5, num_envs=1)
    with pytest.raises(ValueError, match="the allocator needs an env with entities"):
        Allocator(io, AllocatorConfig(), no_subtasks)
    joint = AgentIO(n_agents=1, obs_dim=10, child_obs_dim=10, action_space=spaces.Discrete(S ** N), group=N)
    with pytest.raises(ValueError, match="group_size: all, joint: false"):
        Allocator(joint, AllocatorConfig(), env_spec())
    with pytest.raises(ValueError, match="reads agent i from entity i, but toy subtasks lists 2 agent entities "
                                         "for 3 agents"):
        Allocator(io, AllocatorConfig(), env_spec(subtask_of_entity=[-1, -1] + list(range(S)) + [0]))
    with pytest.raises(ValueError, match="heuristic allocator reads entity positions \\(features row, col or x, y\\); "
                                         "toy subtasks has"):
        HeuristicAllocator(io, HeuristicAllocatorConfig(), env_spec())
    with pytest.raises(ValueError, match="must divide into 3 heads"):
        AllocatorConfig(embedding=16, heads=3)
    with pytest.raises(ValueError, match="popart_beta must be in"):
        AllocatorConfig(popart_beta=0.0)
