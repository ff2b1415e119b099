"""Trainer callbacks: the public way to watch what each level observes, is commanded and is rewarded."""
from __future__ import annotations

import torch

from hmarl.run.callbacks import Callback
from hmarl.run.experiment import Trainer, evaluate
from tests.test_systems import run_config


class Recorder(Callback):
    """Keeps copies of every level's rollout and every update's metrics, and the order of the calls."""

    def __init__(self):
        self.calls: list[tuple[str, int | None]] = []
        self.rollouts: list[list] = []
        self.metrics: list[dict[str, float]] = []

    def on_reset(self, trainer):
        self.calls.append(("reset", None))

    def on_rollout(self, trainer, rollouts, step):
        self.calls.append(("rollout", step))
        self.rollouts.append([{"obs": r.obs.clone(), "action": r.action.clone(), "reward": r.reward.clone()}
                              for r in rollouts])

    def on_update(self, trainer, metrics, step):
        self.calls.append(("update", step))
        self.metrics.append(dict(metrics))


def test_callbacks_see_every_level_observe_be_commanded_and_rewarded(tmp_path):
    """On TAG's 3PPO (4 agents, 2 middle, 1 top; every 2 steps of the level below): each level's
    rollout has its own time scale; the command a level observed is the action of the level
    above split among its children (``split_action``), held for the period; the middle level's
    reward (sum_up) is its children's rewards summed over its period."""
    run = run_config("tag_3ppo", "vmas_balance", tmp_path)
    recorder = Recorder()
    trainer = Trainer(run, log=lambda *entry: None, callbacks=[recorder])
    assert trainer.callbacks == [trainer.named_callbacks["action_trace"], recorder]  # TAG's config names the trace: first
    trainer.fit()

    steps = [run.steps_per_iteration * (i + 1) for i in range(run.iterations)]
    assert recorder.calls == [("reset", None)] + [(kind, s) for s in steps for kind in ("rollout", "update")]
    hierarchy = trainer.hierarchy
    assert hierarchy.strides == [1, 2, 4]
    for rollouts in recorder.rollouts:
        assert [r["obs"].shape[:3] for r in rollouts] == [
            (run.rollout_steps // stride, run.num_envs, level.spec.n_agents)
            for level, stride in zip(hierarchy.levels, hierarchy.strides)]
        for index in range(2):  # what level `index` was commanded: the level above's action, split
            level, upper = hierarchy.levels[index], hierarchy.levels[index + 1]
            commanded = rollouts[index]["obs"][..., level.io.child_obs_dim:].argmax(-1)
            action = rollouts[index + 1]["action"]  # [T_upper, B, N_upper]: split_action takes [B, N]
            given = upper.split_action(action.flatten(0, 1)).unflatten(0, action.shape[:2])  # [T_upper, B, N]
            assert torch.equal(commanded, given.repeat_interleave(2, dim=0))
        bottom_reward = rollouts[0]["reward"]  # [T, B, 4]: the env's rewards (sum_up over one agent each)
        over_period = bottom_reward.reshape(-1, 2, run.num_envs, 2, 2).sum(dim=(1, 4))  # [T/2, B, 2]
        assert torch.allclose(rollouts[1]["reward"], over_period, atol=1e-5)
    # the metrics an update hands its callbacks are the ones logged at that step
    logged = {(name, step): value for name, value, step in trainer.history}
    for metrics, step in zip(recorder.metrics, steps):
        assert metrics and all(logged[(name, step)] == value for name, value in metrics.items())


def test_a_callback_that_reads_no_rollout_costs_none(tmp_path, monkeypatch):
    """The levels' rollouts are read when a callback first indexes them, once per level."""
    run = run_config("tag_2ppo", "vmas_balance", tmp_path)

    class TopOnly(Callback):
        def on_rollout(self, trainer, rollouts, step):
            assert len(rollouts) == 2 and rollouts[-1] is rollouts[1]

    trainer = Trainer(run, log=lambda *entry: None, callbacks=[TopOnly()])
    trainer.callbacks.remove(trainer.named_callbacks["action_trace"])
    reads = []  # the last rollout's part of a level (the update reads whole buffers, without steps)

    def counted(index, read):
        def rollout(*args, **kwargs):
            if kwargs.get("steps") is not None:
                reads.append(index)
            return read(*args, **kwargs)
        return rollout

    for index, level in enumerate(trainer.hierarchy.levels):
        monkeypatch.setattr(level, "rollout", counted(index, level.rollout))
    trainer.fit()
    assert reads == [1] * run.iterations


def test_trainer_evaluator_plays_the_evaluation_episodes(tmp_path):
    """``Trainer.evaluator`` is the hierarchy's agents over the evaluation env: ``evaluate`` on it
    gives the ``eval/return`` that ``fit`` logs last."""
    run = run_config("ippo", "vmas_balance", tmp_path)
    trainer = Trainer(run, log=lambda *entry: None)
    trainer.fit()
    assert trainer.evaluator.env.spec.num_envs == run.eval_envs
    assert trainer.evaluator.learners[0] is trainer.hierarchy.learners[0]  # the same agents
    final = [value for name, value, _ in trainer.history if name == "eval/return"][-1]
    assert evaluate(trainer.evaluator, run.seed + 10_000)["eval/return"] == final
