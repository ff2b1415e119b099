"""Env names -> constructors. Every constructor takes the run's env keys.

A constructor is called as ``factory(num_envs=, device=, seed=, n_agents=,
max_steps=, continuous_actions=, **env_options)`` and returns a ``MultiAgentEnv``.

The shipped envs are known by name from the start (``BUILTIN``) and their modules are
imported when one of them is built (:class:`hmarl.registry.Registry`): the backends cost
seconds to import (VMAS, PettingZoo and MPE2, torch under all of them) and a run uses one.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from hmarl.registry import Registry

if TYPE_CHECKING:
    from hmarl.spec import MultiAgentEnv

BUILTIN: dict[str, str] = {
    **dict.fromkeys(["vmas_balance", "vmas_simple_spread", "vmas_sampling", "vmas_navigation"], "hmarl.envs.vmas"),
    "mpe2_simple_spread": "hmarl.envs.pettingzoo", "point_maze": "hmarl.envs.point_maze",
    "gymnasium": "hmarl.envs.gymnasium_env",
    **dict.fromkeys(["lbf", "lbfws_easy", "lbfws_hard"], "hmarl.envs.lbf"),
    "savethecity": "hmarl.envs.savethecity", "mpe_simple_spread": "hmarl.envs.mpe",
}
"""The shipped envs: name -> the module that registers it (importing it registers all of its envs)."""

ENVS: Registry[Callable[..., MultiAgentEnv]] = Registry("env")


def _import_builtin(name: str) -> Callable[[], None]:
    def load() -> None:
        importlib.import_module(BUILTIN[name])
        if ENVS.pending(name):
            raise LookupError(f"{BUILTIN[name]} does not register the env {name!r} that envs.registry.BUILTIN says "
                              f"it does")

    return load


for _name in BUILTIN:
    ENVS.add_lazy(_name, _import_builtin(_name))


def register(name: str):
    """Decorator: make an env constructor available under ``name``."""

    def add(factory: Callable[..., MultiAgentEnv]) -> Callable[..., MultiAgentEnv]:
        # a shipped env's own module fills the entry BUILTIN promised; any other second registration is a clash
        if name in ENVS and not (ENVS.pending(name) and BUILTIN.get(name) == factory.__module__):
            raise ValueError(f"env {name!r} is registered twice")
        ENVS[name] = factory
        return factory

    return add


def make_env(name: str, **kwargs) -> MultiAgentEnv:
    """Build a registered env; an unknown name lists the ones that exist."""
    if name not in ENVS:
        raise KeyError(f"unknown env {name!r}; available: {', '.join(sorted(ENVS))}")
    return ENVS[name](**kwargs)
