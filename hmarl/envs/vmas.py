"""VMAS scenarios as batched ``MultiAgentEnv``s (VMAS is natively vectorized in torch)."""
from __future__ import annotations

import numpy as np
import torch
import vmas
from gymnasium import spaces
from vmas.simulator.environment.environment import local_seed

from hmarl.envs.landmark_subtasks import with_subtasks
from hmarl.envs.registry import register
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep


#: VMAS's Discrete(9): flat index over (x, y) digits, digit 0 stays, 1 pushes -u, 2 pushes +u
_NINE_MOVES = torch.tensor([[0, 0], [0, -1], [0, 1], [-1, 0], [-1, -1], [-1, 1], [1, 0], [1, -1], [1, 1]],
                           dtype=torch.float32)


class VmasEnv(MultiAgentEnv):
    """A VMAS scenario with ``[B, N, ...]`` tensors and auto-reset.

    When every agent is silent, noiseless and (if discrete) has VMAS's 9 moves, actions
    become forces in one batched operation instead of VMAS's per-agent decoding
    (about a millisecond a step); the tests replay both paths against VMAS itself.

    Shapes:
        obs ``[B, N, obs_dim]``; actions ``[B, N]`` int64 (Discrete(9) in VMAS >= 1.4)
        or ``[B, N, 2]`` float in ``[-u_range, u_range]``; reward ``[B, N]``;
        ``info["positions"]`` ``[B, N, 2]`` (``info["final_positions"]`` before resets).
    """

    def __init__(self, scenario: str, num_envs: int, device: str | torch.device = "cpu",
                 seed: int | None = None, n_agents: int | None = None, max_steps: int = 100,
                 continuous_actions: bool = False, name: str | None = None,
                 obs_slices: dict[str, slice] | None = None, **options):
        if n_agents is not None:
            options["n_agents"] = n_agents
        self._env = vmas.make_env(
            scenario, num_envs=num_envs, device=device, continuous_actions=continuous_actions,
            max_steps=max_steps, seed=seed, terminated_truncated=True, **options)
        obs = self._stack(self._env.reset())
        agent_spaces = {repr(s) for s in self._env.action_space}
        if len(agent_spaces) != 1:
            raise ValueError(f"VMAS scenario {scenario!r} has agents with different action spaces "
                             f"({', '.join(sorted(agent_spaces))}); hmarl needs one space per env")
        action_space = _to_gymnasium(self._env.action_space[0])
        if isinstance(action_space, spaces.Box):
            self._low = torch.as_tensor(action_space.low, device=device)
            self._high = torch.as_tensor(action_space.high, device=device)
        self._forces = self._direct_forces(action_space, device)
        self._native_render: bool | None = None  # whether VMAS's renderer works here (None: not tried)
        self.spec = EnvSpec(
            n_agents=len(self._env.agents), obs_dim=obs.shape[-1], action_space=action_space,
            max_steps=max_steps, num_envs=num_envs, device=torch.device(device),
            name=name or f"vmas_{scenario}", positions=2, obs_slices=dict(obs_slices or {}),
            optional={} if continuous_actions else {"continuous_actions": "continuous_actions"})

    def _direct_forces(self, action_space, device) -> Tensor | None:
        """Per-agent force scale ``[N, 2]`` if actions can be applied directly, else None."""
        agents = self._env.agents
        if len(agents) != len(self._env.world.agents) or any(
                not a.silent and self._env.world.dim_c > 0 for a in agents):
            return None
        if any(bool((a.action.u_noise_tensor != 0).any()) for a in agents):
            return None
        if isinstance(action_space, spaces.Discrete):
            if any(list(a.discrete_action_nvec) != [3, 3] for a in agents):
                return None
            scale = [a.action.u_range_tensor * a.action.u_multiplier_tensor for a in agents]
        else:
            scale = [a.action.u_multiplier_tensor.expand(2) for a in agents]
        return torch.stack(scale).to(device, torch.float32)

    def _vmas_step(self, actions: Tensor):
        env = self._env
        if self._forces is None:
            obs, reward, terminated, truncated, _ = env.step(list(actions.unbind(1)))
            return obs, reward, terminated, truncated
        with local_seed(env.vmas_random_state):
            if self.spec.discrete:
                forces = _NINE_MOVES.to(actions.device)[actions] * self._forces
            else:
                forces = actions * self._forces
            for agent, force in zip(env.agents, forces.unbind(1)):
                agent.action.u = force
            for agent in env.world.agents:
                env.scenario.env_process_action(agent)
            env.scenario.pre_step()
            env.world.step()
            env.scenario.post_step()
            env.steps += 1
            return env._get_from_scenario(get_observations=True, get_rewards=True, get_infos=False,
                                          get_dones=True)

    @staticmethod
    def _stack(per_agent: list[Tensor]) -> Tensor:
        return torch.stack(per_agent, dim=1)

    def _positions(self) -> Tensor:
        return torch.stack([agent.state.pos for agent in self._env.agents], dim=1)

    def reset(self, seed: int | None = None) -> TimeStep:
        obs = self._stack(self._env.reset(seed=seed))
        n, b = self.spec.n_agents, self.spec.num_envs
        no = torch.zeros(b, dtype=torch.bool, device=obs.device)
        return TimeStep(obs=obs, reward=torch.zeros(b, n, device=obs.device), terminated=no,
                        truncated=no.clone(), info={"positions": self._positions()})

    def step(self, actions: Tensor) -> TimeStep:
        if not self.spec.discrete:
            actions = torch.maximum(torch.minimum(actions, self._high), self._low)
        obs, reward, terminated, truncated = self._vmas_step(actions)
        obs, reward = self._stack(obs), self._stack(reward)
        done = terminated | truncated
        final_obs, final_positions = obs, self._positions()
        positions = final_positions
        if done.all():
            obs = self._stack(self._env.reset())
            positions = self._positions()
        elif done.any():
            # VMAS resets one copy at a time; this loop runs only at episode ends.
            for index in done.nonzero().squeeze(-1).tolist():
                self._env.reset_at(index, return_observations=False)
            obs = self._stack(self._env.get_from_scenario(
                get_observations=True, get_rewards=False, get_infos=False, get_dones=False)[0])
            positions = self._positions()
        info = {"final_obs": final_obs, "positions": positions, "final_positions": final_positions}
        return TimeStep(obs=obs, reward=reward, terminated=terminated, truncated=truncated, info=info)

    def close(self) -> None:
        """Close VMAS's viewer, if rendering opened one."""
        viewer = getattr(self._env, "viewer", None)
        if viewer is not None:
            viewer.close()
            self._env.viewer = None

    def render(self) -> np.ndarray:
        """Copy 0 as it is now, ``uint8 [H, W, 3]``: VMAS's own renderer where it works (it needs
        OpenGL), else the matplotlib scene of agents and landmarks (``hmarl.envs.scenes``)."""
        if self._native_render is not False:
            try:
                frame = np.asarray(self._env.render(mode="rgb_array", env_index=0), dtype=np.uint8)
                self._native_render = True
                return frame
            except Exception:  # pyglet raises several kinds of errors without GL, scenarios their own
                if self._native_render:
                    raise
                self._native_render = False
        from hmarl.envs.scenes import MatplotlibScene, still

        obs = self._stack(self._env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                                      get_dones=False)[0])
        no = torch.zeros(self.spec.num_envs, dtype=torch.bool, device=obs.device)
        ts = TimeStep(obs=obs, reward=torch.zeros(obs.shape[:2], device=obs.device), terminated=no, truncated=no,
                      info={"positions": self._positions()})
        return still(MatplotlibScene, self, ts)


def _to_gymnasium(space) -> spaces.Discrete | spaces.Box:
    """VMAS describes spaces with the legacy ``gym`` package; hmarl speaks gymnasium."""
    if hasattr(space, "n"):
        return spaces.Discrete(int(space.n))
    return spaces.Box(low=space.low, high=space.high, shape=space.shape, dtype=space.low.dtype)


def _scenario(name: str, scenario: str, landmarks: bool = False) -> None:
    def factory(num_envs: int, device: str = "cpu", seed: int | None = None, n_agents: int = 4,
                max_steps: int = 100, continuous_actions: bool = False, **options):
        # every scenario observes the agent's own position first; simple_spread then
        # [vel, landmarks relative to the agent, ...], a landmark per agent
        obs_slices = {"position": slice(0, 2)}
        if landmarks:
            obs_slices.update(velocity=slice(2, 4), landmarks=slice(4, 4 + 2 * n_agents))
            subtasks = options.pop("subtasks", False)
        env = VmasEnv(scenario, num_envs=num_envs, device=device, seed=seed, n_agents=n_agents,
                      max_steps=max_steps, continuous_actions=continuous_actions, name=name,
                      obs_slices=obs_slices, **options)
        return with_subtasks(env, subtasks) if landmarks else env

    factory.__doc__ = f"VMAS {scenario!r} scenario." + (
        " ``subtasks=True``: landmarks as ALMA subtasks (``envs.landmark_subtasks``)." if landmarks else "")
    register(name)(factory)


_scenario("vmas_balance", "balance")
_scenario("vmas_simple_spread", "simple_spread", landmarks=True)
_scenario("vmas_sampling", "sampling")
_scenario("vmas_navigation", "navigation")
