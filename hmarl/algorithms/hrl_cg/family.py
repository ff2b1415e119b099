"""HRL-CG (Kreidieh et al. 2020): goal-conditioned manager/worker with connected gradients.

A manager ``pi_m(s, c)`` emits a relative goal ``g`` every ``period`` steps; between its
decisions the goal follows ``h(s, g, s') = s + g - s'`` (Eq. 6) and the worker
``pi_w(s, g)`` learns from ``r_w = -||s + g - s'||`` (Eq. 5). The worker does not see the
env's context ``c`` (the maze's target) unless ``worker_sees_context``. Both are TD3 (a
double-DQN worker on discrete-action envs). The manager maximises ``eta_m + lambda * eta_w``
(Eq. 13); by Eq. 14 the gradient of ``eta_w`` reaches the manager through the goal only,
via the intrinsic reward and via the worker's *policy* input:

.. math::
    \\nabla_{\\theta_m} g_t \\, \\nabla_g \\big( r_w(s_t, g, s_{t+1})
        + \\pi_w(s_t, g) \\, \\nabla_a Q_w(s_t, g_t, a)|_{a = \\pi_w(s_t, g_t)} \\big)|_{g = g_t}

which is the gradient of the actor-loss term, over the worker steps of each sampled meta
period with goals produced by ``pi_m`` and carried by ``h``,

.. math::
    L_{cg} = -\\lambda \\; \\mathrm{mean}_i\\big[r_w(s_{t+i}, g_{t+i}, s_{t+i+1})
             + Q_w(s_{t+i}, \\mathrm{sg}(g_{t+i}), \\pi_w(s_{t+i}, g_{t+i}))\\big]

``sg`` stops the gradient: the goal the worker's critic reads is held fixed (Eq. 14 has no
``dQ_w/dg`` term), and the worker's networks are frozen for this step. A discrete worker's
value is ``sum_a softmax(Q_w(s, g, .) / T)(a) Q_w(s, sg(g), a)``: its softmax policy carries
the gradient (the DQN worker has no deterministic actor for Eq. 14's ``grad_a Q_w``; its
softmax over ``Q_w(s, g, .)`` is the differentiable policy; see the HRL-CG spec's decisions).
``cg_lambda = 0`` is plain HRL. On multi-agent envs every env agent gets its own manager/worker
pair (parameters shared across agents unless ``share_params: false``). The goal dims are the
env's ``obs_slices["position"]``, the agent's own position in its observation (VMAS, MPE, the point maze,
LBF's and SaveTheCity's ``(row, col)``); ``goal_range`` is in their units.

Shapes: manager obs ``[B, N, obs_dim]`` (the worker's env observation); goals ``[B, N, goal_dim]``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from gymnasium import spaces

from hmarl.algorithms.build import build_levels
from hmarl.algorithms.dqn import DQN
from hmarl.algorithms.td3 import TD3
from hmarl.hierarchy import Hierarchy
from hmarl.spec import EnvSpec, MultiAgentEnv, slice_dims


@dataclass
class Options:
    """Family-level keys of an HRL-CG run (top-level config keys)."""

    cg_lambda: float = 0.005
    """Weight lambda of the worker's objective in the manager's (0: plain HRL)."""
    goal_range: float = 10.0
    """Goals are relative displacements in ``[-goal_range, goal_range]`` per goal dim."""
    worker_sees_context: bool | None = None
    """Whether the worker reads the env's context ``c`` (the observation dims the env declares
    as ``obs_slices["context"]``, the maze's target). None: hidden where the env declares one, as in
    the paper's ``pi_w(s, g)``; false: hidden, and an error on an env that declares none."""

    def __post_init__(self):
        if self.cg_lambda < 0:
            raise ValueError(f"cg_lambda must be >= 0 (0 is plain HRL), got {self.cg_lambda}")
        if self.goal_range <= 0:
            raise ValueError(f"goal_range must be > 0, got {self.goal_range}")


def hidden_context(spec: EnvSpec, goal_index: list[int], worker_sees_context: bool | None) -> list[int]:
    """The observation dims the worker must not read: the env's context unless the worker sees it."""
    context = spec.obs_slices.get("context")
    if worker_sees_context:
        return []
    if context is None:
        if worker_sees_context is False:
            raise ValueError(f"worker_sees_context: false, but {spec.name} does not declare which observation "
                             "dims hold its context (obs_slices['context']); set worker_sees_context: true")
        return []
    shared = sorted(set(slice_dims(context)) & set(goal_index))
    if shared:
        raise ValueError(f"{spec.name}: context dims {shared} are also goal dims; the worker cannot be blind "
                         "to them (set worker_sees_context: true)")
    return slice_dims(context)


def build(env: MultiAgentEnv, levels: list[dict[str, Any]], learner_options: dict[str, dict[str, Any]],
          cg_lambda: float = 0.005, goal_range: float = 10.0, worker_sees_context: bool | None = None) -> Hierarchy:
    """A worker level (one worker per env agent) under a manager level (one manager per worker).

    The worker's learner ``auto`` becomes ``td3`` on continuous-action envs and ``dqn`` on
    discrete ones; the manager's goals are ``box(len(position dims), goal_range)``. The worker's
    networks skip the env's context (:func:`hidden_context`); both learners count their
    schedules in env steps (the Hierarchy sets the manager's ``stride`` to its period).
    """
    Options(cg_lambda, goal_range, worker_sees_context)
    goal_index = slice_dims(env.spec.require("obs_slices.position", "hrl_cg"))
    if len(levels) != 2:
        raise ValueError(f"an HRL-CG hierarchy has two levels (worker, manager), got {len(levels)}")
    worker, manager = (dict(level) for level in levels)
    if manager.get("learner") != "goal_manager":
        raise ValueError("the HRL-CG manager level uses learner: goal_manager")
    if worker.get("learner") == "auto":
        worker["learner"] = "dqn" if isinstance(env.spec.action_space, spaces.Discrete) else "td3"
    hidden = hidden_context(env.spec, list(goal_index), worker_sees_context)
    if hidden:
        given = worker.get("options", {})
        worker["options"] = {**given, "ignore_obs_dims": sorted({*hidden, *given.get("ignore_obs_dims", ())})}
    manager.update(command=f"box({len(goal_index)}, {goal_range})", relative_goals=True)
    worker.setdefault("reward", "goal_distance")
    options = copy.deepcopy(learner_options)
    options["goal_manager"] = {**options.get("goal_manager", {}), "cg_lambda": cg_lambda}
    hierarchy = build_levels(env, [worker, manager], options)
    worker_learner = hierarchy.levels[0].learner
    if not isinstance(worker_learner, (TD3, DQN)):
        raise ValueError(f"the connected gradient needs a td3 or dqn worker, got {type(worker_learner).__name__}")
    try:
        worker_learner.carry_goals(goal_index)
    except ValueError as error:
        raise ValueError(f"level 0: {error}") from None
    return hierarchy


def requires(levels: list[dict[str, Any]], **options: Any) -> tuple[str, ...]:
    """What HRL-CG needs of an env: the observation dims its relative goals live in (the agent's
    own position)."""
    return ("obs_slices.position",)
