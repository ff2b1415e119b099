"""Sweeps: expansion, bad files, skip-finished, failure isolation, resume, atomic writes, Ray."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hmarl import sweep as sweeps
from hmarl.observer import AtomicFileStorageObserver

TINY = {"num_envs": 2, "rollout_steps": 10, "total_steps": 40, "eval_envs": 2, "eval_interval": 0,
        "max_steps": 10, "n_agents": 2}


def write_sweep(tmp_path: Path, **keys) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "algorithms": ["ippo"], "envs": ["vmas_balance"],
                                    "seeds": 1, "config": TINY, **keys}))
    return path


def statuses(outcomes) -> dict[str, str]:
    return {o["run"]: o["status"] for o in outcomes}


def test_expansion_crosses_algorithms_envs_grid_and_seeds_minus_exclusions(tmp_path):
    sweep = sweeps.load_sweep(write_sweep(
        tmp_path, algorithms=["ippo", "mappo"], envs=["vmas_balance", "vmas_simple_spread"], seeds=[3, 4],
        grid={"ppo.ent_coef": [0.0, 0.01]}, per_env={"vmas_simple_spread": {"env_options": {"subtasks": True}}},
        exclude=[{"algorithm": "mappo", "env": "vmas_balance"}],
        quick={"seeds": 1, "config": {"total_steps": 20}}))
    runs = sweeps.expand(sweep, tmp_path / "results")
    assert len(runs) == 2 * 2 * 2 * 2 - 2 * 2  # mappo on balance left out (2 variants x 2 seeds)
    names = [run.name for run in runs]
    assert "vmas_balance/ippo[ppo.ent_coef=0.01]/seed4" in names
    assert not any(name.startswith("vmas_balance/mappo") for name in names)
    spread = next(r for r in runs if r.env == "vmas_simple_spread" and r.variant == "ppo.ent_coef=0.0")
    assert spread.updates["env_options"] == {"subtasks": True} and spread.updates["ppo.ent_coef"] == 0.0
    assert spread.updates["seed"] == spread.seed and spread.updates["resume"] is True
    assert Path(spread.directory) == tmp_path / "results" / "tiny" / "vmas_simple_spread" / \
        "ippo[ppo.ent_coef=0.0]" / f"seed{spread.seed}"
    quick = sweeps.expand(sweep, tmp_path / "results", quick=True)
    assert {r.seed for r in quick} == {0} and all(r.updates["total_steps"] == 20 for r in quick)
    assert all("tiny_quick" in r.directory for r in quick)


@pytest.mark.parametrize("keys, message", [
    ({"colour": "red"}, r"unknown option\(s\) colour; known options: name, algorithms, envs"),
    ({"grid": {"cg_lambda": []}}, r"grid.cg_lambda must be a non-empty list"),
    ({"algorithms": ["ippo", "ppo3"]}, r"unknown algorithms ppo3; available: .*ippo"),
    ({"envs": []}, r"envs is empty; name at least one of: .*vmas_balance"),
    ({"per_env": {"lbf": {}}}, r"per_env names 'lbf', which is not among envs"),
    ({"exclude": [{"algo": "ippo"}]}, r"exclude entries are mappings of algorithm/env/seed/variant"),
    ({"quick": {"budget": 1}}, r"quick: unknown option\(s\) budget"),
    ({"seeds": []}, r"seeds is empty"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, keys, message):
    with pytest.raises(ValueError, match=message):
        sweeps.load_sweep(write_sweep(tmp_path, **keys))


def test_an_impossible_config_stops_the_sweep_before_any_run(tmp_path):
    sweep = sweeps.load_sweep(write_sweep(tmp_path, config={**TINY, "total_steps": 5}))
    with pytest.raises(ValueError, match=r"vmas_balance/ippo/seed0: total_steps=5 is less than one rollout"):
        sweeps.run_sweep(sweep, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_finished_runs_are_skipped_and_a_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    sweep = sweeps.load_sweep(write_sweep(tmp_path, seeds=2, grid={"n_agents": [2, "two"]}))
    monkeypatch.setattr(sweeps, "check", lambda runs: None)  # let the bad variant reach its own process
    first = sweeps.run_sweep(sweep, tmp_path / "results", workers=2)
    assert statuses(first) == {"vmas_balance/ippo[n_agents=2]/seed0": "COMPLETED",
                               "vmas_balance/ippo[n_agents=2]/seed1": "COMPLETED",
                               "vmas_balance/ippo[n_agents=two]/seed0": "FAILED",
                               "vmas_balance/ippo[n_agents=two]/seed1": "FAILED"}
    failed = next(o for o in first if o["status"] == "FAILED")
    assert "n_agents" in failed["error"]
    summary = json.loads((tmp_path / "results" / "tiny" / "sweep.json").read_text())
    assert summary["runs"] == 4 and statuses(summary["outcomes"]) == statuses(first)

    again = sweeps.run_sweep(sweep, tmp_path / "results", workers=2)
    assert statuses(again)["vmas_balance/ippo[n_agents=2]/seed0"] == "SKIPPED"
    assert statuses(again)["vmas_balance/ippo[n_agents=two]/seed1"] == "FAILED"  # retried, fails again


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import hmarl.experiment

    sweep = sweeps.load_sweep(write_sweep(tmp_path, config={**TINY, "total_steps": 80, "checkpoint_interval": 20}))
    (run,) = sweeps.expand(sweep, tmp_path / "results")
    save = hmarl.experiment.Trainer.save

    def save_then_die(self, iteration):
        save(self, iteration)
        if iteration == 2:
            raise KeyboardInterrupt  # killed after the checkpoint at 40 env steps

    monkeypatch.setattr(hmarl.experiment.Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sweeps.execute(run)
    assert not sweeps.completed(run.directory)

    outcome = sweeps.run_isolated(run)
    assert outcome["status"] == "COMPLETED" and outcome["resumed"]
    runs = {json.loads(p.read_text())["status"]: p.parent for p in Path(run.directory).glob("*/run.json")}
    assert set(runs) == {"INTERRUPTED", "COMPLETED"}
    metrics = json.loads((runs["COMPLETED"] / "metrics.json").read_text())
    assert metrics["perf/env_steps_per_s"]["steps"] == [20, 40, 60, 80]  # the history before the kill included


def test_the_observer_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    observer = AtomicFileStorageObserver(str(tmp_path))
    observer.dir = str(tmp_path)
    observer.save_json({"status": "RUNNING"}, "run.json")

    def dump_half(obj, f, **kwargs):
        f.write('{"status": "COMPL')
        raise OSError("disk full")

    monkeypatch.setattr("hmarl.observer.json.dump", dump_half)
    with pytest.raises(OSError, match="disk full"):
        observer.save_json({"status": "COMPLETED"}, "run.json")
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "RUNNING"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_the_command_line_lists_runs_and_rejects_a_bad_file(tmp_path, capsys):
    sweeps.main([str(write_sweep(tmp_path, seeds=2)), "--list", "--results", str(tmp_path)])
    assert capsys.readouterr().out.split() == ["vmas_balance/ippo/seed0", "vmas_balance/ippo/seed1"]
    with pytest.raises(SystemExit, match="hmarl.sweep: .*unknown option"):
        sweeps.main([str(write_sweep(tmp_path, colour="red"))])


def test_the_ray_backend_runs_a_sweep_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweep = sweeps.load_sweep(write_sweep(tmp_path, seeds=2))
        outcomes = sweeps.run_sweep(sweep, tmp_path / "results", backend="ray")
    finally:
        ray.shutdown()
    assert statuses(outcomes) == {"vmas_balance/ippo/seed0": "COMPLETED", "vmas_balance/ippo/seed1": "COMPLETED"}
    assert all(sweeps.completed(run.directory) for run in sweeps.expand(sweep, tmp_path / "results"))


def test_shipped_sweeps_build_every_quick_run():
    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"tag_paper", "himpo_paper", "hrl_cg_paper", "alma_paper"}
    for path in paths:
        sweep = sweeps.load_sweep(path)
        quick = sweeps.expand(sweep, "results", quick=True)
        assert 0 < len(quick) < len(sweeps.expand(sweep, "results"))
        sweeps.check(quick)  # every quick config and hierarchy builds


def test_run_spec_round_trips_through_json():
    run = sweeps.RunSpec("ippo", "vmas_balance", 0, "", {"seed": 0}, "results/x")
    assert sweeps.RunSpec(**json.loads(json.dumps(dataclasses.asdict(run)))) == run
