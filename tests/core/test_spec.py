"""The ``subtasks`` capability helpers of ``hmarl.spec``."""
from __future__ import annotations

import torch

from hmarl.spec import agents_then_subtasks, subtask_membership


def test_agents_then_one_entity_per_subtask():
    capability = agents_then_subtasks(2, 3, ["x", "y", "done"], finished="done")
    assert capability == {"n_subtasks": 3, "n_entities": 5, "entity_dim": 3, "obs_entities": [3, 5],
                          "subtask_of_entity": [-1, -1, 0, 1, 2], "feature_names": ["x", "y", "done"],
                          "finished_feature": 2}
    assert "finished_feature" not in agents_then_subtasks(2, 3, ["x", "y"])


def test_membership_rows_of_entities_without_a_subtask_are_empty():
    membership = subtask_membership([-1, 1, 0, 1], 2)
    assert torch.equal(membership, torch.tensor([[False, False], [False, True], [True, False], [False, True]]))
