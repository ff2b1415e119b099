"""``evaluate``: every evaluation copy counts once, whatever the length of its episodes."""
from __future__ import annotations

import pytest
import torch

from hmarl.run.experiment import evaluate
from hmarl.hierarchy import LevelSpec, build_hierarchy
from hmarl.run.monitor import EpisodeMonitor
from tests.toys import EpisodesEnv, Scripted


def evaluation_of(env: EpisodesEnv) -> dict[str, float]:
    """``evaluate`` on a one-level hierarchy over ``env`` whose agents always play action 0."""
    hierarchy = build_hierarchy(EpisodeMonitor(env), [LevelSpec(learner="scripted")],
                                lambda spec, io, index: Scripted(io, lambda obs, call: torch.zeros(
                                    obs.shape[:2], dtype=torch.long)))
    return evaluate(hierarchy, seed=0)


def short_and_long(**outcomes) -> EpisodesEnv:
    """Copy 0: episodes of 2 steps returning 1 (five of them fit in the evaluation);
    copy 1: one episode of 10 steps returning 5."""
    return EpisodesEnv(lengths=[2, 10], returns=[1.0, 5.0], max_steps=10, **outcomes)


def test_eval_return_weights_each_copy_once():
    """Pins the evaluation return as the mean over copies of each copy's first episode:
    (1 + 5) / 2 = 3, not the mean over all finished episodes (5 * 1 + 5) / 6, which favours
    the copy whose episodes are short."""
    assert evaluation_of(short_and_long())["eval/return"] == pytest.approx(3.0)


def test_eval_success_and_episode_metrics_weight_each_copy_once():
    """Pins success, its per-group values and the env's episode metrics (``completed``) to the
    same rule: copy 0 succeeds in its first episode only and copy 1 never, so success is
    (1 + 0) / 2, not the mean of per-copy rates over all episodes (1/5 + 0) / 2; ``completed``
    is (0.2 + 0.6) / 2, not the mean over the six episodes."""
    metrics = evaluation_of(short_and_long(
        success=lambda copy, episode: float(copy == 0 and episode == 0),
        completed=lambda copy, episode: [0.2, 0.6][copy]))
    assert metrics["eval/success"] == pytest.approx(0.5)
    assert metrics["eval/completed"] == pytest.approx(0.4)


def test_eval_success_per_group_uses_each_copy_first_episode():
    """Pins ``eval/success/<group>`` (copies assigned to groups in turn) to the first episode
    of each copy of the group: the short copy succeeds in its first of five episodes only."""
    env = EpisodesEnv(lengths=[2, 10], returns=[1.0, 5.0], max_steps=10,
                      success=lambda copy, episode: float(episode == 0),
                      eval_groups=("short", "long"))
    metrics = evaluation_of(env)
    assert metrics["eval/success/short"] == pytest.approx(1.0)
    assert metrics["eval/success/long"] == pytest.approx(1.0)
