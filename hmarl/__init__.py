"""hmarl: hierarchical multi-agent RL on one shared level abstraction.

The names below are imported on first use (PEP 562, :mod:`hmarl.lazy`): every one of them
needs torch, and ``import hmarl`` happens on every command line, ``python -m hmarl --help``
included, which must answer without it.
"""
from hmarl.lazy import module_dir, module_getattr

_NAMES = {
    **dict.fromkeys(["Rollout", "RolloutBuffer"], "hmarl.buffers"),
    "Callback": "hmarl.callbacks",
    **dict.fromkeys(["COMMUNICATION", "Autoencoder", "Communication", "Concat"], "hmarl.comm"),
    **dict.fromkeys(["Hierarchy", "LevelSpec", "build_hierarchy", "parse_command"], "hmarl.hierarchy"),
    **dict.fromkeys(["AgentIO", "Learner"], "hmarl.learner"),
    **dict.fromkeys(["Level", "agent_io", "check_partition", "level_io"], "hmarl.level"),
    **dict.fromkeys(["REWARD_RULES", "GoalDistance", "LevelStep", "RewardRule", "SubtaskReward", "SumUp",
                     "UpperAdvantage"], "hmarl.rewards"),
    **dict.fromkeys(["EnvSpec", "MultiAgentEnv", "TimeStep"], "hmarl.spec"),
}

__all__ = [
    "AgentIO", "Autoencoder", "COMMUNICATION", "Callback", "Communication", "Concat", "EnvSpec", "GoalDistance",
    "Hierarchy", "Learner", "Level", "LevelSpec", "LevelStep", "MultiAgentEnv", "REWARD_RULES",
    "RewardRule", "Rollout", "RolloutBuffer", "SubtaskReward", "SumUp", "TimeStep", "UpperAdvantage", "agent_io",
    "build_hierarchy", "check_partition", "level_io", "parse_command",
]
__getattr__ = module_getattr(__name__, _NAMES, globals())
__dir__ = module_dir(_NAMES, globals())
