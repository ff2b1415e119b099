"""ParallelEnvAdapter: `mpe2_simple_spread` checked against mpe2 itself, plus generic edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from mpe2 import simple_spread_v3
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import aec_to_parallel

from hmarl.envs import make_env
from hmarl.envs.pettingzoo import ParallelEnvAdapter

AGENTS = [f"agent_{j}" for j in range(4)]


def _random_actions(gen: torch.Generator, b: int, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 5, (b, n), generator=gen)


def _reference(seed: int, max_steps: int, **kwargs):
    env = simple_spread_v3.parallel_env(N=4, max_cycles=max_steps, **kwargs)
    obs, _ = env.reset(seed=seed)
    return env, obs


def _stack(per_agent: dict) -> torch.Tensor:
    return torch.tensor(np.stack([per_agent[a] for a in AGENTS]), dtype=torch.float32)


def test_spec_and_shapes():
    env = make_env("mpe2_simple_spread", num_envs=3, n_agents=4, max_steps=25)
    spec = env.spec
    assert (spec.n_agents, spec.obs_dim, spec.state_dim, spec.num_envs) == (4, 24, 96, 3)
    assert spec.action_space == spaces.Discrete(5) and spec.max_steps == 25
    assert spec.name == "mpe2_simple_spread"
    continuous = make_env("mpe2_simple_spread", num_envs=1, continuous_actions=True)
    assert continuous.spec.action_space == spaces.Box(0.0, 1.0, (5,), np.float32)

    ts = env.reset(seed=0)
    assert ts.obs.shape == (3, 4, 24) and ts.obs.dtype == torch.float32
    assert torch.equal(ts.reward, torch.zeros(3, 4))
    assert ts.terminated.dtype == torch.bool and not ts.terminated.any() and not ts.truncated.any()
    # mpe2's state is every agent's observation concatenated.
    assert torch.equal(ts.state, ts.obs.reshape(3, 96))

    ts = env.step(_random_actions(torch.Generator().manual_seed(0), 3))
    assert ts.obs.shape == ts.info["final_obs"].shape == (3, 4, 24)
    assert ts.reward.shape == (3, 4) and ts.reward.dtype == torch.float32
    assert ts.terminated.shape == ts.truncated.shape == (3,)
    assert torch.equal(ts.state, ts.obs.reshape(3, 96))


def test_matches_reference_and_auto_resets_with_final_obs():
    seed, max_steps, b = 7, 5, 2
    env = make_env("mpe2_simple_spread", num_envs=b, max_steps=max_steps)
    ts = env.reset(seed=seed)
    refs = []
    for i in range(b):
        ref, ref_obs = _reference(seed + i, max_steps)
        refs.append(ref)
        assert torch.equal(ts.obs[i], _stack(ref_obs))

    gen = torch.Generator().manual_seed(0)
    for t in range(max_steps + 1):
        actions = _random_actions(gen, b)
        ts = env.step(actions)
        last = t == max_steps - 1
        assert ts.truncated.tolist() == [last] * b and not ts.terminated.any()
        for i, ref in enumerate(refs):
            ref_obs, ref_rew, _, ref_trunc, _ = ref.step(
                {a: int(actions[i, j]) for j, a in enumerate(AGENTS)}
            )
            assert all(ref_trunc.values()) == last
            ref_reward = torch.tensor([ref_rew[a] for a in AGENTS], dtype=torch.float32)
            assert torch.equal(ts.reward[i], ref_reward)
            assert torch.equal(ts.info["final_obs"][i], _stack(ref_obs))
            if last:
                # The copy reset unseeded, continuing its RNG like the reference's own reset.
                ref_obs, _ = ref.reset()
            assert torch.equal(ts.obs[i], _stack(ref_obs))
        if last:
            assert not torch.equal(ts.info["final_obs"], ts.obs)
        else:
            assert torch.equal(ts.info["final_obs"], ts.obs)


def test_continuous_actions_are_clipped_to_the_space():
    # raw_env lacks mpe2's own clipping wrapper, so only the adapter can clip here.
    def make():
        raw = simple_spread_v3.raw_env(N=4, max_cycles=25, continuous_actions=True)
        return aec_to_parallel(raw)

    env = ParallelEnvAdapter(make, num_envs=1, max_steps=25)
    assert env.spec.action_space == spaces.Box(0.0, 1.0, (5,), np.float32)
    env.reset(seed=3)
    ref, _ = _reference(3, 25, continuous_actions=True)
    actions = torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(1)) * 4 - 2
    ts = env.step(actions)
    clipped = actions.clamp(0, 1).numpy()
    ref_obs, *_ = ref.step({a: clipped[0, j] for j, a in enumerate(AGENTS)})
    assert torch.equal(ts.obs[0], _stack(ref_obs))


class _TwoAgents(ParallelEnv):
    """Agent ``a`` leaves after ``end[0]`` steps, ``b`` after ``end[1]``; obs is the step count."""

    metadata = {"name": "two_agents"}

    def __init__(self, obs_sizes=(3, 3), action_sizes=(2, 2), end=(2, 3)):
        self.possible_agents = ["a", "b"]
        self._obs_size = dict(zip(self.possible_agents, obs_sizes))
        self._action_size = dict(zip(self.possible_agents, action_sizes))
        self._end = dict(zip(self.possible_agents, end))

    def observation_space(self, agent):
        return spaces.Box(-np.inf, np.inf, (self._obs_size[agent],), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(self._action_size[agent])

    def _obs(self, agent):
        return np.full(self._obs_size[agent], self._t, dtype=np.float32)

    def reset(self, seed=None, options=None):
        self.agents, self._t = list(self.possible_agents), 0
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        self._t += 1
        obs = {a: self._obs(a) for a in actions}
        reward = {a: float(actions[a]) for a in actions}
        term = {a: self._t >= self._end[a] for a in actions}
        trunc = {a: False for a in actions}
        self.agents = [a for a in actions if not term[a]]
        return obs, reward, term, trunc, {a: {} for a in actions}


def test_agents_leaving_early_get_zero_obs_and_reward():
    env = ParallelEnvAdapter(_TwoAgents, num_envs=2, max_steps=10)
    assert env.spec.state_dim is None and env.reset(seed=0).state is None
    ones = torch.ones(2, 2, dtype=torch.int64)
    ts = env.step(ones)
    assert torch.equal(ts.reward, torch.ones(2, 2)) and not ts.done.any()
    ts = env.step(ones)  # agent a terminates, b carries on
    assert not ts.done.any() and torch.equal(ts.obs, torch.full((2, 2, 3), 2.0))
    ts = env.step(ones)  # b terminates too: the copy ends and resets
    assert ts.terminated.all() and not ts.truncated.any()
    assert torch.equal(ts.reward, torch.tensor([[0.0, 1.0]] * 2))
    assert torch.equal(ts.info["final_obs"][:, 0], torch.zeros(2, 3))
    assert torch.equal(ts.info["final_obs"][:, 1], torch.full((2, 3), 3.0))
    assert torch.equal(ts.obs, torch.zeros(2, 2, 3))


def test_max_steps_truncates_an_env_without_a_time_limit():
    env = ParallelEnvAdapter(lambda: _TwoAgents(end=(99, 99)), num_envs=1, max_steps=2)
    env.reset()
    zeros = torch.zeros(1, 2, dtype=torch.int64)
    assert not env.step(zeros).done.any()
    ts = env.step(zeros)
    assert ts.truncated.all() and not ts.terminated.any()
    assert torch.equal(ts.info["final_obs"], torch.full((1, 2, 3), 2.0))


def test_unequal_observation_sizes_are_padded_and_masked():
    env = ParallelEnvAdapter(lambda: _TwoAgents(obs_sizes=(3, 5)), num_envs=1, max_steps=5)
    assert env.spec.obs_dim == 5
    assert env.obs_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    env.reset()
    ts = env.step(torch.ones(1, 2, dtype=torch.int64))
    assert ts.obs[0].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


class _Unequal(ParallelEnv):
    """Three agents observing a Dict, a Discrete and a 2 x 2 Box; actions ``Discrete(3, start=-1)``.

    At step t the scout is at (t, -t) seeing kind t % 3, the carrier holds t % 4 and the base's
    grid is t everywhere; each agent's reward is the action it was given.
    """

    metadata = {"name": "unequal"}
    possible_agents = ["scout", "carrier", "base"]

    def __init__(self, action_space=None):
        self._obs_spaces = {
            "scout": spaces.Dict({"sees": spaces.Discrete(3), "at": spaces.Box(-9, 9, (2,), np.float32)}),
            "carrier": spaces.Discrete(4),
            "base": spaces.Box(0, 9, (2, 2), np.float32),
        }
        self._action_space = action_space or spaces.Discrete(3, start=-1)

    def observation_space(self, agent):
        return self._obs_spaces[agent]

    def action_space(self, agent):
        return self._action_space

    def _obs(self):
        t = self._t
        return {"scout": {"sees": t % 3, "at": np.array([t, -t], np.float32)}, "carrier": t % 4,
                "base": np.full((2, 2), t, np.float32)}

    def reset(self, seed=None, options=None):
        self.agents, self._t = list(self.possible_agents), 0
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        self._t += 1
        false = {a: False for a in actions}
        return self._obs(), {a: float(actions[a]) for a in actions}, false, dict(false), {a: {} for a in actions}


def test_dict_and_discrete_observations_are_flattened_by_gymnasium_and_padded():
    env = ParallelEnvAdapter(_Unequal, num_envs=2, max_steps=10)
    # scout: Dict keys in order ("at", "sees"): 2 + one-hot 3; carrier: one-hot 4; base: 4 raveled
    assert (env.spec.n_agents, env.spec.obs_dim) == (3, 5)
    assert env.obs_mask.sum(-1).tolist() == [5, 4, 4]
    assert env.reset(seed=0).obs[0].tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    env.step(torch.zeros(2, 3, dtype=torch.int64))
    ts = env.step(torch.zeros(2, 3, dtype=torch.int64))
    assert ts.obs[1].tolist() == [[2, -2, 0, 0, 1], [0, 0, 1, 0, 0], [2, 2, 2, 2, 0]]
    reference = _Unequal()
    reference.reset()
    for _ in range(2):
        obs, *_ = reference.step({a: 0 for a in reference.agents})
    for j, agent in enumerate(reference.possible_agents):
        flat = spaces.flatten(reference.observation_space(agent), obs[agent])
        assert ts.obs[0, j, : len(flat)].tolist() == flat.tolist()


def test_discrete_actions_with_a_start_count_from_zero_in_hmarl():
    env = ParallelEnvAdapter(_Unequal, num_envs=1, max_steps=10)
    assert env.spec.action_space == spaces.Discrete(3)
    env.reset()
    ts = env.step(torch.tensor([[0, 1, 2]]))
    assert ts.reward.tolist() == [[-1.0, 0.0, 1.0]]


def test_unequal_action_spaces_are_refused_in_one_line():
    with pytest.raises(ValueError, match="one action space for every agent") as err:
        ParallelEnvAdapter(lambda: _TwoAgents(action_sizes=(2, 4)), num_envs=1, max_steps=5)
    message = str(err.value)
    assert "'a' has Discrete(2) but 'b' has Discrete(4)" in message and "no action mask" in message
    assert "\n" not in message


def test_observations_without_a_fixed_flat_size_are_refused():
    class Sequences(_TwoAgents):
        def observation_space(self, agent):
            return spaces.Sequence(spaces.Discrete(2))

    with pytest.raises(ValueError, match="'a' observes Sequence.*no fixed flat size"):
        ParallelEnvAdapter(Sequences, num_envs=1, max_steps=5)
