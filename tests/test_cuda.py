"""Every family trains unchanged with ``device=cuda``: its flagship system and the flat baselines
on an env it runs on, a few iterations, every tensor of the hierarchy on the GPU afterwards.

Skipped where no GPU is at hand (CI has none); ``pytest -m cuda`` runs only these.
"""
from __future__ import annotations

import math

import pytest
import torch

from hmarl.run.experiment import Trainer
from tests.test_systems import run_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]

#: (system, env): each family's flagship, its variants that take other code paths, the baselines
FAMILIES = [("tag_3ppo", "vmas_simple_spread"), ("tag_3ppo_comm", "vmas_balance"), ("tag_mappo_ppo", "mpe_simple_spread"),
            ("himppo", "lbfws_hard"), ("himppo", "vmas_sampling"),
            ("hrl_cg", "point_maze"),
            ("alma", "savethecity"), ("aqmix", "savethecity"),
            ("ippo", "lbf"), ("mappo", "vmas_balance"), ("td3", "point_maze"), ("iql", "lbf"), ("qmix", "lbf")]


@pytest.mark.parametrize("system, env", FAMILIES)
def test_the_system_trains_on_cuda(system, env, tmp_path):
    trainer = Trainer(run_config(system, env, tmp_path, device="cuda"), lambda *entry: None)
    assert math.isfinite(trainer.fit())
    tensors = [value for value in trainer.hierarchy.state_dict().values() if torch.is_tensor(value)]
    assert tensors and all(value.device.type == "cuda" for value in tensors)
