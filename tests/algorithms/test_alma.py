"""ALMA as a hierarchy: structure, the heuristic allocation, bad input."""
from __future__ import annotations

import pytest
import torch

from hmarl.algorithms.alma.subtasks import OnSubtaskChange, SubtaskReward
from hmarl.algorithms import FAMILIES
from hmarl.algorithms.alma.allocator import HeuristicAllocator
from hmarl.algorithms.alma.family import build
from hmarl.envs import make_env
from hmarl.run.experiment import CONFIG_DIR, load_yaml


def alma(env, name="alma", **overrides):
    config = load_yaml(CONFIG_DIR / "algorithms" / f"{name}.yaml")
    options = {k: config[k] for k in ("aqmix", "allocator") if k in config}
    return build(env, config["levels"], options, **{"action_length": config["action_length"], **overrides})


def city(num_envs=2, n_agents=3):
    return make_env("savethecity", num_envs=num_envs, n_agents=n_agents, max_steps=150, seed=0)


def test_structure():
    env = city()
    hierarchy = alma(env)
    agents, allocator = hierarchy.levels
    assert isinstance(agents.reward_rule, SubtaskReward)
    assert isinstance(allocator.termination, OnSubtaskChange) and allocator.termination.k == 5
    assert hierarchy.strides == [1, 1]
    assert allocator.io.action_space.nvec.tolist() == [4, 4, 4]  # a building per agent
    assert agents.io.obs_dim == env.spec.obs_dim + 4  # the assignment, one-hot
    assert agents.learner.config.mask_subtasks and not alma(env, "alma_nomask").levels[0].learner.config.mask_subtasks
    hierarchy.reset(0)
    hierarchy.rollout(20)
    rollout = allocator.rollout()
    assert rollout.decision[0].all() and rollout.decision[5].all()  # episode start, then every 5 steps
    held = rollout.action[:, :, 0]  # [T, B, N]
    between = ~rollout.decision
    assert torch.equal(held[1:][between[1:]], held[:-1][between[1:]])  # held between decisions


def test_allocator_learns_from_the_team_reward_once():
    """Sec. 3 / App. B: the allocator's reward is the global (team) reward R of SaveTheCity, the
    same for every agent, not the sum over the 3 agents: each meta-transition's reward is the
    mean of R over its segment, recomputed here from the env's own rewards."""
    torch.manual_seed(0)
    env = city(num_envs=2, n_agents=3)
    team = []
    step = env.step

    def recording(actions):
        ts = step(actions)
        assert (ts.reward == ts.reward[:, :1]).all()  # SaveTheCity: one team reward for all
        team.append(ts.reward[:, 0])
        return ts

    env.step = recording
    hierarchy = alma(env)
    hierarchy.reset(0)
    hierarchy.rollout(30)
    allocator = hierarchy.levels[1]
    rollout = allocator.rollout()
    batch = allocator.learner.meta_transitions(rollout)
    reward = torch.stack(team)[-rollout.obs.shape[0]:]  # [T, B]
    # the same segments by hand: from each decision to the next (all copies are in their first episode)
    expected = []
    for b in range(2):
        starts = rollout.decision[:, b].nonzero().flatten().tolist()
        expected += [reward[t0:t1, b].mean() for t0, t1 in zip(starts, starts[1:])]
    assert rollout.done.sum() == 0 and len(expected) == len(batch["reward"])
    torch.testing.assert_close(batch["reward"].sort().values, torch.stack(expected).sort().values)


@pytest.mark.parametrize("name", ["alma", "alma_nomask", "alma_heuristic", "aqmix"])
def test_configs_carry_the_appendix_settings(name):
    """Appendix D and the spec's settings, in every shipped config of the family: attention
    width 128 everywhere (the allocator's embedding and critic, the agents', the mixer's),
    4 heads, mixing width 32, RMSprop 5e-4, gamma 0.99, grad clip 10; targets every 200
    episodes below and 50 above; epsilon 1.0 -> 0.05 over 2M env steps (SaveTheCity);
    Pop-Art on the allocator's value; its exploration 1.0 -> 0.05 over 20% and 1.0 -> 0 over 5%."""
    env, config = city(), load_yaml(CONFIG_DIR / "algorithms" / f"{name}.yaml")
    hierarchy = (alma(env, name) if config["family"] == "alma"
                 else FAMILIES["flat"].build(env, config["levels"], {"aqmix": config["aqmix"]}))
    low = hierarchy.levels[0].learner.config
    assert (low.attention_dim, low.hypernet_embed, low.heads, low.mixing_embed_dim) == (128, 128, 4, 32)
    assert (low.learning_rate, low.gamma, low.max_grad_norm, low.target_update_episodes) == (5e-4, 0.99, 10.0, 200)
    assert (low.epsilon_start, low.epsilon_finish, low.epsilon_anneal_steps) == (1.0, 0.05, 2_000_000)
    assert low.mask_subtasks == (name in ("alma", "alma_heuristic"))
    if name in ("alma", "alma_nomask"):
        high = hierarchy.levels[1].learner.config
        assert (high.embedding, high.hidden_sizes, high.heads, high.n_proposals) == (128, [128], 4, 32)
        assert (high.learning_rate, high.gamma, high.max_grad_norm) == (5e-4, 0.99, 10.0)
        assert high.target_update_episodes == 50 and high.popart and high.entropy_coef == 0.01
        assert (high.prop_alloc_eps_start, high.prop_alloc_eps_end, high.prop_alloc_eps_fraction) == (1.0, 0.05, 0.2)
        assert (high.alloc_eps_start, high.alloc_eps_end, high.alloc_eps_fraction) == (1.0, 0.0, 0.05)


def test_heuristic_allocation_on_a_hand_made_city():
    env = city(num_envs=1)
    # buildings at (1, 1) burning, (1, 13) not, (13, 1) burning, (13, 13) not
    obs = env.set_state(0, agent_positions=[[2, 12], [2, 12], [12, 2]],
                        agent_types=["firefighter", "builder", "generalist"],
                        building_positions=[[1, 1], [1, 13], [13, 1], [13, 13]],
                        health=[0.5, 0.5, 0.5, 0.5], fire=[0.5, 0.0, 0.5, 0.0])
    hierarchy = alma(env, "alma_heuristic")
    allocator = hierarchy.levels[1].learner
    assert isinstance(allocator, HeuristicAllocator)
    action, _ = allocator.act(hierarchy.levels[1]._child_obs(obs, None))
    # the firefighter near (1, 13) goes to the nearest burning building (1, 1); the builder
    # stays with the nearest one (1, 13); the generalist goes to the burning (13, 1) next to it
    assert action[0, 0].tolist() == [0, 1, 2]


def test_bad_input():
    with pytest.raises(ValueError, match="alma needs an env with entities; vmas_balance has obs_slices.position, positions"):
        alma(make_env("vmas_balance", num_envs=1, n_agents=3, max_steps=10, seed=0))
    with pytest.raises(ValueError, match="action_length must be >= 1"):
        alma(city(), action_length=0)
    with pytest.raises(ValueError, match="an ALMA hierarchy has two levels"):
        build(city(), [{"learner": "aqmix"}], {})
