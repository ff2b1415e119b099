"""Any strategy at any depth (issue #14, part 5): what a learner, reward rule or channel reads of the
env (``reads_env``) reaches it through the levels between, regrouped by the env agents under its
agents. By hand on a toy stack, then three stacks that train: the allocator above a TAG level, an
HRL goal manager above a HiMPo level, and ``reward: subtask`` above level 0."""
from __future__ import annotations

import math

import pytest
import torch

from hmarl import LevelSpec, build_hierarchy
from hmarl.rewards import REWARD_RULES, RewardRule
from hmarl.run.experiment import CONFIG_DIR, RunConfig, Trainer, load_yaml
from hmarl.spec import Entities
from hmarl.strategies import Assignment, EnvRead
from toys import Scripted, ToyEnv


class InfoEnv(ToyEnv):
    """The toy env with a per-step, per-agent ``info["x"] = [agent, t]`` (t: the step just taken, before any
    reset), and who-dependent ``subtask_rewards[b, u, k] = 10 u + k + t`` over 2 subtasks."""

    def __init__(self, **kwargs):
        super().__init__(facts={"entities": Entities(n_subtasks=2, subtask_of_entity=(0, 1), entity_dim=1, first=0)},
                         **kwargs)

    def _extra(self, obs):
        agent, t = obs[..., 0], obs[..., 1]
        rewards = 10 * agent.unsqueeze(-1) + torch.arange(2.0) + t.unsqueeze(-1)
        return {"x": obs[..., :2].clone(), "subtask_rewards": rewards}

    def reset(self, seed=None):
        ts = super().reset(seed)
        ts.info.update({key: torch.zeros_like(value) for key, value in self._extra(ts.obs).items()})
        return ts

    def step(self, actions):
        ts = super().step(actions)
        ts.info.update(self._extra(ts.info["final_obs"]))
        return ts


class Spy(RewardRule):
    """Records what each step read of the env; learns from the children's rewards."""

    reads_env = (EnvRead("x", summed=True), EnvRead("obs"))
    seen: list = []

    def step_reward(self, step):
        Spy.seen.append(step.env)
        return step.children_reward


def still(obs, call):
    return torch.zeros(obs.shape[:2], dtype=torch.long)


def toy_stack(env, top: LevelSpec, middle_reward: str = "sum_up"):
    """4 env agents; level 1: 2 agents over env agents [[0, 2], [1, 3]] (through level 0, one each)."""
    specs = [LevelSpec("s"), LevelSpec("s", children=[[0, 2], [1, 3]], command="discrete(2)", reward=middle_reward),
             top]
    return build_hierarchy(env, specs, lambda spec, io, i: Scripted(io, still))


def test_level_2_reads_the_env_entries_regrouped_by_hand(monkeypatch):
    """Level 2 (one agent over level 1's two, each over two env agents) gets the env's ``x`` summed over
    its step of 2 env steps, and the env agents under it in slots ``[0, 2, 1, 3]``: unit 0's, then unit 1's.
    The episode ends (max_steps 3) in its second step: the sum stops there, final_obs is the ended one."""
    monkeypatch.setitem(REWARD_RULES, "spy", Spy)
    Spy.seen = []
    env = InfoEnv(num_envs=2, n_agents=4, max_steps=3)
    hierarchy = toy_stack(env, LevelSpec("s", group_size="all", period=2, command="discrete(2)", reward="spy"))
    assert [lv.env_up for lv in hierarchy.levels] == [Spy.reads_env, Spy.reads_env, ()]
    hierarchy.reset(seed=0)
    hierarchy.rollout(4)  # two steps of level 2
    first, second = Spy.seen
    order = [0, 2, 1, 3]
    ids = torch.tensor(order, dtype=torch.float).expand(2, 4)
    assert first.assignment.view(first.end["x"]).tolist() == torch.stack([2 * ids, torch.full((2, 4), 3.0)], -1
                                                                          ).unsqueeze(1).tolist()  # t = 1 + 2
    assert second.assignment.view(second.end["x"]).tolist() == torch.stack([ids, torch.full((2, 4), 3.0)], -1
                                                                           ).unsqueeze(1).tolist()  # t = 3 only
    by_hand = lambda obs: obs[:, order].unsqueeze(1)  # noqa: E731  [B, 1 agent, 4 slots, obs_dim]
    assert second.assignment.view(second.start["obs"]).equal(by_hand(torch.stack(
        [torch.arange(4.0).expand(2, 4), torch.full((2, 4), 2.0), torch.zeros(2, 4)], -1)))
    assert second.assignment.view(second.end["final_obs"])[..., 1].eq(3).all()  # the obs that ended the episode
    assert second.assignment.view(second.end["obs"])[..., 1].eq(1).all()  # the new episode's, after 1 step
    assert first.mean(first.end["x"]).tolist() == [[[3.0, 3.0]]] * 2  # the mean over the 4 env agents
    assert first.assignment.group == 4 and not first.assignment.blocks


def test_subtask_reward_at_level_1_is_the_best_of_the_env_agents_under_its_assignees():
    """Level 1's agents (over env agents {0, 2} and {1, 3}) are assigned subtasks 1 and 0 by level 2:
    subtask 1 is worth the best ``10 u + 1 + t`` over u in {0, 2} (21 + t), subtask 0 over {1, 3} (30 + t)."""
    env = InfoEnv(num_envs=2, n_agents=4, max_steps=50)
    assign = lambda obs, call: torch.tensor([1, 0]).expand(obs.shape[0], 1, 2)  # noqa: E731
    specs = [LevelSpec("s"), LevelSpec("s", children=[[0, 2], [1, 3]], command="discrete(2)", reward="subtask"),
             LevelSpec("s", group_size="all", joint=False, command="discrete(2)")]
    hierarchy = build_hierarchy(env, specs, lambda spec, io, i: Scripted(io, assign if i == 2 else still))
    hierarchy.reset(seed=0)
    hierarchy.rollout(3)
    t = torch.arange(1.0, 4.0).view(3, 1, 1)
    assert hierarchy.levels[1].buffer._data["reward"].equal((torch.tensor([21.0, 30.0]) + t).expand(3, 2, 2))


def test_composed_assignment_matches_the_units_by_hand():
    """Per-copy assignments compose like fixed ones: env agent u's agent is the agent of its unit, its slot
    ``unit slot * group below + its slot``."""
    below = Assignment.of(torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]]), torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]),
                          2, 2, 2)
    upper = Assignment.of(torch.tensor([0, 0]), torch.tensor([1, 0]), 1, 2, 2)
    composed = upper.compose(below)
    assert composed.parent.tolist() == [[0] * 4] * 2
    assert composed.slot.tolist() == [[0, 2, 1, 3], [2, 3, 0, 1]]
    x = torch.arange(4.0).expand(2, 4)
    assert composed.view(x).tolist() == [[[0, 2, 1, 3]], [[2, 3, 0, 1]]]


# -- three stacks that train ----------------------------------------------------------------------
PPO = {"transitions_per_update": None, "hidden_sizes": [32], "update_epochs": 2, "num_minibatches": 2}
ALLOCATOR = {"buffer_size": 2000, "batch_size": 16, "learning_starts": 10, "n_proposals": 8, "embedding": 32,
             "heads": 2, "hidden_sizes": [32], "updates_per_step": 1.0}


def tiny(env_name: str, levels: list, tmp_path, **blocks) -> RunConfig:
    """A TAG-family run of ``levels`` on ``env_name`` with the systems tests' tiny budget."""
    config = {**load_yaml(CONFIG_DIR / "default.yaml"), **load_yaml(CONFIG_DIR / "envs" / f"{env_name}.yaml"),
              "algorithm": "depth", "family": "tag", "levels": levels, **blocks}
    config.update(num_envs=4, rollout_steps=40, total_steps=320, eval_envs=2, eval_interval=0, max_steps=40,
                  progress=False, checkpoint_dir=str(tmp_path / "ckpt"))
    return RunConfig.from_config(config)


def trains(run: RunConfig) -> tuple[Trainer, dict[str, list[float]]]:
    """Fit ``run``; assert every logged loss is finite and the top learner's parameters moved."""
    logs: dict[str, list[float]] = {}
    trainer = Trainer(run, lambda name, value, step: logs.setdefault(name, []).append(value), warn=None)
    top = trainer.hierarchy.levels[-1]
    before = {k: v.clone() for k, v in top.learner.state_dict().items() if torch.is_tensor(v)}
    assert math.isfinite(trainer.fit())
    losses = {name: values for name, values in logs.items() if name.endswith("_loss")}
    assert all(math.isfinite(v) for values in losses.values() for v in values), losses
    top_index = len(trainer.hierarchy.levels) - 1
    assert any(name.startswith(f"level{top_index}/") for name in losses), sorted(logs)
    after = top.learner.state_dict()
    assert any(not v.equal(after[k]) for k, v in before.items() if v.is_floating_point()), "the top learner never moved"
    return trainer, logs


def test_allocator_above_a_tag_level_trains(tmp_path):
    """ALMA's allocator assigns SaveTheCity's buildings to the two PPO teams of a TAG level (over env agents
    [[0, 1], [2]]), reading the env agents' observations appended to its own."""
    levels = [{"learner": "ppo"},
              {"learner": "ppo", "group_size": 2, "command": "discrete(4)"},
              {"learner": "allocator", "group_size": "all", "joint": False, "command": "discrete(4)",
               "decide_every": 5}]
    trainer, _ = trains(tiny("savethecity", levels, tmp_path, ppo=PPO, allocator=ALLOCATOR))
    level = trainer.hierarchy.levels[2]
    assert level.env_block and level.io.env_slots == 4 and level.learner.view.n_agents == 2


def test_goal_manager_above_a_himpo_level_trains(tmp_path):
    """An HRL goal manager (cg_lambda 0) sets relative goals for HiMPo sub-managers, each over a cluster of
    simple-spread workers regrouped by position: a goal moves its cluster's mean position (the goal dims),
    which the sub-managers learn to reach (goal_distance) while their workers learn from their advantages."""
    levels = [{"learner": "graph_ppo", "options": {"graph": "knn"}, "reward": "upper_advantage", "positions": True},
              {"learner": "graph_ppo", "options": {"graph": "complete", "gae_lambda": 0.0}, "groups": 2,
               "grouping": "dynamic", "command": "box(4)", "period": 2, "joint": False, "reward": "goal_distance"},
              {"learner": "goal_manager", "period": 2, "relative_goals": True, "command": "box(2, 1.0)"}]
    graph_ppo = {**PPO, "embedding": 32, "knn": 2}
    manager = {"buffer_size": 2000, "batch_size": 16, "random_steps": 100, "hidden_sizes": [32], "cg_lambda": 0.0}
    trainer, logs = trains(tiny("vmas_simple_spread", levels, tmp_path, graph_ppo=graph_ppo, goal_manager=manager))
    assert type(trainer.hierarchy.levels[1].reward_rule).__name__ == "GoalDistance"
    assert "level1/graphppo/pg_loss" in logs


@pytest.mark.parametrize("env_name, levels", [
    # level 1: PPO teams over pairs of simple-spread agents, each team learning from its landmark's reward
    # (the best of its env agents', minus the distance), assigned by the allocator at level 2
    ("vmas_simple_spread", [{"learner": "ppo"},
                            {"learner": "ppo", "group_size": 2, "command": "discrete(3)", "reward": "subtask"}]),
    # level 2: one PPO agent over each SaveTheCity team learning from its building's reward, below the allocator
    ("savethecity", [{"learner": "ppo"}, {"learner": "ppo", "group_size": 2, "command": "discrete(3)"},
                     {"learner": "ppo", "command": "discrete(3)", "reward": "subtask"}]),
], ids=["level1_simple_spread", "level2_savethecity"])
def test_subtask_reward_above_level_0_trains(env_name, levels, tmp_path):
    subtasks = 4
    allocator = {"learner": "allocator", "group_size": "all", "joint": False, "command": f"discrete({subtasks})",
                 "decide_every": 5}
    trainer, logs = trains(tiny(env_name, [*levels, allocator], tmp_path, ppo=PPO, allocator=ALLOCATOR))
    learner_index = len(levels) - 1
    assert type(trainer.hierarchy.levels[learner_index].reward_rule).__name__ == "SubtaskReward"
    assert f"level{learner_index}/ppo/pg_loss" in logs


def test_subtask_reward_needs_subtask_commands():
    """What cannot work is still refused at build time in one line: a subtask reward under a level that
    does not assign subtasks."""
    env = InfoEnv(num_envs=2, n_agents=4)
    with pytest.raises(ValueError, match=r"^level 1: the subtask reward needs a level above that assigns one of "
                                         r"the 2 subtasks: command discrete\(2\)$"):
        toy_stack(env, LevelSpec("s", group_size="all", command="box(2)"), middle_reward="subtask")
