"""hmarl: hierarchical multi-agent RL on one shared level abstraction.

The names below are imported on first use (PEP 562, :mod:`hmarl.lazy`): every one of them
needs torch, and ``import hmarl`` happens on every command line, ``python -m hmarl --help``
included, which must answer without it.
"""
from hmarl import algorithms as _algorithms  # noqa: F401  (registers the families' parts; no torch)
from hmarl.lazy import module_dir, module_getattr

_NAMES = {
    **dict.fromkeys(["Rollout", "RolloutBuffer"], "hmarl.buffers"),
    "Callback": "hmarl.run.callbacks",
    **dict.fromkeys(["COMMUNICATION", "Autoencoder", "Communication", "Concat"], "hmarl.comm"),
    **dict.fromkeys(["Hierarchy", "LevelSpec", "build_hierarchy", "parse_command"], "hmarl.hierarchy"),
    **dict.fromkeys(["AgentIO", "Learner", "Published", "UpdateContext", "UpdateResult"], "hmarl.learner"),
    **dict.fromkeys(["Level", "check_partition", "level_io"], "hmarl.level"),
    **dict.fromkeys(["ActionSplit", "Assignment", "CommandChannel", "Every", "Fixed", "Grouping", "Joint",
                     "OneHot", "PerChild", "Raw", "Termination"], "hmarl.strategies"),
    **dict.fromkeys(["REWARD_RULES", "LevelStep", "RewardRule", "SumUp"], "hmarl.rewards"),
    # the families' strategies and reward rules, where they live
    "Regroup": "hmarl.algorithms.himpo.graphs", "UpperAdvantage": "hmarl.algorithms.himpo.rewards",
    **dict.fromkeys(["GoalDistance", "RelativeGoal"], "hmarl.algorithms.hrl_cg.goals"),
    **dict.fromkeys(["OnSubtaskChange", "SubtaskReward"], "hmarl.algorithms.alma.subtasks"),
    **dict.fromkeys(["EnvSpec", "MultiAgentEnv", "TimeStep"], "hmarl.spec"),
}

__all__ = [
    "ActionSplit", "AgentIO", "Assignment", "Autoencoder", "COMMUNICATION", "Callback", "CommandChannel",
    "Communication", "Concat", "EnvSpec", "Every", "Fixed", "GoalDistance", "Grouping", "Hierarchy", "Joint", "Learner", "Level",
    "LevelSpec", "LevelStep", "MultiAgentEnv", "OnSubtaskChange", "OneHot", "PerChild", "Published",
    "REWARD_RULES", "Raw", "Regroup", "RelativeGoal", "RewardRule", "Rollout", "RolloutBuffer", "SubtaskReward",
    "SumUp", "Termination", "TimeStep", "UpdateContext", "UpdateResult", "UpperAdvantage", "build_hierarchy",
    "check_partition", "level_io", "parse_command",
]
__getattr__ = module_getattr(__name__, _NAMES, globals())
__dir__ = module_dir(_NAMES, globals())
