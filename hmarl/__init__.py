"""hmarl: hierarchical multi-agent RL on one shared level abstraction."""
from hmarl.buffers import Rollout, RolloutBuffer
from hmarl.comm import COMMUNICATION, Autoencoder, Communication, Concat
from hmarl.hierarchy import Hierarchy, LevelSpec, build_hierarchy, parse_command
from hmarl.learner import AgentIO, Learner
from hmarl.level import Level, agent_io, check_partition, level_io
from hmarl.rewards import REWARD_RULES, GoalDistance, LevelStep, RewardRule, SubtaskReward, SumUp, UpperAdvantage
from hmarl.spec import EnvSpec, MultiAgentEnv, TimeStep

__all__ = [
    "AgentIO", "Autoencoder", "COMMUNICATION", "Communication", "Concat", "EnvSpec", "GoalDistance",
    "Hierarchy", "Learner", "Level", "LevelSpec", "LevelStep", "MultiAgentEnv", "REWARD_RULES",
    "RewardRule", "Rollout", "RolloutBuffer", "SubtaskReward", "SumUp", "TimeStep", "UpperAdvantage", "agent_io",
    "build_hierarchy", "check_partition", "level_io", "parse_command",
]
