"""Envs declare typed facts (``EnvSpec.positions``, ``obs_slices``, ``entities``, ``episode_metrics``,
``eval_groups``, ``optional``), checked when the spec is made; ``MultiAgentEnv.close`` and ``render``."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hmarl import LevelSpec, build_hierarchy
from hmarl.envs import ENVS, make_env
from hmarl.run.experiment import RunConfig, Trainer
from hmarl.spec import Entities, EnvSpec, MultiAgentEnv, agents_then_subtasks
from tests.test_systems import merged
from tests.toys import Scripted, ToyEnv

POSITION = {"obs_slices.position"}
SPREAD = {"obs_slices.position", "obs_slices.velocity", "obs_slices.landmarks"}


@pytest.mark.parametrize("name, options, facts, optional", [
    # by hand from each env's observation layout (see its module docstring)
    ("savethecity", {}, {"positions", "entities", *POSITION}, {}),
    ("lbf", {}, {"positions", *POSITION}, {"entities": "subtasks"}),
    ("lbf", {"subtasks": True}, {"positions", "entities", *POSITION}, {}),
    ("lbf", {"sight": 2}, {"positions"}, {"entities": "subtasks"}),  # coordinates relative to the view
    ("lbfws_hard", {}, {"positions", *POSITION}, {"entities": "subtasks"}),
    ("point_maze", {"n_agents": 1}, {"positions", "obs_slices.context", *POSITION}, {}),
    ("vmas_balance", {}, {"positions", *POSITION}, {"continuous_actions": "continuous_actions"}),
    ("vmas_balance", {"continuous_actions": True}, {"positions", *POSITION}, {}),
    ("vmas_simple_spread", {}, {"positions", *SPREAD}, {"continuous_actions": "continuous_actions",
                                                        "entities": "subtasks"}),
    ("vmas_simple_spread", {"subtasks": True}, {"positions", "entities", *POSITION},
     {"continuous_actions": "continuous_actions"}),
    ("mpe_simple_spread", {}, {"positions", *SPREAD}, {"continuous_actions": "continuous_actions",
                                                       "entities": "subtasks"}),
    ("mpe2_simple_spread", {}, SPREAD, {"continuous_actions": "continuous_actions", "entities": "subtasks"}),
])
def test_each_env_declares_its_facts(name, options, facts, optional):
    spec = make_env(name, num_envs=1, seed=0, **{"n_agents": 3, **options}).spec
    kinds = {"discrete_actions", "continuous_actions", "several_agents"}
    assert spec.facts - kinds == facts and spec.optional == optional
    assert ("several_agents" in spec.facts) == (spec.n_agents >= 2)


def test_the_slices_and_entities_are_where_the_observations_put_them():
    spread = make_env("vmas_simple_spread", num_envs=1, n_agents=3, seed=0).spec
    assert spread.obs_slices == {"position": slice(0, 2), "velocity": slice(2, 4), "landmarks": slice(4, 10)}
    mpe = make_env("mpe_simple_spread", num_envs=1, n_agents=3, seed=0).spec
    assert mpe.obs_slices == {"velocity": slice(0, 2), "position": slice(2, 4), "landmarks": slice(4, 10)}
    city = make_env("savethecity", num_envs=1, n_agents=3, seed=0).spec  # 3 agents, 4 buildings, 12 features
    assert city.entities.obs_slice == slice(12, 12 + 7 * 12) == slice(12, city.obs_dim)
    assert city.entities.feature_names[city.entities.finished_feature] == "finished"
    assert city.episode_metrics == ("success", "completed") and city.eval_groups == ()
    foods = make_env("lbf", num_envs=1, n_agents=2, max_num_food=3, subtasks=True, seed=0).spec
    assert foods.entities.subtask_of_entity == (-1, -1, 0, 1, 2) and foods.obs_dim == 6 * 6
    landmarks = make_env("vmas_simple_spread", num_envs=1, n_agents=3, seed=0, subtasks=True).spec
    assert landmarks.entities.finished_feature is None and landmarks.entities.obs_slice == slice(6, 42)
    maze = make_env("point_maze", num_envs=1, seed=0, eval_targets=True).spec
    assert maze.episode_metrics == ("success",) and len(maze.eval_groups) == 3


def spec(**facts) -> EnvSpec:
    return EnvSpec(n_agents=2, obs_dim=6, action_space=spaces.Discrete(3), max_steps=5, num_envs=1, name="tiny",
                   **facts)


@pytest.mark.parametrize("facts, message", [
    ({"obs_slices": {"position": slice(4, 8)}},
     r"tiny's spec: obs_slices\['position'\] is slice\(4, 8, None\), but must be a slice\(start, stop\) with "
     r"0 <= start < stop <= obs_dim \(6\)"),
    ({"obs_slices": {"position": slice(2, 2)}}, r"obs_slices\['position'\] is slice\(2, 2, None\)"),
    ({"obs_slices": {"position": slice(0, 4, 2)}}, r"obs_slices\['position'\] is slice\(0, 4, 2\)"),
    ({"obs_slices": {"position": [0, 1]}}, r"tiny's spec: obs_slices\['position'\] must be a slice, got \[0, 1\]"),
    ({"positions": 0}, r"tiny's spec: positions is the size of a position \(an int >= 1\) or None, got 0"),
    ({"entities": agents_then_subtasks(2, 1, ["x", "y"])},  # rows 2..8 of a 6-dim observation
     r"tiny's spec: the 3 entity rows of 2 features take obs dims 2\.\.8, beyond obs_dim \(6\)"),
    ({"entities": {"n_subtasks": 1}}, "tiny's spec: entities must be an hmarl.spec.Entities, got dict"),
])
def test_wrong_facts_are_refused_in_one_line(facts, message):
    with pytest.raises(ValueError, match=message) as error:
        spec(**facts)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("fields, message", [
    ({"subtask_of_entity": (-1, 0, 2)}, r"Entities: subtask_of_entity holds subtasks -1\.\.1, got \[-1, 0, 2\]"),
    ({"entity_dim": 0}, "Entities: n_subtasks, entity_dim and the number of entities must be >= 1, got 2, 0, 3"),
    ({"finished_feature": 2}, r"Entities: finished_feature must be a feature 0\.\.1, got 2"),
    ({"feature_names": ("x",)}, "Entities: feature_names names 1 features, entity_dim is 2"),
    ({"first": -1}, "Entities: first must be >= 0 or None, got -1"),
])
def test_wrong_entities_are_refused_in_one_line(fields, message):
    good = {"n_subtasks": 2, "subtask_of_entity": (-1, 0, 1), "entity_dim": 2, "first": 0}
    with pytest.raises(ValueError, match=message):
        Entities(**{**good, **fields})


def test_facts_and_their_values_come_from_the_typed_fields():
    entities = Entities(n_subtasks=1, subtask_of_entity=[-1, 0], entity_dim=2, first=2)
    tiny = spec(positions=2, obs_slices={"position": slice(0, 2)}, entities=entities)
    assert tiny.facts == {"discrete_actions", "several_agents", "positions", "entities", "obs_slices.position"}
    assert tiny.require("positions", "x") == 2 and tiny.require("entities", "x") is entities
    assert tiny.require("obs_slices.position", "x") == slice(0, 2) and tiny.require("several_agents", "x") is True
    assert entities.subtask_of_entity == (-1, 0)  # lists are kept as tuples: the spec stays frozen
    assert spec().lacks("obs_slices.position", "hrl_cg") == (
        "hrl_cg needs an env with obs_slices.position; tiny has none. Pick an env that provides "
        "obs_slices.position, or another algorithm.")
    behind = spec(optional={"entities": "subtasks", "continuous_actions": "continuous_actions"})
    assert behind.lacks("entities", "alma") == "alma needs an env with entities; tiny has it behind an option: " \
                                                "set env_options: {subtasks: true}"
    assert behind.lacks("continuous_actions", "td3") == ("td3 needs continuous actions; tiny has it behind an "
                                                         "option: set continuous_actions: true")


def test_a_level_passes_up_positions_and_the_entities_a_termination_above_needs():
    entities = Entities(n_subtasks=3, subtask_of_entity=(0, 1, 2), entity_dim=1, first=0)
    env = ToyEnv(num_envs=1, n_agents=2, positions=lambda t: torch.zeros(1, 2, 2),
                 facts={"obs_slices": {"position": slice(0, 2)}, "entities": entities})

    def levels(**top):
        return build_hierarchy(env, [LevelSpec("x"), LevelSpec("x", group_size="all", joint=False,
                                                               command="discrete(3)", **top)],
                               lambda spec, io, index: Scripted(io, None)).levels

    bottom, top = levels()
    # the observation below is not the level's (its agents' messages): no slices, no entities
    assert bottom.spec.positions == 2 and bottom.spec.obs_slices == {} and bottom.spec.entities is None
    assert bottom.spec.facts == {"positions", "several_agents", "discrete_actions"}  # commands: discrete(3)
    bottom, top = levels(decide_every=2)  # OnSubtaskChange above: level 0 declares the env's entities
    assert bottom.spec.entities == dataclasses.replace(entities, first=None)  # its agents observe messages
    assert "entities" in bottom.spec.facts and top.spec.entities is None
    with pytest.raises(ValueError, match="^the allocator reads the entity rows of the observation, but level over "
                                         "toy's observation does not hold them$"):
        bottom.spec.entities.in_observation("the allocator", bottom.spec.name)


# -- close and render ----------------------------------------------------------------------------

class Counting(ToyEnv, MultiAgentEnv):
    """A ToyEnv that counts the calls of ``close``."""

    closed = 0

    def close(self):
        type(self).closed += 1


def test_the_trainer_closes_its_envs_at_the_end_of_a_run(monkeypatch, tmp_path):
    monkeypatch.setitem(ENVS, "counting", lambda num_envs, device, seed, n_agents, max_steps, continuous_actions:
                        Counting(num_envs=num_envs, n_agents=n_agents, max_steps=max_steps))
    monkeypatch.setattr(Counting, "closed", 0)
    config = {**merged("ippo", "vmas_balance"), "env": "counting", "n_agents": 2, "max_steps": 10, "num_envs": 2,
              "rollout_steps": 10, "total_steps": 20, "eval_envs": 2, "progress": False,
              "checkpoint_dir": str(tmp_path)}
    with Trainer(RunConfig.from_config(config), lambda *entry: None) as trainer:
        trainer.fit()
        assert Counting.closed == 0
    assert Counting.closed == 2  # the training env and the evaluation env


class Plain(ToyEnv, MultiAgentEnv):
    """A ToyEnv with MultiAgentEnv's defaults of ``close`` and ``render``."""


def test_the_default_close_holds_nothing_and_render_names_the_env():
    env = Plain(num_envs=1)
    assert isinstance(env, MultiAgentEnv) and env.close() is None
    with pytest.raises(NotImplementedError, match="^toy does not render$"):
        env.render()


@pytest.mark.parametrize("name, options", [("lbf", {}), ("lbf", {"subtasks": True}), ("lbfws_hard", {}),
                                           ("savethecity", {}), ("point_maze", {"n_agents": 1}),
                                           ("mpe_simple_spread", {}), ("vmas_simple_spread", {}),
                                           ("vmas_simple_spread", {"subtasks": True})])
def test_render_gives_an_rgb_frame_of_copy_0(name, options):
    env = make_env(name, num_envs=2, seed=0, **{"n_agents": 3, **options})
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] >= 100
    assert frame.min() < frame.max()  # something is drawn
    env.close()


def test_an_adapter_without_an_rgb_render_mode_says_so():
    env = make_env("mpe2_simple_spread", num_envs=1, n_agents=2)
    with pytest.raises(NotImplementedError, match="mpe2_simple_spread renders only when made with "
                                                  "render_mode='rgb_array'"):
        env.render()
    env.close()
