"""Training processes flush subnormal floats to zero (``hmarl.run.experiment.flush_denormals``),
in every torch thread, and that changes what a run learns by nothing measurable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from hmarl.run.experiment import CONFIG_DIR, RunConfig, Trainer, load_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = torch.finfo(torch.float32).tiny


def td3_point_maze(threads: int, total_steps: int = 1200) -> RunConfig:
    """Flat TD3 on the point maze, the bench's networks (256 x 256), 400 gradient steps per iteration."""
    config = {**load_yaml(CONFIG_DIR / "default.yaml"), **load_yaml(CONFIG_DIR / "algorithms" / "td3.yaml"),
              **load_yaml(CONFIG_DIR / "envs" / "point_maze.yaml")}
    config.update(num_envs=4, rollout_steps=100, total_steps=total_steps, eval_envs=1, eval_interval=0,
                  progress=False, threads=threads, checkpoint_interval=0)
    return RunConfig.from_config(config)


FLUSHES_IN_EVERY_THREAD = """
import torch
from hmarl.run.experiment import Trainer
from tests.test_denormals import td3_point_maze
Trainer(td3_point_maze(threads=2, total_steps=400))
smallest = torch.tensor([1], dtype=torch.int32).view(torch.float32)  # 1.4e-45, made without arithmetic
x = smallest.expand(2 ** 21).contiguous()
y = x * 2.0  # 2M elements: split over both intra-op threads
assert torch.get_num_threads() == 2
print(int((y != 0).sum()), int((y[: 2 ** 20] != 0).sum()), int((y[2 ** 20:] != 0).sum()))
"""


def test_a_training_process_flushes_subnormals_in_every_thread(tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", FLUSHES_IN_EVERY_THREAD], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "0", "0"], "subnormal products survived (first count: all; then each half)"


def subnormals(tensors) -> int:
    return sum(int(((t != 0) & (t.abs() < TINY)).sum()) for t in tensors)


def train_td3(flush: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Three iterations of TD3 (1200 gradient steps) on one thread, with or without the flush;
    the learned tensors and the subnormal entries left in the optimizers' states."""
    trainer = Trainer(td3_point_maze(threads=1))  # one thread: the main thread's flag is all there is
    torch.set_flush_denormal(flush)
    try:
        hierarchy = trainer.hierarchy
        hierarchy.train(True)
        hierarchy.reset(trainer.run.seed)
        for iteration in range(3):
            hierarchy.rollout(trainer.run.rollout_steps)
            hierarchy.update(progress=iteration / 3)
        learner = hierarchy.levels[0].learner
        states = [s for o in learner.optimizers() for state in o.state.values() for s in state.values()
                  if s.is_floating_point() and s.dim()]
        return {k: v.clone() for k, v in learner.state_dict().items() if torch.is_tensor(v)}, subnormals(states)
    finally:
        torch.set_flush_denormal(True)


def test_flushing_subnormals_changes_a_short_td3_training_by_less_than_1e_6():
    threads = torch.get_num_threads()
    try:
        kept, left = train_td3(flush=False)
        flushed, none = train_td3(flush=True)
    finally:
        torch.set_num_threads(threads)
    assert left > 0, "no subnormal arose: this training does not exercise the flush"
    assert none == 0
    assert kept.keys() == flushed.keys()
    for key in kept:
        torch.testing.assert_close(flushed[key], kept[key], rtol=0, atol=1e-6, msg=key)
