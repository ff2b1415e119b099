"""Simple spread seen as ALMA subtasks: every landmark is a subtask (env option ``subtasks``).

Wraps a simple-spread env (VMAS's or MPE's; they differ only in where the agent's own
position and velocity sit in its observation: its ``obs_slices`` say) and replaces each agent's observation with
entity rows, as ALMA's attention agents read them (Iqbal et al. 2022, Sec. 5):

    own row                       (x, y, vx, vy, agent=1, landmark=0)       absolute
    N agent rows, in agent order  (dx, dy, vx, vy, 1, 0)                   relative to the observer
    S landmark rows               (dx, dy, 0, 0, 0, 1)

so ``obs_dim = 6 (1 + N + S)``. The agents' velocities are visible to all (full observability,
as in ALMA's settings); the underlying env's observation holds only the agent's own.

Subtask ``k``'s reward is minus the distance of its nearest assigned agent (the spec's
choice): the env reports every agent's candidate ``subtask_rewards[b, i, k] = -|p_i - l_k|``
``[B, N, S]`` and the ``subtask`` reward rule takes, per landmark, the best of the agents the
allocator put on it. Landmarks never finish, so every subtask stays active.
"""
from __future__ import annotations

import dataclasses

import torch

import numpy as np

from hmarl.spec import MultiAgentEnv, Tensor, TimeStep, agents_then_subtasks

FEATURES = ("x", "y", "vx", "vy", "agent", "landmark")


class LandmarkSubtasks(MultiAgentEnv):
    """A simple-spread env with ``entities`` (see the module docstring).

    Where the agent's own position and velocity and the landmarks sit in the wrapped env's
    observation is read off its ``obs_slices`` (``position``, ``velocity``, ``landmarks``).
    """

    def __init__(self, env: MultiAgentEnv):
        spec = env.spec
        position, velocity, landmarks = (spec.require(f"obs_slices.{name}", "landmark subtasks")
                                         for name in ("position", "velocity", "landmarks"))
        n, s, f = spec.n_agents, (landmarks.stop - landmarks.start) // 2, len(FEATURES)
        self.env = env
        self._position, self._velocity, self._landmarks = position.start, velocity.start, landmarks.start
        self._n, self._s = n, s
        entities = agents_then_subtasks(n, s, FEATURES)
        optional = {fact: option for fact, option in spec.optional.items() if fact != "entities"}
        # the layout changed: the own row starts with the position, then the velocity
        self.spec = dataclasses.replace(spec, obs_dim=f * (1 + n + s), optional=optional, entities=entities,
                                        obs_slices={"position": slice(0, 2)})
        self._membership = entities.membership(spec.device)
        kind = torch.zeros(n + s, 2, device=spec.device)
        kind[:n, 0], kind[n:, 1] = 1.0, 1.0
        self._kind = kind  # [E, 2]: agent, landmark

    def reset(self, seed: int | None = None) -> TimeStep:
        ts = self.env.reset(seed=seed)
        entities = self._entities(ts.obs)
        rewards = torch.zeros(ts.obs.shape[0], self._n, self._s, device=ts.obs.device)
        return dataclasses.replace(ts, obs=self._observe(entities), info={**ts.info, **self._info(entities, rewards)})

    def step(self, actions: Tensor) -> TimeStep:
        ts = self.env.step(actions)
        final = self._entities(ts.info.get("final_obs", ts.obs))
        entities = self._entities(ts.obs)
        agents, landmarks = final[:, :self._n, :2], final[:, self._n:, :2]
        rewards = -torch.cdist(agents, landmarks)  # [B, N, S]: -|p_i - l_k| before any reset
        info = {**ts.info, **self._info(entities, rewards), "final_obs": self._observe(final)}
        return dataclasses.replace(ts, obs=self._observe(entities), info=info)

    def close(self) -> None:
        self.env.close()

    def render(self) -> np.ndarray:
        """The wrapped env's frame."""
        return self.env.render()

    def _entities(self, obs: Tensor) -> Tensor:
        """Absolute entity rows ``[B, N + S, 6]`` from the wrapped observation ``[B, N, D]``."""
        position = obs[..., self._position:self._position + 2]  # [B, N, 2]
        velocity = obs[..., self._velocity:self._velocity + 2]
        relative = obs[:, 0, self._landmarks:self._landmarks + 2 * self._s].unflatten(-1, (self._s, 2))
        landmarks = position[:, :1] + relative  # [B, S, 2], as agent 0 sees them
        where = torch.cat([position, landmarks], 1)
        moving = torch.cat([velocity, torch.zeros_like(landmarks)], 1)
        return torch.cat([where, moving, self._kind.expand(obs.shape[0], -1, -1)], -1)

    def _observe(self, entities: Tensor) -> Tensor:
        """Own row, then every entity relative to the observer: ``[B, N, 6 (1 + N + S)]``."""
        own = entities[:, :self._n]  # [B, N, 6]
        rows = entities.unsqueeze(1).repeat(1, self._n, 1, 1)  # [B, N, E, 6]
        rows[..., :2] -= own[:, :, None, :2]
        return torch.cat([own, rows.flatten(2)], -1)

    def _info(self, entities: Tensor, subtask_rewards: Tensor) -> dict[str, Tensor]:
        b = entities.shape[0]
        return {"entities": entities, "entity_subtask": self._membership.expand(b, -1, -1),
                "active_subtasks": torch.ones(b, self._s, dtype=torch.bool, device=entities.device),
                "subtask_rewards": subtask_rewards}


def with_subtasks(env: MultiAgentEnv, subtasks: bool) -> MultiAgentEnv:
    """``env`` with landmark subtasks if asked for, else ``env`` saying which option turns them on."""
    if subtasks:
        return LandmarkSubtasks(env)
    env.spec = dataclasses.replace(env.spec, optional={**env.spec.optional, "entities": "subtasks"})
    return env

