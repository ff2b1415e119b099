"""What cannot work is refused at build time, with one line naming the level and what to change (instead
of a crash at the first rollout or update); what once worked only directly above the env's agents now
builds at any depth (``reads_env``: see tests/test_any_depth.py)."""
from __future__ import annotations

import pytest
import torch

from hmarl.algorithms import FAMILIES
from hmarl.algorithms.build import build_levels
from hmarl.envs import make_env

ALLOCATOR = {"learner": "allocator", "group_size": "all", "joint": False, "command": "discrete(4)", "decide_every": 5}


def landmarks(num_envs: int = 2):
    """Simple spread with its 4 landmarks as subtasks (and goal dims): 4 agents, Discrete(9)."""
    return make_env("vmas_simple_spread", num_envs=num_envs, n_agents=4, max_steps=20, seed=0, subtasks=True)


def refusal(levels, env=None, family=None, **options) -> str:
    """The ValueError's message from building ``levels`` (through ``family``'s build if given)."""
    env = env or landmarks()
    with pytest.raises(ValueError) as error:
        if family is None:
            build_levels(env, levels, learner_options={})
        else:
            FAMILIES[family].build(env, levels, {}, **options)
    return str(error.value)


def rolls_out(levels, env=None, family=None, steps=4, **options):
    """Build ``levels`` (through ``family``'s build if given) and roll out ``steps`` env steps."""
    torch.manual_seed(0)
    env = env or landmarks()
    hierarchy = (build_levels(env, levels, learner_options={}) if family is None
                 else FAMILIES[family].build(env, levels, {}, **options))
    hierarchy.reset(seed=0)
    hierarchy.rollout(steps)
    return hierarchy


def test_allocator_over_a_level_of_pairs_works():
    """Pins that an allocator whose children are pairs of env agents (once refused: it read agent i as
    entity i of the env) builds and rolls out: its units are the pairs, and it reads the env agents'
    observations appended to its own (``AgentIO.env_slots``)."""
    hierarchy = rolls_out([{"learner": "ppo"}, {"learner": "ppo", "group_size": 2, "command": "discrete(9)"},
                           ALLOCATOR])
    assert hierarchy.levels[2].io.env_slots == 4 and hierarchy.levels[2].learner.view.n_agents == 2


def test_alma_allocator_over_coded_messages_works():
    """Pins that ALMA's allocator over agents that send autoencoder codes up (once a crash at the first
    rollout, then a refusal) reads the env agents' observations passed up beside the codes."""
    hierarchy = rolls_out([{"learner": "aqmix", "comm": "autoencoder"}, {"learner": "allocator"}], family="alma")
    assert hierarchy.levels[1].env_block


def test_allocator_over_levels_of_one_env_agent_each_works():
    """Pins that an allocator above a stack of one-agent-per-unit concat levels (which pass each
    env agent's observation up unchanged) is accepted and rolls out, reading its children's messages."""
    hierarchy = rolls_out([{"learner": "ppo"}, {"learner": "ppo", "command": "discrete(9)"}, ALLOCATOR])
    assert hierarchy.levels[2].buffer.t == 4 and hierarchy.levels[2].io.env_slots == 0


def test_subtask_reward_above_level_0_works():
    """Pins that ``reward: subtask`` on level 1 (once a crash at the first step, ``KeyError:
    'subtask_rewards'``, then a refusal) reads the env's subtask rewards passed up by level 0."""
    hierarchy = rolls_out([{"learner": "ppo"}, {"learner": "ppo", "command": "discrete(9)", "reward": "subtask"},
                           {"learner": "ppo", "group_size": "all", "joint": False, "command": "discrete(4)"}])
    assert hierarchy.levels[0].env_up == hierarchy.levels[1].reward_rule.reads_env


def test_goal_distance_reward_without_goals_is_refused():
    """Pins the refusal of ``reward: goal_distance`` under a level that sends no goals on the goal dims
    (it works at any level, but not with one-hot commands)."""
    message = refusal([{"learner": "ppo"}, {"learner": "ppo", "command": "discrete(9)", "reward": "goal_distance"},
                       {"learner": "ppo", "command": "discrete(5)"}])
    assert message == ("level 1: goal_distance needs a level above that sends goals on the 2 goal dims [0, 1] of "
                       "vmas_simple_spread: command box(2, bound)")


def test_relative_goals_above_level_1_work():
    """Pins that a goal manager with relative goals on level 2 (once refused) builds and rolls out: its
    goals move the goal dims of the env agents under each level-1 agent."""
    hierarchy = rolls_out([{"learner": "ppo"}, {"learner": "td3", "command": "box(2)"},
                           {"learner": "goal_manager", "period": 2, "relative_goals": True, "command": "box(2, 10)"}])
    assert hierarchy.levels[1].env_reads == hierarchy.levels[1].channel.reads_env


def test_relative_goals_over_grouped_workers_name_the_manager():
    """Pins that HRL-CG over workers of two env agents each is refused naming what cannot work: the
    connected gradient reads its worker's env observation, and (without it) the workers' replay
    relabels the goals from their own env agent's goal dims."""
    levels = [{"learner": "auto", "group_size": 2}, {"learner": "goal_manager", "period": 10}]
    assert refusal(levels, family="hrl_cg") == (
        "level 1: goal_manager reads the env agents' observations from its children's messages, but level 0 "
        "gives an agent several units; give every level below it group_size 1 and comm: concat")
    assert refusal(levels, family="hrl_cg", cg_lambda=0.0) == (
        "level 0: relative goals are relabelled from the goal dims of the worker's own env agent, so the workers "
        "need one env agent each (group_size 1), not 2")


def test_relative_goals_with_the_wrong_command_name_the_manager():
    """Pins that a relative-goal command of the wrong size is refused naming the manager's level."""
    message = refusal([{"learner": "ppo"}, {"learner": "td3", "relative_goals": True, "command": "box(3)"}])
    assert message == ("level 1: relative goals live on the 2 goal dims [0, 1] of vmas_simple_spread; "
                       "set its command to box(2, bound)")


def test_relative_goals_without_goal_dims_name_the_manager():
    """Pins that relative goals on an env without goal dims are refused naming the manager's level."""
    # LBF with part of the grid in sight: the observer's coordinates are relative to its view
    env = make_env("lbf", num_envs=2, n_agents=3, max_steps=20, seed=0, sight=2)
    message = refusal([{"learner": "ppo"}, {"learner": "td3", "relative_goals": True, "command": "box(2)"}], env=env)
    assert message.startswith("level 1: relative_goals needs an env with obs_slices.position; lbf has")


def test_relative_goals_on_level_0_are_refused():
    """Pins that ``relative_goals`` on level 0, which has no commands and so no goals, is refused
    rather than ignored."""
    message = refusal([{"learner": "ppo", "relative_goals": True}, {"learner": "ppo", "command": "discrete(9)"}])
    assert message == "level 0: relative_goals belongs to the level above it, whose commands are the goals"


def test_goal_manager_over_coded_messages_is_refused():
    """Pins the refusal of HRL-CG's manager over workers that send autoencoder codes up: its goals
    are on its worker's env observation (it used to crash at its first update)."""
    env = make_env("point_maze", num_envs=2, n_agents=1, max_steps=20, seed=0)
    message = refusal([{"learner": "auto", "comm": "autoencoder"}, {"learner": "goal_manager", "period": 10}],
                      env=env, family="hrl_cg")
    assert message.startswith("level 1: goal_manager reads the env agents' observations from its children's "
                              "messages, but level 0 sends autoencoder messages")


@pytest.mark.parametrize("system, learner", [("iql", "DQN"), ("qmix", "QMIX")])
def test_q_learning_systems_on_continuous_actions_are_refused(system, learner):
    """Pins the refusal of the flat Q-learning baselines on an env with Box actions (they take an
    argmax over a finite action set), at build time, naming the level and what to change."""
    from hmarl.run.experiment import CONFIG_DIR, load_yaml

    config = load_yaml(CONFIG_DIR / "algorithms" / f"{system}.yaml")
    env = make_env("point_maze", num_envs=2, n_agents=1, max_steps=20, seed=0)
    message = refusal(config["levels"], env=env, family="flat")
    assert message == (f"level 0: {learner} needs a Discrete action space, got Box(-1.0, 1.0, (2,), float32); "
                       "use td3 for a Box one, or continuous_actions: false on an env that has discrete actions")
