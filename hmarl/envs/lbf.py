"""Level-Based Foraging (the rules of ``lbforaging`` 2.0) and LBF with Survival, batched in torch.

The grid, actions and rules are the package's (``lbforaging/foraging/environment.py``);
``tests/envs/test_lbf.py`` replays identical states and actions in both and compares
observations, rewards and episode ends step by step.

Grid: ``field_size`` rows x cols; a position is ``(row, col)``. Actions are ``Discrete(6)``:
NONE, NORTH (row - 1), SOUTH (row + 1), WEST (col - 1), EAST (col + 1), LOAD.

One step, as in the package:

1. Invalid actions become NONE: a move off the grid or onto a food, or LOAD with no food
   in the four neighbouring cells (other players do not make a move invalid).
2. Movement: every player claims a cell (its target, or its own cell for NONE/LOAD); a
   player moves iff no other player claims the same cell. So a player cannot enter a
   cell whose occupant stays, two players heading for one cell both stay, and chains
   and swaps of movers succeed (the package's semantics, kept as they are).
3. Loading: a LOAD player loads its adjacent food (the first of north, south, west, east
   holding food); the loading players adjacent to a food load it together and succeed
   iff the sum of their levels is >= the food's level. Each then gets
   ``level * food_level``, divided by ``group_level * food_spawned`` with
   ``normalize_reward`` (``food_spawned``: the total level of the food spawned at reset).
   The food disappears. A failed group's players get ``-penalty`` each.
4. The episode ends (``terminated``) when no food is left; the package reports its time
   limit as ``done`` as well, we report it as ``truncated`` (only if not terminated).

Spawning (reset), as in the package but from our own ``torch.Generator`` stream: each
player on a uniformly drawn empty cell with a level uniform in ``[min_player_level,
max_player_level]`` (per-player bounds, if lists, permuted over players); then each
food on a uniform cell of the interior (not the border rows/columns) that has no player,
no food in its 3 x 3 neighbourhood and none two cells away along its row or column, with
a level uniform in ``[min_food_level, max_food_level]``, where ``max_food_level=None``
means the sum of the three lowest player levels and ``force_coop`` makes every food's
level its maximum. A food with no such cell left is not placed (the package gives up
after 1000 draws). The spacing guarantees that no cell touches two foods.

Observation (the package's vector observation, ``observe_agent_levels`` included): for
each of the ``max_num_food`` food slots ``(row, col, level)`` of the visible foods in
row-major order, then ``(row, col, level)`` of the visible players, the observer first
and the others in index order; unused slots hold ``(-1, -1, 0)``. Coordinates are
relative to the corner of the observer's view, ``max(position - sight, 0)``, so with
``sight >= field size`` (the default) they are grid coordinates. Foods are visible
within ``sight`` cells on both axes; players, as in the package, when their relative
coordinates lie in ``[0, 2 * sight]`` (near the top/left border this reaches further
than ``sight``).

LBF with Survival (``survival=True``; ours, the paper's variant is unpublished): every
agent has an energy in ``[0, 1]``, 1 at reset. Each step it drops by ``energy_decay``;
then a successful LOAD the agent took part in refills it (to 1, or by ``energy_gain``
when that is set, capped at 1). An agent whose energy reaches 0 dies: it stays on its
cell as an obstacle, its actions are ignored (NONE) and its reward is 0 from then on.
A food that was eaten respawns at the end of the step with the same level and in the same
food slot (see below; so the food count and ``food_spawned`` stay constant), on a cell drawn
by the spawning rule above, or, when no such cell is left, on any cell without player or
food; foods eaten together are placed in slot order. The episode ends
(``terminated``) when every agent is dead, else it is truncated at ``max_steps``.
The observation appends ``n_agents`` energies, in the order of the player slots
(observer first; 0 for an empty slot); ``info["alive"]`` and ``info["energy"]`` give them
per agent.

Presets (registered envs; their options can be overridden):

* ``lbfws_easy``: 8 x 8, 4 agents, 4 foods, every player level 2 and food levels 1-2 (any
  single agent can eat any food), ``energy_decay=0.02`` (an agent starves after 50
  steps without food), eating refills to 1, 100 steps.
* ``lbfws_hard``: 8 x 8, 4 agents, 4 foods, every player level 1 and every food level 2
  (``force_coop``: a food needs two agents loading together), ``energy_decay=0.04`` (25
  steps), eating refills to 1, 100 steps.

Food slots: each food keeps a slot ``0..max_num_food - 1`` for as long as it lies on the
grid (at reset food ``i`` gets slot ``i``; ``set_state`` numbers the foods row-major); an
eaten food empties its slot, and a Survival respawn refills it. The vector observation
ignores the slots (it lists the foods row-major); the subtask interface below is built on
them, so that subtask ``k`` stays the same food while it lasts.

Subtasks (``subtasks=True``; ALMA's subtasks are the foods): the observation becomes
entity-structured, as in SaveTheCity. The entities are the ``N`` players in index order,
then the ``max_num_food`` food slots in slot order, each with the features ``ENTITY_FEATURES``
``(row, col, level, agent, energy, gone)``: ``agent`` is 1 for players; ``energy`` is the
Survival energy of a player (1 without Survival, 0 for food); ``gone`` is 1 for an empty
food slot or a dead player; an empty slot has level and row/col 0. Agent ``i``'s observation
is its own row, with ``(row, col) / (max(rows, cols) - 1)``, followed by every entity's row
with ``(entity - agent i) / (max(rows, cols) - 1)`` as row/col: ``obs_dim = 6 + 6 (N + F)``.
It needs the whole grid in sight (``sight`` unset or >= the field size). ``info`` then
carries the ``entities`` ``[B, N + F, 6]`` (rows as the own row),
``entity_subtask``, ``active_subtasks`` ``[B, F]`` (the slot holds food) and
``subtask_rewards`` ``[B, F]``: the rewards this step's successful loaders of the slot's food
received (0 at reset). Without the option the env declares ``{"entities": "subtasks"}`` in ``EnvSpec.optional``.

``info["positions"]`` is ``[B, N, 2]`` float ``(row, col)``. ``state`` is the global view:
the foods (grid coordinates, row-major, ``(-1, -1, 0)`` for empty slots), then every
player's ``(row, col, level)`` in index order, then (survival) the energies.

``obs_slices["position"]`` (HRL-CG's goal dims) is the observer's own ``(row, col)``: dims ``3 F, 3 F + 1``
of the vector observation (declared only with the whole grid in sight: with a smaller
``sight`` they are relative to a view corner that moves with the agent) and dims ``0, 1`` of
the subtasks observation (scaled by ``1 / (max(rows, cols) - 1)``).

Not matched: the package's ``grid_observation`` (3-layer grid observation) and rendering;
the order in which the package resolves a LOAD player adjacent to two foods (it pops a set
of players in hash order; its spawner never makes such a cell, here it can only arise from
a Survival respawn on a crowded grid, and the player then loads its first food in the
order above); the package looks for a northern/western food only from rows/columns > 1
(a food on row/column 0 cannot spawn there; we look from row/column > 0).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from gymnasium import spaces

from hmarl.envs.registry import register
from hmarl.envs.seeding import cpu_generator
from hmarl.spec import EnvSpec, MultiAgentEnv, Tensor, TimeStep, agents_then_subtasks

NONE, NORTH, SOUTH, WEST, EAST, LOAD = range(6)
ACTION_NAMES = ("NONE", "NORTH", "SOUTH", "WEST", "EAST", "LOAD")
#: ``(d_row, d_col)`` of each action.
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
#: The four neighbours in the order the package looks for a LOAD player's food: N, S, W, E.
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))
#: Offsets from a food where the package's spawner places no other food.
SPAWN_EXCLUSION = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)) + ((-2, 0), (2, 0), (0, -2), (0, 2))
#: The features of an entity in the ``subtasks`` observation (see the module docstring).
ENTITY_FEATURES = ("row", "col", "level", "agent", "energy", "gone")
#: Survival energies at or below this count as zero (energy is float64, so only rounding).
_EMPTY = 1e-9

#: The options of every LBF factory (the package's names; ``players`` and ``max_episode_steps``
#: are hmarl's ``n_agents`` and ``max_steps``).
OPTIONS = ("field_size", "max_num_food", "min_player_level", "max_player_level", "min_food_level",
           "max_food_level", "sight", "force_coop", "normalize_reward", "observe_agent_levels", "penalty",
           "survival", "energy_decay", "energy_gain", "subtasks")

#: LBF with Survival presets (see the module docstring).
LBFWS_EASY = dict(field_size=8, max_num_food=4, min_player_level=2, max_player_level=2, min_food_level=1,
                  max_food_level=2, force_coop=False, survival=True, energy_decay=0.02, energy_gain=None)
LBFWS_HARD = dict(field_size=8, max_num_food=4, min_player_level=1, max_player_level=1, min_food_level=2,
                  max_food_level=2, force_coop=True, survival=True, energy_decay=0.04, energy_gain=None)


def _levels(name: str, value, count: int, what: str) -> list[int]:
    """A scalar or one value per player/food -> a list of ``count`` ints >= 1."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{name} must be an int or a list of {count} (one per {what}), got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must hold ints >= 1, got {value!r}")
    return values


class LevelBasedForaging(MultiAgentEnv):
    """``num_envs`` copies of Level-Based Foraging (optionally with Survival) stepping together.

    Shapes:
        obs ``[B, N, 3 F + 3 N (+ N with survival)]`` (``2 N`` players' dims without
        ``observe_agent_levels``); actions ``[B, N]`` int64 in ``0..5``; reward ``[B, N]``;
        ``info["positions"]`` ``[B, N, 2]`` ``(row, col)``; ``info["final_obs"]``; with
        survival ``info["alive"]`` ``[B, N]`` bool and ``info["energy"]`` ``[B, N]``. With
        ``subtasks`` obs ``[B, N, 6 + 6 (N + F)]`` and the subtask ``info`` keys.
    """

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", seed: int | None = None,
                 n_agents: int = 2, max_steps: int = 50, *, field_size: int | Sequence[int] = 8,
                 max_num_food: int = 2, min_player_level=1, max_player_level=2, min_food_level=1,
                 max_food_level=None, sight: int | None = None, force_coop: bool = False,
                 normalize_reward: bool = True, observe_agent_levels: bool = True, penalty: float = 0.0,
                 survival: bool = False, energy_decay: float | None = None, energy_gain: float | None = None,
                 subtasks: bool = False, name: str = "lbf") -> None:
        for key, value in (("num_envs", num_envs), ("n_agents", n_agents), ("max_steps", max_steps),
                           ("max_num_food", max_num_food)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {key} must be an int >= 1, got {value!r}")
        size = list(field_size) if isinstance(field_size, (list, tuple)) else [field_size, field_size]
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 3 for s in size):
            raise ValueError(f"{name}: field_size must be an int >= 3 or [rows, cols] of them (food spawns "
                             f"off the border), got {field_size!r}")
        rows, cols = size
        if n_agents + max_num_food > rows * cols:
            raise ValueError(f"{name}: {n_agents} agents and {max_num_food} foods do not fit on a "
                             f"{rows} x {cols} grid")
        if sight is None:
            sight = max(rows, cols)
        if isinstance(sight, bool) or not isinstance(sight, int) or sight < 1:
            raise ValueError(f"{name}: sight must be an int >= 1 (or None for the whole grid), got {sight!r}")
        if subtasks and sight < max(rows, cols):
            raise ValueError(f"{name}: subtasks need the whole grid in sight: sight >= field size "
                             f"{max(rows, cols)} (or sight unset), got sight={sight}")
        if subtasks and not observe_agent_levels:
            raise ValueError(f"{name}: observe_agent_levels=False applies to the vector observation; the "
                             "subtasks observation always shows the levels")
        pmin = _levels("min_player_level", min_player_level, n_agents, "agent")
        pmax = _levels("max_player_level", max_player_level, n_agents, "agent")
        fmin = _levels("min_food_level", min_food_level, max_num_food, "food")
        fmax = None if max_food_level is None else _levels("max_food_level", max_food_level, max_num_food, "food")
        if any(lo > hi for lo, hi in zip(pmin, pmax)):
            raise ValueError(f"{name}: min_player_level {min_player_level!r} exceeds max_player_level "
                             f"{max_player_level!r}")
        if fmax is not None and any(lo > hi for lo, hi in zip(fmin, fmax)):
            raise ValueError(f"{name}: min_food_level {min_food_level!r} exceeds max_food_level {max_food_level!r}")
        if penalty < 0:
            raise ValueError(f"{name}: penalty is subtracted on a failed LOAD and must be >= 0, got {penalty}")
        if survival:
            energy_decay = 0.02 if energy_decay is None else energy_decay
            if not 0 < energy_decay <= 1:
                raise ValueError(f"{name}: energy_decay must be in (0, 1], got {energy_decay}")
            if energy_gain is not None and not 0 < energy_gain <= 1:
                raise ValueError(f"{name}: energy_gain must be in (0, 1] or None (refill to 1), got {energy_gain}")
        elif energy_decay is not None or energy_gain is not None:
            raise ValueError(f"{name}: energy_decay/energy_gain apply to LBF with Survival only; set survival=True")

        self._device = device = torch.device(device)
        self._rows, self._cols, self._sight = rows, cols, sight
        self._n, self._f = n_agents, max_num_food
        self._force_coop, self._normalize, self._penalty = bool(force_coop), bool(normalize_reward), float(penalty)
        self._levels_seen = bool(observe_agent_levels)
        self._survival = bool(survival)
        self._subtasks = bool(subtasks)
        # entity coordinates are scaled to [0, 1] (relative ones to [-1, 1])
        self._span = max(rows, cols) - 1
        self._decay, self._gain = energy_decay, energy_gain
        self._pmin = torch.tensor(pmin, device=device)
        self._pmax = torch.tensor(pmax, device=device)
        self._fmin = torch.tensor(fmin, device=device)
        self._fmax = None if fmax is None else torch.tensor(fmax, device=device)
        self._moves = torch.tensor(MOVES, device=device)
        self._neighbours = torch.tensor(NEIGHBOURS, device=device)
        interior = torch.zeros(rows, cols, dtype=torch.bool, device=device)
        interior[1:-1, 1:-1] = True
        self._interior = interior.view(-1)
        self._cells = torch.arange(rows * cols, device=device)
        # Row i: the observer i first, then the other players in index order.
        self._order = torch.tensor([[i] + [j for j in range(n_agents) if j != i] for i in range(n_agents)],
                                   device=device)
        self._gen = cpu_generator(seed)

        b = num_envs
        self._pos = torch.zeros(b, n_agents, 2, dtype=torch.long, device=device)
        self._level = torch.ones(b, n_agents, dtype=torch.long, device=device)
        self._food = torch.zeros(b, rows * cols, dtype=torch.long, device=device)
        self._slot_cell = torch.full((b, max_num_food), -1, dtype=torch.long, device=device)  # -1: empty slot
        self._food_spawned = torch.ones(b, device=device)
        self._energy = torch.ones(b, n_agents, dtype=torch.float64, device=device)
        self._t = torch.zeros(b, dtype=torch.long, device=device)
        player_dims = 3 if self._levels_seen else 2
        extra = n_agents if self._survival else 0
        # The observer's own (row, col): first of the entity rows, or the first player slot of the
        # vector observation, which holds grid coordinates only when the whole grid is in sight.
        obs_slices = {}
        if self._subtasks:
            obs_slices["position"] = slice(0, 2)
        elif sight >= max(rows, cols):
            obs_slices["position"] = slice(3 * max_num_food, 3 * max_num_food + 2)
        entities = agents_then_subtasks(n_agents, max_num_food, ENTITY_FEATURES, finished="gone")
        self._entity_subtask = entities.membership(device)
        if self._subtasks:
            obs_dim = len(ENTITY_FEATURES) * (1 + n_agents + max_num_food)
        else:
            obs_dim = 3 * max_num_food + player_dims * n_agents + extra
        self.spec = EnvSpec(
            n_agents=n_agents, obs_dim=obs_dim, action_space=spaces.Discrete(6), max_steps=max_steps,
            num_envs=num_envs, device=device, state_dim=3 * max_num_food + 3 * n_agents + extra,
            name=name, positions=2, obs_slices=obs_slices, entities=entities if self._subtasks else None,
            optional={} if self._subtasks else {"entities": "subtasks"})
        self._spawn(None)

    # ----------------------------------------------------------------------------- protocol
    def reset(self, seed: int | None = None) -> TimeStep:
        """New episodes in every copy; ``seed`` re-seeds the spawns."""
        if seed is not None:
            self._gen.manual_seed(seed)
        self._spawn(None)
        b, n = self.spec.num_envs, self._n
        no = torch.zeros(b, dtype=torch.bool, device=self._device)
        return TimeStep(obs=self._obs(), reward=torch.zeros(b, n, device=self._device), terminated=no,
                        truncated=no.clone(), state=self._state(),
                        info=self._info(torch.zeros(b, self._f, device=self._device)))

    def step(self, actions: Tensor) -> TimeStep:
        b, n, rows, cols = self.spec.num_envs, self._n, self._rows, self._cols
        action = actions.reshape(b, n).to(self._device, torch.long)
        alive = self._alive()
        if self._survival:
            action = torch.where(alive, action, NONE)
        pos, food = self._pos, self._food

        # 1. validity against the grid at the start of the step (the package's valid moves)
        target = pos + self._moves[action]
        inside = self._inside(target)
        free = self._food_at(food, target, inside) == 0
        around = pos.unsqueeze(2) + self._neighbours                     # [B, N, 4, 2]
        around_food = self._food_at(food, around, self._inside(around))  # [B, N, 4]
        moving = (action >= NORTH) & (action <= EAST)
        valid = torch.where(moving, inside & free, torch.where(action == LOAD, (around_food > 0).any(-1), True))
        action = torch.where(valid, action, NONE)

        # 2. movement: a player moves iff it is the only one claiming its cell
        claim = pos + self._moves[action]
        claimants = (claim.unsqueeze(2) == claim.unsqueeze(1)).all(-1).sum(-1)
        pos = torch.where((claimants == 1).unsqueeze(-1), claim, pos)

        # 3. loading (loaders do not move, so their neighbours are those of step 1)
        loading = action == LOAD
        first = (around_food > 0).long().argmax(-1, keepdim=True)         # N, S, W, E order
        food_level = around_food.gather(-1, first).squeeze(-1)
        food_cell = self._flat(around.gather(2, first.unsqueeze(-1).expand(-1, -1, 1, 2)).squeeze(2))
        food_cell = torch.where(loading, food_cell, -1)
        together = (food_cell.unsqueeze(2) == food_cell.unsqueeze(1)) & loading.unsqueeze(1)
        group_level = (together * self._level.unsqueeze(1)).sum(-1)
        loaded = loading & (group_level >= food_level)
        reward = (self._level * food_level).to(torch.float32)
        if self._normalize:
            reward = reward / (group_level.clamp(min=1) * self._food_spawned.unsqueeze(-1))
        reward = torch.where(loaded, reward, 0.0) - self._penalty * (loading & ~loaded)
        eaten = torch.zeros(b, rows * cols + 1, dtype=torch.long, device=self._device)
        eaten = eaten.scatter_add_(1, torch.where(loaded, food_cell, rows * cols), torch.ones_like(food_cell))
        eaten = eaten[:, :-1] > 0
        food = torch.where(eaten, 0, food)
        # the same per food slot: which loaders ate it, and what an eaten slot held
        loaded_slot = (food_cell.unsqueeze(-1) == self._slot_cell.unsqueeze(1)) & loaded.unsqueeze(-1)  # [B, N, F]
        eaten_slot = loaded_slot.any(1)
        eaten_levels = torch.where(eaten_slot, self._food.gather(1, self._slot_cell.clamp(min=0)), 0)
        self._pos, self._food = pos, food
        self._slot_cell = torch.where(eaten_slot, -1, self._slot_cell)
        self._t = self._t + 1

        # 4. survival and episode ends
        if self._survival:
            energy = torch.where(alive, self._energy - self._decay, 0.0)
            refill = 1.0 if self._gain is None else (energy + self._gain).clamp(max=1.0)
            energy = torch.where(loaded & alive, refill, energy)
            self._energy = torch.where(energy > _EMPTY, energy, 0.0)
            reward = torch.where(alive, reward, 0.0)
            if bool(eaten_slot.any()):
                self._respawn(eaten_levels)
            terminated = ~self._alive().any(-1)
        else:
            terminated = (self._food == 0).all(-1)
        truncated = (self._t >= self.spec.max_steps) & ~terminated
        # loaders are never penalised, so this is their share of `reward`
        subtask_rewards = (loaded_slot * reward.unsqueeze(-1)).sum(1)

        final_obs = self._obs()
        final_positions = self._pos.to(torch.float32)
        done = terminated | truncated
        if bool(done.any()):
            self._spawn(done.nonzero().squeeze(-1))
            obs = self._obs()
        else:
            obs = final_obs
        return TimeStep(obs=obs, reward=reward, terminated=terminated, truncated=truncated,
                        state=self._state(),
                        info={"final_obs": final_obs, "final_positions": final_positions,
                              **self._info(subtask_rewards)})

    # ----------------------------------------------------------------------------- state access
    def set_state(self, index: int, positions, levels, food, *, step: int = 0, energy=None,
                  food_spawned: float | None = None) -> Tensor:
        """Overwrite copy ``index`` (replays and hand-made tests); returns every copy's obs.

        ``positions`` ``[N, 2]`` ``(row, col)``, ``levels`` ``[N]``, ``food`` ``[rows, cols]``
        food levels (0 = none; the foods take the food slots in row-major order);
        ``food_spawned`` defaults to the food's total level; ``energy`` ``[N]`` (survival only)
        defaults to 1 each.
        """
        dev, n = self._device, self._n
        positions = torch.as_tensor(positions, dtype=torch.long, device=dev).reshape(n, 2)
        levels = torch.as_tensor(levels, dtype=torch.long, device=dev).reshape(n)
        food = torch.as_tensor(food, dtype=torch.long, device=dev)
        if food.shape != (self._rows, self._cols):
            raise ValueError(f"food must be [{self._rows}, {self._cols}], got {list(food.shape)}")
        if not bool(self._inside(positions).all()):
            raise ValueError(f"positions {positions.tolist()} leave the {self._rows} x {self._cols} grid")
        if int((food > 0).sum()) > self._f:
            raise ValueError(f"at most max_num_food={self._f} foods, got {int((food > 0).sum())}")
        if energy is not None and not self._survival:
            raise ValueError("energy exists in LBF with Survival only")
        self._pos[index] = positions
        self._level[index] = levels
        self._food[index] = food.reshape(-1)
        food_cells = (food.reshape(-1) > 0).nonzero().squeeze(-1)
        self._slot_cell[index] = -1
        self._slot_cell[index, :food_cells.numel()] = food_cells
        self._food_spawned[index] = float(food.sum()) if food_spawned is None else float(food_spawned)
        self._t[index] = step
        self._energy[index] = 1.0 if energy is None else torch.as_tensor(energy, dtype=torch.float64, device=dev)
        return self._obs()

    @property
    def food_grid(self) -> Tensor:
        """Food levels ``[B, rows, cols]`` (0 = no food); a copy."""
        return self._food.reshape(-1, self._rows, self._cols).clone()

    @property
    def food_slots(self) -> Tensor:
        """The flat cell ``row * cols + col`` of each food slot's food ``[B, F]`` (-1 = empty); a copy."""
        return self._slot_cell.clone()

    @property
    def levels(self) -> Tensor:
        """Player levels ``[B, N]``; a copy."""
        return self._level.clone()

    def render(self) -> np.ndarray:
        """Copy 0 as it is now, ``uint8 [240, 240, 3]``: foods with their levels, players (matplotlib)."""
        from hmarl.envs.scenes import LbfScene, still

        b = self.spec.num_envs
        ts = TimeStep(obs=self._obs(), reward=torch.zeros(b, self._n, device=self._device),
                      terminated=torch.zeros(b, dtype=torch.bool, device=self._device),
                      truncated=torch.zeros(b, dtype=torch.bool, device=self._device), state=self._state(),
                      info=self._info(torch.zeros(b, self._f, device=self._device)))
        return still(LbfScene, self, ts, {"field_size": (self._rows, self._cols), "survival": self._survival})

    # ----------------------------------------------------------------------------- internals
    def _alive(self) -> Tensor:
        if not self._survival:
            return torch.ones_like(self._level, dtype=torch.bool)
        return self._energy > 0

    def _info(self, subtask_rewards: Tensor) -> dict[str, Tensor]:
        info = {"positions": self._pos.to(torch.float32)}
        if self._survival:
            info["alive"] = self._alive()
            info["energy"] = self._energy.to(torch.float32)
        if self._subtasks:
            info.update(entities=self._entities(),
                        entity_subtask=self._entity_subtask.expand(self.spec.num_envs, -1, -1).clone(),
                        active_subtasks=self._slot_cell >= 0, subtask_rewards=subtask_rewards)
        return info

    def _inside(self, rc: Tensor) -> Tensor:
        return (rc[..., 0] >= 0) & (rc[..., 0] < self._rows) & (rc[..., 1] >= 0) & (rc[..., 1] < self._cols)

    def _flat(self, rc: Tensor) -> Tensor:
        return rc[..., 0] * self._cols + rc[..., 1]

    def _food_at(self, food: Tensor, rc: Tensor, inside: Tensor) -> Tensor:
        """Food level at cells ``rc`` ``[B, ..., 2]`` (0 off the grid)."""
        b = food.shape[0]
        cell = torch.where(inside, self._flat(rc), 0)
        level = food.gather(1, cell.reshape(b, -1)).reshape(cell.shape)
        return torch.where(inside, level, 0)

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self._gen).to(self._device)

    def _pick(self, allowed: Tensor) -> tuple[Tensor, Tensor]:
        """A uniform allowed cell per row of ``allowed`` ``[k, cells]``, and whether one exists."""
        scores = torch.where(allowed, self._rand(*allowed.shape), -1.0)
        return scores.argmax(-1), allowed.any(-1)

    def _near_food(self, food: Tensor) -> Tensor:
        """Cells ``[k, cells]`` where the package's spawner would place no food."""
        k, rows, cols = food.shape[0], self._rows, self._cols
        padded = torch.zeros(k, rows + 4, cols + 4, dtype=torch.bool, device=self._device)
        padded[:, 2:-2, 2:-2] = (food > 0).view(k, rows, cols)
        near = torch.zeros(k, rows, cols, dtype=torch.bool, device=self._device)
        for dr, dc in SPAWN_EXCLUSION:
            near |= padded[:, 2 + dr:2 + dr + rows, 2 + dc:2 + dc + cols]
        return near.view(k, -1)

    def _occupied(self, pos: Tensor) -> Tensor:
        """Cells ``[k, cells]`` holding a player."""
        occupied = torch.zeros(pos.shape[0], self._rows * self._cols, dtype=torch.bool, device=self._device)
        return occupied.scatter_(1, self._flat(pos), True)

    def _spawn(self, index: Tensor | None) -> None:
        """New episodes for the copies ``index`` (all when None)."""
        k = self.spec.num_envs if index is None else index.numel()
        n, f, cols, dev = self._n, self._f, self._cols, self._device
        rows_k = torch.arange(k, device=dev)
        # players: the package permutes the per-player level bounds, then places each player
        perm = self._rand(k, n).argsort(-1)
        low, high = self._pmin[perm], self._pmax[perm]
        level = low + (self._rand(k, n) * (high - low + 1)).long()
        occupied = torch.zeros(k, self._rows * cols, dtype=torch.bool, device=dev)
        cells = []
        for _ in range(n):
            cell, _ = self._pick(~occupied)
            occupied[rows_k, cell] = True
            cells.append(cell)
        cell = torch.stack(cells, -1)
        pos = torch.stack([cell // cols, cell % cols], -1)
        # foods: levels per food slot, then places that keep foods apart
        perm = self._rand(k, f).argsort(-1)
        if self._fmax is None:
            high = level.sort(-1).values[:, :3].sum(-1, keepdim=True).expand(k, f)
            low = self._fmin[perm].minimum(high)
        else:
            high = self._fmax[perm]
            low = self._fmin[perm]
        if self._force_coop:
            low = high
        food_level = low + (self._rand(k, f) * (high - low + 1)).long()
        food = torch.zeros(k, self._rows * cols, dtype=torch.long, device=dev)
        slots = []
        for i in range(f):
            cell, placed = self._pick(self._interior & ~occupied & ~self._near_food(food))
            put = food.scatter(1, cell.unsqueeze(-1), food_level[:, i:i + 1])
            food = torch.where(placed.unsqueeze(-1), put, food)
            slots.append(torch.where(placed, cell, -1))
        slot_cell = torch.stack(slots, -1)
        spawned = food.sum(-1).to(torch.float32)
        if index is None:
            self._pos, self._level, self._food, self._food_spawned = pos, level, food, spawned
            self._slot_cell = slot_cell
            self._energy = torch.ones_like(self._energy)
            self._t = torch.zeros_like(self._t)
        else:
            # new tensors, so the ones handed out earlier stay valid
            self._pos, self._level = self._pos.index_put((index,), pos), self._level.index_put((index,), level)
            self._food = self._food.index_put((index,), food)
            self._slot_cell = self._slot_cell.index_put((index,), slot_cell)
            self._food_spawned = self._food_spawned.index_put((index,), spawned)
            self._energy = self._energy.index_put((index,), torch.ones(k, n, dtype=torch.float64, device=dev))
            self._t = self._t.index_put((index,), torch.zeros(k, dtype=torch.long, device=dev))

    def _respawn(self, levels: Tensor) -> None:
        """Survival: each eaten food comes back, same level and slot, at a free cell.

        ``levels`` ``[B, F]``: the level of each slot's eaten food (0 = nothing to place).
        """
        occupied = self._occupied(self._pos)
        food = self._food
        cells = []
        for i in range(self._f):
            spaced, found = self._pick(self._interior & ~occupied & ~self._near_food(food))
            anywhere, _ = self._pick(~occupied & (food == 0))
            cell = torch.where(found, spaced, anywhere)
            put = food.scatter(1, cell.unsqueeze(-1), levels[:, i:i + 1])
            food = torch.where((levels[:, i] > 0).unsqueeze(-1), put, food)
            cells.append(cell)
        self._food = food
        self._slot_cell = torch.where(levels > 0, torch.stack(cells, -1), self._slot_cell)

    def _food_list(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The foods in row-major order, ``max_num_food`` slots: row, col, level, present ``[B, F]``."""
        cells = self._rows * self._cols
        key = torch.where(self._food > 0, self._cells, self._cells + cells)
        first = key.topk(self._f, dim=-1, largest=False).values       # ascending: foods, then no-food cells
        present = first < cells
        cell = first % cells
        return cell // self._cols, cell % self._cols, self._food.gather(1, cell), present

    def _entity_cells(self) -> tuple[Tensor, Tensor]:
        """Every entity's ``(row, col)`` ``[B, N + F, 2]`` (0 for an empty slot) and whether it has one."""
        b, cols = self.spec.num_envs, self._cols
        present = self._slot_cell >= 0
        cell = self._slot_cell.clamp(min=0)
        food_rc = torch.where(present.unsqueeze(-1), torch.stack([cell // cols, cell % cols], -1), 0)
        located = torch.cat([torch.ones(b, self._n, dtype=torch.bool, device=self._device), present], 1)
        return torch.cat([self._pos, food_rc], 1), located

    def _entities(self) -> Tensor:
        """Entity rows ``[B, N + F, 6]`` (``ENTITY_FEATURES``; absolute coordinates): players, then food slots."""
        b, n, f, dev = self.spec.num_envs, self._n, self._f, self._device
        rc, _ = self._entity_cells()
        present = self._slot_cell >= 0
        food_level = torch.where(present, self._food.gather(1, self._slot_cell.clamp(min=0)), 0)
        level = torch.cat([self._level, food_level], 1)
        agent = torch.cat([torch.ones(b, n, device=dev), torch.zeros(b, f, device=dev)], 1)
        energy = torch.cat([self._energy.to(torch.float32), torch.zeros(b, f, device=dev)], 1)
        gone = torch.cat([~self._alive(), ~present], 1)
        features = torch.stack([level.to(torch.float32), agent, energy, gone.to(torch.float32)], -1)
        return torch.cat([rc.to(torch.float32) / self._span, features], -1)

    def _entity_obs(self) -> Tensor:
        """Each agent's own entity row, then every entity's row with coordinates relative to the agent."""
        b, n = self.spec.num_envs, self._n
        entities = self._entities()
        rc, located = self._entity_cells()
        relative = (rc.unsqueeze(1) - self._pos.unsqueeze(2)).to(torch.float32) / self._span   # [B, N, E, 2]
        relative = torch.where(located[:, None, :, None], relative, 0.0)                        # empty slots: 0
        rows = torch.cat([relative, entities[:, None, :, 2:].expand(b, n, -1, -1)], -1)
        return torch.cat([entities[:, :n], rows.flatten(2)], -1)

    def _obs(self) -> Tensor:
        if self._subtasks:
            return self._entity_obs()
        b, n, f, s = self.spec.num_envs, self._n, self._f, self._sight
        dev = self._device
        pos = self._pos
        corner = (pos - s).clamp(min=0)                                  # [B, N, 2]
        row, col, level, present = self._food_list()
        seen = (present.unsqueeze(1) & ((row.unsqueeze(1) - pos[..., :1]).abs() <= s)
                & ((col.unsqueeze(1) - pos[..., 1:]).abs() <= s))       # [B, N, F]
        slot = torch.where(seen, seen.cumsum(-1) - 1, f)
        values = torch.stack([row.unsqueeze(1) - corner[..., :1], col.unsqueeze(1) - corner[..., 1:],
                              level.unsqueeze(1).expand(b, n, f)], -1).to(torch.float32)
        foods = torch.tensor([-1.0, -1.0, 0.0], device=dev).repeat(b, n, f + 1, 1)
        foods = foods.scatter(2, slot.unsqueeze(-1).expand(b, n, f, 3), values)[:, :, :f]

        others = pos[:, self._order] - corner.unsqueeze(2)             # [B, N, N, 2]
        seen = ((others >= 0) & (others <= 2 * s)).all(-1)
        slot = torch.where(seen, seen.cumsum(-1) - 1, n)
        columns = [others[..., 0], others[..., 1]]
        if self._levels_seen:
            columns.append(self._level[:, self._order])
        values = torch.stack(columns, -1).to(torch.float32)
        width = len(columns)
        players = torch.tensor([-1.0, -1.0, 0.0][:width], device=dev).repeat(b, n, n + 1, 1)
        players = players.scatter(2, slot.unsqueeze(-1).expand(b, n, n, width), values)[:, :, :n]
        parts = [foods.reshape(b, n, -1), players.reshape(b, n, -1)]
        if self._survival:
            energy = torch.zeros(b, n, n + 1, device=dev)
            energy = energy.scatter(2, slot, self._energy.to(torch.float32)[:, self._order])[:, :, :n]
            parts.append(energy)
        return torch.cat(parts, -1)

    def _state(self) -> Tensor:
        row, col, level, present = self._food_list()
        foods = torch.where(present.unsqueeze(-1), torch.stack([row, col, level], -1),
                            torch.tensor([-1, -1, 0], device=self._device))
        parts = [foods.flatten(1), torch.cat([self._pos, self._level.unsqueeze(-1)], -1).flatten(1)]
        if self._survival:
            parts.append(self._energy)
        return torch.cat([p.to(torch.float32) for p in parts], -1)


def _make(name: str, defaults: dict, num_envs, device, seed, n_agents, max_steps, continuous_actions,
          options: dict) -> LevelBasedForaging:
    if continuous_actions:
        raise ValueError(f"{name}: LBF is discrete (Discrete(6): NONE, NORTH, SOUTH, WEST, EAST, LOAD); "
                         "set continuous_actions=false")
    for key, ours in (("players", "n_agents"), ("max_episode_steps", "max_steps")):
        if key in options:
            raise ValueError(f"{name}: set {ours} instead of the package's {key}")
    if options.get("grid_observation"):
        raise ValueError(f"{name}: grid_observation is not supported; the vector observation is")
    options.pop("grid_observation", None)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))}; options: {', '.join(OPTIONS)}")
    return LevelBasedForaging(num_envs, device=device, seed=seed, n_agents=n_agents, max_steps=max_steps,
                              name=name, **{**defaults, **options})


@register("lbf")
def lbf(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None, n_agents: int = 2,
        max_steps: int = 50, continuous_actions: bool = False, **options) -> LevelBasedForaging:
    """Level-Based Foraging (lbforaging 2.0 rules); options as the package's (see ``OPTIONS``)."""
    return _make("lbf", {}, num_envs, device, seed, n_agents, max_steps, continuous_actions, options)


@register("lbfws_easy")
def lbfws_easy(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None, n_agents: int = 4,
               max_steps: int = 100, continuous_actions: bool = False, **options) -> LevelBasedForaging:
    """LBF with Survival, Easy: single agents can eat every food, slow energy decay."""
    return _make("lbfws_easy", LBFWS_EASY, num_envs, device, seed, n_agents, max_steps, continuous_actions, options)


@register("lbfws_hard")
def lbfws_hard(num_envs: int, device: str | torch.device = "cpu", seed: int | None = None, n_agents: int = 4,
               max_steps: int = 100, continuous_actions: bool = False, **options) -> LevelBasedForaging:
    """LBF with Survival, Hard: every food needs two agents, fast energy decay."""
    return _make("lbfws_hard", LBFWS_HARD, num_envs, device, seed, n_agents, max_steps, continuous_actions, options)
