"""Simple spread with landmark subtasks (``subtasks=True``): entity rows and subtask rewards."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hmarl.envs import make_env
from hmarl.envs.landmark_subtasks import LandmarkSubtasks
from hmarl.spec import EnvSpec, TimeStep


class FixedSpread:
    """Two agents, two landmarks, VMAS's layout ``[pos, vel, landmarks - pos]``, positions set by hand."""

    def __init__(self, positions, velocities, landmarks):
        self.positions, self.velocities = torch.tensor(positions), torch.tensor(velocities)
        self.landmarks = torch.tensor(landmarks)
        self.spec = EnvSpec(n_agents=2, obs_dim=8, action_space=spaces.Discrete(5), max_steps=5, num_envs=1,
                            obs_slices={"position": slice(0, 2), "velocity": slice(2, 4), "landmarks": slice(4, 8)})

    def _obs(self):
        relative = (self.landmarks[None] - self.positions[:, None]).flatten(1)
        return torch.cat([self.positions, self.velocities, relative], -1).unsqueeze(0)

    def reset(self, seed=None):
        no = torch.zeros(1, dtype=torch.bool)
        return TimeStep(obs=self._obs(), reward=torch.zeros(1, 2), terminated=no, truncated=no)

    def step(self, actions):
        ts = self.reset()
        return TimeStep(obs=ts.obs, reward=ts.reward, terminated=ts.terminated, truncated=ts.truncated,
                        info={"final_obs": ts.obs})


def test_entity_rows_and_rewards_on_a_hand_made_state():
    inner = FixedSpread(positions=[[0.0, 0.0], [1.0, 2.0]], velocities=[[0.5, 0.0], [0.0, -1.0]],
                        landmarks=[[3.0, 4.0], [1.0, 0.0]])
    env = LandmarkSubtasks(inner)
    ts = env.step(torch.zeros(1, 2, dtype=torch.long))
    agent0 = [0, 0, 0.5, 0, 1, 0,                                         # own row (absolute)
              0, 0, 0.5, 0, 1, 0,  1, 2, 0, -1, 1, 0,                     # agents relative to agent 0
              3, 4, 0, 0, 0, 1,  1, 0, 0, 0, 0, 1]                        # landmarks
    agent1 = [1, 2, 0, -1, 1, 0,
              -1, -2, 0.5, 0, 1, 0,  0, 0, 0, -1, 1, 0,
              2, 2, 0, 0, 0, 1,  0, -2, 0, 0, 0, 1]
    assert torch.equal(ts.obs, torch.tensor([[agent0, agent1]]))
    assert torch.equal(ts.info["final_obs"], ts.obs)
    assert torch.allclose(ts.info["subtask_rewards"], -torch.tensor([[[5.0, 1.0], [8 ** 0.5, 2.0]]]))
    assert torch.equal(ts.info["entity_subtask"][0], torch.tensor([[0, 0], [0, 0], [1, 0], [0, 1]]).bool())
    assert ts.info["active_subtasks"].all()
    entities = env.spec.entities
    assert (entities.first, entities.n_entities) == (6, 4) and entities.subtask_of_entity == (-1, -1, 0, 1)
    assert env.spec.obs_dim == 30 and env.spec.obs_slices == {"position": slice(0, 2)}  # the layout changed


def _vmas_world(env):
    world = env.env._env.world
    agents = torch.stack([torch.cat([a.state.pos, a.state.vel], -1) for a in world.agents], 1)
    return agents, torch.stack([lm.state.pos for lm in world.landmarks], 1)


def _mpe_world(env):
    world = env.env.world
    agents = torch.cat([world["positions"], world["velocities"]], -1)
    return agents, world["landmarks"]


def _mpe2_world(env):
    worlds = [copy.unwrapped.world for copy in env.env._envs]
    agents = np.array([[np.concatenate([a.state.p_pos, a.state.p_vel]) for a in w.agents] for w in worlds])
    landmarks = np.array([[lm.state.p_pos for lm in w.landmarks] for w in worlds])
    return torch.tensor(agents, dtype=torch.float32), torch.tensor(landmarks, dtype=torch.float32)


@pytest.mark.parametrize("name, world", [("vmas_simple_spread", _vmas_world), ("mpe_simple_spread", _mpe_world),
                                         ("mpe2_simple_spread", _mpe2_world)])
def test_entities_are_the_simulators_agents_and_landmarks(name, world):
    env = make_env(name, num_envs=3, n_agents=3, max_steps=50, subtasks=True)
    env.reset(seed=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        ts = env.step(torch.randint(0, env.spec.action_dim, (3, 3), generator=generator))
    agents, landmarks = world(env)
    entities = ts.info["entities"]
    assert torch.allclose(entities[:, :3, :4], agents, atol=1e-5)
    assert torch.allclose(entities[:, 3:, :2], landmarks, atol=1e-5)
    expected = -torch.cdist(agents[..., :2], landmarks)
    assert torch.allclose(ts.info["subtask_rewards"], expected, atol=1e-5)
    own = ts.obs[..., :6]
    rows = ts.obs[..., 6:].unflatten(-1, (6, 6))
    assert torch.allclose(own, entities[:, :3])
    assert torch.allclose(rows[..., :2] + own[:, :, None, :2], entities[:, None, :, :2].expand(-1, 3, -1, -1),
                          atol=1e-5)


def test_subtask_rewards_at_an_episode_end_are_the_final_positions():
    env = make_env("vmas_simple_spread", num_envs=2, n_agents=2, max_steps=3, subtasks=True)
    env.reset(seed=0)
    for _ in range(3):
        ts = env.step(torch.ones(2, 2, dtype=torch.long))
    assert ts.truncated.all()
    final = ts.info["final_obs"]
    agents, landmarks = final[..., :2], final[:, 0, 6 + 2 * 6:].unflatten(-1, (2, 6))[..., :2] + final[:, :1, :2]
    assert torch.allclose(ts.info["subtask_rewards"], -torch.cdist(agents, landmarks), atol=1e-5)
    assert not torch.allclose(final, ts.obs)  # the reset observation differs from the final one


@pytest.mark.parametrize("name", ["vmas_simple_spread", "mpe_simple_spread", "mpe2_simple_spread"])
def test_without_the_option_an_algorithm_is_told_to_turn_it_on(name):
    env = make_env(name, num_envs=1, n_agents=2, max_steps=5)
    assert env.spec.entities is None and env.spec.optional["entities"] == "subtasks"
    with pytest.raises(ValueError, match=r"alma needs an env with entities; .* set env_options: \{subtasks: true\}"):
        env.spec.require("entities", "alma")
