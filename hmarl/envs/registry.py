"""Env names -> constructors. Every constructor takes the run's env keys.

A constructor is called as ``factory(num_envs=, device=, seed=, n_agents=,
max_steps=, continuous_actions=, **env_options)`` and returns a ``MultiAgentEnv``.
"""
from __future__ import annotations

from typing import Callable

from hmarl.spec import MultiAgentEnv

ENVS: dict[str, Callable[..., MultiAgentEnv]] = {}


def register(name: str):
    """Decorator: make an env constructor available under ``name``."""

    def add(factory: Callable[..., MultiAgentEnv]) -> Callable[..., MultiAgentEnv]:
        if name in ENVS:
            raise ValueError(f"env {name!r} is registered twice")
        ENVS[name] = factory
        return factory

    return add


def make_env(name: str, **kwargs) -> MultiAgentEnv:
    """Build a registered env; an unknown name lists the ones that exist."""
    if name not in ENVS:
        raise KeyError(f"unknown env {name!r}; available: {', '.join(sorted(ENVS))}")
    return ENVS[name](**kwargs)
