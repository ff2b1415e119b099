"""The entity helpers of ``hmarl.spec`` (``Entities``, ``agents_then_subtasks``)."""
from __future__ import annotations

import torch

from hmarl.spec import Entities, agents_then_subtasks, subtask_membership


def test_agents_then_one_entity_per_subtask():
    entities = agents_then_subtasks(2, 3, ["x", "y", "done"], finished="done")
    assert entities == Entities(n_subtasks=3, subtask_of_entity=(-1, -1, 0, 1, 2), entity_dim=3, first=3,
                                finished_feature=2, feature_names=("x", "y", "done"))
    assert entities.n_entities == 5 and entities.obs_slice == slice(3, 18)
    assert agents_then_subtasks(2, 3, ["x", "y"]).finished_feature is None


def test_membership_rows_of_entities_without_a_subtask_are_empty():
    membership = subtask_membership([-1, 1, 0, 1], 2)
    assert torch.equal(membership, torch.tensor([[False, False], [False, True], [True, False], [False, True]]))
    entities = Entities(n_subtasks=2, subtask_of_entity=[-1, 1, 0, 1], entity_dim=1, first=0)
    assert torch.equal(entities.membership(), membership)
