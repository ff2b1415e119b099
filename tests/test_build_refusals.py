"""What works only directly above the env's agents is refused higher up, at build time, with
one line naming the level and what to change (instead of a crash at the first rollout or update)."""
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


def test_allocator_over_a_level_of_pairs_is_refused():
    """Pins the refusal of an allocator whose children are pairs of env agents: it reads agent i
    as entity i of the env, so its children must be the env agents themselves."""
    message = refusal([{"learner": "ppo"}, {"learner": "ppo", "group_size": 2, "command": "discrete(9)"}, ALLOCATOR])
    assert message == ("level 2: allocator reads the env agents' observations from its children's messages, "
                       "but level 1 gives an agent several units; give every level below it group_size 1 "
                       "and comm: concat")


def test_alma_allocator_over_coded_messages_is_refused():
    """Pins the refusal of ALMA's allocator over agents that send autoencoder codes up (it used
    to build, then crash at the first rollout: ``unflatten: Provided sizes [8, 6] ...``)."""
    message = refusal([{"learner": "aqmix", "comm": "autoencoder"}, {"learner": "allocator"}], family="alma")
    assert message.startswith("level 1: allocator reads the env agents' observations")
    assert "but level 0 sends autoencoder messages; give every level below it group_size 1 and comm: concat" in message


def test_allocator_over_levels_of_one_env_agent_each_works():
    """Pins that an allocator above a stack of one-agent-per-unit concat levels (which pass each
    env agent's observation up unchanged) is accepted and rolls out."""
    torch.manual_seed(0)
    hierarchy = build_levels(landmarks(), [{"learner": "ppo"}, {"learner": "ppo", "command": "discrete(9)"},
                                           ALLOCATOR], learner_options={})
    hierarchy.reset(seed=0)
    hierarchy.rollout(4)
    assert hierarchy.levels[2].buffer.t == 4


def test_subtask_reward_above_level_0_is_refused():
    """Pins the refusal of ``reward: subtask`` on level 1 (it used to crash at the first step with
    ``KeyError: 'subtask_rewards'``: levels do not pass the env's info up)."""
    message = refusal([{"learner": "ppo"}, {"learner": "ppo", "command": "discrete(9)", "reward": "subtask"},
                       {"learner": "ppo", "group_size": "all", "joint": False, "command": "discrete(4)"}])
    assert message == ("level 1: reward subtask reads the env's subtask rewards, which only level 0 receives; "
                       "use it on level 0 only (here e.g. reward: sum_up)")


def test_goal_distance_reward_above_level_0_is_refused():
    """Pins the refusal of ``reward: goal_distance`` on level 1 as the same kind of mistake,
    not as an env lacking goal dims (this env has them)."""
    message = refusal([{"learner": "ppo"}, {"learner": "ppo", "command": "discrete(9)", "reward": "goal_distance"},
                       {"learner": "ppo", "command": "discrete(5)"}])
    assert message.startswith("level 1: reward goal_distance reads the env's goal dims, which only level 0 receives")


def test_relative_goals_above_level_1_are_refused_naming_the_manager():
    """Pins the refusal of a goal manager with relative goals on level 2, naming level 2 (it used
    to name level 1, the workers, and advise another env)."""
    message = refusal([{"learner": "ppo"}, {"learner": "td3", "command": "box(2)"},
                       {"learner": "goal_manager", "period": 2, "relative_goals": True, "command": "box(2, 10)"}])
    assert message == ("level 2: relative goals are targets on the env's goal dims, which only level 0 observes; "
                       "relative_goals works on level 1 only (directly above level 0)")


def test_relative_goals_over_grouped_workers_name_the_manager():
    """Pins that relative goals over workers of two env agents each are refused naming the manager
    (level 1) and the workers' group size (HRL-CG used to report level 0's reward instead)."""
    message = refusal([{"learner": "auto", "group_size": 2}, {"learner": "goal_manager", "period": 10}],
                      family="hrl_cg")
    assert message == ("level 1: relative goals are carried on each worker's own env agent, so level 0 needs "
                       "one env agent per agent (group_size 1), not 2")


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
