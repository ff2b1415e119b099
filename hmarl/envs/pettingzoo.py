"""Batches copies of any PettingZoo ``ParallelEnv`` behind the ``MultiAgentEnv`` protocol."""
from __future__ import annotations


from typing import Any, Callable

import numpy as np
import torch
from gymnasium import spaces
from mpe2 import simple_spread_v3
from pettingzoo import ParallelEnv

from hmarl.envs.landmark_subtasks import with_subtasks
from hmarl.envs.registry import register
from hmarl.spec import EnvSpec, MultiAgentEnv, TimeStep


class ParallelEnvAdapter(MultiAgentEnv):
    """``num_envs`` copies of one PettingZoo ``ParallelEnv`` stepping together.

    Agents are ordered as ``possible_agents`` and may observe different spaces: each
    agent's observation is flattened by gymnasium (``spaces.flatten``: a ``Box``
    raveled, a ``Discrete`` one-hot, a ``Dict`` or ``Tuple`` its entries' flattenings
    concatenated in key order, ``MultiDiscrete``/``MultiBinary`` likewise) and
    zero-padded at the end to the widest agent's; ``obs_mask`` marks an agent's own
    entries. Every agent must share one action space (``Discrete``, possibly with a
    ``start``, which hmarl sees as ``Discrete(n)`` from 0, or ``Box``). Unequal action
    spaces are refused rather than padded: hmarl's learners take no action mask, so a
    padded discrete action could not be kept from being chosen (SuperSuit's
    ``pad_action_space_v0`` pads them outside, turning padded actions into action 0,
    for whoever wants that). An agent that leaves its copy's episode early gets zero
    obs and reward until the copy ends. A copy is terminated when all its agents are,
    truncated when any agent is truncated or it has run ``max_steps`` steps, and
    resets inside ``step``.

    Shapes (``B = num_envs``, ``N = n_agents``):
        obs ``[B, N, obs_dim]`` float32, reward ``[B, N]`` float32,
        terminated/truncated ``[B]`` bool, state ``[B, state_dim]`` float32 or ``None``,
        actions ``[B, N]`` int64 (Discrete) or ``[B, N, act_dim]`` float (Box),
        ``info["final_obs"]`` ``[B, N, obs_dim]``, ``obs_mask`` ``[N, obs_dim]`` bool.
    """

    def __init__(
        self,
        make_env: Callable[[], ParallelEnv],
        num_envs: int,
        device: str | torch.device = "cpu",
        *,
        max_steps: int,
        name: str = "pettingzoo",
        positions: int | None = None,
        obs_slices: dict[str, slice] | None = None,
        optional: dict[str, str] | None = None,
    ) -> None:
        self._envs = [make_env() for _ in range(num_envs)]
        first = self._envs[0]
        self._agents = list(first.possible_agents)
        self._obs_spaces = [first.observation_space(a) for a in self._agents]
        widths = [_flat_width(a, space) for a, space in zip(self._agents, self._obs_spaces)]
        action_space = _shared_action_space(first, self._agents)
        # hmarl's discrete actions count from 0; a Discrete(n, start=s) env gets them shifted by s.
        self._action_start = int(action_space.start) if isinstance(action_space, spaces.Discrete) else 0
        if isinstance(action_space, spaces.Discrete):
            action_space = spaces.Discrete(int(action_space.n))
        self._device = torch.device(device)
        self._max_steps = max_steps
        # Whether state() exists is only knowable by calling it, which needs a reset env.
        first.reset()
        try:
            state_dim = int(np.asarray(first.state()).size)
        except NotImplementedError:
            state_dim = None
        self.spec = EnvSpec(
            n_agents=len(self._agents),
            obs_dim=max(widths),
            action_space=action_space,
            max_steps=max_steps,
            num_envs=num_envs,
            device=self._device,
            state_dim=state_dim,
            name=name,
            positions=positions,
            obs_slices=dict(obs_slices or {}),
            optional=dict(optional or {}),
        )
        n = self.spec.n_agents
        self._widths = widths
        self.obs_mask = torch.arange(self.spec.obs_dim, device=self._device) < torch.tensor(
            widths, device=self._device
        ).unsqueeze(-1)
        self._obs = np.zeros((num_envs, n, self.spec.obs_dim), dtype=np.float32)
        self._reward = np.zeros((num_envs, n), dtype=np.float32)
        self._state = (
            None if state_dim is None else np.zeros((num_envs, state_dim), dtype=np.float32)
        )
        self._t = np.zeros(num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset every copy; copy ``i`` gets ``seed + i`` so a seed fixes the whole batch."""
        for i in range(self.spec.num_envs):
            self._reset_copy(i, None if seed is None else seed + i)
        self._t[:] = 0
        b = self.spec.num_envs
        return TimeStep(
            obs=self._tensor(self._obs),
            reward=torch.zeros(b, self.spec.n_agents, device=self._device),
            terminated=torch.zeros(b, dtype=torch.bool, device=self._device),
            truncated=torch.zeros(b, dtype=torch.bool, device=self._device),
            state=self._read_states(),
        )

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Step every copy with ``actions`` and reset the copies whose episode ended."""
        acts = actions.detach().cpu().numpy()
        space = self.spec.action_space
        if self.spec.discrete:
            acts = acts.astype(np.int64) + self._action_start
        else:
            acts = np.clip(acts, space.low, space.high).astype(space.dtype)
        self._obs.fill(0.0)
        b = self.spec.num_envs
        terminated = np.zeros(b, dtype=bool)
        truncated = np.zeros(b, dtype=bool)
        for i, env in enumerate(self._envs):
            live = {a: acts[i, j] for j, a in enumerate(self._agents) if a in env.agents}
            obs, rew, term, trunc, _ = env.step(live)
            self._write_obs(i, obs)
            for j, a in enumerate(self._agents):
                self._reward[i, j] = rew.get(a, 0.0)
            terminated[i] = all(term[a] for a in live)
            truncated[i] = not terminated[i] and any(trunc[a] for a in live)
        self._t += 1
        truncated |= ~terminated & (self._t >= self._max_steps)
        done = terminated | truncated

        final_obs = self._tensor(self._obs)
        if done.any():
            for i in np.flatnonzero(done):
                self._reset_copy(i, None)
            self._t[done] = 0
            obs = self._tensor(self._obs)
        else:
            obs = final_obs
        return TimeStep(
            obs=obs,
            reward=self._tensor(self._reward),
            terminated=torch.from_numpy(terminated).to(self._device),
            truncated=torch.from_numpy(truncated).to(self._device),
            state=self._read_states(),
            info={"final_obs": final_obs},
        )

    def close(self) -> None:
        for env in self._envs:
            env.close()

    def render(self) -> np.ndarray:
        """Copy 0's frame from the ``ParallelEnv``, which must have been made with ``render_mode="rgb_array"``."""
        env = self._envs[0]
        if getattr(env, "render_mode", None) != "rgb_array":
            raise NotImplementedError(f"{self.spec.name} renders only when made with render_mode='rgb_array', "
                                      f"not {getattr(env, 'render_mode', None)!r}")
        return np.asarray(env.render(), dtype=np.uint8)

    def _reset_copy(self, i: int, seed: int | None) -> None:
        obs, _ = self._envs[i].reset(seed=seed)
        self._obs[i] = 0.0
        self._write_obs(i, obs)

    def _write_obs(self, i: int, obs: dict[Any, Any]) -> None:
        for j, (a, space, width) in enumerate(zip(self._agents, self._obs_spaces, self._widths)):
            if a in obs:
                self._obs[i, j, :width] = spaces.flatten(space, obs[a])

    def _read_states(self) -> torch.Tensor | None:
        if self._state is None:
            return None
        for i, env in enumerate(self._envs):
            self._state[i] = np.ravel(env.state())
        return self._tensor(self._state)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        # Copies, so the buffers can be reused without mutating returned tensors.
        return torch.tensor(array, device=self._device)


def _flat_width(agent: Any, space: spaces.Space) -> int:
    """The length of ``agent``'s flattened observation; a ValueError when gymnasium cannot flatten it to a fixed size."""
    try:
        return int(spaces.flatdim(space))
    except (ValueError, NotImplementedError) as error:
        raise ValueError(f"ParallelEnvAdapter flattens each agent's observation with gymnasium; {agent!r} observes "
                         f"{space}, which has no fixed flat size ({error})") from None


def _shared_action_space(env: ParallelEnv, agents: list[Any]) -> spaces.Discrete | spaces.Box:
    """The action space all ``agents`` share; a ValueError says what differs."""
    action_space = env.action_space(agents[0])
    if not isinstance(action_space, (spaces.Discrete, spaces.Box)):
        raise ValueError(
            f"ParallelEnvAdapter needs a Discrete or Box action space; {agents[0]!r} has "
            f"{action_space}. Wrap the env to expose one of those."
        )
    for a in agents[1:]:
        if env.action_space(a) != action_space:
            raise ValueError(
                f"ParallelEnvAdapter needs one action space for every agent; {agents[0]!r} has {action_space} "
                f"but {a!r} has {env.action_space(a)}. hmarl's learners take no action mask, so padded actions "
                "could not be kept from being chosen: make the spaces equal (SuperSuit's pad_action_space_v0 "
                "pads them, turning padded discrete actions into action 0) or wrap the env."
            )
    return action_space


@register("mpe2_simple_spread")
def mpe2_simple_spread(
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    n_agents: int = 4,
    max_steps: int = 100,
    continuous_actions: bool = False,
    subtasks: bool = False,
    **options: Any,
):
    """MPE2 ``simple_spread_v3`` itself, one mpe2 env per copy: ``n_agents`` agents cover as many landmarks.

    ``mpe_simple_spread`` (``envs/mpe.py``) is the same rules batched in torch, and much faster;
    this one has every mpe2 option (curriculum, partial observability) and is its reference.

    ``seed`` is accepted for the registry's uniform call and unused: ``reset`` takes it.
    ``subtasks=True``: landmarks as ALMA subtasks (``envs.landmark_subtasks``).
    ``options`` go to ``simple_spread_v3.parallel_env`` (e.g. ``local_ratio``).
    """

    def make() -> ParallelEnv:
        return simple_spread_v3.parallel_env(
            N=n_agents, max_cycles=max_steps, continuous_actions=continuous_actions, **options
        )

    # mpe2 observes [vel, pos, landmarks relative to the agent, ...]
    env = ParallelEnvAdapter(make, num_envs, device, max_steps=max_steps, name="mpe2_simple_spread",
                             obs_slices={"velocity": slice(0, 2), "position": slice(2, 4),
                                         "landmarks": slice(4, 4 + 2 * n_agents)},
                             # mpe2 has continuous actions behind its own option
                             optional={} if continuous_actions else {"continuous_actions": "continuous_actions"})
    return with_subtasks(env, subtasks)
