"""A-QMIX: subtask masking, monotonic per-subtask mixing, the double-Q target by hand, bandits, errors."""
from __future__ import annotations


import pytest
import torch
from gymnasium import spaces
from torch import nn

from hmarl.algorithms.alma.aqmix import AQMIX, AQMIXConfig
from hmarl.learner import UpdateContext
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO
from hmarl.spec import Entities, EnvSpec
from tests.toys import Fn, bandit_rollout

F_DIM = 3  # features per entity
SUFFIX = 2  # a position suffix after the entities, which the learner must ignore
SMALL = {"attention_dim": 16, "heads": 2, "hidden_sizes": [32], "mixing_embed_dim": 8, "hypernet_embed": 16}


def subtask_spec(n: int, s: int, k: int, subtask_of_entity=None, first: int = F_DIM) -> EnvSpec:
    """Entities: the n agents (no subtask), then one entity per subtask; obs = own row, entities, suffix."""
    e = n + s
    of_entity = [-1] * n + list(range(s)) if subtask_of_entity is None else subtask_of_entity
    entities = Entities(n_subtasks=s, subtask_of_entity=of_entity, entity_dim=F_DIM, first=first)
    return EnvSpec(n_agents=n, obs_dim=F_DIM + e * F_DIM + SUFFIX, action_space=spaces.Discrete(k),
                   max_steps=10, num_envs=1, name="city", entities=entities)


def make(n=2, s=2, k=2, command=True, space=None, spec=None, **options) -> AQMIX:
    spec = spec or subtask_spec(n, s, k)
    io = AgentIO(n_agents=n, obs_dim=spec.obs_dim + (s if command else 0), child_obs_dim=spec.obs_dim,
                 action_space=space or spaces.Discrete(k))
    return AQMIX.build(io, AQMIXConfig(**{**SMALL, **options}), spec)


def with_command(obs: torch.Tensor, assign: torch.Tensor, s: int) -> torch.Tensor:
    """Overwrite the last s dims with the one-hot of ``assign`` ([..., N], -1: no subtask)."""
    out = obs.clone()
    out[..., -s:] = torch.nn.functional.one_hot(assign.clamp(min=0), s).float() * (assign >= 0).unsqueeze(-1)
    return out


def entity(obs: torch.Tensor, e: int) -> torch.Tensor:
    """A view of entity e's feature row."""
    return obs[..., F_DIM + e * F_DIM:F_DIM + (e + 1) * F_DIM]


# -- the agents' attention -----------------------------------------------------------------------

def perturbed(obs: torch.Tensor, e: int, generator: torch.Generator) -> torch.Tensor:
    """``obs`` with entity e's row changed in every agent's observation."""
    changed = obs.clone()
    entity(changed, e).add_(torch.randn(entity(changed, e).shape, generator=generator))
    return changed


def test_agents_attend_only_to_their_subtask_and_its_team():
    """Sec. 4.2, Eq. 9: agent i's utility depends on s^k_{A_k} only, for k its subtask: the
    subtask's non-agent entities and the agents assigned to k; every other subtask's entities
    *and agents* are hidden. Perturbation on 3 agents, 2 subtasks, allocation (1, 0, 1):
    agents 0 and 2 form subtask 1's team, agent 1 is alone on subtask 0. ``alma_nomask``
    (``mask_subtasks: false``) sees everything."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n, s = 3, 2
    building = [n + 0, n + 1]  # entity indices; agent j is entity j
    obs = with_command(torch.randn(6, n, make(n, s).io.obs_dim, generator=g), torch.tensor([1, 0, 1]), s)

    def moved(learner, e):
        """Per agent: the largest change of its utilities when entity e changes."""
        return (learner.q_values(perturbed(obs, e, g)) - learner.q_values(obs)).abs().amax((0, 2))

    masked, unmasked = make(n, s), make(n, s, mask_subtasks=False)
    # its own subtask's building and its teammate matter ...
    assert (moved(masked, building[1])[[0, 2]] > 1e-4).all() and moved(masked, building[0])[1] > 1e-4
    assert moved(masked, 2)[0] > 1e-4 and moved(masked, 0)[2] > 1e-4
    # ... another subtask's building and its agent do not, not even by a rounding error
    assert moved(masked, building[0])[[0, 2]].eq(0).all() and moved(masked, building[1])[1] == 0
    assert moved(masked, 1)[[0, 2]].eq(0).all() and moved(masked, 0)[1] == 0 and moved(masked, 2)[1] == 0
    # no mask: every entity reaches every agent
    for e in (0, 1, 2, *building):
        assert (moved(unmasked, e)[[i for i in range(n) if i != e]] > 1e-4).all()


def test_an_agent_that_may_see_nothing_gets_no_nans():
    torch.manual_seed(0)
    n, s = 2, 2
    spec = subtask_spec(n, s, 3, subtask_of_entity=[0, 1])
    learner = make(n, s, 3, spec=spec)
    obs = with_command(torch.randn(4, n, learner.io.obs_dim), torch.tensor([-1, 1]), s)  # agent 0 unassigned
    obs.requires_grad_(True)
    q = learner.q_values(obs)
    q.sum().backward()
    assert torch.isfinite(q).all() and torch.isfinite(obs.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in learner.agent.parameters() if p.grad is not None)


# -- mixing --------------------------------------------------------------------------------------

def test_mixing_is_monotonic_and_per_subtask():
    torch.manual_seed(0)
    n, s = 4, 3
    learner = make(n, s)
    m = 256
    q = torch.randn(m, n, requires_grad=True)
    obs = torch.randn(m, n, learner.io.obs_dim)
    groups = (torch.rand(m, n, s) < 0.5).float()  # any membership, including empty groups
    q_tot = learner.mixer(q, obs, groups)
    assert q_tot.shape == (m, s)
    for g in range(s):
        (grad,) = torch.autograd.grad(q_tot[:, g].sum(), q, retain_graph=True)
        member = groups[..., g].bool()
        assert (grad >= 0).all()
        assert (grad[member] > 0).all()  # every member's utility counts ...
        assert (grad[~member] == 0).all()  # ... and no one else's


def test_a_subtask_mix_ignores_other_subtasks_entities_and_agents():
    """Sec. 4.2, Eq. 9: Q^k_tot is a function of s^k_{A_k} (and of k's utilities) only.
    Perturbation on 3 agents, 3 subtasks, allocation (0, 1, 0): with the utilities held
    fixed, changing building 2 (nobody's), building 1 or anything agent 1 observes (it works
    on subtask 1) leaves subtask 0's mixed value exactly as it was; changing building 0 or
    subtask 0's agent 2 changes it. Without the mask (``alma_nomask``) building 2 reaches it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    n, s = 3, 3
    assign = torch.tensor([0, 1, 0])
    q = torch.randn(16, n, generator=g)

    def mixed(learner, obs):
        return learner.mixer(q, obs, learner.groups(obs))

    masked, unmasked = make(n, s), make(n, s, mask_subtasks=False)
    obs = with_command(torch.randn(16, n, masked.io.obs_dim, generator=g), assign, s)
    agent_1_elsewhere = perturbed(obs, 1, g)  # its entity row in everyone's observation ...
    agent_1_elsewhere[:, 1, :-s] += torch.randn(16, masked.io.obs_dim - s, generator=g)  # ... and all it sees
    base = mixed(masked, obs)[:, 0]
    for other in (perturbed(obs, n + 2, g), perturbed(obs, n + 1, g), agent_1_elsewhere):
        torch.testing.assert_close(mixed(masked, other)[:, 0], base, rtol=0, atol=0)
    for own in (perturbed(obs, n + 0, g), perturbed(obs, 2, g)):
        assert (mixed(masked, own)[:, 0] - base).abs().max() > 1e-4
    assert (mixed(unmasked, perturbed(obs, n + 2, g))[:, 0] - mixed(unmasked, obs)[:, 0]).abs().max() > 1e-4


def test_gradient_of_a_subtask_loss_reaches_only_its_agents():
    torch.manual_seed(0)
    n, s, k = 3, 2, 3
    learner = make(n, s, k)
    m = 8
    assign = torch.tensor([1, 0, 1])  # subtask 0: agent 1; subtask 1: agents 0 and 2
    obs = with_command(torch.randn(m, n, learner.io.obs_dim), assign, s)
    utilities = torch.randn(m, n, k, requires_grad=True)
    learner.agent = Fn(lambda o: utilities[:o.shape[0]])  # the utilities are leaves we can inspect
    action = torch.randint(0, k, (m, n))
    batch = {"obs": obs, "action": action, "reward": torch.randn(m, n), "next_obs": obs,
             "terminated": torch.zeros(m, 1)}
    q_tot, target = learner.q_tot(obs, action), learner.td_target(batch)
    for subtask, agents in ((0, [1]), (1, [0, 2])):
        (grad,) = torch.autograd.grad((q_tot[:, subtask] - target[:, subtask]).pow(2).mean(), utilities,
                                      retain_graph=True)
        chosen = torch.zeros(m, n, k, dtype=torch.bool).scatter_(-1, action.unsqueeze(-1), True)
        reached = grad != 0
        assert (reached <= chosen).all()  # only the utilities of the taken actions
        assert reached.any(-1).any(0).tolist() == [i in agents for i in range(n)]


# -- the target ----------------------------------------------------------------------------------

class SumMix(nn.Module):
    """A mixer replaced by a known function: 2 * (sum of the group's utilities) + 1."""

    def forward(self, q, obs, groups):
        return 2 * torch.einsum("mn,mng->mg", q, groups) + 1


@pytest.mark.parametrize("target_groups", ["next", "current"])
def test_double_q_target_by_hand(target_groups):
    gamma, n, s, k = 0.5, 3, 2, 3
    learner = make(n, s, k, gamma=gamma, reward_scale=2.0, target_groups=target_groups)
    # Online Q(o) = own row: it picks argmax. Target Q'(o) = 10 - 3 own row: it would pick argmin.
    learner.agent = Fn(lambda o: o[..., :k])
    learner.target_agent = Fn(lambda o: 10 - 3 * o[..., :k])
    learner.target_mixer = SumMix()

    T, B, d = 1, 3, learner.io.obs_dim
    now = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]])  # copy 1: nobody on subtask 1
    later = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 0, 0]])  # copy 1: everybody leaves subtask 0
    obs = with_command(torch.zeros(T, B, n, d), now.unsqueeze(0), s)
    next_obs = with_command(torch.randn(B, n, d), later, s)
    next_obs[..., :k] = torch.tensor([[[0.0, 2.0, 1.0], [5.0, 4.0, 3.0], [1.0, 0.0, 0.5]],
                                      [[3.0, 3.5, 4.0], [2.0, 1.0, 0.0], [0.0, 0.0, 9.0]],
                                      [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]])
    reward = torch.tensor([[[1.0, 0.25, 1.0], [0.5, 0.5, 0.5], [-1.0, -1.0, 0.75]]])  # r^k on k's agents
    terminated = torch.tensor([[False, False, True]])
    final_obs = torch.full((T, B, n, d), 99.0)
    final_obs[0, 2] = next_obs[2]
    last_obs = next_obs.clone()
    last_obs[2] = -7.0  # copy 2 was reset: what it sees now is not its next obs
    rollout = Rollout(obs=obs, action=torch.zeros(T, B, n, dtype=torch.long), log_prob=torch.zeros(T, B, n),
                      reward=reward, terminated=terminated, done=terminated.clone(), final_obs=final_obs,
                      last_obs=last_obs)
    batch = learner.transitions(rollout)
    torch.testing.assert_close(batch["next_obs"], next_obs)

    # Online argmax -> target value 10 - 3 o: copy 0: agents (1, 0, 0) -> 4, -5, 7;
    # copy 1: (2, 0, 2) -> -2, 4, -17. Mixed by SumMix over the groups.
    r = 2.0 * torch.tensor([[0.25, 1.0], [0.5, 0.0], [0.75, -1.0]])  # reward_scale 2; empty subtask: 0
    if target_groups == "next":
        # copy 0: {1} -> 2 * -5 + 1 = -9, {0, 2} -> 2 * 11 + 1 = 23; copy 1: subtask 0 left by all -> 0,
        # {0, 1, 2} -> 2 * -15 + 1 = -29
        bootstrap = torch.tensor([[-9.0, 23.0], [0.0, -29.0], [0.0, 0.0]])
    else:
        # the current groups: copy 1's subtask 0 = everybody -> -29; its empty subtask 1: the bias 1
        bootstrap = torch.tensor([[-9.0, 23.0], [-29.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(learner.td_target(batch), r + gamma * bootstrap)


def test_flat_level_mixes_everyone_on_the_mean_reward():
    learner = make(3, 2, 2, command=False, gamma=0.0)
    obs = torch.randn(4, 3, learner.io.obs_dim)
    assert learner.groups(obs).shape == (4, 3, 1) and (learner.groups(obs) == 1).all()
    reward = torch.randn(4, 3)
    batch = {"obs": obs, "action": torch.zeros(4, 3, dtype=torch.long), "reward": reward, "next_obs": obs,
             "terminated": torch.zeros(4, 1)}
    torch.testing.assert_close(learner.td_target(batch), reward.mean(-1, keepdim=True))


# -- learning ------------------------------------------------------------------------------------

def entity_obs(learner: AQMIX, b: int, n: int, assign: torch.Tensor | None = None) -> torch.Tensor:
    obs = torch.randn(b, n, learner.io.obs_dim)
    return obs if assign is None else with_command(obs, assign, learner.layout.n_subtasks)


def train(learner, make_obs, reward_fn, iterations, T=8, B=16):
    n = learner.io.n_agents
    for i in range(iterations):
        stats = learner.update(bandit_rollout(learner, make_obs, reward_fn, T, B, n), UpdateContext(i / iterations)).metrics
        assert all(torch.isfinite(v) for v in stats.values())
    return stats


def test_learns_cooperative_bandit():
    torch.manual_seed(0)
    n = 2
    learner = make(n, 2, 2, command=False, learning_rate=2e-3, batch_size=64, learning_starts=128,
                   target_update_episodes=500, epsilon_anneal_steps=2560)
    # reward 1 for both only when both pick action 1
    stats = train(learner, lambda b, n: (entity_obs(learner, b, n), None),
                  lambda a, _: (a == 1).all(-1, keepdim=True).float().expand(-1, n), iterations=40)
    assert set(stats) == {"q_loss", "q_tot", "grad_norm", "epsilon"}
    action, log_prob = learner.act(entity_obs(learner, 1000, n), deterministic=True)
    assert action.shape == (1000, n) and action.dtype == torch.long and (log_prob == 0).all()
    success = (action == 1).all(-1).float().mean()
    assert success > 0.9, success


def test_learns_per_subtask_actions():
    torch.manual_seed(0)
    n, s = 3, 3
    learner = make(n, s, s, learning_rate=2e-3, batch_size=64, learning_starts=128,
                   target_update_episodes=500, epsilon_anneal_steps=2560)

    def make_obs(b, n):
        assign = torch.randint(0, s, (b, n))
        return entity_obs(learner, b, n, assign), assign

    def reward(action, assign):
        # r^k = 1 when every agent on subtask k plays action k; each agent carries its subtask's
        right = (action == assign).float()
        per_subtask = torch.stack([torch.where(assign == k, right, 1.0).prod(-1) for k in range(s)], -1)
        return per_subtask.gather(-1, assign)

    train(learner, make_obs, reward, iterations=40)
    obs, assign = make_obs(1000, n)
    action, _ = learner.act(obs, deterministic=True)
    accuracy = (action == assign).float().mean(0)
    assert (accuracy > 0.9).all(), accuracy


# -- bookkeeping ---------------------------------------------------------------------------------

def test_epsilon_schedule_and_act():
    """Sec. 4.3 / spec: epsilon-greedy, epsilon linear from 1.0 to 0.05 over a number of env
    steps (2M on SaveTheCity; 1000 here): 1 - 0.95 * 500 / 1000 half way, 0.05 after."""
    torch.manual_seed(0)
    learner = make(2, 2, 4, epsilon_anneal_steps=1000)
    assert learner.epsilon(0) == pytest.approx(1.0)
    assert learner.epsilon(500) == pytest.approx(1.0 - 0.95 * 0.5)
    assert learner.epsilon(1800) == pytest.approx(0.05)
    obs = entity_obs(learner, 4000, 2, torch.randint(0, 2, (4000, 2)))
    greedy, _ = learner.act(obs, deterministic=True)
    torch.testing.assert_close(greedy, learner.q_values(obs).argmax(-1))
    action, _ = learner.act(obs)  # epsilon 1: uniform
    counts = torch.bincount(action.flatten(), minlength=4).float() / action.numel()
    assert (counts - 0.25).abs().max() < 0.02
    learner.env_steps = 1500
    action, _ = learner.act(obs)
    assert (action != greedy).float().mean() == pytest.approx(0.05 * 0.75, abs=0.015)


def test_epsilon_counts_the_env_steps_of_every_copy():
    """Spec: the anneal is over env steps, all copies together (pymarl's t_env), not a share
    of training: a rollout of T = 5 steps of B = 8 copies advances it by 40 steps, whatever
    ``progress`` says; with 400 anneal steps epsilon is then 1 - 0.95 * 40 / 400 = 0.905."""
    learner = make(2, 2, 2, epsilon_anneal_steps=400, learning_starts=1000)
    T, B = 5, 8
    obs = entity_obs(learner, T * B, 2, torch.randint(0, 2, (T * B, 2))).unflatten(0, (T, B))
    no = torch.zeros(T, B, dtype=torch.bool)
    learner.update(Rollout(obs=obs, action=torch.zeros(T, B, 2, dtype=torch.long), log_prob=torch.zeros(T, B, 2),
                           reward=torch.zeros(T, B, 2), terminated=no, done=no, final_obs=obs, last_obs=obs[0]),
                   UpdateContext(0.9))
    assert learner.env_steps == 40 and learner.epsilon() == pytest.approx(0.905)


def test_learning_starts_target_updates_every_k_episodes_and_checkpoint():
    """Appendix D / spec: the low level's targets are copied every 200 *episodes* (here 5),
    counted over the B copies (two copies ending at the same step count 2), not every so
    many gradient steps. Rollouts of T = 3 steps, B = 4 copies, copies 0 and 1 ending at
    step 2: 2 episodes per rollout, 6 gradient steps per update once 20 rows are stored."""
    torch.manual_seed(0)
    n, s = 2, 2
    options = dict(batch_size=4, learning_starts=20, updates_per_step=2, target_update_episodes=5)
    learner = make(n, s, 2, **options)
    T, B = 3, 4
    done = torch.zeros(T, B, dtype=torch.bool)
    done[2, :2] = True

    def rollout():
        obs = entity_obs(learner, T * B, n, torch.randint(0, s, (T * B, n))).unflatten(0, (T, B))
        return Rollout(obs=obs, action=torch.randint(0, 2, (T, B, n)), log_prob=torch.zeros(T, B, n),
                       reward=torch.randn(T, B, n), terminated=done, done=done, final_obs=obs, last_obs=obs[0])

    online = [*learner.agent.parameters(), *learner.mixer.parameters()]
    target = [*learner.target_agent.parameters(), *learner.target_mixer.parameters()]
    initial = [p.detach().clone() for p in target]
    assert learner.update(rollout(), UpdateContext(0.0)).metrics == {}  # 12 rows < 20
    assert learner.gradient_steps == 0 and learner.episodes == 2
    stats = learner.update(rollout(), UpdateContext(0.1)).metrics  # 24 rows: 6 gradient steps, 4 episodes < 5: no copy
    assert learner.gradient_steps == 6 and learner.episodes == 4 and stats["q_loss"].dim() == 0
    assert all(torch.equal(p, q) for p, q in zip(target, initial))
    assert not all(torch.equal(a, b) for a, b in zip(online, target))
    learner.update(rollout(), UpdateContext(0.2))  # 6 episodes: copied after this update's gradient steps
    assert all(torch.equal(a, b) for a, b in zip(online, target)) and learner.target_episodes == 6
    assert not any(p.requires_grad for p in target)
    learner.update(rollout(), UpdateContext(0.3))  # 8 episodes, 2 since the copy: the online nets move alone
    assert not all(torch.equal(a, b) for a, b in zip(online, target))

    resumed = make(n, s, 2, **options)
    resumed.load_state_dict(learner.state_dict())
    assert len(resumed.replay) == 48 and resumed.gradient_steps == 18 and resumed.progress == pytest.approx(0.3)
    assert (resumed.episodes, resumed.target_episodes, resumed.env_steps) == (8, 6, 48)
    obs = entity_obs(learner, 5, n, torch.randint(0, s, (5, n)))
    torch.testing.assert_close(resumed.q_values(obs), learner.q_values(obs))


def test_foreach_rmsprop_steps_as_the_per_tensor_loop():
    """The optimizer runs RMSprop's foreach kernels (one call per op over every tensor); three
    gradient steps land on the same parameters, bit for bit, as torch's per-tensor loop (its
    CPU default) from the same start and the same batches."""
    torch.manual_seed(0)
    n, s = 2, 2
    learner = make(n, s, 2, batch_size=4)
    loop = make(n, s, 2, batch_size=4)
    loop.load_state_dict(learner.state_dict())
    loop.optimizer = torch.optim.RMSprop(loop.params, lr=loop.config.learning_rate, alpha=loop.config.optim_alpha,
                                         eps=loop.config.optim_eps, foreach=False)
    assert learner.optimizer.defaults["foreach"] is True
    for _ in range(3):
        obs = entity_obs(learner, 4, n, torch.randint(0, s, (4, n)))
        batch = {"obs": obs, "action": torch.randint(0, 2, (4, n)), "reward": torch.randn(4, n),
                 "next_obs": obs.flip(0), "terminated": torch.zeros(4, 1), "weight": torch.ones(4, n)}
        learner.gradient_step(batch)
        loop.gradient_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(learner.params, loop.params))


# -- errors --------------------------------------------------------------------------------------

def test_env_without_subtasks_is_refused():
    spec = EnvSpec(n_agents=2, obs_dim=10, action_space=spaces.Discrete(3), max_steps=5, num_envs=1,
                   name="plain", positions=2)
    io = AgentIO(n_agents=2, obs_dim=10, child_obs_dim=10, action_space=spaces.Discrete(3))
    with pytest.raises(ValueError, match="aqmix needs an env with entities; plain has positions"):
        AQMIX.build(io, AQMIXConfig(), spec)


def test_non_discrete_actions_are_refused():
    with pytest.raises(ValueError, match="Discrete action space.*td3"):
        make(space=spaces.Box(-1.0, 1.0, (2,)))
    with pytest.raises(ValueError, match="Discrete action space.*joint"):
        make(space=spaces.MultiDiscrete([2, 2]))


@pytest.mark.parametrize("bad, match", [
    # what the env's spec refuses when it is made, and what aqmix refuses of a layout that fits the env
    (lambda: subtask_spec(2, 2, 2, subtask_of_entity=[-1, -1, 0, 2]), r"Entities: subtask_of_entity holds subtasks -1\.\.1"),
    (lambda: subtask_spec(2, 2, 2, first=30), r"city's spec: the 4 entity rows .* beyond obs_dim \(17\)"),
    (lambda: make(spec=subtask_spec(2, 2, 2, first=1)), "inside the own row"),
])
def test_bad_layout(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_command_must_be_a_subtask_one_hot():
    spec = subtask_spec(2, 2, 2)
    io = AgentIO(n_agents=2, obs_dim=spec.obs_dim + 3, child_obs_dim=spec.obs_dim, action_space=spaces.Discrete(2))
    with pytest.raises(ValueError, match="one-hot of the 2 subtasks"):
        AQMIX.build(io, AQMIXConfig(**SMALL), spec)


@pytest.mark.parametrize("field, value, match", [
    ("heads", 3, "divide attention_dim"), ("target_update_episodes", 0, "target_update_episodes"),
    ("target_groups", "previous", "target_groups"), ("epsilon_anneal_steps", -1, "epsilon_anneal_steps"),
    ("epsilon_finish", -0.1, "epsilon_finish"), ("share_params", False, "share_params"),
    ("max_grad_norm", 0.0, "max_grad_norm"), ("learning_starts", -1, "learning_starts"),
    ("gamma", 1.5, "gamma")])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        AQMIXConfig(**{field: value})
