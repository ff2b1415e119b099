"""SaveTheCity (ALMA, Iqbal et al. 2022, Appendix B), batched in torch.

Agents with different skills put out fires and finish constructing buildings; the paper's
test bed for learning to allocate agents to subtasks (a subtask = a building).

Grid and entities: a 16 x 16 grid, a position is ``(row, col)``. ``N = n_agents`` agents
(2 to 5, default 3) and ``S = N + 1`` buildings. Buildings sit on a lattice with spacing 3
(cells whose row and col are both in 1, 4, 7, 10, 13: ``LATTICE``), ``S`` lattice cells
drawn without replacement per episode; so no cell is 4-adjacent to two buildings. Agents
start on distinct random cells of the central 4 x 4 block (rows/cols 6..9) that hold no
building. Agents may share cells; no agent may stand on a building.

Agent types ``(fire speed, build speed, move range)``: firefighter ``(1.0, 0.05, 1)``,
builder ``(0.05, 1.0, 1)``, generalist ``(0.0, 0.0, 2)``. Types are drawn uniformly per
agent per episode, or pinned with the option ``agent_types`` (one name per agent).

Actions, ``Discrete(12)``: 0 stay; 1-4 move N/E/S/W by 1 (N = row - 1, E = col + 1);
5-8 move N/E/S/W by 2 (agents with move range 1 move by 1); 9 extinguish; 10 build;
11 freeze (generalists only; others: no effect). A move off the grid or onto a building is
a stay; a 2-move whose second cell is blocked moves by 1, one whose first cell is blocked
stays. Interactions act on the building 4-adjacent to the agent (none adjacent, or that
building finished: no effect).

One step:

1. Movement (every agent at once; sharing cells is allowed).
2. Interactions, from the positions after movement. A generalist 4-adjacent to a building
   boosts the weak ability (the 0.05 one) of every other non-generalist agent adjacent to
   the same building by ``BOOST = 0.45`` (to 0.5), whatever action either takes. Per
   unfinished building, ``F`` = the sum of the fire speeds of the agents extinguishing it
   and ``Bd`` = the sum of the build speeds of the agents building it (boosts included).
   A generalist freezing a building that is burning at the start of the step freezes it.
3. Per unfinished building (``burn_rate`` 1.0 FastBurn, 0.5 SlowBurn), if burning
   (``fire > 0``): with ``F > 0``, ``fire = max(fire - 0.25 F, 0)``, else
   ``fire = min(1.1 fire, 1)``. Then ``health += 0.125 Bd - 0.035 burn_rate fire`` clipped
   to ``[0, 1]``, the damage term skipped when frozen this step. ``health == 1``: complete;
   ``health == 0``: burned down; finished (complete or burned) buildings never change again.
4. Re-ignition: an unfinished building that is not burning after step 3 counts its timer
   down by one; at 0 it ignites (fire ``U(0.2, 0.5)``) and the timer restarts with a new
   draw: ``U{60..80}`` steps for FastBurn, ``U{10..30}`` for SlowBurn (integers, ends
   included).
5. Rewards. Per building: ``10 * (health change) - 20 * [burned down this step]
   + 0.5 * [fire extinguished to 0 this step]``. The env reward, the same for every agent,
   is the sum over buildings ``+ 1`` per building completed this step ``+ 20`` on the step
   all buildings are complete. The subtask reward of building ``k`` is its per-building
   reward ``+ 20`` if it completed this step. Every reward is scaled by
   ``20 / (6 * S + 20)`` (``max_buildings = S = N + 1``).
6. The episode ends (``terminated``) when every building is complete or burned down, else
   it is truncated at ``max_steps`` (default 150).

Episodes (reset): each building is FastBurn or SlowBurn with prob 1/2; health
``U(0.25, 0.4)`` or ``U(0.6, 0.75)`` with prob 1/2 each; on fire with prob 0.4 with
intensity ``U(0.2, 0.5)``; a re-ignition timer drawn as in step 4. Draws come from the
env's own CPU ``torch.Generator`` (so a seed gives the same episodes on every device).

Observation (full observability). Each entity has ``F = 12`` features
``[row/15, col/15, is_agent, is_building, is_firefighter, is_builder, is_generalist, fire,
health, fast_burn, frozen, finished]`` (agents' last five are 0; ``frozen``: frozen on the
step just taken). The entities are the ``N`` agents in agent order, then the ``S``
buildings. Agent ``i``'s observation is its own (absolute) row followed by every entity's
row with row/col made relative to agent ``i`` (``(entity - agent) / 15``):
``obs_dim = F + (N + S) F``. ``state`` is every entity's absolute row, flattened.

``info`` (reset and step): ``positions`` ``[B, N, 2]`` float ``(row, col)`` and the subtask
interface: ``entities`` ``[B, N + S, F]`` (absolute rows), ``entity_subtask``
``[B, N + S, S]`` bool (building ``k``'s row is True at subtask ``k``; agents' rows are all
False), ``active_subtasks`` ``[B, S]`` (building unfinished) and ``subtask_rewards``
``[B, S]`` (this step's, scaled; 0 at reset). After an auto-reset ``positions``,
``entities``, ``entity_subtask`` and ``active_subtasks`` describe the new episode (like
``obs``); ``subtask_rewards`` belong to the step just taken. ``step`` adds ``final_obs``,
``final_positions`` (before the auto-reset), ``success`` ``[B]`` bool (True only on the
step that ends an episode, by termination or truncation, with no building burned down)
and ``completed`` ``[B]`` float (on that step the fraction of buildings complete, else 0).

Decisions where the paper is silent (ours):

* Fire intensity at reset and at re-ignition is ``U(0.2, 0.5)``.
* The damage term uses the fire after this step's update (so a fire put out this step
  does no damage; a growing fire does damage at its grown value).
* The re-ignition timer is drawn at reset for every building (burning or not), counts
  down only on steps that end with the building unfinished and not burning (so also on the
  step a fire is put out), and restarts after each ignition. A building ignited in step 4
  takes damage from the next step on.
* Interactions use the positions after this step's movement (agents interacting do not
  move; a generalist boosts from where it stands after its move).
* Boosts do not stack (two generalists at a building still give +0.45) and generalists
  are never boosted (they have no weak 0.05 ability).
* Freezing needs the building to be burning at the start of the step; the frozen flag of
  the observation is this step's.
* A finished building keeps its last fire value (``finished`` tells it is over).
* ``success`` also holds on a truncated episode if nothing burned down (the city was
  saved, even if not every building was completed); ``completed`` tells how much was.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from gymnasium import spaces

from hmarl.envs.registry import register
from hmarl.envs.seeding import cpu_generator
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep, agents_then_subtasks

GRID = 16
#: Rows/cols of the building lattice (spacing 3).
LATTICE_COORDS = (1, 4, 7, 10, 13)
LATTICE = tuple((r, c) for r in LATTICE_COORDS for c in LATTICE_COORDS)
#: Agents start in the central 4 x 4 block.
CENTRE = tuple((r, c) for r in range(6, 10) for c in range(6, 10))

STAY = 0
NORTH, EAST, SOUTH, WEST = 1, 2, 3, 4
NORTH2, EAST2, SOUTH2, WEST2 = 5, 6, 7, 8
EXTINGUISH, BUILD, FREEZE = 9, 10, 11
N_ACTIONS = 12
ACTION_NAMES = ("STAY", "NORTH", "EAST", "SOUTH", "WEST", "NORTH2", "EAST2", "SOUTH2", "WEST2",
                "EXTINGUISH", "BUILD", "FREEZE")
#: ``(d_row, d_col)`` of one cell of each action's move, and the cells asked for.
DIRECTIONS = ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (0, 1), (1, 0), (0, -1),
              (0, 0), (0, 0), (0, 0))
MOVE_LENGTH = (0, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0)
#: The four neighbours of a cell.
NEIGHBOURS = ((-1, 0), (0, 1), (1, 0), (0, -1))

FIREFIGHTER, BUILDER, GENERALIST = 0, 1, 2
TYPE_NAMES = ("firefighter", "builder", "generalist")
FIRE_SPEED = (1.0, 0.05, 0.0)
BUILD_SPEED = (0.05, 1.0, 0.0)
MOVE_RANGE = (1, 1, 2)
#: What a generalist adds to the weak ability of the other agents at its building.
BOOST = 0.45

#: Building kinds: burn rate and the re-ignition timer's range ``[low, high]``.
FAST_BURN_RATE, SLOW_BURN_RATE = 1.0, 0.5
FAST_TIMER, SLOW_TIMER = (60, 80), (10, 30)
FIRE_GROWTH = 1.1
EXTINGUISH_RATE = 0.25
BUILD_RATE = 0.125
DAMAGE_RATE = 0.035
INITIAL_HEALTH = ((0.25, 0.4), (0.6, 0.75))
INITIAL_FIRE_PROB = 0.4
FIRE_INTENSITY = (0.2, 0.5)

#: Rewards (before scaling by ``20 / (6 * S + 20)``).
HEALTH_REWARD = 10.0
BURNED_PENALTY = 20.0
EXTINGUISHED_BONUS = 0.5
COMPLETED_BONUS = 1.0
ALL_COMPLETE_BONUS = 20.0
SUBTASK_COMPLETED_BONUS = 20.0

#: Entity features.
FEATURES = ("row", "col", "is_agent", "is_building", "is_firefighter", "is_builder", "is_generalist",
            "fire", "health", "fast_burn", "frozen", "finished")
N_FEATURES = len(FEATURES)

OPTIONS = ("agent_types",)
MIN_AGENTS, MAX_AGENTS = 2, 5


def _type_ids(types: Sequence, n_agents: int, what: str) -> list[int]:
    """Type names (or ids) -> ids, one per agent."""
    if isinstance(types, (str, int)) or len(types) != n_agents:
        raise ValueError(f"{what} must be a list of {n_agents} type names (one per agent) from "
                         f"{', '.join(TYPE_NAMES)}, got {types!r}")
    ids = []
    for t in types:
        if isinstance(t, str) and t in TYPE_NAMES:
            ids.append(TYPE_NAMES.index(t))
        elif not isinstance(t, (str, bool)) and isinstance(t, int) and 0 <= t < len(TYPE_NAMES):
            ids.append(int(t))
        else:
            raise ValueError(f"{what}: unknown agent type {t!r}; types: {', '.join(TYPE_NAMES)}")
    return ids


class SaveTheCity(MultiAgentEnv):
    """``num_envs`` copies of SaveTheCity stepping together (see the module docstring).

    Shapes (``F = 12``, ``S = N + 1``):
        obs ``[B, N, F + (2 N + 1) F]``; actions ``[B, N]`` int64 in ``0..11``; reward
        ``[B, N]``; state ``[B, (2 N + 1) F]``; ``info["positions"]`` ``[B, N, 2]``;
        ``info["entities"]`` ``[B, 2 N + 1, F]``; ``info["entity_subtask"]``
        ``[B, 2 N + 1, S]``; ``info["active_subtasks"]`` / ``info["subtask_rewards"]`` ``[B, S]``.
    """

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
                 n_agents: int = 3, max_steps: int = 150, *, agent_types: Sequence[str] | None = None,
                 name: str = "savethecity") -> None:
        for key, value in (("num_envs", num_envs), ("max_steps", max_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {key} must be an int >= 1, got {value!r}")
        if isinstance(n_agents, bool) or not isinstance(n_agents, int) or not MIN_AGENTS <= n_agents <= MAX_AGENTS:
            raise ValueError(f"{name}: n_agents must be an int in {MIN_AGENTS}..{MAX_AGENTS}, got {n_agents!r}")
        self._device = device = torch.device(device)
        n = self._n = n_agents
        s = self._s = n_agents + 1
        self._fixed_types = None if agent_types is None else torch.tensor(
            _type_ids(agent_types, n, f"{name}: agent_types"), device=device)
        self._scale = 20.0 / (6 * s + 20)

        self._lattice = torch.tensor(LATTICE, device=device)
        self._centre = torch.tensor(CENTRE, device=device)
        self._dirs = torch.tensor(DIRECTIONS, device=device)
        self._move_len = torch.tensor(MOVE_LENGTH, device=device)
        self._fire_speed = torch.tensor(FIRE_SPEED, dtype=torch.float64, device=device)
        self._build_speed = torch.tensor(BUILD_SPEED, dtype=torch.float64, device=device)
        self._move_range = torch.tensor(MOVE_RANGE, device=device)
        self._gen = cpu_generator(seed)

        b = num_envs
        self._pos = torch.zeros(b, n, 2, dtype=torch.long, device=device)
        self._type = torch.zeros(b, n, dtype=torch.long, device=device)
        self._bpos = torch.zeros(b, s, 2, dtype=torch.long, device=device)
        self._fast = torch.zeros(b, s, dtype=torch.bool, device=device)
        self._fire = torch.zeros(b, s, dtype=torch.float64, device=device)
        self._health = torch.zeros(b, s, dtype=torch.float64, device=device)
        self._timer = torch.zeros(b, s, dtype=torch.long, device=device)
        self._frozen = torch.zeros(b, s, dtype=torch.bool, device=device)
        self._t = torch.zeros(b, dtype=torch.long, device=device)
        entities = n + s
        self.spec = EnvSpec(
            n_agents=n, obs_dim=N_FEATURES + entities * N_FEATURES, action_space=spaces.Discrete(N_ACTIONS),
            max_steps=max_steps, num_envs=num_envs, device=device, state_dim=entities * N_FEATURES,
            name=name, positions=2, entities=agents_then_subtasks(n, s, FEATURES, finished="finished"),
            obs_slices={"position": slice(0, 2)},  # the agent's own (row, col) / 15, first in its row
            episode_metrics=("success", "completed"))
        self._entity_subtask = self.spec.entities.membership(device)
        self._spawn(None)

    # ----------------------------------------------------------------------------- protocol
    def reset(self, seed: int | None = None) -> TimeStep:
        """New episodes in every copy; ``seed`` re-seeds the draws."""
        if seed is not None:
            self._gen.manual_seed(seed)
        self._spawn(None)
        b, n, s, dev = self.spec.num_envs, self._n, self._s, self._device
        no = torch.zeros(b, dtype=torch.bool, device=dev)
        entities = self._entities()
        return TimeStep(obs=self._obs(entities), reward=torch.zeros(b, n, device=dev), terminated=no,
                        truncated=no.clone(), state=entities.flatten(1),
                        info=self._info(entities, torch.zeros(b, s, device=dev)))

    def step(self, actions: Tensor) -> TimeStep:
        b, n, s, dev = self.spec.num_envs, self._n, self._s, self._device
        action = actions.reshape(b, n).to(dev, torch.long)
        kind = self._type
        pos, bpos = self._pos, self._bpos
        fire, health = self._fire, self._health
        active = (health > 0) & (health < 1)                               # [B, S] unfinished

        # 1. movement: up to min(asked, range) cells, stopping before a wall or building
        direction = self._dirs[action]                                     # [B, N, 2]
        length = torch.minimum(self._move_len[action], self._move_range[kind])
        one = pos + direction
        two = one + direction
        free_one = self._free(one, bpos)
        free_two = free_one & self._free(two, bpos)
        pos = torch.where(((length >= 2) & free_two).unsqueeze(-1), two,
                          torch.where(((length >= 1) & free_one).unsqueeze(-1), one, pos))

        # 2. interactions with the 4-adjacent building, from the positions after moving
        adjacent = self._adjacent(pos, bpos)                               # [B, N, S]
        generalist = kind == GENERALIST
        helped = (adjacent & generalist.unsqueeze(-1)).any(1)              # [B, S]
        boosted = (adjacent & helped.unsqueeze(1)).any(-1) & ~generalist   # [B, N]
        fire_speed = self._fire_speed[kind] + BOOST * (boosted & (kind == BUILDER))
        build_speed = self._build_speed[kind] + BOOST * (boosted & (kind == FIREFIGHTER))
        extinguishing = adjacent & (action == EXTINGUISH).unsqueeze(-1)
        building = adjacent & (action == BUILD).unsqueeze(-1)
        f = (extinguishing * fire_speed.unsqueeze(-1)).sum(1)              # [B, S]
        bd = (building * build_speed.unsqueeze(-1)).sum(1)
        burning = fire > 0
        frozen = (adjacent & ((action == FREEZE) & generalist).unsqueeze(-1)).any(1) & burning & active

        # 3. fire and health of the unfinished buildings
        new_fire = torch.where(f > 0, (fire - EXTINGUISH_RATE * f).clamp(min=0.0),
                               (fire * FIRE_GROWTH).clamp(max=1.0))
        new_fire = torch.where(burning & active, new_fire, fire)
        burn_rate = torch.where(self._fast, FAST_BURN_RATE, SLOW_BURN_RATE)
        damage = torch.where(frozen, 0.0, DAMAGE_RATE * burn_rate * new_fire)
        new_health = torch.where(active, (health + BUILD_RATE * bd - damage).clamp(0.0, 1.0), health)
        completed = active & (new_health >= 1)
        burned = active & (new_health <= 0)
        extinguished = active & burning & (new_fire <= 0)

        # 4. re-ignition of unfinished buildings that are not burning
        still = active & ~completed & ~burned
        counting = still & (new_fire <= 0)
        timer = self._timer - counting.long()
        ignite = counting & (timer <= 0)
        intensity = FIRE_INTENSITY[0] + (FIRE_INTENSITY[1] - FIRE_INTENSITY[0]) * self._rand(b, s)
        new_fire = torch.where(ignite, intensity.to(new_fire.dtype), new_fire)
        timer = torch.where(ignite, self._draw_timers(self._fast), timer)

        # 5. rewards
        per_building = (HEALTH_REWARD * (new_health - health) - BURNED_PENALTY * burned
                        + EXTINGUISHED_BONUS * extinguished)
        complete = new_health >= 1
        all_complete = complete.all(-1) & completed.any(-1)
        env_reward = (per_building.sum(-1) + COMPLETED_BONUS * completed.sum(-1)
                      + ALL_COMPLETE_BONUS * all_complete) * self._scale
        subtask_rewards = ((per_building + SUBTASK_COMPLETED_BONUS * completed) * self._scale).to(torch.float32)
        reward = env_reward.to(torch.float32).unsqueeze(-1).expand(b, n).clone()

        self._pos, self._fire, self._health, self._timer, self._frozen = pos, new_fire, new_health, timer, frozen
        self._t = self._t + 1

        # 6. episode ends
        finished = complete | (new_health <= 0)
        terminated = finished.all(-1)
        truncated = (self._t >= self.spec.max_steps) & ~terminated
        done = terminated | truncated
        success = done & ~(new_health <= 0).any(-1)
        completed_fraction = torch.where(done, complete.to(torch.float32).mean(-1), 0.0)

        entities = self._entities()
        final_obs = self._obs(entities)
        final_positions = self._pos.to(torch.float32)
        if bool(done.any()):
            self._spawn(done.nonzero().squeeze(-1))
            entities = self._entities()
            obs = self._obs(entities)
        else:
            obs = final_obs
        info = {"final_obs": final_obs, "final_positions": final_positions,
                **self._info(entities, subtask_rewards), "success": success, "completed": completed_fraction}
        return TimeStep(obs=obs, reward=reward, terminated=terminated, truncated=truncated,
                        state=entities.flatten(1), info=info)

    # ----------------------------------------------------------------------------- state access
    def set_state(self, index: int, agent_positions, agent_types, building_positions, health, fire=None, *,
                  fast_burn=None, timers=None, frozen=None, step: int = 0) -> Tensor:
        """Overwrite copy ``index`` (hand-made tests); returns every copy's obs.

        ``agent_positions`` ``[N, 2]`` ``(row, col)``; ``agent_types`` ``N`` names (or ids);
        ``building_positions`` ``[S, 2]`` distinct lattice cells; ``health``/``fire`` ``[S]``
        (fire defaults to 0); ``fast_burn`` ``[S]`` bool (default SlowBurn); ``timers`` ``[S]``
        re-ignition timers >= 1 (default: drawn as at reset); ``frozen`` ``[S]`` bool (the
        observation's flag, default False); ``step`` the episode's step count.
        """
        dev, n, s = self._device, self._n, self._s
        pos = torch.as_tensor(agent_positions, dtype=torch.long, device=dev).reshape(n, 2)
        kind = torch.tensor(_type_ids(list(agent_types), n, "agent_types"), device=dev)
        bpos = torch.as_tensor(building_positions, dtype=torch.long, device=dev).reshape(s, 2)
        health = torch.as_tensor(health, dtype=torch.float64, device=dev).reshape(s)
        fire = torch.zeros(s, dtype=torch.float64, device=dev) if fire is None else \
            torch.as_tensor(fire, dtype=torch.float64, device=dev).reshape(s)
        fast = torch.zeros(s, dtype=torch.bool, device=dev) if fast_burn is None else \
            torch.as_tensor(fast_burn, dtype=torch.bool, device=dev).reshape(s)
        timer = self._draw_timers(fast.unsqueeze(0))[0] if timers is None else \
            torch.as_tensor(timers, dtype=torch.long, device=dev).reshape(s)
        frz = torch.zeros(s, dtype=torch.bool, device=dev) if frozen is None else \
            torch.as_tensor(frozen, dtype=torch.bool, device=dev).reshape(s)
        on_lattice = (bpos.unsqueeze(1) == self._lattice).all(-1).any(-1)
        if not bool(on_lattice.all()) or len({tuple(p) for p in bpos.tolist()}) != s:
            raise ValueError(f"building_positions must be {s} distinct lattice cells (rows/cols in "
                             f"{LATTICE_COORDS}), got {bpos.tolist()}")
        if not bool(self._free(pos.unsqueeze(0), bpos.unsqueeze(0)).all()):
            raise ValueError(f"agent_positions {pos.tolist()} leave the grid or stand on a building")
        if not bool(((health >= 0) & (health <= 1) & (fire >= 0) & (fire <= 1)).all()):
            raise ValueError(f"health and fire must be in [0, 1], got {health.tolist()} and {fire.tolist()}")
        if not bool((timer >= 1).all()):
            raise ValueError(f"timers must be >= 1, got {timer.tolist()}")
        self._pos[index], self._type[index], self._bpos[index] = pos, kind, bpos
        self._health[index], self._fire[index], self._fast[index] = health, fire, fast
        self._timer[index], self._frozen[index], self._t[index] = timer, frz, step
        return self._obs(self._entities())

    @property
    def agent_types(self) -> Tensor:
        """Agent type ids ``[B, N]`` (``TYPE_NAMES``); a copy."""
        return self._type.clone()

    @property
    def timers(self) -> Tensor:
        """Re-ignition timers ``[B, S]``; a copy."""
        return self._timer.clone()

    @property
    def fast_burn(self) -> Tensor:
        """Building kinds ``[B, S]`` (True = FastBurn); a copy."""
        return self._fast.clone()

    # ----------------------------------------------------------------------------- internals
    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self._gen).to(self._device)

    def _draw_timers(self, fast: Tensor) -> Tensor:
        """New re-ignition timers for buildings of kinds ``fast``."""
        low = torch.where(fast, FAST_TIMER[0], SLOW_TIMER[0])
        span = torch.where(fast, FAST_TIMER[1] - FAST_TIMER[0] + 1, SLOW_TIMER[1] - SLOW_TIMER[0] + 1)
        return low + (self._rand(*fast.shape) * span).long().minimum(span - 1)

    def _free(self, cell: Tensor, bpos: Tensor) -> Tensor:
        """Cells ``[B, K, 2]`` inside the grid and holding no building of ``bpos`` ``[B, S, 2]``."""
        inside = ((cell >= 0) & (cell < GRID)).all(-1)
        on_building = (cell.unsqueeze(2) == bpos.unsqueeze(1)).all(-1).any(-1)
        return inside & ~on_building

    @staticmethod
    def _adjacent(pos: Tensor, bpos: Tensor) -> Tensor:
        """``[B, N, S]``: agent 4-adjacent to building."""
        return (pos.unsqueeze(2) - bpos.unsqueeze(1)).abs().sum(-1) == 1

    def _spawn(self, index: Tensor | None) -> None:
        """New episodes for the copies ``index`` (all when None)."""
        k = self.spec.num_envs if index is None else index.numel()
        n, s, dev = self._n, self._s, self._device
        bpos = self._lattice[self._rand(k, len(LATTICE)).argsort(-1)[:, :s]]          # [k, S, 2]
        on_building = (self._centre.unsqueeze(1) == bpos.unsqueeze(1)).all(-1).any(-1)   # [k, 16]
        scores = torch.where(on_building, -1.0, self._rand(k, len(CENTRE)))
        pos = self._centre[scores.topk(n, dim=-1).indices]                             # [k, N, 2]
        if self._fixed_types is None:
            kind = (self._rand(k, n) * len(TYPE_NAMES)).long().clamp(max=len(TYPE_NAMES) - 1)
        else:
            kind = self._fixed_types.expand(k, n).clone()
        fast = self._rand(k, s) < 0.5
        high_band = self._rand(k, s) < 0.5
        u = self._rand(k, s)
        (lo_a, hi_a), (lo_b, hi_b) = INITIAL_HEALTH
        health = torch.where(high_band, lo_b + (hi_b - lo_b) * u, lo_a + (hi_a - lo_a) * u).to(torch.float64)
        burning = self._rand(k, s) < INITIAL_FIRE_PROB
        intensity = FIRE_INTENSITY[0] + (FIRE_INTENSITY[1] - FIRE_INTENSITY[0]) * self._rand(k, s)
        fire = torch.where(burning, intensity, 0.0).to(torch.float64)
        timer = self._draw_timers(fast)
        frozen = torch.zeros(k, s, dtype=torch.bool, device=dev)
        t = torch.zeros(k, dtype=torch.long, device=dev)
        if index is None:
            self._pos, self._type, self._bpos, self._fast = pos, kind, bpos, fast
            self._health, self._fire, self._timer, self._frozen, self._t = health, fire, timer, frozen, t
        else:
            # new tensors, so the ones handed out earlier stay valid
            put = lambda old, new: old.index_put((index,), new)  # noqa: E731
            self._pos, self._type, self._bpos = put(self._pos, pos), put(self._type, kind), put(self._bpos, bpos)
            self._fast, self._health, self._fire = put(self._fast, fast), put(self._health, health), put(self._fire, fire)
            self._timer, self._frozen, self._t = put(self._timer, timer), put(self._frozen, frozen), put(self._t, t)

    def render(self) -> np.ndarray:
        """Copy 0 as it is now, ``uint8 [240, 240, 3]``: buildings by health and fire, agents by type (matplotlib)."""
        from hmarl.envs.scenes import CityScene, still

        b, dev = self.spec.num_envs, self._device
        entities = self._entities()
        no = torch.zeros(b, dtype=torch.bool, device=dev)
        ts = TimeStep(obs=self._obs(entities), reward=torch.zeros(b, self._n, device=dev), terminated=no,
                      truncated=no, info=self._info(entities, torch.zeros(b, self._s, device=dev)))
        return still(CityScene, self, ts)

    def _entities(self) -> Tensor:
        """Absolute entity rows ``[B, N + S, F]``: agents, then buildings."""
        b, n, s, dev = self.spec.num_envs, self._n, self._s, self._device
        agents = torch.cat([self._pos.to(torch.float32) / (GRID - 1), torch.ones(b, n, 1, device=dev),
                            torch.zeros(b, n, 1, device=dev),
                            torch.nn.functional.one_hot(self._type, len(TYPE_NAMES)).to(torch.float32),
                            torch.zeros(b, n, 5, device=dev)], -1)
        finished = (self._health <= 0) | (self._health >= 1)
        buildings = torch.cat([self._bpos.to(torch.float32) / (GRID - 1), torch.zeros(b, s, 1, device=dev),
                               torch.ones(b, s, 1, device=dev), torch.zeros(b, s, 3, device=dev),
                               torch.stack([self._fire, self._health], -1).to(torch.float32),
                               torch.stack([self._fast, self._frozen, finished], -1).to(torch.float32)], -1)
        return torch.cat([agents, buildings], 1)

    def _obs(self, entities: Tensor) -> Tensor:
        n = self._n
        own = entities[:, :n]                                              # [B, N, F]
        relative = entities.unsqueeze(1).repeat(1, n, 1, 1)                # [B, N, N + S, F]
        relative[..., :2] -= own[:, :, None, :2]
        return torch.cat([own, relative.flatten(2)], -1)

    def _info(self, entities: Tensor, subtask_rewards: Tensor) -> dict[str, Tensor]:
        b = self.spec.num_envs
        return {"positions": self._pos.to(torch.float32), "entities": entities,
                "entity_subtask": self._entity_subtask.expand(b, -1, -1).clone(),
                "active_subtasks": (self._health > 0) & (self._health < 1),
                "subtask_rewards": subtask_rewards}


@register("savethecity")
def savethecity(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None, n_agents: int = 3,
                max_steps: int = 150, continuous_actions: bool = False, **options) -> SaveTheCity:
    """SaveTheCity (ALMA): firefighters, builders and generalists save ``n_agents + 1`` buildings."""
    if continuous_actions:
        raise ValueError("savethecity is discrete (Discrete(12): stay, 4 moves by 1, 4 moves by 2, extinguish, "
                         "build, freeze); set continuous_actions=false")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"savethecity has no option {', '.join(map(repr, unknown))}; options: {', '.join(OPTIONS)}")
    return SaveTheCity(num_envs, device=device, seed=seed, n_agents=n_agents, max_steps=max_steps, **options)
