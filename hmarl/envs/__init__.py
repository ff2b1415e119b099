"""Adapters from external env packages to hmarl's batched ``MultiAgentEnv`` protocol."""
from hmarl.envs.registry import ENVS, make_env, register
from hmarl.envs import vmas, pettingzoo, point_maze, gymnasium_env, lbf  # noqa: F401  (registers their envs)
from hmarl.envs import savethecity  # noqa: F401  (registers savethecity)
from hmarl.envs import mpe  # noqa: F401  (registers mpe_simple_spread; envs.pettingzoo registers mpe2_simple_spread)

__all__ = ["ENVS", "make_env", "register"]
