"""HRL-CG: the connected gradient of Eq. 14 by hand, where it goes, lambda = 0, meta-period rows, the
update schedule and warm-up in env steps, the carried goal at a period's end, the worker's view, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms import td3
from hmarl.algorithms.hrl_cg import family as hrl_cg
from hmarl.algorithms.dqn import DQN, DQNConfig
from hmarl.algorithms.hrl_cg.goal_manager import GoalManager, GoalManagerConfig
from hmarl.algorithms.td3 import TD3, TD3Config
from hmarl.envs import make_env
from hmarl.buffers import Rollout
from hmarl.learner import AgentIO, UpdateContext
from tests.toys import ToyEnv, _io


def pair(cg_lambda=0.5, worker_space=spaces.Box(-1.0, 1.0, (1,)), reward_scale=1.0):
    """A manager over 2-d observations (goal dims 0, 1) and its worker (obs + 2-d goal)."""
    torch.manual_seed(0)
    small = dict(hidden_sizes=[8], batch_size=4, buffer_size=64, random_steps=0)
    manager = GoalManager(_io(1, 2, spaces.Box(-10.0, 10.0, (2,))), GoalManagerConfig(cg_lambda=cg_lambda, **small),
                          goal_index=[0, 1])
    if isinstance(worker_space, spaces.Box):
        worker = TD3(_io(1, 4, worker_space), TD3Config(reward_scale=reward_scale, **small))
    else:
        worker = DQN(_io(1, 4, worker_space), DQNConfig(hidden_sizes=[8], reward_scale=reward_scale))
    return manager, worker


def period_batch(m=3, k=2):
    g = torch.Generator().manual_seed(1)
    return {"obs": torch.randn(m, 1, 2, generator=g),
            "period_obs": torch.randn(m, 1, k, 2, generator=g),
            "period_next": torch.randn(m, 1, k, 2, generator=g),
            "period_valid": torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]], [[1.0, 1.0]]]),
            "weight": torch.ones(m, 1)}


def linear_case(manager):
    """g = A s for the manager; the hand-derived quantities of every valid worker step.

    For meta row r with s_t = obs[r] and worker step i (s_i, s'_i): tau = s_t + A s_t is the
    absolute target that h keeps fixed, g_i = tau - s_i (Eq. 6 applied i times) and
    e_i = tau - s'_i, so r_w = -||e_i|| (Eq. 5) and dg_i / dA_jk = dtau / dA_jk = s_t,k e_j.
    """
    a = torch.tensor([[2.0, 0.0], [1.0, -1.0]], requires_grad=True)
    manager.policy = lambda obs: obs @ a.T  # g = A s
    batch = period_batch()
    steps = []
    for row in range(3):
        s_t = batch["obs"][row, 0]
        tau = (s_t + a.detach() @ s_t)
        for i in range(2):
            if batch["period_valid"][row, 0, i]:
                s_i, s_next = batch["period_obs"][row, 0, i], batch["period_next"][row, 0, i]
                steps.append((s_t, s_i, tau - s_i, tau - s_next))
    assert len(steps) == 5
    return a, batch, steps


def test_connected_gradient_is_eq_14_on_a_linear_td3_worker():
    """Kreidieh et al. 2020, Section 4.2, Eq. 14 (derived in Appendix A, Eq. 26): the connected
    term's gradient is grad_theta g_t * grad_g [ r_w(s_t, g, s_t+1) + pi_w(g, s_t) grad_a
    Q_w(g_t, s_t, a)|a=pi_w(g_t, s_t) ] at g = g_t: through the intrinsic reward and the worker's
    policy input, with no direct dQ_w/dg term. Linear worker: pi_w(o) = w . o, Q_w(o, a) = u . o + v a
    with o = [s, g], so per step d/dg = -rho e_i / ||e_i|| + v w_g, and the critic's goal weights
    u_g (nonzero here) must not appear."""
    manager, worker = pair(reward_scale=0.5)
    rho = 0.5
    w, u, v = torch.tensor([3.0, -1.0, 0.5, 2.0]), torch.tensor([1.0, 2.0, -4.0, 7.0]), 1.5
    worker.policy = lambda obs: (obs @ w).unsqueeze(-1)
    worker.q_value = lambda obs, action: obs @ u + v * action.squeeze(-1)
    a, batch, steps = linear_case(manager)
    value = manager.connected_term(batch, worker)

    expected_value = sum(-rho * e.norm() + u @ torch.cat([s_i, g]) + v * (w @ torch.cat([s_i, g]))
                         for _, s_i, g, e in steps) / len(steps)
    expected_grad = sum(torch.outer(-rho * e / e.norm() + v * w[2:], s_t) for s_t, _, _, e in steps) / len(steps)
    torch.testing.assert_close(value, expected_value)
    (grad,) = torch.autograd.grad(value, a)
    torch.testing.assert_close(grad, expected_grad)
    with_critic_goal = expected_grad + sum(torch.outer(u[2:], s_t) for s_t, *_ in steps) / len(steps)
    assert not torch.allclose(grad, with_critic_goal)  # the misread Eq. 14: dQ_w/dg included


def test_connected_gradient_of_a_dqn_worker_flows_through_its_softmax_policy():
    """The discrete variant of Eq. 14 (spec: multi-agent use): the worker's value is
    sum_a p_a Q_w(s, sg(g), a) with p = softmax(Q_w(s, g, .) / T), so d/dg = sum_a dp_a/dg q_a
    = (1/T) sum_a p_a (q_a - qbar) M_a,g for a linear Q_w(o) = M o (qbar = sum_a p_a q_a);
    the softmax-weighted critic gradient sum_a p_a M_a,g must not appear."""
    manager, worker = pair(worker_space=spaces.Discrete(3), reward_scale=0.5)
    temperature, rho = 2.0, 0.5
    manager.config.cg_temperature = temperature
    m = torch.tensor([[1.0, 0.0, 0.5, -1.0], [0.0, 2.0, -1.0, 0.5], [-1.0, 1.0, 2.0, 1.0]])  # [K, 4]
    worker.q_values = lambda obs: obs @ m.T
    a, batch, steps = linear_case(manager)
    value = manager.connected_term(batch, worker)

    expected_value, expected_grad, critic_part = 0.0, 0.0, 0.0
    for s_t, s_i, g, e in steps:
        q = m @ torch.cat([s_i, g])
        p = torch.softmax(q / temperature, 0)
        q_bar = p @ q
        expected_value = expected_value - rho * e.norm() + q_bar
        d_goal = -rho * e / e.norm() + (p * (q - q_bar)) @ m[:, 2:] / temperature
        expected_grad = expected_grad + torch.outer(d_goal, s_t)
        critic_part = critic_part + torch.outer(p @ m[:, 2:], s_t)
    torch.testing.assert_close(value, expected_value / len(steps))
    (grad,) = torch.autograd.grad(value, a)
    torch.testing.assert_close(grad, expected_grad / len(steps))
    assert not torch.allclose(grad, (expected_grad + critic_part) / len(steps))


def test_connected_term_against_finite_differences_on_real_networks():
    """Eq. 14 on the learners' own networks: the autograd gradient of the connected term along a
    random direction D of the manager's last-layer bias matches the central finite difference of
    f(eps) = mean_i [r_w(g_i(eps)) + Q_w(s_i, g_i(0), pi_w(s_i, g_i(eps)))], the critic's goal
    held at eps = 0 (double precision)."""
    manager, worker = pair(reward_scale=0.5)
    manager.double()
    worker.double()
    batch = {k: v.double() for k, v in period_batch().items()}
    bias = manager.actor.biases[-1]
    direction = torch.randn_like(bias)
    (grad,) = torch.autograd.grad(manager.connected_term(batch, worker), bias)

    fixed_goals = None

    def f(eps):
        nonlocal fixed_goals
        with torch.no_grad():
            bias.add_(eps * direction)
            target = batch["obs"] + manager.policy(batch["obs"])
            bias.sub_(eps * direction)
            goals = target.unsqueeze(-2) - batch["period_obs"]
            if fixed_goals is None:
                fixed_goals = goals
            reward = -(target.unsqueeze(-2) - batch["period_next"]).norm(dim=-1) * 0.5
            acting = torch.cat([batch["period_obs"], goals], -1).transpose(-3, -2)
            judged = torch.cat([batch["period_obs"], fixed_goals], -1).transpose(-3, -2)
            value = worker.q_value(judged, worker.policy(acting)).transpose(-2, -1)
            valid = batch["period_valid"]
            return ((reward + value) * valid).sum() / valid.sum()

    f(0.0)
    h = 1e-6
    numeric = (f(h) - f(-h)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("worker_space", [spaces.Box(-1.0, 1.0, (1,)), spaces.Discrete(3)])
def test_connected_gradient_reaches_the_manager_actor_only(worker_space):
    manager, worker = pair(worker_space=worker_space)
    worker_before = copy.deepcopy([p.detach() for p in worker.parameters()])
    flags = [p.requires_grad for p in worker.parameters()]
    with manager.within(UpdateContext(below_learner=worker)):
        loss = manager.actor_loss(period_batch())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in manager.actor.parameters())
    assert all(p.grad is None for p in worker.parameters())
    assert [p.requires_grad for p in worker.parameters()] == flags  # unfrozen again
    assert all(torch.equal(a, b) for a, b in zip(worker_before, worker.parameters()))


def test_connected_term_weighs_in_with_lambda():
    batch = period_batch()
    plain, _ = pair(cg_lambda=0.0)
    connected, worker = pair(cg_lambda=0.5)
    with connected.within(UpdateContext(below_learner=worker)):
        difference = connected.actor_loss(batch) - plain.actor_loss(batch)
    assert torch.allclose(difference, -0.5 * connected.connected_term(batch, worker))


def manager_rollout(t_manager=2, k=3, b=2):
    """A manager rollout and its worker's rollout of the same env steps (obs_dim 2, goal 2)."""
    g = torch.Generator().manual_seed(2)
    t_worker = t_manager * k
    worker_obs = torch.randn(t_worker, b, 1, 4, generator=g)
    done = torch.zeros(t_worker, b, dtype=torch.bool)
    done[1, 0] = True  # copy 0's episode ends at the second worker step of the first period
    below = Rollout(obs=worker_obs, action=torch.zeros(t_worker, b, 1, 1), log_prob=torch.zeros(t_worker, b, 1),
                    reward=torch.zeros(t_worker, b, 1), terminated=done.clone(), done=done,
                    final_obs=torch.full((t_worker, b, 1, 4), 7.0), last_obs=torch.full((b, 1, 4), 5.0))
    manager_obs = worker_obs[::k, ..., :2]
    rollout = Rollout(obs=manager_obs, action=torch.zeros(t_manager, b, 1, 2), log_prob=torch.zeros(t_manager, b, 1),
                      reward=torch.zeros(t_manager, b, 1), terminated=torch.zeros(t_manager, b, dtype=torch.bool),
                      done=done.reshape(t_manager, k, b).any(1), final_obs=manager_obs.clone(),
                      last_obs=torch.zeros(b, 1, 2))
    return rollout, below


def test_meta_period_rows_from_the_worker_rollout():
    manager, _ = pair()
    rollout, below = manager_rollout()
    rows = manager.transitions(rollout, UpdateContext(below=below))
    assert rows["period_obs"].shape == (4, 1, 3, 2) and rows["period_next"].shape == (4, 1, 3, 2)
    # row (t=0, copy 0) holds worker steps 0..2 of copy 0
    assert torch.equal(rows["period_obs"][0, 0], below.obs[0:3, 0, 0, :2])
    # the step that ended the episode is followed by its final observation
    assert torch.equal(rows["period_next"][0, 0, 1], torch.full((2,), 7.0))
    assert torch.equal(rows["period_next"][0, 0, 0], below.obs[1, 0, 0, :2])
    # steps after the episode's end belong to the next episode: not valid for this period
    assert rows["period_valid"][0, 0].tolist() == [1.0, 1.0, 0.0]
    assert rows["period_valid"][1, 0].tolist() == [1.0, 1.0, 1.0]
    # the last worker step bootstraps from the rollout's last observation
    assert torch.equal(rows["period_next"][3, 0, 2], torch.full((2,), 5.0))


def test_lambda_zero_is_exactly_plain_hrl():
    rollout, below = manager_rollout()

    def trained(cls, config):
        torch.manual_seed(3)
        io = _io(1, 2, spaces.Box(-10.0, 10.0, (2,)))
        learner = GoalManager(io, config, goal_index=[0, 1]) if cls is GoalManager else cls(io, config)
        worker = TD3(_io(1, 4, spaces.Box(-1.0, 1.0, (1,))), TD3Config(hidden_sizes=[8]))  # same RNG use
        for _ in range(3):
            learner.update(rollout, UpdateContext(0.0, below=below, below_learner=worker))
        return learner.actor.state_dict()

    small = dict(hidden_sizes=[8], batch_size=2, buffer_size=64, random_steps=0)
    plain = trained(TD3, TD3Config(**small))
    hrl = trained(GoalManager, GoalManagerConfig(cg_lambda=0.0, **small))
    assert all(torch.equal(plain[k], hrl[k]) for k in plain)
    cg = trained(GoalManager, GoalManagerConfig(cg_lambda=0.5, **small))
    assert not all(torch.equal(plain[k], cg[k]) for k in plain)


LEVELS = [{"learner": "auto"}, {"learner": "goal_manager", "period": 10}]
GOAL_DIM_1 = {"obs_slices": {"position": slice(1, 2)}}  # the toy's obs dim 1 as its goal dim


@pytest.mark.parametrize("env, levels, options, message", [
    (ToyEnv(n_agents=1, continuous=True), LEVELS, {}, "hrl_cg needs an env with obs_slices.position; toy has none"),
    (ToyEnv(n_agents=1, continuous=True, facts=GOAL_DIM_1), LEVELS, {"cg_lambda": -0.1},
     "cg_lambda must be >= 0"),
    (ToyEnv(n_agents=1, continuous=True, facts=GOAL_DIM_1),
     [{"learner": "auto"}, {"learner": "goal_manager", "period": 0}], {}, "period must be >= 1"),
    (ToyEnv(n_agents=1, continuous=True, facts=GOAL_DIM_1), LEVELS[:1], {}, "has two levels"),
    (ToyEnv(n_agents=1, continuous=True, facts=GOAL_DIM_1), LEVELS, {"worker_sees_context": False},
     "worker_sees_context: false, but toy does not declare which observation dims hold its context"),
    (ToyEnv(n_agents=1, continuous=True, facts={"obs_slices": {"position": slice(1, 2), "context": slice(1, 3)}}),
     LEVELS, {}, r"context dims \[1\] are also goal dims"),
])
def test_bad_input(env, levels, options, message):
    with pytest.raises(ValueError, match=message):
        hrl_cg.build(env, levels, {}, **options)


def test_discrete_envs_get_a_dqn_worker():
    env = ToyEnv(n_agents=2, n_actions=3, facts={"obs_slices": {"position": slice(1, 3)}})
    hierarchy = hrl_cg.build(env, LEVELS, {"dqn": {"hidden_sizes": [8]}, "goal_manager": {"hidden_sizes": [8]}})
    worker, manager = (level.learner for level in hierarchy.levels)
    assert isinstance(worker, DQN) and manager.goal_index.tolist() == [1, 2]
    assert hierarchy.levels[0].command.shape == (2,) and float(hierarchy.levels[0].command.high[0]) == 10.0


# -- the hierarchy on a toy env: schedules in env steps, the carried goal, the worker's view ---------

def toy_hierarchy(num_envs=4, period=10, n_agents=1, obs_slices=None, **family):
    """HRL-CG on the toy env (obs [id, t, last action]; goals on dims t, last action) with tiny TD3s."""
    torch.manual_seed(0)
    env = ToyEnv(num_envs=num_envs, n_agents=n_agents, continuous=True,
                 facts={"obs_slices": {"position": slice(1, 3), **(obs_slices or {})}})
    small = {"hidden_sizes": [8], "batch_size": 4, "buffer_size": 1000, "random_steps": 0}
    levels = [{"learner": "auto"}, {"learner": "goal_manager", "period": period}]
    hierarchy = hrl_cg.build(env, levels, {"td3": small, "goal_manager": small}, **family)
    hierarchy.reset(0)
    return hierarchy


def count_updates(learners, monkeypatch):
    """Critic steps, actor steps and target updates of each learner, counted as they happen."""
    calls = [{"critic": 0, "actor": 0, "targets": 0} for _ in learners]
    for learner, count in zip(learners, calls):
        for name, optimizer in (("critic", learner.critic_optimizer), ("actor", learner.actor_optimizer)):
            step = optimizer.step

            def counted(*args, _step=step, _name=name, _count=count, **kwargs):
                _count[_name] += 1
                return _step(*args, **kwargs)

            optimizer.step = counted
    update = td3.soft_update

    def counted_update(target, source, tau):
        for learner, count in zip(learners, calls):
            count["targets"] += target is learner.actor_target  # one of its three target updates
        return update(target, source, tau)

    monkeypatch.setattr(td3, "soft_update", counted_update)
    return calls


def test_gradient_steps_per_env_step_of_each_copy(monkeypatch):
    """HRL-CG Section 6.2: "Lower-level critic updates 1 environment step and delay actor and target
    critic updates every 2 steps. Higher-level critic updates 10 environment steps and delay actor
    and target critic updates every 20 steps". A rollout of T = 40 env steps of B = 4 copies is
    160 env steps: 160 worker critic steps and 80 actor/target steps; 16 manager critic steps
    (one per decision of each copy, k = 10) and 8 connected-gradient actor steps. (One step per
    vector step would be 40 and 4.)"""
    hierarchy = toy_hierarchy(num_envs=4, cg_lambda=0.5)
    worker, manager = (level.learner for level in hierarchy.levels)
    counts = count_updates([worker, manager], monkeypatch)
    hierarchy.rollout(40)
    hierarchy.update(0.0)
    assert counts == [{"critic": 160, "actor": 80, "targets": 80}, {"critic": 16, "actor": 8, "targets": 8}]
    assert (worker.gradient_steps, manager.gradient_steps) == (160, 16)
    assert (worker.env_steps, manager.env_steps) == (160, 160)


def test_random_goals_last_random_steps_env_steps():
    """HRL-CG Section 6.2: "Initial purely random exploration for the first 10,000 time steps"
    for both controllers, counted in env steps: a manager deciding every k = 10 env steps acts at
    random for random_steps / 10 decisions per copy. random_steps = 200 with B = 2 copies: after
    90 env steps of each copy (180 env steps) the manager still explores at random, after 100
    (200) it does not; the worker's warm-up ends at the same env step."""
    hierarchy = toy_hierarchy(num_envs=2)
    worker, manager = (level.learner for level in hierarchy.levels)
    worker.config.random_steps = manager.config.random_steps = 200
    hierarchy.rollout(90)
    assert (worker.acted, manager.acted) == (180, 180) and worker.warming_up and manager.warming_up
    hierarchy.rollout(10)
    assert (worker.acted, manager.acted) == (200, 200)
    assert not worker.warming_up and not manager.warming_up
    assert (worker.stride, manager.stride) == (1, 10)


def test_worker_value_target_keeps_the_carried_goal_at_a_period_end():
    """HRL-CG Eq. 6 in the worker's transitions: g_{t+1} = h(s_t, g_t, s_{t+1}) = s_t + g_t - s_{t+1},
    also at the last step of a meta period, where the worker's next observation already holds
    the manager's new goal. Hand case (goal dims 1, 2 of a 3-dim s): the stored next goal at the
    period's end is s_t[1:] + g_t - s_{t+1}[1:], not g_{t+1} from the manager."""
    io = AgentIO(n_agents=1, obs_dim=5, child_obs_dim=3, action_space=spaces.Box(-1.0, 1.0, (2,)))
    worker = TD3(io, TD3Config(hidden_sizes=[8]))
    worker.carry_goals([1, 2])
    s = torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 2.5], [0.0, 3.0, 1.0]])  # s_0, s_1, s_2
    goals = torch.tensor([[4.0, 1.0], [3.0, 0.5], [9.0, -9.0]])  # g_0, h(s_0, g_0, s_1), a new goal
    obs = torch.cat([s, goals], -1)[:2].view(2, 1, 1, 5)
    no = torch.zeros(2, 1, dtype=torch.bool)
    rollout = Rollout(obs=obs, action=torch.zeros(2, 1, 1, 2), log_prob=torch.zeros(2, 1, 1),
                      reward=torch.zeros(2, 1, 1), terminated=no, done=no, final_obs=torch.full((2, 1, 1, 5), 99.0),
                      last_obs=torch.cat([s[2], goals[2]]).view(1, 1, 5))
    next_obs = worker.transitions(rollout)["next_obs"][:, 0]
    carried = torch.tensor([[2.0 + 3.0 - 3.0, 2.5 + 0.5 - 1.0]])  # s_1 + g_1 - s_2 on dims 1, 2
    torch.testing.assert_close(next_obs[1], torch.cat([s[2:], carried], -1)[0])
    torch.testing.assert_close(next_obs[0], obs[1, 0, 0])  # inside the period: the next observation


def test_worker_transitions_match_the_level_s_carried_goal():
    """The same Eq. 6 on a real rollout: the level stores, at every step, the observation before
    any reset with the carried goal (``final_obs``); the worker's next observations equal it, and
    differ from ``Rollout.next_obs()`` exactly at the period ends, where the manager's new goal is."""
    hierarchy = toy_hierarchy(num_envs=2, period=5)
    hierarchy.rollout(20)
    worker = hierarchy.levels[0]
    rollout = worker.rollout()
    rows = worker.learner.transitions(rollout)
    torch.testing.assert_close(rows["next_obs"], rollout.final_obs.flatten(0, 1))
    differs = (rollout.next_obs() != rollout.final_obs).flatten(1).any(-1)  # [T] steps
    assert differs.nonzero().flatten().tolist() == [4, 9, 14]  # the ends of the first three periods


def test_the_worker_does_not_see_the_context():
    """HRL-CG Section 2.4 and Table 1: the manager is pi_m(s, c), the worker pi_w(s, g); c (the
    maze's target, obs dims 2, 3 of (x, y, target_x, target_y)) is passed to the manager only. The
    worker's networks read (x, y, g_x, g_y): its action does not change with the target, the
    manager's goal does. worker_sees_context: true restores the full observation."""
    env = make_env("point_maze", num_envs=3, max_steps=50, seed=0)
    levels = [{"learner": "auto"}, {"learner": "goal_manager", "period": 10}]
    options = {"td3": {"hidden_sizes": [8]}, "goal_manager": {"hidden_sizes": [8]}}
    worker, manager = (level.learner for level in hrl_cg.build(env, levels, options).levels)
    obs = torch.randn(3, 1, 6)
    moved = obs.clone()
    moved[..., 2:4] += 5.0
    torch.testing.assert_close(worker.act(moved, deterministic=True)[0], worker.act(obs, deterministic=True)[0])
    assert not torch.allclose(manager.act(moved[..., :4], deterministic=True)[0],
                              manager.act(obs[..., :4], deterministic=True)[0])
    assert worker.obs_index.tolist() == [0, 1, 4, 5] and worker.actor.weights[0].shape[1] == 4
    assert manager.obs_index is None and manager.actor.weights[0].shape[1] == 4
    seeing = hrl_cg.build(env, levels, options, worker_sees_context=True).levels[0].learner
    assert seeing.obs_index is None and seeing.actor.weights[0].shape[1] == 6


def test_meta_period_rows_leave_out_masked_worker_steps():
    """The connected term averages over the worker steps that count (Eq. 14's expectation over
    the worker's samples): a worker step masked out below (a dead agent) is not valid."""
    manager, _ = pair()
    rollout, below = manager_rollout()
    below.mask = torch.ones(below.obs.shape[:3], dtype=torch.bool)
    below.mask[4, 1] = False  # copy 1, second period, its second worker step
    rows = manager.transitions(rollout, UpdateContext(below=below))
    assert rows["period_valid"][3, 0].tolist() == [1.0, 0.0, 1.0]
    assert rows["period_valid"][0, 0].tolist() == [1.0, 1.0, 0.0]
