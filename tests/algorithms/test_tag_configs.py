"""TAG's named configs carry the training hyperparameters of the paper's Appendix A tables."""
from __future__ import annotations

import pytest
from gymnasium import spaces

from hmarl.algorithms.ppo import PPO, PPOConfig
from hmarl.run.experiment import CONFIG_DIR, load_yaml
from tests.toys import _io

COMMON = dict(learning_rate=0.001, anneal_lr=True, max_grad_norm=0.5, update_epochs=4, gamma=0.99,
              gae_lambda=0.95, norm_adv=True, clip_coef=None, clip_vloss=True, vf_coef=0.5)
# Appendix A.1-A.5: (num_minibatches, clip_coef, ent_coef, target_kl) per system, and the buffers:
# "Buffer size 2,048" (PPO systems); "MAPPO Buffer size 10,000" and "PPO Batch size 2,048".
TABLES = {
    "tag_2ppo": ((4, 0.2, 0.0, None), {"ppo": 2048}),
    "tag_3ppo": ((8, 0.1, 0.01, 0.015), {"ppo": 2048}),
    "tag_3ppo_comm": ((8, 0.1, 0.01, 0.015), {"ppo": 2048}),
    "tag_mappo_ppo": ((4, 0.2, 0.0, None), {"ppo": 2048, "mappo": 10_000}),
    "tag_2mappo_ppo": ((4, 0.2, 0.01, 0.015), {"ppo": 2048, "mappo": 10_000}),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_tag_config_matches_appendix_a(name):
    """Each learner block equals its system's Appendix A table, buffer size included."""
    (minibatches, clip, entropy, target_kl), buffers = TABLES[name]
    system = load_yaml(CONFIG_DIR / "algorithms" / f"{name}.yaml")
    assert {level["learner"] for level in system["levels"]} == set(buffers)
    for learner, buffer in buffers.items():
        block = system[learner]
        expected = dict(COMMON, clip_coef=clip, num_minibatches=minibatches, ent_coef=entropy,
                        target_kl=target_kl, transitions_per_update=buffer)
        assert {key: block.get(key) for key in expected} == expected, learner


def test_transitions_per_update_reaches_the_learner():
    """``transitions_per_update`` (a level's transitions per update; None: every rollout) is what
    the Hierarchy reads from ``Learner.transitions_per_update``; it must be positive."""
    io = _io(1, 2, spaces.Discrete(2))
    assert PPO(io, PPOConfig()).transitions_per_update is None
    assert PPO(io, PPOConfig(transitions_per_update=2048)).transitions_per_update == 2048
    with pytest.raises(ValueError, match="transitions_per_update"):
        PPOConfig(transitions_per_update=0)
