"""hmarl's own envs as PettingZoo ``ParallelEnv``s, for other suites (EPyMARL, BenchMARL, TorchRL, ...).

    from hmarl.envs.parallel import to_parallel_env
    env = to_parallel_env("lbfws_hard", seed=0)
    obs, infos = env.reset(seed=1)
    while env.agents:
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        obs, rewards, terminations, truncations, infos = env.step(actions)

Any registered env can be wrapped (``envs.ENVS``); ``tests/envs/test_parallel.py`` runs PettingZoo's
own ``parallel_api_test`` and ``parallel_seed_test`` on ``lbf``, ``lbfws_easy``, ``lbfws_hard``,
``savethecity`` and ``point_maze``. The other direction, any ``ParallelEnv`` as a batched hmarl env,
is ``envs.pettingzoo.ParallelEnvAdapter``.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from hmarl.envs.registry import make_env
from hmarl.spec import MultiAgentEnv, TimeStep


class HmarlParallelEnv(ParallelEnv):
    """One copy of a hmarl ``MultiAgentEnv`` behind PettingZoo's parallel API, numpy in and out.

    Agents are ``agent_0`` ... ``agent_{N-1}``. Each observes ``Box(-inf, inf, (obs_dim,), float32)``
    (hmarl's envs declare no observation bounds) and acts in its own copy of the env's action space
    (so that seeding one agent's space leaves the others' alone). Out-of-range discrete actions and
    wrongly shaped continuous ones are refused; continuous values outside the bounds are left to the
    env, as in hmarl (the point maze clips them).
    ``state()`` is the env's global state where it has one (``state_space`` then exists).

    Episodes: hmarl's envs reset inside ``step``; this wrapper returns the observation that ended the
    episode (``info["final_obs"]``) with every remaining agent terminated or truncated as the episode
    was, empties ``agents``, and waits for ``reset``. An agent that dies before the end (LBF with
    Survival: ``info["alive"]``) is terminated on that step and leaves ``agents``; on the step that
    ends the episode all remaining agents share its flag. After that step ``state()`` already
    describes the next episode's start (the env keeps no final state).

    ``reset(seed=...)`` re-seeds the env's generator, so equal seeds give equal episodes;
    ``reset()`` continues its stream. ``options`` are accepted for the API and ignored: hmarl's envs
    take their options when built. ``render_mode`` is None or ``"rgb_array"`` (``render()`` then
    returns the env's ``MultiAgentEnv.render`` frame, ``uint8 [H, W, 3]``). ``close()`` closes the env.

    Shapes (``N`` agents): ``obs[agent]`` ``[obs_dim]`` float32; ``actions[agent]`` an int
    (Discrete) or ``[act_dim]`` (Box); rewards floats; ``state()`` ``[state_dim]`` float32.
    """

    def __init__(self, env: MultiAgentEnv, render_mode: str | None = None) -> None:
        spec = env.spec
        if spec.num_envs != 1:
            raise ValueError(f"HmarlParallelEnv wraps one copy; {spec.name} has num_envs={spec.num_envs} "
                             "(build it with num_envs=1, as to_parallel_env does)")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{spec.name} renders rgb_array frames only; render_mode must be None or 'rgb_array', "
                             f"got {render_mode!r}")
        self.env = env
        self.render_mode = render_mode
        self.metadata = {"name": spec.name, "render_modes": ["rgb_array"], "is_parallelizable": True}
        self.possible_agents = [f"agent_{i}" for i in range(spec.n_agents)]
        self.agents: list[str] = []
        self.observation_spaces = {a: spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
                                   for a in self.possible_agents}
        self.action_spaces = {a: copy.deepcopy(spec.action_space) for a in self.possible_agents}
        if spec.state_dim is not None:
            self.state_space = spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float32)
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        self._state: np.ndarray | None = None

    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        ts = self.env.reset(seed=seed)
        self.agents = list(self.possible_agents)
        self._keep_state(ts)
        return self._observations(ts.obs), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        ts = self.env.step(self._batched(actions))
        live = self.agents
        done = bool(ts.done[0])
        if done:
            ended = {a: True for a in live}
            terminated = dict.fromkeys(live, bool(ts.terminated[0]))
            truncated = dict.fromkeys(live, bool(ts.truncated[0]))
        else:
            alive = ts.info["alive"][0].tolist() if "alive" in ts.info else [True] * len(self.possible_agents)
            ended = {a: not alive[self._index[a]] for a in live}
            terminated, truncated = ended, dict.fromkeys(live, False)
        obs = self._observations(ts.final_obs, live)
        rewards = {a: float(ts.reward[0, self._index[a]]) for a in live}
        self.agents = [a for a in live if not ended[a]]
        self._keep_state(ts)
        return obs, rewards, terminated, truncated, {a: {} for a in live}

    def state(self) -> np.ndarray:
        if self._state is None:
            raise NotImplementedError(f"{self.metadata['name']} has no global state")
        return self._state.copy()

    def render(self) -> np.ndarray | None:
        """The env's frame of its one copy with ``render_mode="rgb_array"``; None without a render mode."""
        return None if self.render_mode is None else self.env.render()

    def close(self) -> None:
        self.env.close()

    def _observations(self, obs: torch.Tensor, agents: list[str] | None = None) -> dict[str, np.ndarray]:
        rows = obs[0].to(torch.float32).numpy()
        return {a: rows[self._index[a]].copy() for a in (self.agents if agents is None else agents)}

    def _keep_state(self, ts: TimeStep) -> None:
        self._state = None if ts.state is None else ts.state[0].to(torch.float32).numpy().copy()

    def _batched(self, actions: dict[str, Any]) -> torch.Tensor:
        """The live agents' actions as the env's ``[1, N]`` (Discrete) or ``[1, N, act_dim]`` (Box) tensor;
        agents that have left act 0 (hmarl's envs ignore them)."""
        name = self.metadata["name"]
        if not self.agents:
            raise ValueError(f"{name}: the episode has ended; call reset() before step()")
        strangers = sorted(set(actions) - set(self.agents))
        missing = [a for a in self.agents if a not in actions]
        if strangers or missing:
            raise ValueError(f"{name}: step needs one action per live agent ({', '.join(self.agents)}); "
                             f"missing {missing or 'none'}, not live {strangers or 'none'}")
        space = self.env.spec.action_space
        if isinstance(space, spaces.Discrete):
            batch = np.zeros((1, len(self.possible_agents)), dtype=np.int64)
        else:
            batch = np.zeros((1, len(self.possible_agents), *space.shape), dtype=np.float32)
        for agent, action in actions.items():
            action = np.asarray(action)
            valid = space.contains(action) if isinstance(space, spaces.Discrete) else action.shape == space.shape
            if not valid:
                raise ValueError(f"{name}: {agent}'s action {action.tolist()} is not in {space}")
            batch[0, self._index[agent]] = action
        return torch.from_numpy(batch)


def to_parallel_env(name: str, *, seed: int | None = None, render_mode: str | None = None,
                    **options: Any) -> HmarlParallelEnv:
    """The registered env ``name`` as a PettingZoo ``ParallelEnv``: one copy on the CPU.

    ``options`` are the registry's (``n_agents``, ``max_steps``, ``continuous_actions`` and the env's
    own, e.g. ``field_size`` for LBF); ``seed`` seeds the env's generator until a ``reset(seed=...)``.
    """
    return HmarlParallelEnv(make_env(name, num_envs=1, device="cpu", seed=seed, **options), render_mode)
