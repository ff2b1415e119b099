"""Batches copies of any single-agent gymnasium env behind the ``MultiAgentEnv`` protocol.

Ant tasks (need ``pip install "gymnasium[mujoco]"``): gymnasium's ``Ant-v5`` is the
paper's robot, but leaves the torso's x, y out of its observation by default, so ask
for them and name them as the position (HRL-CG's goal dims; ``obs_slices`` takes lists of
consecutive dims)::

    python -m hmarl with <algorithm> env=gymnasium n_agents=1 max_steps=500 \\
        continuous_actions=True 'env_options={"env_id": "Ant-v5", "obs_slices": {"position": [0, 1]},
        "exclude_current_positions_from_observation": False}'

(obs then starts with the torso's x, y). AntGather is not in gymnasium; maze versions live in
``gymnasium-robotics`` (e.g. ``AntMaze_UMaze-v5``, a U-maze on its own scale) and
observe a ``Dict``; build ``GymnasiumAdapter`` directly with a ``make_env`` that
applies ``gymnasium.wrappers.FlattenObservation`` (the keys flatten in sorted
order, so ``achieved_goal``'s x, y are dims 0, 1).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from hmarl.envs.registry import register
from hmarl.spec import EnvSpec, MultiAgentEnv, TimeStep, dims_slice


class GymnasiumAdapter(MultiAgentEnv):
    """``num_envs`` copies of one gymnasium env as a one-agent ``MultiAgentEnv``.

    Observations must be a ``Box`` (flattened to float32); actions a ``Discrete``
    (hmarl's ``0..n-1`` shifted by the space's ``start``) or a ``Box`` (flattened,
    clipped to the box). Terminated/truncated come from the env (its ``TimeLimit``
    included); finished copies reset inside ``step``.

    Shapes (``B = num_envs``):
        obs ``[B, 1, obs_dim]`` float32, reward ``[B, 1]`` float32, terminated/truncated
        ``[B]`` bool, actions ``[B, 1]`` int64 (Discrete) or ``[B, 1, act_dim]`` float (Box),
        ``info["final_obs"]`` ``[B, 1, obs_dim]``.
    """

    def __init__(self, make_env: Callable[[], gymnasium.Env], num_envs: int,
                 device: str | torch.device = "cpu", *, max_steps: int, seed: int | None = None,
                 name: str = "gymnasium", obs_slices: dict[str, slice | Sequence[int]] | None = None) -> None:
        self._envs = [make_env() for _ in range(num_envs)]
        first = self._envs[0]
        obs_space, space = first.observation_space, first.action_space
        if not isinstance(obs_space, spaces.Box):
            raise ValueError(f"GymnasiumAdapter needs Box observations; {name} has {obs_space}. "
                             "Pass a make_env that wraps it in gymnasium.wrappers.FlattenObservation.")
        if isinstance(space, spaces.Discrete):
            action_space = spaces.Discrete(int(space.n))
        elif isinstance(space, spaces.Box):
            action_space = spaces.Box(space.low.ravel(), space.high.ravel(), dtype=space.dtype)
        else:
            raise ValueError(f"GymnasiumAdapter needs a Discrete or Box action space; {name} has "
                             f"{space}. Wrap the env to expose one of those.")
        self._env_action_space = space
        self._start = int(getattr(space, "start", 0))  # gymnasium's Discrete may not start at 0
        self._device = torch.device(device)
        # The first reset without a seed of its own uses this one.
        self._seed = seed
        slices = {key: dims_slice(dims, f"{name}: obs_slices[{key!r}]") for key, dims in (obs_slices or {}).items()}
        self.spec = EnvSpec(n_agents=1, obs_dim=int(np.prod(obs_space.shape)),
                            action_space=action_space, max_steps=max_steps, num_envs=num_envs,
                            device=self._device, name=name, obs_slices=slices)
        self._obs = np.zeros((num_envs, self.spec.obs_dim), dtype=np.float32)
        self._reward = np.zeros(num_envs, dtype=np.float32)

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset every copy; copy ``i`` gets ``seed + i`` so a seed fixes the whole batch."""
        seed, self._seed = (self._seed if seed is None else seed), None
        for i in range(self.spec.num_envs):
            self._obs[i] = np.ravel(self._envs[i].reset(seed=None if seed is None else seed + i)[0])
        b = self.spec.num_envs
        no = torch.zeros(b, dtype=torch.bool, device=self._device)
        return TimeStep(obs=self._tensor(self._obs).unsqueeze(1),
                        reward=torch.zeros(b, 1, device=self._device),
                        terminated=no, truncated=no.clone())

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Step every copy with ``actions`` and reset the copies whose episode ended."""
        acts = actions.detach().cpu().numpy()[:, 0]
        space = self._env_action_space
        if self.spec.discrete:
            acts = acts.astype(np.int64) + self._start
        else:
            low, high = self.spec.action_space.low, self.spec.action_space.high
            acts = np.clip(acts, low, high).astype(space.dtype).reshape(-1, *space.shape)
        b = self.spec.num_envs
        terminated = np.zeros(b, dtype=bool)
        truncated = np.zeros(b, dtype=bool)
        for i, env in enumerate(self._envs):
            obs, self._reward[i], terminated[i], truncated[i], _ = env.step(acts[i])
            self._obs[i] = np.ravel(obs)
        done = terminated | truncated
        final_obs = self._tensor(self._obs).unsqueeze(1)
        if done.any():
            for i in np.flatnonzero(done):
                self._obs[i] = np.ravel(self._envs[i].reset()[0])
            obs = self._tensor(self._obs).unsqueeze(1)
        else:
            obs = final_obs
        return TimeStep(obs=obs, reward=self._tensor(self._reward).unsqueeze(1),
                        terminated=torch.from_numpy(terminated).to(self._device),
                        truncated=torch.from_numpy(truncated).to(self._device),
                        info={"final_obs": final_obs})

    def close(self) -> None:
        for env in self._envs:
            env.close()

    def render(self) -> np.ndarray:
        """Copy 0's frame from the gymnasium env, which must have been made with ``render_mode="rgb_array"``."""
        env = self._envs[0]
        if getattr(env, "render_mode", None) != "rgb_array":
            raise NotImplementedError(f"{self.spec.name} renders only when made with render_mode='rgb_array' "
                                      f"(env_options: {{render_mode: rgb_array}}), not {env.render_mode!r}")
        return np.asarray(env.render(), dtype=np.uint8)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        # Copies, so the buffers can be reused without mutating returned tensors.
        return torch.tensor(array, device=self._device)


@register("gymnasium")
def gymnasium_env(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
                  n_agents: int = 1, max_steps: int = 1000, continuous_actions: bool = True,
                  env_id: str = "Pendulum-v1", obs_slices: dict[str, Sequence[int]] | None = None,
                  **options: Any) -> GymnasiumAdapter:
    """Any registered gymnasium env by ``env_id``; ``options`` go to ``gymnasium.make``.

    ``continuous_actions`` is accepted for the registry's uniform call and unused: the
    env's own action space decides.
    """
    if n_agents != 1:
        raise ValueError(f"gymnasium envs have one agent; set n_agents=1 (got {n_agents})")

    def make() -> gymnasium.Env:
        return gymnasium.make(env_id, max_episode_steps=max_steps, **options)

    return GymnasiumAdapter(make, num_envs, device, max_steps=max_steps, seed=seed, name=env_id,
                            obs_slices=obs_slices)
