"""Batched MPE simple spread: replays against mpe2's simple_spread_v3, then spec, seeding, options, devices."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from mpe2 import simple_spread_v3

from hmarl.envs import make_env
from hmarl.envs.mpe import SimpleSpread


# ------------------------------------------------------------------------ replays vs mpe2
class Mpe2Copies:
    """One mpe2 ``simple_spread_v3`` parallel env per copy of the port, kept in the port's state."""

    def __init__(self, port: SimpleSpread, **kwargs):
        self.port, self.n = port, port.spec.n_agents
        self.names = [f"agent_{j}" for j in range(self.n)]
        self.envs = [simple_spread_v3.parallel_env(N=self.n, max_cycles=port.spec.max_steps, **kwargs)
                     for _ in range(port.spec.num_envs)]
        self.collisions = 0

    def start(self, i: int) -> np.ndarray:
        """Reset copy ``i``, write the port's current world into it and return its observations."""
        env = self.envs[i]
        env.reset(seed=i)
        world, state = env.unwrapped.world, self.port.world
        for j, agent in enumerate(world.agents):
            agent.state.p_pos = state["positions"][i, j].numpy().copy()
            agent.state.p_vel = state["velocities"][i, j].numpy().copy()
        for j, landmark in enumerate(world.landmarks):
            landmark.state.p_pos = state["landmarks"][i, j].numpy().copy()
        return np.stack([env.unwrapped.observe(a) for a in self.names])

    def step(self, i: int, actions: torch.Tensor):
        """Step copy ``i`` (``actions`` ``[N]`` or ``[N, 5]``): obs, rewards, terminated, truncated."""
        env = self.envs[i]
        obs, reward, terminated, truncated, _ = env.step(
            {a: actions[j].numpy() if actions.dim() > 1 else int(actions[j]) for j, a in enumerate(self.names)})
        scenario, agents = env.unwrapped.scenario, env.unwrapped.world.agents
        self.collisions += sum(scenario.is_collision(a, b) for a in agents for b in agents if a is not b)
        return (np.stack([obs[a] for a in self.names]), np.array([reward[a] for a in self.names]),
                all(terminated.values()), all(truncated.values()))


def _crowded_start(port: SimpleSpread, generator: torch.Generator):
    """Agents packed in a 0.6-wide square around the origin (they start overlapping) and landmarks spread out."""
    b, n = port.spec.num_envs, port.spec.n_agents
    positions = (torch.rand(b, n, 2, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    landmarks = torch.rand(b, n, 2, generator=generator, dtype=torch.float64) * 2 - 1
    return port.set_state(positions, landmarks)


def _replay(port: SimpleSpread, ref: Mpe2Copies, actions: torch.Tensor) -> int:
    """Step both with ``actions`` ``[T, B, N(, 5)]``, comparing every copy at every step; returns the
    number of episode ends (each followed by the port's auto-reset, written into mpe2)."""
    ts = _crowded_start(port, torch.Generator().manual_seed(1))
    for i in range(port.spec.num_envs):
        assert np.allclose(ts.obs[i].numpy(), ref.start(i), atol=1e-5)
    ends = 0
    for t, action in enumerate(actions):
        ts = port.step(action)
        for i in range(port.spec.num_envs):
            obs, reward, terminated, truncated = ref.step(i, action[i])
            assert np.allclose(ts.info["final_obs"][i].numpy(), obs, atol=1e-5), f"obs of copy {i} at step {t}"
            assert np.allclose(ts.reward[i].numpy(), reward, atol=1e-5), f"reward of copy {i} at step {t}"
            assert (bool(ts.terminated[i]), bool(ts.truncated[i])) == (terminated, truncated), f"step {t}"
            if terminated or truncated:
                ends += 1
                assert np.allclose(ts.obs[i].numpy(), ref.start(i), atol=1e-5)
            else:
                assert torch.equal(ts.obs[i], ts.info["final_obs"][i])
            assert torch.equal(ts.info["positions"][i], ts.obs[i, :, 2:4])
            assert torch.equal(ts.info["final_positions"][i], ts.info["final_obs"][i, :, 2:4])
            assert torch.equal(ts.state[i], ts.obs[i].flatten())
    assert ref.collisions > 0, "the replay should have crowded agents into collisions"
    return ends


@pytest.mark.parametrize("n_agents, local_ratio", [(4, 0.5), (5, 0.2)])
def test_discrete_replay_matches_mpe2_across_auto_resets(n_agents, local_ratio):
    b, max_steps = 3, 25
    port = SimpleSpread(b, n_agents=n_agents, max_steps=max_steps, local_ratio=local_ratio, dtype=torch.float64)
    ref = Mpe2Copies(port, local_ratio=local_ratio)
    actions = torch.randint(0, 5, (2 * max_steps + 10, b, n_agents), generator=torch.Generator().manual_seed(0))
    assert _replay(port, ref, actions) == 2 * b


def test_continuous_replay_matches_mpe2_up_to_max_cycles():
    b, n, max_steps = 4, 4, 100
    port = SimpleSpread(b, n_agents=n, max_steps=max_steps, continuous_actions=True, dtype=torch.float64)
    ref = Mpe2Copies(port, continuous_actions=True)
    # float32 actions, as a policy gives them; mpe2 gets them already clipped (its wrapper would warn)
    actions = torch.rand(max_steps + 5, b, n, 5, generator=torch.Generator().manual_seed(0))
    assert _replay(port, ref, actions) == b


def test_continuous_actions_are_clipped_to_the_box():
    clipped, raw = (SimpleSpread(2, continuous_actions=True, seed=0, dtype=torch.float64) for _ in range(2))
    clipped.reset(seed=3), raw.reset(seed=3)
    actions = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(1)) * 4 - 2
    assert torch.equal(raw.step(actions).obs, clipped.step(actions.clamp(0, 1)).obs)


def test_terminate_on_success_matches_mpe2_and_resets_only_finished_copies():
    b, n = 3, 4
    port = SimpleSpread(b, n_agents=n, max_steps=25, terminate_on_success=True, dtype=torch.float64)
    ref = Mpe2Copies(port, terminate_on_success=True)
    positions = torch.rand(b, n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    # landmarks under the agents; copy 1's first is 0.085 from its agent, copy 2's 0.113 (capture radius 0.1)
    landmarks = positions.clone()
    landmarks[1, 0] += 0.06
    landmarks[2, 0] += 0.08
    port.set_state(positions, landmarks)
    for i in range(b):
        ref.start(i)
    still = torch.zeros(b, n, dtype=torch.long)
    ts = port.step(still)
    for i in range(b):
        obs, reward, terminated, truncated = ref.step(i, still[i])
        assert terminated == (i < 2) and not truncated
        assert np.allclose(ts.info["final_obs"][i].numpy(), obs, atol=1e-5)
        assert np.allclose(ts.reward[i].numpy(), reward, atol=1e-5)
    assert ts.terminated.tolist() == [True, True, False] and not ts.truncated.any()
    assert port.world["steps"].tolist() == [0, 0, 1]
    assert not torch.equal(ts.obs[:2], ts.info["final_obs"][:2])
    assert torch.equal(ts.obs[2], ts.info["final_obs"][2])


# ------------------------------------------------------------------------ the env itself
def test_spec_matches_the_mpe2_adapter_plus_positions():
    for continuous in (False, True):
        port = make_env("mpe_simple_spread", num_envs=3, n_agents=4, max_steps=25, continuous_actions=continuous)
        adapter = make_env("mpe2_simple_spread", num_envs=1, n_agents=4, max_steps=25, continuous_actions=continuous)
        for field in ("n_agents", "obs_dim", "action_space", "max_steps", "state_dim", "optional", "obs_slices",
                      "entities"):
            assert getattr(port.spec, field) == getattr(adapter.spec, field), field
        assert port.spec.positions == 2 and adapter.spec.positions is None
        assert port.spec.name == "mpe_simple_spread" and port.spec.num_envs == 3
    assert port.spec.action_space == spaces.Box(0.0, 1.0, (5,), np.float32)
    assert make_env("mpe_simple_spread", num_envs=1, n_agents=3).spec.obs_dim == 18  # mpe2's documented N=3 shape


def test_shapes_dtypes_and_reset_distribution():
    env = make_env("mpe_simple_spread", num_envs=256, n_agents=4, max_steps=25, seed=0)
    ts = env.reset()
    assert ts.obs.shape == (256, 4, 24) and ts.obs.dtype == torch.float32
    assert ts.state.shape == (256, 96) and torch.equal(ts.state, ts.obs.flatten(1))
    assert torch.equal(ts.reward, torch.zeros(256, 4)) and not ts.done.any()
    world = env.world
    points = torch.cat([world["positions"], world["landmarks"]], 1)
    assert points.abs().max() <= 1 and points.min() < -0.95 and points.max() > 0.95
    assert abs(points.mean()) < 0.05 and torch.equal(world["velocities"], torch.zeros(256, 4, 2))
    assert torch.equal(ts.info["positions"], world["positions"])
    assert torch.equal(ts.obs[..., 4:12], (world["landmarks"][:, None] - world["positions"][:, :, None]).flatten(2))
    assert torch.equal(ts.obs[..., 18:], torch.zeros(256, 4, 6))  # silent agents' communication
    ts = env.step(torch.randint(0, 5, (256, 4), generator=torch.Generator().manual_seed(0)))
    assert ts.reward.shape == (256, 4) and ts.reward.dtype == torch.float32
    assert ts.terminated.dtype == ts.truncated.dtype == torch.bool and ts.terminated.shape == (256,)


def test_float32_stays_close_to_float64():
    generator = torch.Generator().manual_seed(0)
    single, double = (SimpleSpread(8, seed=4, max_steps=100, dtype=d) for d in (torch.float32, torch.float64))
    single.reset(), double.reset()
    for _ in range(100):
        action = torch.randint(0, 5, (8, 4), generator=generator)
        a, b = single.step(action), double.step(action)
        assert torch.allclose(a.info["final_obs"].double(), b.info["final_obs"], atol=1e-3)
        assert torch.allclose(a.reward.double(), b.reward, atol=1e-3)
    assert a.truncated.all() and b.truncated.all()


def test_subtasks_option_wraps_the_port():
    env = make_env("mpe_simple_spread", num_envs=2, n_agents=3, max_steps=5, subtasks=True)
    assert env.spec.entities is not None and env.spec.positions == 2
    ts = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert torch.equal(ts.info["positions"], env.env.world["positions"])
    assert torch.allclose(ts.info["entities"][:, 3:, :2], env.env.world["landmarks"], atol=1e-6)


@pytest.mark.parametrize("options, match", [
    ({"curriculum": True}, "curriculum .*not ported: mpe2_simple_spread"),
    ({"num_agent_neighbors": 2}, "num_agent_neighbors .*mpe2_simple_spread"),
    ({"speed": 2}, "unknown option.*speed; known options: local_ratio"),
    ({"local_ratio": 1.5}, "local_ratio is a proportion"),
])
def test_bad_options_fail_clearly(options, match):
    with pytest.raises(ValueError, match=match):
        make_env("mpe_simple_spread", num_envs=1, **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    envs = [make_env("mpe_simple_spread", num_envs=16, seed=2, device=d, max_steps=20, dtype="float64")
            for d in ("cpu", "cuda")]
    for env in envs:
        env.reset()
    actions = torch.randint(0, 5, (45, 16, 4), generator=torch.Generator().manual_seed(0))
    for a in actions:
        cpu, gpu = (env.step(a.to(env.spec.device)) for env in envs)
        assert gpu.obs.device.type == "cuda" and gpu.info["positions"].device.type == "cuda"
        assert torch.allclose(cpu.obs, gpu.obs.cpu(), atol=1e-9) and torch.equal(cpu.done, gpu.done.cpu())
        assert torch.allclose(cpu.reward, gpu.reward.cpu(), atol=1e-9)
