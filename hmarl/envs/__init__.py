"""Adapters from external env packages to hmarl's batched ``MultiAgentEnv`` protocol.

Every shipped env is in ``ENVS`` by name; its module (and its backend: VMAS, PettingZoo,
...) is imported when the env is looked up, not here (see :mod:`hmarl.envs.registry`).
"""
from hmarl.envs.registry import ENVS, make_env, register

__all__ = ["ENVS", "make_env", "register"]
