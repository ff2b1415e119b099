"""The inter-level action trace (TAG Sec. 5.3) records copy 0's episodes from bottom-level rollouts."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hmarl.algorithms.tag.action_trace import LevelActionTrace
from hmarl.buffers import Rollout


def rollout(actions, commands, done) -> Rollout:
    """Copy 0 of 2 with 2 agents; obs = [1 feature, one-hot of 3 commands]; copy 1 is noise."""
    t = len(actions)
    obs = torch.zeros(t, 2, 2, 4)
    obs[:, 0, :, 1:] = F.one_hot(torch.tensor(commands), 3).float()  # commands [T, 2]
    obs[:, 1, :, 1] = 1.0
    action = torch.zeros(t, 2, 2, dtype=torch.long)
    action[:, 0, 0] = torch.tensor(actions)
    action[:, 1] = 7
    ends = torch.zeros(t, 2, dtype=torch.bool)
    ends[:, 0] = torch.tensor(done)
    zeros = torch.zeros(t, 2, 2)
    return Rollout(obs=obs, action=action, log_prob=zeros, reward=zeros, terminated=ends, done=ends,
                   final_obs=obs, last_obs=obs[-1])


def test_episodes_are_split_at_done_and_continue_across_rollouts():
    trace = LevelActionTrace(n_actions=5, n_upper_actions=3)
    trace.add(rollout([4, 3, 2, 1], [[0, 1], [1, 2], [2, 0], [0, 0]], [False, True, False, False]))
    trace.add(rollout([0, 1], [[1, 1], [2, 2]], [True, False]))
    arrays = trace.arrays()
    assert np.array_equal(arrays["bottom"], [[4, 3, -1], [2, 1, 0]])
    assert np.array_equal(arrays["connected"], [[0, 1, -1], [2, 0, 1]])
    assert np.array_equal(arrays["unconnected"], [[1, 2, -1], [0, 0, 1]])
    assert np.array_equal(trace.current, [[1], [2], [2]])  # the open episode is not saved yet
    assert arrays["n_actions"] == 5 and arrays["n_upper_actions"] == 3

    reset = LevelActionTrace(5, 3)
    reset.load_state(trace.state())
    reset.restart()  # the envs were reset: the open episode [1] is not continued
    reset.add(rollout([3], [[0, 2]], [True]))
    assert np.array_equal(reset.arrays()["bottom"][-1], [3, -1, -1])

    restored = LevelActionTrace(5, 3)
    restored.load_state(trace.state())
    restored.add(rollout([3], [[0, 2]], [True]))
    assert np.array_equal(restored.arrays()["bottom"][-1], [1, 3, -1])


def test_only_hierarchies_with_discrete_commands_over_discrete_actions_are_traced(tmp_path):
    from tests.test_systems import run_config
    from hmarl.run.experiment import Trainer

    run = run_config("tag_2ppo", "vmas_simple_spread", tmp_path)
    trainer = Trainer(run, lambda *entry: None)
    trainer.fit()
    episodes = run.total_steps // run.num_envs // run.max_steps  # copy 0's finished episodes
    assert trainer.named_callbacks["action_trace"].arrays()["bottom"].shape == (episodes, run.max_steps)
    # a config without it has none; TAG's config on continuous actions names it, but it has nothing to trace
    assert Trainer(run_config("mappo", "vmas_simple_spread", tmp_path), lambda *e: None).named_callbacks == {}
    assert Trainer(run_config("tag_mappo_ppo", "vmas_balance", tmp_path, continuous_actions=True),
                   lambda *e: None).named_callbacks == {}


def test_a_named_callback_keeps_its_state_through_a_checkpoint_and_unknown_names_are_refused(tmp_path):
    """``callbacks: [action_trace]`` builds the trace; a resumed run continues its episodes."""
    import pytest

    from tests.test_systems import run_config
    from hmarl.run.experiment import RunConfig, Trainer

    run = run_config("tag_2ppo", "vmas_simple_spread", tmp_path, checkpoint_interval=1)
    first = Trainer(run, lambda *entry: None)
    first.fit()
    resumed = Trainer(run_config("tag_2ppo", "vmas_simple_spread", tmp_path, checkpoint_interval=1, resume=True),
                      lambda *entry: None)
    resumed.restore()
    saved, loaded = first.named_callbacks["action_trace"], resumed.named_callbacks["action_trace"]
    assert len(loaded.episodes) == len(saved.episodes) and np.array_equal(loaded.current, saved.current)
    with pytest.raises(ValueError, match="callbacks: unknown callback 'nope'; available: action_trace"):
        RunConfig.from_config({**vars_of(run), "callbacks": ["nope"]})


def vars_of(run) -> dict:
    """A RunConfig back as the flat config it was validated from."""
    import dataclasses

    flat = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.init}
    return {**flat, **run.learner_options, **run.family_options}
