"""python -m hmarl.run.evaluate: a run's model rebuilt from its config, greedy episodes, renderings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sacred.initialize import create_run

from hmarl.run import evaluate as evaluation
from hmarl.run.experiment import RunConfig, Trainer, build, ex, make_run_env
from hmarl.run.render import HierarchyWatch, Recorder, play, render_episode

iio = pytest.importorskip("imageio.v3")
ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_envs": 4, "rollout_steps": 20, "total_steps": 160, "eval_envs": 3, "max_steps": 20, "progress": False,
        "eval_interval": 0}


def merged_config(algorithm: str, env: str, **updates) -> dict:
    """The config sacred would write to the run's config.json."""
    return dict(create_run(ex, "print_config", {**TINY, **updates}, [algorithm, env], log_level="ERROR").config)


def train_run(folder: Path, algorithm: str, env: str, model: bool = True, **updates) -> tuple[Path, float]:
    """A tiny trained run as the command line leaves it (in-process, faster): config.json,
    run.json's result and, unless ``model`` is False (a run from before runs kept one), model.pt."""
    config = merged_config(algorithm, env, checkpoint_dir=str(folder / "checkpoints"), **updates)
    trainer = Trainer(RunConfig.from_config(config))
    result = trainer.fit()
    run_dir = folder / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "run.json").write_text(json.dumps({"status": "COMPLETED", "result": result}))
    if model:
        trainer.save_model(run_dir / "model.pt")
    return run_dir, result


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory) -> tuple[Path, float]:
    return train_run(tmp_path_factory.mktemp("tag"), "tag_3ppo", "vmas_simple_spread")


def evaluate_cli(*args, cwd):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "hmarl.run.evaluate", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})


def test_the_rebuilt_model_reproduces_the_runs_final_evaluation(tag_run):
    """Pins that config.json + model.pt give back the trained agents: the default evaluation
    (the run's eval_envs and seed) returns exactly the run's result."""
    run_dir, result = tag_run
    run, hierarchy, source = evaluation.load_run(run_dir, device="cpu")
    assert source == str(run_dir / "model.pt")
    estimate = evaluation.evaluate_run(run, hierarchy, run.eval_envs, run.seed + 10_000)["eval/return"]
    assert estimate.mean == pytest.approx(result, rel=1e-6) and estimate.episodes == run.eval_envs
    assert estimate.low <= estimate.mean <= estimate.high


def test_a_run_of_the_command_line_evaluates_to_its_result(tmp_path):
    """Pins the whole user path: python -m hmarl saves model.pt, python -m hmarl.run.evaluate reads it back."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    train = subprocess.run([sys.executable, "-m", "hmarl", "with", "hrl_cg", "point_maze", "-F", "runs",
                            *(f"{k}={v}" for k, v in {**TINY, "max_steps": 40, "total_steps": 320}.items())],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": path})
    assert train.returncode == 0, train.stderr
    result = json.loads((tmp_path / "runs" / "1" / "run.json").read_text())["result"]
    out = evaluate_cli("runs/1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "from runs/1/model.pt" in out.stdout and "eval/success:" in out.stdout
    run, hierarchy, _ = evaluation.load_run(tmp_path / "runs" / "1")
    assert evaluation.evaluate_run(run, hierarchy, run.eval_envs, run.seed + 10_000)["eval/return"].mean == \
        pytest.approx(result, rel=1e-6)


def test_the_command_line_reports_a_confidence_interval_and_renders_a_gif(tag_run, tmp_path):
    run_dir, _ = tag_run
    out = evaluate_cli(run_dir, "--episodes", 5, "--render", tmp_path / "tag.gif", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "5 greedy episodes" in out.stdout and "eval/return:" in out.stdout and "95% CI" in out.stdout
    frames = iio.imread(tmp_path / "tag.gif", index=None)
    assert frames.shape[1:] == (240, 240, 3) and len(frames) == 20  # t = 0 to 19 of a 20-step episode
    assert (tmp_path / "tag.gif").stat().st_size < 1_000_000


def test_an_mp4_needs_ffmpeg_and_gets_it(tag_run, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    run, hierarchy, _ = evaluation.load_run(tag_run[0], device="cpu")
    env = make_run_env(run, 1, seed_offset=10_000, evaluation=True)
    drawn = render_episode(hierarchy, env, run.env, run.env_options, 10_000, tmp_path / "tag.mp4", "t", native=False)
    assert drawn["renderer"] == "matplotlib" and (tmp_path / "tag.mp4").stat().st_size > 1000
    assert len(iio.imread(tmp_path / "tag.mp4", plugin="FFMPEG", index=None)) == drawn["frames"]


def test_a_run_without_model_pt_falls_back_to_its_final_checkpoint(tmp_path):
    run_dir, result = train_run(tmp_path, "ippo", "vmas_balance", model=False, checkpoint_interval=160)
    run, hierarchy, source = evaluation.load_run(run_dir)
    assert source.endswith("checkpoint.pt")
    assert evaluation.evaluate_run(run, hierarchy, run.eval_envs, run.seed + 10_000)["eval/return"].mean == \
        pytest.approx(result, rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "nowhere is not a run folder: it has no config.json"),
    (["RUN", "--render", "out.png"], "--render out.png: write a .gif or an .mp4"),
    (["RUN", "--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["RUN", "--device", "tpu"], "device=tpu is not a device hmarl runs on"),
    (["RUN", "--render", "a_file/out.gif"], "--render folder"),
])
def test_bad_arguments_are_one_line(tag_run, tmp_path, args, message):
    (tmp_path / "a_file").write_text("")
    out = evaluate_cli(*[tag_run[0] if a == "RUN" else a for a in args], cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("hmarl.run.evaluate: ") and message in line


def test_a_run_folder_without_a_model_or_checkpoint_says_so(tag_run, tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "config.json").write_text((tag_run[0] / "config.json").read_text())
    out = evaluate_cli(tmp_path / "1", cwd=tmp_path)
    assert out.returncode != 0 and "has no model.pt" in out.stderr and "Traceback" not in out.stderr


def watched(algorithm: str, env: str, **updates):
    run = RunConfig.from_config(merged_config(algorithm, env, **updates))
    hierarchy = build(run.replace(num_envs=1))
    return run, hierarchy, play(hierarchy, make_run_env(run, 1, evaluation=True), seed=3).frames


def test_the_overlay_shows_who_owns_whom():
    _, _, frames = watched("tag_3ppo", "vmas_balance")
    overlay = frames[-1].overlay
    assert overlay.owner.tolist() == [0, 0, 1, 1]  # pairs under the two middle agents
    assert overlay.outer is None and overlay.goals is None and overlay.allocation is None  # one top agent


def test_relative_goals_are_drawn_where_they_point_when_given():
    run, hierarchy, _ = watched("hrl_cg", "point_maze", max_steps=30)
    recorder = Recorder(make_run_env(run, 1, evaluation=True))
    player = hierarchy.attach(recorder)
    watch = HierarchyWatch(player, recorder)
    player.train(False)
    player.reset(0)
    start = recorder.last.obs[0, :, :2].clone()
    player.top.step(None)  # the manager sets a goal, the worker walks for its period
    goal = watch.commands[0][0]
    assert torch.allclose(watch.targets, start + goal)
    assert watch.overlay().goals.shape == (1, 2)


def test_allocations_colour_agents_by_their_subtask():
    _, _, frames = watched("alma", "savethecity")
    overlay = frames[-1].overlay
    assert overlay.allocation is not None and len(overlay.allocation) == 3
    assert all(overlay.fill(a) == overlay.fill(b) for a in range(3) for b in range(3)
               if overlay.allocation[a] == overlay.allocation[b])


@pytest.mark.parametrize("algorithm, env, updates", [
    ("hrl_cg", "point_maze", {}), ("alma", "savethecity", {}), ("tag_3ppo", "lbfws_hard", {}),
    ("alma", "lbf", {"env_options": {"subtasks": True}}), ("ippo", "mpe_simple_spread", {}),
    ("himppo", "vmas_sampling", {}), ("alma", "vmas_simple_spread", {"env_options": {"subtasks": True}}),
])
def test_every_env_renders_through_matplotlib(algorithm, env, updates, tmp_path):
    run = RunConfig.from_config(merged_config(algorithm, env, **updates))
    hierarchy = build(run.replace(num_envs=1))
    drawn = render_episode(hierarchy, make_run_env(run, 1, evaluation=True), run.env, run.env_options, 0,
                           tmp_path / "x.gif", "t", every=5, native=False)
    frames = iio.imread(tmp_path / "x.gif", index=None)
    assert drawn["renderer"] == "matplotlib" and len(frames) == drawn["frames"] >= 2
    assert frames[-1].std() > 10  # something is drawn


def test_vmas_renders_itself_where_opengl_works(tmp_path):
    run = RunConfig.from_config(merged_config("tag_3ppo", "vmas_balance"))
    hierarchy = build(run.replace(num_envs=1))
    drawn = render_episode(hierarchy, make_run_env(run, 1, evaluation=True), run.env, run.env_options, 0,
                           tmp_path / "x.gif", "t", every=5)
    if drawn["renderer"] != "vmas":
        pytest.skip("VMAS's renderer needs OpenGL, which this machine lacks (the matplotlib fallback drew it)")
    frames = iio.imread(tmp_path / "x.gif", index=None)
    assert frames.shape[1:] == (240, 240, 3) and len(frames) == drawn["frames"] == 4  # t = 0, 5, 10, 15
    assert drawn["steps"] == 20


def test_a_vmas_scenario_its_renderer_fails_on_falls_back_to_matplotlib(tmp_path):
    """vmas_sampling draws its field with matplotlib.cm.get_cmap, gone since matplotlib 3.9."""
    run = RunConfig.from_config(merged_config("himppo", "vmas_sampling"))
    hierarchy = build(run.replace(num_envs=1))
    drawn = render_episode(hierarchy, make_run_env(run, 1, evaluation=True), run.env, run.env_options, 0,
                           tmp_path / "x.gif", "t", every=10)
    assert drawn["renderer"] in ("vmas", "matplotlib") and (tmp_path / "x.gif").exists()
