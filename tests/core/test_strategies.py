"""The four strategies a Level calls (hmarl/strategies.py), each on a hand-made case, and the
YAML sugar that maps onto them."""
from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from hmarl import LevelSpec, build_hierarchy
from hmarl.algorithms.alma.subtasks import OnSubtaskChange
from hmarl.algorithms.himpo.graphs import Regroup, Regrouping
from hmarl.algorithms.hrl_cg.goals import RelativeGoal, goal_transition
from hmarl.hierarchy import describe_hierarchy
from hmarl.spec import EnvSpec, TimeStep
from hmarl.strategies import TERMINATIONS, Every, Fixed, Joint, Moment, OneHot, PerChild, Raw, Termination
from tests.toys import Scripted, ToyEnv


def spec(n_actions=3, continuous=False, n_agents=4):
    space = spaces.Box(-1.0, 1.0, (2,)) if continuous else spaces.Discrete(n_actions)
    return EnvSpec(n_agents=n_agents, obs_dim=2, action_space=space, max_steps=10, num_envs=2)


def step(b=2, n=4, **info):
    return TimeStep(obs=torch.zeros(b, n, 2), reward=torch.zeros(b, n), terminated=torch.zeros(b, dtype=torch.bool),
                    truncated=torch.zeros(b, dtype=torch.bool), info=info)


def test_joint_split_reads_the_digits_most_significant_first():
    """TAG's K**c joint action: child slot j takes digit j of the index in base K (slot 0 the most
    significant): with K = 3 and two children, 7 = 2 * 3 + 1 is (2, 1)."""
    split = Joint(spec(n_actions=3), group=2)
    assert split.space == spaces.Discrete(9)
    assert split.split(torch.tensor([[7, 5]])).tolist() == [[2, 1, 1, 2]]


def test_joint_over_too_many_actions_is_refused():
    with pytest.raises(ValueError, match=r"9\*\*6 = 531441 joint actions"):
        Joint(spec(n_actions=9), group=6)


def test_per_child_split_is_one_head_per_child_or_the_boxes_concatenated():
    heads = PerChild(spec(n_actions=3), group=2)
    assert heads.space == spaces.MultiDiscrete([3, 3])
    assert heads.split(torch.tensor([[[2, 0], [1, 1]]])).tolist() == [[2, 0, 1, 1]]
    boxes = PerChild(spec(continuous=True), group=2)
    assert boxes.space.shape == (4,)
    action = torch.arange(8.0).view(1, 2, 4)  # 2 agents x (2 children x 2 dims)
    assert boxes.split(action).tolist() == [[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]]


def test_fixed_blocks_are_reshapes_and_other_partitions_an_index():
    blocks = Fixed([[0, 1], [2, 3]]).assignment(num_envs=2)
    assert blocks.blocks and blocks.parent.tolist() == [0, 0, 1, 1] and blocks.slot.tolist() == [0, 1, 0, 1]
    shuffled = Fixed([[3], [0, 2], [1]]).assignment(num_envs=2)
    assert not shuffled.blocks
    x = torch.tensor([[10.0, 11.0, 12.0, 13.0]]).expand(2, 4)
    view = shuffled.view(x)  # [B, 3 agents, 2 slots]; agent 0's and 2's second slots are empty
    assert view[0].tolist() == [[13.0, 0.0], [10.0, 12.0], [11.0, 0.0]]
    assert shuffled.present()[0].tolist() == [[True, False], [True, True], [True, False]]
    per_slot = torch.tensor([[0, 1, 2, 3, 4, 5]]).expand(2, 6)  # slot s of agent a holds 2a + s
    assert shuffled.to_units(per_slot)[0].tolist() == [2, 4, 3, 0]  # unit 0: agent 1 slot 0, ...


def test_regroup_clusters_by_position_and_needs_positions():
    grouping = Regroup(Regrouping(n_units=4, n_groups=2, mode="dynamic"))
    assert grouping.requires == ("positions",) and grouping.varies and grouping.leaves_slots_empty
    positions = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.1, 0.0], [10.1, 0.0]]])
    assignment = grouping.assign(step(b=1, positions=positions), torch.ones(1, dtype=torch.bool), None)
    parent = assignment.parent[0].tolist()
    assert parent[0] == parent[2] != parent[1] == parent[3]
    assert sorted(assignment.index[0].tolist()) == [0, 1, 2, 3]


def test_channels_encode_commands():
    assert OneHot(spaces.Discrete(3)).encode(torch.tensor([[2]])).tolist() == [[[0.0, 0.0, 1.0]]]
    assert Raw(spaces.Box(-1.0, 1.0, (1,))).encode(torch.tensor([[[3.0]]])).tolist() == [[[1.0]]]


def test_relative_goal_is_carried_by_h():
    """Kreidieh et al. 2020, Eq. 6: between two decisions g' = h(s, g, s') = s + g - s' on the goal
    dims, so the absolute target s + g stays put: from s = (1, 5) with g = (2, 0) to s' = (2, 5)
    the goal becomes (1, 0)."""
    channel = RelativeGoal(spaces.Box(-10.0, 10.0, (2,)), index=[0, 1])
    assert channel.carries and channel.requires == ("obs_slices.position",)
    s, s_next, g = torch.tensor([[[1.0, 5.0, 9.0]]]), torch.tensor([[[2.0, 5.0, 9.0]]]), torch.tensor([[[2.0, 0.0]]])
    carried = channel.carry(g, s, s_next)
    assert carried.tolist() == [[[1.0, 0.0]]]
    assert torch.equal(carried, goal_transition(s, g, s_next, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="box\\(2, range\\)"):
        RelativeGoal(spaces.Box(-1.0, 1.0, (3,)), index=[0, 1])


def test_on_subtask_change_decides_every_k_at_starts_and_when_subtasks_change():
    termination = OnSubtaskChange(3)
    active = torch.tensor([[True, True], [True, True]])
    memory = termination.start(step(active_subtasks=active))
    no = torch.zeros(2, dtype=torch.bool)
    def decide(age, now, fresh=no):
        ts = step(active_subtasks=now)
        return termination.decide(Moment(torch.tensor(age), fresh, ts.obs, ts, None, memory)).tolist()

    assert decide([1, 1], active) == [False, False]
    changed = torch.tensor([[True, False], [True, True]])  # copy 0's first subtask finished
    assert decide([1, 2], changed) == [True, False]
    assert decide([3, 3], changed) == [True, True]  # every k = 3
    assert decide([1, 1], changed, torch.tensor([False, True])) == [False, True]  # a fresh episode


def test_yaml_sugar_maps_onto_the_strategies():
    env = ToyEnv(num_envs=2, n_agents=4, n_actions=3)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=2, period=2, command="discrete(3)", joint=False)]
    hierarchy = build_hierarchy(env, specs, lambda s, io, i: Scripted(io, None))
    bottom, top = hierarchy.levels
    assert isinstance(bottom.channel, OneHot) and isinstance(bottom.split, Joint)
    assert isinstance(top.termination, Every) and top.termination.stride == 2 and bottom.steps_per_command == 2
    assert isinstance(top.split, PerChild) and isinstance(top.grouping, Fixed) and top.children == [[0, 1], [2, 3]]
    text = describe_hierarchy(hierarchy)
    assert "termination  Every(2)" in text and "split        PerChild(MultiDiscrete([3 3]))" in text


class EveryOtherStep(Termination):
    """A holding termination of the test's own: the agents act anew at even ages only."""

    holds = True

    def decide(self, now):
        return (now.age % 2 == 0) | now.fresh


def test_a_registered_termination_is_used_by_name_and_holds_actions():
    TERMINATIONS["every_other"] = EveryOtherStep
    try:
        env = ToyEnv(num_envs=1, n_agents=2, n_actions=5)
        counter = iter(range(100))
        policy = lambda obs, t: torch.full(obs.shape[:2], next(counter) % 5, dtype=torch.long)  # noqa: E731
        specs = [LevelSpec("x"), LevelSpec("x", group_size=2, command="discrete(5)",
                                         termination="every_other")]
        still = lambda obs, t: torch.zeros(obs.shape[:2], dtype=torch.long)  # noqa: E731
        hierarchy = build_hierarchy(env, specs, lambda s, io, i: Scripted(io, policy if i else still))
        top = hierarchy.levels[1]
        assert isinstance(top.termination, EveryOtherStep)
        hierarchy.reset(0)
        hierarchy.rollout(6)
        decision = top.buffer.rollout(top.bootstrap_observation()).decision[:, 0].tolist()
        assert decision == [True, False, True, False, True, False]
    finally:
        del TERMINATIONS["every_other"]


def test_unknown_termination_lists_the_registered_ones():
    env = ToyEnv(num_envs=1, n_agents=2, n_actions=5)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=2, command="discrete(5)", termination="sometimes")]
    with pytest.raises(ValueError, match="level 1: unknown termination 'sometimes'; available: every, on_subtask_change"):
        build_hierarchy(env, specs, lambda s, io, i: Scripted(io, None))


def test_stepping_a_level_by_hand_says_what_to_call():
    env = ToyEnv(num_envs=1, n_agents=2, n_actions=5)
    still = lambda obs, t: torch.zeros(obs.shape[:2], dtype=torch.long)  # noqa: E731
    hierarchy = build_hierarchy(env, [LevelSpec("x")], lambda s, io, i: Scripted(io, still))
    level = hierarchy.levels[0]
    with pytest.raises(RuntimeError, match="reset"):
        level.step(None)
    level.reset(0)
    with pytest.raises(RuntimeError, match="Hierarchy.rollout"):
        level.step(None)
    level.eval().step(None)  # without storing: fine
