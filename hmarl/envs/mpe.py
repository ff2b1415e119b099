"""MPE simple spread (the rules of ``mpe2``'s ``simple_spread_v3``), batched in torch.

Hand-written rather than adapted: mpe2 steps one copy at a time in numpy, with Python loops
over entities and over agents' turns, so ``num_envs`` copies cost ``num_envs`` such steps;
here every copy and agent moves in the same tensor operations, on any device.
``tests/envs/test_mpe.py`` replays identical states and actions in both and compares
observations, rewards and episode ends step by step (float64, atol 1e-5), collisions included.

The world, as ``mpe2/simple_spread/simple_spread.py`` builds it on ``mpe2/_mpe_utils/core.py``:
``N`` agents (radius 0.15, mass 1, colliding, silent) and ``N`` landmarks (fixed, not
colliding). One step, of length ``dt = 0.1``:

1. Actions become forces ``u``: ``Discrete(5)`` is no-op, -x, +x, -y, +y; a continuous action
   ``a`` in ``Box(0, 1, (5,))`` (clipped, as mpe2's wrapper does) gives ``u = (a2 - a1, a4 - a3)``
   (``a0`` is unused). Either is multiplied by the sensitivity 5 (agents have no ``accel``).
2. Every pair of agents pushes apart with the softened contact force
   ``contact_force * (p_i - p_j) / d * k * log(1 + exp(-(d - 0.3) / k))``,
   ``contact_force = 100``, ``k = contact_margin = 1e-3``, ``d = |p_i - p_j|`` at the start of
   the step.
3. Explicit Euler, as mpe2: ``p += v dt`` with the old velocity, then ``v = v (1 - 0.25) + F / m dt`` (no speed
   limit, no noise).
4. Reward of agent ``i`` (after the move): ``(1 - local_ratio) * global + local_ratio * local``,
   ``global = -sum over landmarks of the distance of its nearest agent``, ``local = -`` the
   number of other agents closer than 0.3 (the collision penalty), ``local_ratio = 0.5``.
5. The episode is truncated after ``max_steps`` steps (mpe2's ``max_cycles``); with
   ``terminate_on_success`` it is terminated earlier once every landmark has an agent within
   0.1 (truncation wins when both happen on one step, as in mpe2).

Observation of agent ``i`` (``obs_dim = 6 N``): its velocity, its position, every landmark
minus its position, every other agent (in index order) minus its position, then the others'
communication, which is always zero (silent agents). ``state`` is every agent's observation
concatenated, as mpe2's ``state()``.

Reset: agents and landmarks uniform in ``[-1, 1]^2``, velocities zero, drawn from our own
CPU ``torch.Generator`` (so a seed gives the same episodes on every device, though not mpe2's
episodes). Finished copies reset inside ``step`` from the same stream.

Not ported: mpe2's ``curriculum``, partial observability (``num_agent_neighbors``,
``num_landmark_neighbors``) and rendering; ``mpe2_simple_spread`` (``envs/pettingzoo.py``) runs
mpe2 itself for those.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from hmarl.envs.landmark_subtasks import with_subtasks
from hmarl.envs.registry import register
from hmarl.envs.seeding import cpu_generator
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep

# mpe2's World and simple_spread constants
DT = 0.1
DAMPING = 0.25
CONTACT_FORCE = 100.0
CONTACT_MARGIN = 1e-3
MASS = 1.0
AGENT_SIZE = 0.15
SENSITIVITY = 5.0
CAPTURE_RADIUS = 0.1
#: Discrete action -> force direction: no-op, -x, +x, -y, +y (mpe2's ``_set_action``).
MOVES = ((0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))
#: Length of mpe2's movement action (``dim_p * 2 + 1``); silent agents have no other part.
ACTION_DIM = 5
COMM_DIM = 2


class SimpleSpread(MultiAgentEnv):
    """``num_envs`` copies of MPE simple spread stepping together (see the module docstring).

    ``dtype`` is the precision of the physics, observations and rewards (mpe2 computes in
    float64; float32 is the default here, float64 is what the replay test uses). In float32,
    observations drift from mpe2's by about 2e-5 over 100 steps of crowded agents.

    Shapes (``B = num_envs``, ``N = n_agents``):
        obs ``[B, N, 6 N]``; actions ``[B, N]`` int64 in ``[0, 5)`` or ``[B, N, 5]`` float;
        reward ``[B, N]``; terminated/truncated ``[B]`` bool; state ``[B, 6 N^2]``;
        ``info["positions"]`` ``[B, N, 2]`` after any reset, ``info["final_positions"]`` and
        ``info["final_obs"]`` before it.
    """

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
                 n_agents: int = 4, max_steps: int = 100, continuous_actions: bool = False, *,
                 local_ratio: float = 0.5, terminate_on_success: bool = False,
                 dtype: torch.dtype | str = torch.float32, name: str = "mpe_simple_spread") -> None:
        if n_agents < 1:
            raise ValueError(f"{name}: n_agents must be at least 1, got {n_agents}")
        if not 0.0 <= local_ratio <= 1.0:
            raise ValueError(f"{name}: local_ratio is a proportion in [0, 1], got {local_ratio}")
        self._device = device = torch.device(device)
        self._dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self._n, self._local_ratio = n_agents, float(local_ratio)
        self._terminate = bool(terminate_on_success)
        self._moves = torch.tensor(MOVES, dtype=self._dtype, device=device) * SENSITIVITY
        self._not_self = ~torch.eye(n_agents, dtype=torch.bool, device=device)
        # Row i: the other agents in index order, as mpe2 lists them in agent i's observation.
        self._others = torch.tensor([[j for j in range(n_agents) if j != i] for i in range(n_agents)],
                                    dtype=torch.long, device=device).reshape(n_agents, n_agents - 1)
        self._silence = torch.zeros(num_envs, n_agents, COMM_DIM * (n_agents - 1), dtype=self._dtype, device=device)
        self._gen = cpu_generator(seed)
        if continuous_actions:
            action_space: spaces.Space = spaces.Box(0.0, 1.0, (ACTION_DIM,))
        else:
            action_space = spaces.Discrete(ACTION_DIM)
        obs_dim = 6 * n_agents
        self.spec = EnvSpec(
            n_agents=n_agents, obs_dim=obs_dim, action_space=action_space, max_steps=max_steps,
            num_envs=num_envs, device=device, state_dim=n_agents * obs_dim,
            # observations are [vel, pos, landmarks relative to the agent, ...], a landmark per agent
            name=name, positions=2,
            obs_slices={"velocity": slice(0, 2), "position": slice(2, 4), "landmarks": slice(4, 4 + 2 * n_agents)},
            optional={} if continuous_actions else {"continuous_actions": "continuous_actions"})
        self.set_state(*self._spawn())

    # ----------------------------------------------------------------------------- protocol
    def reset(self, seed: int | None = None) -> TimeStep:
        """New episodes in every copy; ``seed`` re-seeds the spawns."""
        if seed is not None:
            self._gen.manual_seed(seed)
        positions, landmarks = self._spawn()
        return self.set_state(positions, landmarks)

    def step(self, actions: Tensor) -> TimeStep:
        """Move every copy one step; finished copies start a new episode (``info["final_obs"]``)."""
        force = self._action_force(actions.to(self._device))
        pos, vel = self._pos, self._vel
        force = force + self._contact_force(pos)
        # mpe2 moves by the old velocity, then damps it and adds the acceleration
        pos = pos + vel * DT
        vel = vel * (1 - DAMPING) + force / MASS * DT
        self._pos, self._vel, self._t = pos, vel, self._t + 1
        reward, covered = self._reward(pos)

        truncated = self._t >= self.spec.max_steps
        terminated = covered & ~truncated if self._terminate else torch.zeros_like(truncated)
        done = terminated | truncated
        final_obs, final_positions = self._observe(), pos
        # A fresh spawn for every copy, kept where a copy ended: no host sync to ask which did.
        spawn_pos, spawn_landmarks = self._spawn()
        ended = done[:, None, None]
        self._pos = torch.where(ended, spawn_pos, pos)
        self._vel = torch.where(ended, 0.0, vel)
        self._landmarks = torch.where(ended, spawn_landmarks, self._landmarks)
        self._t = torch.where(done, 0, self._t)
        obs = self._observe()
        return TimeStep(obs=obs, reward=reward, terminated=terminated, truncated=truncated,
                        state=obs.flatten(1),
                        info={"final_obs": final_obs, "positions": self._pos, "final_positions": final_positions})

    # ----------------------------------------------------------------------------- state access
    @property
    def world(self) -> dict[str, Tensor]:
        """The simulator state: ``positions``, ``velocities`` ``[B, N, 2]``, ``landmarks``
        ``[B, N, 2]`` and ``steps`` ``[B]`` (steps into the episode)."""
        return {"positions": self._pos, "velocities": self._vel, "landmarks": self._landmarks, "steps": self._t}

    def set_state(self, positions: Tensor, landmarks: Tensor, velocities: Tensor | None = None,
                  steps: Tensor | None = None) -> TimeStep:
        """Put every copy in a given state (e.g. mpe2's after its reset) and observe it.

        Shapes: ``positions``, ``velocities`` ``[B, N, 2]``, ``landmarks`` ``[B, N, 2]``,
        ``steps`` ``[B]`` (default: the episodes start now).
        """
        b, n = self.spec.num_envs, self._n
        as_state = {"dtype": self._dtype, "device": self._device}
        self._pos = torch.as_tensor(positions, **as_state).reshape(b, n, 2).clone()
        self._landmarks = torch.as_tensor(landmarks, **as_state).reshape(b, n, 2).clone()
        self._vel = (torch.zeros_like(self._pos) if velocities is None
                     else torch.as_tensor(velocities, **as_state).reshape(b, n, 2).clone())
        self._t = (torch.zeros(b, dtype=torch.long, device=self._device) if steps is None
                   else torch.as_tensor(steps, dtype=torch.long, device=self._device).reshape(b).clone())
        obs = self._observe()
        no = torch.zeros(b, dtype=torch.bool, device=self._device)
        return TimeStep(obs=obs, reward=torch.zeros(b, n, dtype=self._dtype, device=self._device),
                        terminated=no, truncated=no.clone(), state=obs.flatten(1), info={"positions": self._pos})

    # ----------------------------------------------------------------------------- rules
    def _spawn(self) -> tuple[Tensor, Tensor]:
        """Starting agent positions and landmarks ``[B, N, 2]`` for every copy (velocities start at 0).

        Drawn in float64 on the CPU whatever the env's dtype and device, so one seed gives one
        set of episodes.
        """
        b, n = self.spec.num_envs, self._n
        points = torch.rand(b, 2 * n, 2, generator=self._gen, dtype=torch.float64) * 2 - 1
        points = points.to(self._device, self._dtype)
        return points[:, :n], points[:, n:]

    def _action_force(self, actions: Tensor) -> Tensor:
        """mpe2's ``_set_action``: actions ``[B, N]`` or ``[B, N, 5]`` -> forces ``[B, N, 2]``."""
        if self.spec.discrete:
            return self._moves[actions.long()]
        # clipped and subtracted in the action's own precision, as mpe2 does with the float32 it gets
        a = actions.clamp(0.0, 1.0)
        u = torch.stack([a[..., 2] - a[..., 1], a[..., 4] - a[..., 3]], -1)
        return u.to(self._dtype) * SENSITIVITY

    def _contact_force(self, pos: Tensor) -> Tensor:
        """Sum of the pairwise contact forces on each agent ``[B, N, 2]`` (mpe2's ``get_collision_force``)."""
        delta = pos[:, :, None] - pos[:, None]              # [B, N, N, 2]: p_i - p_j
        dist = delta.square().sum(-1).sqrt()
        # mpe2's softened overlap k * log(1 + exp(-(d - d_min) / k)), via logaddexp as mpe2
        overlap = torch.logaddexp(torch.zeros_like(dist), -(dist - 2 * AGENT_SIZE) / CONTACT_MARGIN)
        penetration = overlap * CONTACT_MARGIN
        push = CONTACT_FORCE * delta / dist[..., None] * penetration[..., None]
        # an agent does not push itself (its own pair is 0 / 0)
        return torch.where(self._not_self[..., None], push, 0.0).sum(2)

    def _reward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rewards ``[B, N]`` and whether every landmark is covered ``[B]``, after the move."""
        nearest = (pos[:, :, None] - self._landmarks[:, None]).square().sum(-1).sqrt().amin(1)  # [B, landmarks]
        global_reward = -nearest.sum(-1, keepdim=True)
        dist = (pos[:, :, None] - pos[:, None]).square().sum(-1).sqrt()
        collisions = ((dist < 2 * AGENT_SIZE) & self._not_self).sum(-1)
        reward = global_reward * (1 - self._local_ratio) - collisions.to(self._dtype) * self._local_ratio
        return reward, (nearest < CAPTURE_RADIUS).all(-1)

    def render(self) -> np.ndarray:
        """Copy 0 as it is now, ``uint8 [240, 240, 3]``: agents and landmarks (matplotlib)."""
        from hmarl.envs.scenes import MatplotlibScene, still

        b = self.spec.num_envs
        no = torch.zeros(b, dtype=torch.bool, device=self._device)
        ts = TimeStep(obs=self._observe(), reward=torch.zeros(b, self.spec.n_agents, device=self._device),
                      terminated=no, truncated=no, info={"positions": self._pos})
        return still(MatplotlibScene, self, ts)

    def _observe(self) -> Tensor:
        """Every agent's observation ``[B, N, 6 N]`` (see the module docstring)."""
        pos = self._pos
        to_landmarks = (self._landmarks[:, None] - pos[:, :, None]).flatten(2)
        to_others = (pos[:, self._others] - pos[:, :, None]).flatten(2)
        return torch.cat([self._vel, pos, to_landmarks, to_others, self._silence], -1)


#: mpe2 options that change what this port computes (the rest only render).
_NOT_PORTED = ("curriculum", "num_agent_neighbors", "num_landmark_neighbors")


@register("mpe_simple_spread")
def mpe_simple_spread(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
                      n_agents: int = 4, max_steps: int = 100, continuous_actions: bool = False,
                      subtasks: bool = False, **options: Any):
    """MPE simple spread batched in torch (mpe2's ``simple_spread_v3`` rules): ``n_agents``
    agents cover as many landmarks.

    ``options``: ``local_ratio``, ``terminate_on_success`` (as in mpe2) and ``dtype``.
    ``subtasks=True``: landmarks as ALMA subtasks (``envs.landmark_subtasks``).
    """
    unknown = sorted(set(options) - {"local_ratio", "terminate_on_success", "dtype"})
    if unknown:
        hint = (" (not ported: mpe2_simple_spread runs mpe2 itself and has it)"
                if set(unknown) & set(_NOT_PORTED) else "")
        raise ValueError(f"mpe_simple_spread: unknown option(s) {', '.join(unknown)}{hint}; known options: "
                         "local_ratio, terminate_on_success, dtype, subtasks")
    env = SimpleSpread(num_envs, device=device, seed=seed, n_agents=n_agents, max_steps=max_steps,
                       continuous_actions=continuous_actions, **options)
    return with_subtasks(env, subtasks)
