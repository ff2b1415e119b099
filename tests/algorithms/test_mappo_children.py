"""MAPPO on an upper level: one actor head per child, a critic over all the agent's children (TAG App. A)."""
from __future__ import annotations

import math

import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms.build import build_levels
from hmarl.learner import UpdateContext
from hmarl.algorithms.onpolicy import standardize
from hmarl.algorithms.ppo import MAPPO, MAPPOConfig
from hmarl.envs import make_env
from hmarl import AgentIO
from hmarl.buffers import Rollout
from hmarl.run.experiment import CONFIG_DIR, load_yaml


def linear_sizes(net) -> list[tuple[int, int]]:
    """(in_features, out_features) of each layer of an AgentMLP."""
    return [tuple(w.shape[1:]) for w in net.weights]


def tag_system(name: str):
    system = load_yaml(CONFIG_DIR / "algorithms" / f"{name}.yaml")
    env = make_env("mpe_simple_spread", num_envs=2, n_agents=4, max_steps=20, seed=0)
    return build_levels(env, system["levels"], {"ppo": system["ppo"], "mappo": system["mappo"]})


@pytest.mark.parametrize("name, level, actor, critic", [
    # MAPPO-PPO (App. A.4): the top sees each child's 24-d observation and acts 2-d for it;
    # its critic sees all 4 children: N_agents * obs = 96.
    ("tag_mappo_ppo", 1, (24, 2), 96),
    # 2MAPPO-PPO (App. A.5): a middle agent's head sees its child's 24-d observation and the
    # agent's 2-d command (the table's 26); the top's head sees one middle agent's 48-d message.
    ("tag_2mappo_ppo", 1, (26, 2), 50),
    ("tag_2mappo_ppo", 2, (48, 2), 96),
])
def test_tag_mappo_levels_have_the_appendix_sizes(name, level, actor, critic):
    """TAG Appendix A, MAPPO networks: actor ``Observation Size -> 64 -> 64 -> Action Size`` per
    child (2-d continuous actions, Sec. 5.1), critic ``N_agents * Observation Size -> 64 -> 64 -> 1``
    on simple spread (24-d env observations, 4 agents). The level's action is its children's
    actions concatenated, as its ``agent_io`` Box says."""
    hierarchy = tag_system(name)
    learner = hierarchy.levels[level].learner
    assert isinstance(learner, MAPPO) and learner.per_child
    assert linear_sizes(learner.actor) == [(actor[0], 64), (64, 64), (64, actor[1])]
    assert linear_sizes(learner.critic) == [(critic, 64), (64, 64), (64, 1)]
    io = learner.io
    obs = torch.randn(5, io.n_agents, io.obs_dim)
    action, log_prob = learner.act(obs)
    assert action.shape == (5, io.n_agents, io.group * actor[1]) == (5, io.n_agents, *io.action_space.shape)
    assert log_prob.shape == (5, io.n_agents, io.group)
    assert learner.value(obs).shape == (5, io.n_agents)
    hierarchy.reset(seed=0)
    hierarchy.rollout(8)
    metrics = hierarchy.update(progress=0.0)
    assert all(torch.isfinite(v) for v in metrics.values())


def children_io(n_agents=2, group=3, child_dim=4, command=2, space=None, presence=False) -> AgentIO:
    return AgentIO(n_agents=n_agents, obs_dim=group * child_dim + command, child_obs_dim=group * child_dim,
                   action_space=space or spaces.Box(-1.0, 1.0, (group * 2,)), group=group, presence=presence)


def test_each_child_is_a_mappo_agent_with_the_shared_actor():
    """Child c of agent i is acted for by pi_i(a_c | [slot_c, command_i]) (one actor per agent,
    shared by its children, MAPPO's parameter sharing): a Normal per child whose log-density is
    the sum over the child's action dims, log N(a; mu, sigma) = -(a - mu)^2 / (2 sigma^2) - log sigma
    - log sqrt(2 pi). Two children with the same slot get the same mean; the critic reads every slot."""
    torch.manual_seed(0)
    io = children_io()
    learner = MAPPO(io, MAPPOConfig())
    with torch.no_grad():
        learner.log_std.copy_(torch.tensor([[-0.5, 0.3], [0.1, -1.0]]))
    obs = torch.randn(7, 2, io.obs_dim)
    obs[:, :, 4:8] = obs[:, :, 0:4]  # child 1's slot = child 0's
    slots = obs[..., :12].unflatten(-1, (3, 4))
    command = obs[..., None, 12:].expand(7, 2, 3, 2)
    inputs = torch.cat([slots, command], -1)  # [7, N, G, 6]
    mean = torch.stack([learner.actor(inputs[:, :, c]) for c in range(3)], 2).detach()  # [7, N, G, 2]
    torch.testing.assert_close(mean[:, :, 0], mean[:, :, 1])

    action, log_prob = learner.act(obs)
    std = learner.log_std.exp().detach()[:, None]  # [N, 1, 2]
    by_hand = (-(action.view(7, 2, 3, 2) - mean).pow(2) / (2 * std ** 2) - std.log()
               - math.log(math.sqrt(2 * math.pi))).sum(-1)
    torch.testing.assert_close(log_prob, by_hand)
    torch.testing.assert_close(learner.evaluate(obs, action)[0].detach(), by_hand)
    torch.testing.assert_close(learner.act(obs, deterministic=True)[0], mean.flatten(-2))

    other = obs.clone()
    other[:, 0, 9] += 1.0  # agent 0's third child only
    value, value_other = learner.value(obs), learner.value(other)
    assert not torch.allclose(value[:, 0], value_other[:, 0])
    torch.testing.assert_close(value[:, 1], value_other[:, 1])  # agents stay independent


def test_the_ratio_is_clipped_per_child():
    """Each child head is a MAPPO agent with its own ratio rho_c = pi(a_c|o_c) / pi_old(a_c|o_c)
    and the agent's advantage (its children share its reward). The agent's policy loss is the
    mean over samples m and children c of the clipped surrogate (Yu et al. 2022, Eq. 1 with a
    mean over agents):

        L = -1/(M G) sum_{m,c} min(rho_mc A_m, clip(rho_mc, 1 - eps, 1 + eps) A_m).

    With child 0's stored log-probability 1.0 below the current one (rho_0 = e > 1 + eps) and
    A > 0 its term is clipped, constant: the gradient is that of the other children's terms,
    -1/(M G) sum_m A_m sum_{c>0} grad log pi(a_mc).
    """
    torch.manual_seed(0)
    io = children_io(n_agents=1)
    learner = MAPPO(io, MAPPOConfig(norm_adv=False))
    m = 5
    obs = torch.randn(m, 1, io.obs_dim)
    action, log_prob = learner.act(obs)
    log_prob[..., 0] -= 1.0
    advantages = torch.rand(m, 1) + 0.5
    batch = dict(obs=obs, action=action, log_prob=log_prob, advantages=advantages,
                 returns=torch.zeros(m, 1), values=torch.zeros(m, 1), weight=torch.ones(m, 1))
    actor = [*learner.actor.parameters(), learner.log_std]
    got = torch.autograd.grad(learner.losses(batch)["pg_loss"].sum(), actor)
    new_log_prob = learner.evaluate(obs, action)[0]  # [M, 1, G]
    expected = torch.autograd.grad(-(advantages[..., None] * new_log_prob[..., 1:]).sum() / (m * 3), actor)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert learner.losses(batch)["clipfrac"].item() == pytest.approx(1 / 3)


def test_discrete_children_heads_and_joint_action():
    """Discrete children: one K-way head per child (MultiDiscrete, ``joint: false``) fed the
    child's slot and the command; ``joint: true`` keeps one head over the K**G joint actions
    and the whole observation (there is no per-child action to factor)."""
    torch.manual_seed(0)
    io = children_io(space=spaces.MultiDiscrete([5, 5, 5]))
    learner = MAPPO(io, MAPPOConfig())
    assert learner.per_child and linear_sizes(learner.actor)[0] == (6, 64)
    assert linear_sizes(learner.actor)[-1] == (64, 5)
    obs = torch.randn(7, 2, io.obs_dim)
    action, log_prob = learner.act(obs)
    assert action.shape == (7, 2, 3) and log_prob.shape == (7, 2, 3)
    log_p = learner._log_probs(obs).detach()  # [7, N, G, 1, K]
    torch.testing.assert_close(log_prob, log_p[..., 0, :].gather(-1, action.unsqueeze(-1)).squeeze(-1))

    joint = MAPPO(children_io(space=spaces.Discrete(5 ** 3)), MAPPOConfig())
    assert not joint.per_child and linear_sizes(joint.actor)[0] == (14, 64)
    action, log_prob = joint.act(obs)
    assert action.shape == (7, 2) and log_prob.shape == (7, 2)


def test_empty_child_slots_count_in_no_loss():
    """With ``presence`` (children regrouped per copy), a slot whose flag is 0 holds no child: its
    head's action goes nowhere, so its terms get weight 0 and its stored action does not matter."""
    torch.manual_seed(0)
    io = children_io(n_agents=1, group=2, child_dim=3, presence=True)
    learner = MAPPO(io, MAPPOConfig())
    obs = torch.randn(6, 1, io.obs_dim)
    obs[..., 2] = 1.0  # child 0 present
    obs[..., 5] = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]).view(6, 1)  # child 1 in some samples
    action, log_prob = learner.act(obs)
    batch = dict(obs=obs, action=action, log_prob=log_prob, advantages=standardize(torch.randn(6, 1)),
                 returns=torch.zeros(6, 1), values=torch.zeros(6, 1), weight=torch.ones(6, 1))
    moved = dict(batch, action=action.clone())
    empty = obs[:, 0, 5] == 0
    moved["action"][empty, :, 2:] += 3.0  # child 1's action where slot 1 is empty
    actor = list(learner.actor.parameters())
    grads = [torch.autograd.grad(learner.losses(b)["pg_loss"].sum(), actor) for b in (batch, moved)]
    for g, h in zip(*grads):
        torch.testing.assert_close(g, h)


def test_mappo_children_learn_a_per_child_target():
    """A one-step bandit: child c of the single agent is paid -(a_c - x_c)^2 for its slot's x_c;
    the shared head must map each child's own slot to its action."""
    torch.manual_seed(0)
    io = AgentIO(n_agents=1, obs_dim=4, child_obs_dim=4, action_space=spaces.Box(-1.0, 1.0, (4,)), group=4)
    learner = MAPPO(io, MAPPOConfig(learning_rate=3e-3, anneal_lr=False))
    done = torch.ones(16, 32, dtype=torch.bool)
    for i in range(40):
        obs = torch.rand(16, 32, 1, 4) - 0.5
        action, log_prob = learner.act(obs)
        reward = -(action - obs[..., :4]).pow(2).sum(-1)
        learner.update(Rollout(obs=obs, action=action, log_prob=log_prob, reward=reward, terminated=done,
                               done=done.clone(), final_obs=obs, last_obs=obs[0]), UpdateContext(i / 40))
    obs = torch.rand(500, 1, 4) - 0.5
    error = (learner.act(obs, deterministic=True)[0] - obs).abs().mean()
    assert error < 0.1, error
