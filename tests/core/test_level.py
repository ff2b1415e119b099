"""Level mechanics on hand-made envs: periods, messages, rewards, commands, partitions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmarl import LevelSpec, UpdateResult, build_hierarchy
from hmarl.spec import Entities
from tests.toys import Scripted, ToyEnv


def constant(value, shape_fn):
    return lambda obs, call: torch.full(shape_fn(obs), value, dtype=torch.long)


def build(env, specs, policies):
    learners = []

    def make(spec, io, index):
        learners.append(Scripted(io, policies[index]))
        return learners[-1]

    return build_hierarchy(env, specs, make), learners


THREE_LEVELS = [LevelSpec("x"),
                LevelSpec("x", group_size=2, period=2, command="discrete(5)"),
                LevelSpec("x", group_size=2, period=2, command="discrete(5)")]


def test_periods_commands_messages_and_rewards():
    env = ToyEnv(num_envs=2, n_agents=4, n_actions=5)
    per_agent = lambda obs: obs.shape[:2]  # noqa: E731
    # bottom plays 1; middle plays joint 7 = (1, 2) in base 5; top plays joint 3 = (0, 3)
    hierarchy, (bottom, middle, top) = build(env, THREE_LEVELS, [
        constant(1, per_agent), constant(7, per_agent), constant(3, per_agent)])
    assert hierarchy.strides == [1, 2, 4] and hierarchy.top_stride == 4
    hierarchy.reset(0)
    hierarchy.rollout(8)
    assert (len(env.received), len(bottom.seen), len(middle.seen), len(top.seen)) == (8, 8, 4, 2)
    assert [lv.buffer.t for lv in hierarchy.levels] == [8, 4, 2]

    # the upper action reaches the child's observation as a one-hot after its own obs
    bottom_obs = bottom.seen[0]
    assert bottom_obs.shape == (2, 4, 3 + 5)
    assert torch.equal(bottom_obs[..., 3:].argmax(-1), torch.tensor([[1, 2, 1, 2]] * 2))
    # middle agents observe their two children's messages (their env obs) and the top's command
    middle_obs = middle.seen[1]
    env_obs_then = bottom.seen[2][..., :3]
    assert torch.equal(middle_obs[..., :6], env_obs_then.reshape(2, 2, 6))
    assert torch.equal(middle_obs[..., 6:].argmax(-1), torch.tensor([[0, 3]] * 2))
    # the top observes the middle agents' messages: concatenated children observations
    assert torch.equal(top.seen[1], bottom.seen[4][..., :3].reshape(2, 1, 12))

    # reward: env gives action + copy index; each level sums its children over its period
    copy = torch.arange(2.0)[:, None]
    assert torch.allclose(hierarchy.levels[0].buffer._data["reward"], (1 + copy).expand(2, 4).expand(8, 2, 4))
    assert torch.allclose(hierarchy.levels[1].buffer._data["reward"], (4 * (1 + copy)).expand(4, 2, 2))
    assert torch.allclose(hierarchy.levels[2].buffer._data["reward"], (16 * (1 + copy)).expand(2, 2, 1))


def test_joint_action_decoding_and_non_consecutive_children():
    env = ToyEnv(num_envs=1, n_agents=4, n_actions=3)
    specs = [LevelSpec("x"), LevelSpec("x", children=[[0, 2], [3, 1]], command="discrete(4)")]
    # bottom plays its command; the upper agents play joint actions 6 = (1, 2) and 9 = (2, 1) in base 4
    hierarchy, (bottom, upper) = build(env, specs, [
        lambda obs, call: obs[..., 3:].argmax(-1) % 3,
        lambda obs, call: torch.tensor([[6, 9]])])
    assert upper.io.action_space.n == 4 ** 2  # each child accepts one of 4 commands
    hierarchy.reset(0)
    hierarchy.rollout(1)
    commands = bottom.seen[0][0, :, 3:].argmax(-1)
    # unit 0 <- agent 0 digit 0 (1); unit 2 <- agent 0 digit 1 (2); unit 3 <- 2; unit 1 <- 1
    assert commands.tolist() == [1, 1, 2, 2]
    hierarchy.rollout(1)
    # upper agent 0 observes units 0 and 2; agent 1 observes units 3 and 1
    seen = upper.seen[-1][0, :, :6].reshape(2, 2, 3)
    assert seen[..., 0].tolist() == [[0, 2], [3, 1]]


def test_joint_actions_of_the_upper_level_split_into_child_actions():
    env = ToyEnv(num_envs=2, n_agents=2, n_actions=5)
    hierarchy, _ = build(env, [LevelSpec("x", group_size=2)], [lambda obs, call: torch.tensor([[0], [23]])])
    hierarchy.reset(0)
    hierarchy.rollout(1)
    assert env.received[0].tolist() == [[0, 0], [4, 3]]  # 23 = 4 * 5 + 3


def test_unequal_groups_pad_observations_and_drop_extra_digits():
    env = ToyEnv(num_envs=1, n_agents=4, n_actions=2)
    hierarchy, (learner,) = build(env, [LevelSpec("x", children=[[0, 1, 2], [3]])],
                                  [lambda obs, call: torch.tensor([[0b101, 0b100]])])
    # each slot: the child's 3 obs and a presence flag
    assert learner.io.obs_dim == 12 and learner.io.presence and learner.io.action_space.n == 8
    hierarchy.reset(0)
    hierarchy.rollout(1)
    assert env.received[0].tolist() == [[1, 0, 1, 1]]
    slots = learner.seen[0][0].view(2, 3, 4)
    assert slots[..., 3].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.equal(slots[1, 0, :3], torch.tensor([3.0, 0, 0]))  # unit 3's obs
    assert torch.equal(slots[1, 1:], torch.zeros(2, 4))  # agent 1's missing children


def test_continuous_commands_are_appended_raw_and_clamped():
    env = ToyEnv(num_envs=1, n_agents=2, n_actions=3)
    specs = [LevelSpec("x"), LevelSpec("x", group_size="all", command="box(2)")]
    hierarchy, (bottom, top) = build(env, specs, [
        lambda obs, call: torch.zeros(obs.shape[:2], dtype=torch.long),
        lambda obs, call: torch.tensor([[[0.5, -3.0, 0.25, 0.75]]])])
    assert top.io.action_space.shape == (4,)
    hierarchy.reset(0)
    hierarchy.rollout(1)
    assert torch.equal(bottom.seen[0][0, :, 3:], torch.tensor([[0.5, -1.0], [0.25, 0.75]]))


def test_episode_end_inside_a_period():
    env = ToyEnv(num_envs=2, n_agents=2, n_actions=5, terminal_action=4)

    def bottom_policy(obs, call):
        action = torch.ones(obs.shape[:2], dtype=torch.long)
        if call == 0:
            action[0, 0] = 4  # copy 0 ends its episode at the first of two steps
        return action

    specs = [LevelSpec("x"), LevelSpec("x", group_size=2, period=2, command="discrete(5)")]
    hierarchy, _ = build(env, specs, [bottom_policy, constant(0, lambda obs: obs.shape[:2])])
    bottom = hierarchy.levels[0]
    bottom.training = False
    hierarchy.reset(0)
    ts = bottom.step(torch.zeros(2, 2, dtype=torch.long))
    # copy 0: only the first step counts (4 and 1); copy 1: two steps of (1 + 1)
    assert ts.reward.tolist() == [[4.0, 1.0], [4.0, 4.0]]
    assert ts.terminated.tolist() == [True, False] and ts.truncated.tolist() == [False, False]
    # the message that ended copy 0's episode still shows agent 0's terminal action
    assert ts.info["final_obs"][0, :, 2].tolist() == [4.0, 1.0]
    assert ts.obs[0, :, 1].tolist() == [1.0, 1.0]  # one step into the next episode
    assert torch.equal(ts.info["final_obs"][1], ts.obs[1])


def test_truncation_reaches_every_level_and_final_obs_is_stored():
    env = ToyEnv(num_envs=1, n_agents=2, n_actions=5, max_steps=4)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=2, period=2, command="discrete(5)")]
    hierarchy, _ = build(env, specs, [constant(2, lambda o: o.shape[:2]), constant(0, lambda o: o.shape[:2])])
    hierarchy.reset(0)
    hierarchy.rollout(4)
    bottom, top = (lv.rollout() for lv in hierarchy.levels)
    assert bottom.done[:, 0].tolist() == [False, False, False, True]
    assert top.done[:, 0].tolist() == [False, True] and not top.terminated.any()
    # the bootstrap observation of the truncated step is the one before the reset (t = 4)
    assert bottom.next_obs()[3, 0, :, 1].tolist() == [4.0, 4.0]
    assert bottom.next_obs()[2, 0, :, 1].tolist() == [3.0, 3.0]


def test_four_level_hierarchy_of_ppo_agents_trains():
    from hmarl.algorithms.build import build_levels

    env = ToyEnv(num_envs=4, n_agents=8, n_actions=3)
    levels = [{"learner": "ppo"}] + [
        {"learner": "ppo", "group_size": 2, "period": 2, "command": "discrete(3)"}] * 3
    hierarchy = build_levels(env, levels, {"ppo": {"num_minibatches": 2}})
    assert [lv.spec.n_agents for lv in hierarchy.levels] == [8, 4, 2, 1]
    assert hierarchy.strides == [1, 2, 4, 8]
    before = [p.clone() for p in hierarchy.parameters()]
    hierarchy.reset(0)
    hierarchy.rollout(16)
    metrics = hierarchy.update(progress=0.0)
    assert {f"level{i}/ppo/pg_loss" for i in range(4)} <= set(metrics)
    assert all(not torch.equal(a, b) for a, b in zip(before, hierarchy.parameters()))


@pytest.mark.parametrize("specs, message", [
    ([LevelSpec("x", children=[[0, 1], [1, 2, 3]])], "unit 1 has several parents"),
    ([LevelSpec("x", children=[[0, 1], [2]])], "units [3] have no parent"),
    ([LevelSpec("x", children=[[0, 1], [2, 7]])], "lists unit 7"),
    ([LevelSpec("x", group_size=-1)], "group_size must be >= 1, got -1"),
    ([LevelSpec("x", group_size=2, children=[[0, 1], [2, 3]])], "give one of group_size, children and groups"),
    ([LevelSpec("x", command="discrete(2)")], "'command' belongs to the levels above"),
    ([LevelSpec("x"), LevelSpec("x", group_size=2)], "gives it no command"),
    ([LevelSpec("x"), LevelSpec("x", group_size="all", command="discrete(30)")], "joint actions"),
    ([LevelSpec("x"), LevelSpec("x", group_size=2, command="one-hot")], "is not 'discrete(n)'"),
    ([LevelSpec("x", comm="telepathy")], "unknown comm 'telepathy'; available: concat, autoencoder"),
    ([LevelSpec("x", reward="gold")], "unknown reward 'gold'; available: sum_up"),
])
def test_impossible_hierarchies_fail_at_build_time(specs, message):
    env = ToyEnv(num_envs=1, n_agents=4, n_actions=5)
    with pytest.raises(ValueError) as error:
        build(env, specs, [constant(0, lambda o: o.shape[:2])] * len(specs))
    assert message in str(error.value)
    assert not env.received  # nothing stepped


def test_joint_false_gives_one_head_per_child():
    env = ToyEnv(num_envs=1, n_agents=4, n_actions=5)
    hierarchy, (learner,) = build(env, [LevelSpec("x", group_size=2, joint=False)],
                                  [lambda obs, call: torch.tensor([[[1, 2], [3, 4]]])])
    assert learner.io.action_space.nvec.tolist() == [5, 5]
    hierarchy.reset(0)
    hierarchy.rollout(1)
    assert env.received[0].tolist() == [[1, 2, 3, 4]]


def test_autoencoder_messages_are_8d_codes_and_learn():
    from hmarl import Autoencoder

    torch.manual_seed(0)
    ae = Autoencoder(n_agents=2, in_dim=6)
    x = torch.rand(5, 16, 2, 6)
    code = ae(x)
    assert code.shape == (5, 16, 2, 8) and bool((code > 0).all() and (code < 1).all())
    first = (ae.decoder(ae(x)) - x).pow(2).mean()
    loss = ae.update(x)["ae_loss"]
    assert loss < first
    assert F.mse_loss(ae.decoder(ae(x)), x) < first


def test_relative_goals_keep_the_absolute_target_and_reward_the_distance():
    env = ToyEnv(num_envs=1, n_agents=1, continuous=True, facts={"obs_slices": {"position": slice(1, 3)}})
    specs = [LevelSpec("x", reward="goal_distance"),
             LevelSpec("x", period=3, command="box(2, 10)", relative_goals=True)]
    hierarchy, (worker, manager) = build(env, specs, [
        lambda obs, call: torch.tensor([[[0.3, 0.0]]]),
        lambda obs, call: torch.tensor([[[5.0, 0.5]]])])
    hierarchy.reset(0)
    hierarchy.rollout(3)
    # obs = [id, t, last action]; goal dims are (t, last); the target s0 + g = (5, 0.5) stays put
    goals = torch.stack([seen[0, 0, 3:] for seen in worker.seen])
    assert torch.allclose(goals, torch.tensor([[5.0, 0.5], [4.0, 0.2], [3.0, 0.2]]))
    reward = hierarchy.levels[0].buffer._data["reward"][:, 0, 0]
    expected = -torch.tensor([[4.0, 0.2], [3.0, 0.2], [2.0, 0.2]]).norm(dim=-1)
    assert torch.allclose(reward, expected)
    hierarchy.rollout(3)  # the manager's next goal replaces the carried one
    assert torch.allclose(worker.seen[3][0, 0, 3:], torch.tensor([5.0, 0.5]))


@pytest.mark.parametrize("specs, message", [
    ([LevelSpec("x", reward="goal_distance"), LevelSpec("x", command="box(2)", relative_goals=True)],
     "needs an env with obs_slices.position; toy has none"),
])
def test_goals_need_goal_dims(specs, message):
    env = ToyEnv(num_envs=1, n_agents=1, continuous=True)
    with pytest.raises(ValueError, match=message):
        build(env, specs, [None, None])


def test_goal_commands_must_match_the_goal_dims():
    env = ToyEnv(num_envs=1, n_agents=1, continuous=True, facts={"obs_slices": {"position": slice(1, 3)}})
    specs = [LevelSpec("x"), LevelSpec("x", command="box(3)", relative_goals=True)]
    with pytest.raises(ValueError, match=r"level 1: relative goals live on the 2 goal dims \[1, 2\]"):
        build(env, specs, [None, None])


class Superior(Scripted):
    """A scripted upper learner whose advantages are known in advance."""

    on_policy = True
    publishes = frozenset({"advantages"})

    def __init__(self, io, policy, advantages):
        super().__init__(io, policy)
        self.advantages = advantages

    def update(self, rollout, ctx):
        return UpdateResult(outputs={"advantages": self.advantages})


class Recorder(Scripted):
    def update(self, rollout, ctx):
        self.rollout = rollout
        return UpdateResult()


@pytest.mark.parametrize("per_child", [False, True])
@pytest.mark.parametrize("env_reward_coef", [0.0, 1.0])
def test_upper_advantage_rewards_units_with_their_superiors_advantage(per_child, env_reward_coef):
    env = ToyEnv(num_envs=2, n_agents=4, n_actions=5)
    t_up, period = 2, 3
    g = torch.Generator().manual_seed(0)
    advantages = torch.randn(t_up, 2, 2, 2, generator=g) if per_child else torch.randn(t_up, 2, 2, generator=g)
    learners = []

    def make(spec, io, index):
        if index == 0:
            learners.append(Recorder(io, constant(1, lambda o: o.shape[:2])))
        else:
            learners.append(Superior(io, constant(0, lambda o: o.shape[:2]), advantages))
        return learners[-1]

    specs = [LevelSpec("x", reward="upper_advantage", reward_options={"env_reward_coef": env_reward_coef}),
             LevelSpec("x", children=[[0, 2], [1, 3]], period=period, command="discrete(5)")]
    hierarchy = build_hierarchy(env, specs, make)
    hierarchy.reset(0)
    hierarchy.rollout(t_up * period)
    hierarchy.update(progress=0.0)
    reward = learners[0].rollout.reward  # [T, B, 4]
    parent, slot = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    for t in range(t_up * period):
        expected = (advantages[t // period][:, parent, slot] if per_child else advantages[t // period][:, parent])
        expected = expected / period + env_reward_coef * (1 + torch.arange(2.0))[:, None]  # env reward 1 + copy
        assert torch.allclose(reward[t], expected)


def test_upper_advantage_needs_an_advantage_estimator_above():
    env = ToyEnv(num_envs=1, n_agents=2, n_actions=5)
    alone = [LevelSpec("x", reward="upper_advantage")]
    with pytest.raises(ValueError, match="level 0: reward upper_advantage needs .* found no level above"):
        build(env, alone, [None])
    below_scripted = [LevelSpec("x", reward="upper_advantage"),
                      LevelSpec("x", group_size=2, command="discrete(5)")]
    with pytest.raises(ValueError, match="found Scripted above it"):
        build(env, below_scripted, [None, None])
    with pytest.raises(ValueError, match="level 0: reward sum_up has no option 'gain'; valid: none"):
        build(env, [LevelSpec("x", reward="sum_up", reward_options={"gain": 2})], [None])


def test_unknown_reward_options_list_the_valid_ones():
    env = ToyEnv(num_envs=1, n_agents=2, n_actions=5)
    specs = [LevelSpec("x", reward="upper_advantage", reward_options={"env_reward": 1.0}),
             LevelSpec("x", group_size=2, command="discrete(5)")]
    with pytest.raises(ValueError, match="level 0: reward upper_advantage has no option 'env_reward'; "
                                         "valid: env_reward_coef"):
        build(env, specs, [None, None])


def test_tag_3ppo_with_upper_advantage_rewards_trains():
    """A hybrid no paper has: TAG's 3PPO whose lower levels learn from HiMPo's advantage rewards."""
    from hmarl.algorithms.build import build_levels
    from hmarl.envs import make_env

    env = make_env("vmas_balance", num_envs=4, n_agents=4, max_steps=40, seed=0)
    levels = [{"learner": "ppo", "reward": "upper_advantage"},
              {"learner": "ppo", "group_size": 2, "period": 2, "command": "discrete(5)",
               "reward": "upper_advantage", "reward_options": {"env_reward_coef": 1.0}},
              {"learner": "ppo", "group_size": 2, "period": 2, "command": "discrete(5)"}]
    hierarchy = build_levels(env, levels, {"ppo": {"num_minibatches": 2}})
    before = [p.clone() for p in hierarchy.parameters()]
    hierarchy.reset(0)
    for iteration in range(2):
        hierarchy.rollout(40)
        metrics = hierarchy.update(progress=iteration / 2)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, hierarchy.parameters()))
    assert hierarchy.published[2].outputs["advantages"].shape == (10, 4, 1)


# ---------------------------------------------------------------- children regrouped by position
def _swapping_positions(t):
    """Two copies of 4 agents on a line. Even steps: {0, 1} left, {2, 3} right; odd steps:
    {0, 2} left, {1, 3} right. Copy 1 mirrors copy 0."""
    even = torch.tensor([0.0, 1.0, 10.0, 11.0])
    odd = torch.tensor([0.0, 10.0, 1.0, 11.0])
    x = torch.where((t % 2 == 0)[:, None], even, odd)
    x = torch.stack([x[0], -x[1]]) if x.shape[0] == 2 else x
    return torch.stack([x, torch.zeros_like(x)], dim=-1)


def _slots(obs, n_groups=2, capacity=2):
    """[B, M, capacity, 3 obs + 2 position + presence]."""
    return obs.view(obs.shape[0], n_groups, capacity, 6)


@pytest.mark.parametrize("grouping", ["dynamic", "episode"])
def test_regrouped_children_follow_positions_and_receive_their_actions(grouping):
    env = ToyEnv(num_envs=2, n_agents=4, n_actions=5, max_steps=3, positions=_swapping_positions)
    # each agent plays, for each child slot, the id of the unit in it (read from the child's obs)
    play_unit_ids = lambda obs, call: _slots(obs)[..., 0].long()  # noqa: E731
    hierarchy, (learner,) = build(env, [LevelSpec("x", groups=2, grouping=grouping, joint=False)],
                                  [play_unit_ids])
    assert learner.io.group == 2 and learner.io.presence and learner.io.position_dim == 2
    assert learner.io.action_space.nvec.tolist() == [2 * [5]][0]
    hierarchy.reset(0)
    hierarchy.rollout(4)  # steps t = 0, 1, 2 (episode ends), 0
    for step, obs in enumerate(learner.seen):
        slots = _slots(obs)
        assert torch.equal(slots[..., 5], torch.ones(2, 2, 2))  # 4 units, 2 x 2 slots: all present
        for b in range(2):
            groups = sorted(sorted(int(u) for u in slots[b, m, :, 0]) for m in range(2))
            assert sorted(int(u) for u in slots[b, ..., 0].flatten()) == [0, 1, 2, 3]  # one parent each
            clustered_at = step if grouping == "dynamic" else 0  # episode: kept from the episode's start
            assert groups == ([[0, 1], [2, 3]] if clustered_at % 3 % 2 == 0 else [[0, 2], [1, 3]])
            # each slot carries its unit's position
            assert torch.equal(slots[b, ..., 3:5], _swapping_positions(torch.full((2,), step % 3))[b][
                slots[b, ..., 0].long()])
        # every unit received its own id as its action, whichever slot it sat in
        assert env.received[step].tolist() == [[0, 1, 2, 3]] * 2
    rollout = hierarchy.levels[0].rollout()  # stores each step's grouping for the level below's rewards
    for step, obs in enumerate(learner.seen):
        units = _slots(obs)[..., 0].long()  # [B, M, capacity]
        for b in range(2):
            for m in range(2):
                for place in range(2):
                    unit = units[b, m, place]
                    assert (rollout.parent[step, b, unit], rollout.slot[step, b, unit]) == (m, place)


def test_episode_grouping_recomputes_only_for_copies_that_start_an_episode():
    from hmarl.algorithms.himpo.graphs import Regrouping

    grouping = Regrouping(n_units=4, n_groups=2, mode="episode")
    even, odd = _swapping_positions(torch.zeros(2)), _swapping_positions(torch.ones(2))
    first = grouping.assign(even, torch.ones(2, dtype=torch.bool), None)
    kept = grouping.assign(odd, torch.tensor([False, True]), first)
    assert torch.equal(kept[0], first[0])
    assert torch.equal(kept[1], grouping.assign(odd, torch.ones(2, dtype=torch.bool), None)[1])
    groups = lambda row: sorted(sorted(u for u in range(4) if row[u] == m) for m in range(2))  # noqa: E731
    assert groups(kept[0].tolist()) == [[0, 1], [2, 3]] and groups(kept[1].tolist()) == [[0, 2], [1, 3]]


def test_regrouping_slots_and_relabel_with_per_step_parents():
    from hmarl.algorithms.himpo.graphs import Regrouping
    from hmarl.algorithms.himpo.rewards import UpperAdvantage

    grouping = Regrouping(n_units=5, n_groups=2, mode="dynamic")
    assert grouping.capacity == 3
    assignment = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 0, 1, 1]])
    assert grouping.slots(assignment).tolist() == [[0, 0, 1, 1, 2], [0, 1, 2, 0, 1]]
    # advantages of 2 superiors x 3 slots over 2 upper steps of period 2; units regrouped between them
    advantage = torch.arange(2 * 1 * 2 * 3, dtype=torch.float).view(2, 1, 2, 3)
    parent = torch.stack([assignment[:1], assignment[1:]])  # [T_up=2, B=1, 5]
    slot = grouping.slots(parent)
    rule = UpperAdvantage(ToyEnv().spec, 3)
    reward = rule.add_advantage(torch.zeros(4, 1, 5), advantage, parent, slot, period=2)
    first = advantage[0, 0].flatten()[(parent[0, 0] * 3 + slot[0, 0])] / 2
    second = advantage[1, 0].flatten()[(parent[1, 0] * 3 + slot[1, 0])] / 2
    assert first.tolist() == [3 / 2, 0, 4 / 2, 1 / 2, 5 / 2]
    assert torch.equal(reward[:, 0], torch.stack([first, first, second, second]))


def test_upward_positions_are_the_mean_of_the_children():
    env = ToyEnv(num_envs=2, n_agents=4, n_actions=5, positions=_swapping_positions)
    hierarchy, (bottom, top) = build(env, [LevelSpec("x"), LevelSpec("x", group_size=2, command="discrete(5)",
                                                                     positions=True)],
                                     [constant(0, lambda o: o.shape[:2]), constant(0, lambda o: o.shape[:2])])
    ts = hierarchy.reset(0)
    assert top.io.obs_dim == 2 * (3 + 2)
    assert torch.equal(ts.info["positions"], _swapping_positions(torch.zeros(2)).view(2, 1, 2, 2, 2).mean(3)[:, 0])


def test_regrouping_needs_positions_and_groups():
    env = ToyEnv(num_envs=1, n_agents=4)
    with pytest.raises(ValueError, match="level 0: regrouping children by position needs an env with positions"):
        build(env, [LevelSpec("x", groups=2, grouping="dynamic")], [None])
    with pytest.raises(ValueError, match="level 0: grouping episode .* set groups"):
        build(env, [LevelSpec("x", grouping="episode")], [None])
    with pytest.raises(ValueError, match="unknown grouping 'kmeans'; available: static, dynamic, episode"):
        build(env, [LevelSpec("x", groups=2, grouping="kmeans")], [None])
    with pytest.raises(ValueError, match="more sub-managers than workers \\(5 > 4\\)"):
        build(ToyEnv(num_envs=1, n_agents=4, positions=_swapping_positions),
              [LevelSpec("x", groups=5, grouping="dynamic")], [None])


class SubtaskToy(ToyEnv):
    """ToyEnv with 3 subtasks whose rewards at the t-th step (from 1) are (10 t, 20 t, 30 t) + copy index."""

    def __init__(self, **kwargs):
        super().__init__(facts={"entities": Entities(n_subtasks=3, subtask_of_entity=(0, 1, 2), entity_dim=1, first=0)},
                         **kwargs)

    def _active(self):
        """In copy 0, subtask 0 is finished from the 4th step of an episode on."""
        active = torch.ones(self.spec.num_envs, 3, dtype=torch.bool)
        active[0, 0] = self.t[0] < 4
        return active

    def reset(self, seed=None):
        ts = super().reset(seed)
        ts.info["active_subtasks"] = self._active()
        return ts

    def step(self, actions):
        ts = super().step(actions)
        t = torch.arange(self.spec.num_envs, dtype=torch.float)[:, None]
        ts.info["subtask_rewards"] = self.t[:, None] * torch.tensor([10.0, 20.0, 30.0]) + t
        ts.info["active_subtasks"] = self._active()
        return ts


def test_subtask_reward_follows_each_units_assignment():
    env = SubtaskToy(num_envs=2, n_agents=3)
    # the allocator assigns unit 0 -> subtask 2, unit 1 -> 0, unit 2 -> 2
    hierarchy, (workers, allocator) = build(env, [
        LevelSpec("x", reward="subtask"),
        LevelSpec("x", group_size="all", joint=False, command="discrete(3)", period=2)],
        [constant(0, lambda o: o.shape[:2]), lambda obs, call: torch.tensor([[[2, 0, 2]]] * 2)])
    hierarchy.reset(0)
    hierarchy.rollout(2)
    reward = hierarchy.levels[0].rollout().reward  # [2, B, 3]
    copy = torch.arange(2.0)[:, None]
    assert torch.equal(reward[0], torch.tensor([30.0, 10.0, 30.0]) + copy)
    assert torch.equal(reward[1], torch.tensor([60.0, 20.0, 60.0]) + copy)


class PerAgentSubtaskToy(SubtaskToy):
    """Subtask rewards that depend on the agent: agent i on subtask k would get -(10 k + i)."""

    def step(self, actions):
        ts = super().step(actions)
        agent, subtask = torch.arange(3.0)[:, None], torch.arange(3.0)[None]
        ts.info["subtask_rewards"] = -(10 * subtask + agent).expand(self.spec.num_envs, 3, 3).clone()
        return ts


def test_per_agent_subtask_rewards_pay_every_assignee_the_best_assignee_reward():
    # units 0 and 2 share subtask 1 (candidates -10 and -12: both get -10), unit 1 has subtask 2 alone
    hierarchy, _ = build(PerAgentSubtaskToy(num_envs=2, n_agents=3), [
        LevelSpec("x", reward="subtask"),
        LevelSpec("x", group_size="all", joint=False, command="discrete(3)", period=2)],
        [constant(0, lambda o: o.shape[:2]), lambda obs, call: torch.tensor([[[1, 2, 1]]] * 2)])
    hierarchy.reset(0)
    hierarchy.rollout(2)
    reward = hierarchy.levels[0].rollout().reward  # [2, B, 3]
    assert torch.equal(reward, torch.tensor([-10.0, -21.0, -10.0]).expand(2, 2, 3))


def test_subtask_reward_needs_subtasks_and_an_assigning_level():
    with pytest.raises(ValueError, match="the subtask reward needs an env with entities"):
        build(ToyEnv(num_envs=1, n_agents=2), [LevelSpec("x", reward="subtask"),
                                               LevelSpec("x", group_size="all", command="discrete(3)")], [None, None])
    with pytest.raises(ValueError, match=r"level 0: the subtask reward needs a level above that assigns one of "
                                         r"the 3 subtasks: command discrete\(3\)"):
        build(SubtaskToy(num_envs=1, n_agents=2), [LevelSpec("x", reward="subtask"),
                                                   LevelSpec("x", group_size="all", command="discrete(5)")],
              [None, None])


def test_decide_every_holds_actions_and_redecides_when_subtasks_change():
    env = SubtaskToy(num_envs=2, n_agents=3, max_steps=8)
    # the allocator proposes (call % 3) for every unit; the level decides what is kept
    hierarchy, (workers, allocator) = build(env, [
        LevelSpec("x", reward="subtask"),
        LevelSpec("x", group_size="all", joint=False, command="discrete(3)", decide_every=3)],
        [constant(0, lambda o: o.shape[:2]), lambda obs, call: torch.full((obs.shape[0], 1, 3), call % 3)])
    hierarchy.reset(0)
    hierarchy.rollout(10)
    flags = hierarchy.levels[1].rollout().decision  # [T, B]
    decisions = [flags[:, b].nonzero().squeeze(-1).tolist() for b in range(2)]
    # every 3 steps (0, 3), subtask 0 finishing in copy 0 (seen at 4), 3 steps after the last
    # decision (7 in copy 0, 6 in copy 1), a new episode (8)
    assert decisions == [[0, 3, 4, 7, 8], [0, 3, 6, 8]]
    calls = sorted(set(decisions[0]) | set(decisions[1]))
    # asked only when some copy decides, about the deciding copies only
    assert [len(obs) for obs in allocator.seen] == [sum(t in d for d in decisions) for t in calls]
    commands = torch.stack(workers.seen)[..., 3:].argmax(-1)  # [10, B, 3]
    for b in range(2):
        held = [calls.index(max(d for d in decisions[b] if d <= t)) % 3 for t in range(10)]
        assert commands[:, b].tolist() == [[h] * 3 for h in held]
    with pytest.raises(ValueError, match=r"decide_every\) needs an env with entities"):
        build(ToyEnv(num_envs=1, n_agents=2), [LevelSpec("x"), LevelSpec("x", group_size="all", joint=False,
                                                                         command="discrete(3)", decide_every=3)],
              [None, None])


@pytest.mark.parametrize("n_below, size, children", [
    (3, 2, [[0, 1], [2]]), (4, 2, [[0, 1], [2, 3]]), (5, 2, [[0, 1], [2, 3], [4]]),
    (7, 3, [[0, 1, 2], [3, 4], [5, 6]]), (4, 3, [[0, 1], [2, 3]]), (1, 2, [[0]]),
])
def test_group_size_that_does_not_divide_gives_balanced_groups(n_below, size, children):
    """Pins TAG's grouping on any number of agents: ceil(n / size) consecutive blocks of at most
    ``size`` units, as equal as can be, the larger first."""
    assert LevelSpec("x", group_size=size).resolve_children(n_below, "level 1") == children
