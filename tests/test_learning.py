"""Short learning runs (``pytest -m slow``): training must beat the untrained policy."""
from __future__ import annotations

import pytest

from hmarl.run.experiment import Trainer
from tests.test_systems import run_config


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["mappo", "tag_3ppo"])
def test_training_improves_simple_spread(algorithm, tmp_path):
    def final_return(total_steps):
        run = run_config(algorithm, "vmas_simple_spread", tmp_path, total_steps=total_steps, num_envs=32,
                         rollout_steps=64, max_steps=100, eval_envs=32)
        return Trainer(run, lambda *entry: None).fit()

    untrained, trained = final_return(2048), final_return(300_000)
    assert trained > untrained + 0.2 * abs(untrained)  # returns are negative distances
