"""Sweeps: expansion, bad files, skip-finished, failure isolation, resume, atomic writes, Ray."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hmarl.studies import sweep as sweeps
from hmarl.run.experiment import RunConfig
from hmarl.run.observer import AtomicFileStorageObserver

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
    ({"seeds": []}, r"seeds must be a positive count or a list of distinct seeds"),
    ({"seeds": [1, 1]}, r"seeds must be a positive count or a list of distinct seeds, got \[1, 1\]"),
    ({"algorithms": ["ippo", "ippo"]}, r"algorithms lists a name twice"),
    ({"exclude": [{"algorithm": "mappo"}]}, r"exclude .* names an algorithm or env the sweep does not run"),
    ({"claims": [{"text": "t", "env": "vmas_balance", "better": "ippo", "than": "mappo"}]},
     r"claim 't' names mappo on vmas_balance, which the sweep does not run; its labels there: ippo"),
    ({"claims": [{"text": "t", "env": "vmas_balance", "beats": "ippo"}]}, r"unknown key 'beats'"),
    ({"name": "../x"}, r"name '../x' must be a plain folder name"),
    ({"name": "a/b"}, r"name 'a/b' must be a plain folder name"),
    ({"name": None}, r"name: expected a string"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, keys, message):
    with pytest.raises(ValueError, match=message):
        sweeps.load_sweep(write_sweep(tmp_path, **keys))


def test_an_empty_or_nameless_sweep_file_says_so(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match=r"empty.yaml is empty; a sweep file names at least name, algorithms"):
        sweeps.load_sweep(tmp_path / "empty.yaml")
    (tmp_path / "nameless.yaml").write_text("algorithms: [ippo]\nenvs: [vmas_balance]\n")
    with pytest.raises(ValueError, match=r"nameless.yaml: missing required option\(s\) name"):
        sweeps.load_sweep(tmp_path / "nameless.yaml")
    (tmp_path / "list.yaml").write_text("- name: x\n")
    with pytest.raises(ValueError, match=r"list.yaml: a config file is a mapping"):
        sweeps.load_sweep(tmp_path / "list.yaml")


@pytest.mark.parametrize("key", ["env_options", "eval_env_options"])
def test_unknown_env_options_stop_the_sweep_before_any_run(tmp_path, key):
    sweep = sweeps.load_sweep(write_sweep(tmp_path, config={**TINY, key: {"wind": 3}}))
    with pytest.raises(ValueError, match=rf"vmas_balance/ippo/seed0: {key}: vmas_balance has no option wind"):
        sweeps.run_sweep(sweep, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_an_impossible_config_stops_the_sweep_before_any_run(tmp_path):
    sweep = sweeps.load_sweep(write_sweep(tmp_path, config={**TINY, "total_steps": 5}))
    with pytest.raises(ValueError, match=r"vmas_balance/ippo/seed0: total_steps=5 is less than one rollout"):
        sweeps.run_sweep(sweep, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_finished_runs_are_skipped_and_a_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    sweep = sweeps.load_sweep(write_sweep(tmp_path, seeds=2, grid={"n_agents": [2, "two"]}))
    monkeypatch.setattr(sweeps, "prepare", lambda runs: runs)  # let the bad variant reach its own process
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
    import hmarl.run.experiment

    sweep = sweeps.load_sweep(write_sweep(tmp_path, config={**TINY, "total_steps": 80, "checkpoint_interval": 20}))
    (run,) = sweeps.prepare(sweeps.expand(sweep, tmp_path / "results"))
    save = hmarl.run.experiment.Trainer.save

    def save_then_die(self, iteration):
        save(self, iteration)
        if iteration == 2:
            raise KeyboardInterrupt  # killed after the checkpoint at 40 env steps

    monkeypatch.setattr(hmarl.run.experiment.Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sweeps.execute(run)
    assert sweeps.completed_config(run.directory) is None and Path(run.checkpoint).exists()

    outcome = sweeps.run_isolated(run)
    assert outcome["status"] == "COMPLETED" and outcome["resumed"]
    runs = {json.loads(p.read_text())["status"]: p.parent for p in Path(run.directory).glob("*/run.json")}
    assert set(runs) == {"INTERRUPTED", "COMPLETED"}
    before, after = (json.loads((runs[s] / "metrics.json").read_text())["perf/env_steps_per_s"]
                     for s in ("INTERRUPTED", "COMPLETED"))
    assert after["steps"] == [20, 40, 60, 80]
    assert after["values"][:2] == before["values"][:2]  # replayed from the checkpoint, not trained again
    assert not Path(run.directory, "checkpoints").exists()  # a completed run's checkpoints are removed


def test_the_observer_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    observer = AtomicFileStorageObserver(str(tmp_path))
    observer.dir = str(tmp_path)
    observer.save_json({"status": "RUNNING"}, "run.json")

    def dump_half(obj, f, **kwargs):
        f.write('{"status": "COMPL')
        raise OSError("disk full")

    monkeypatch.setattr("hmarl.run.observer.json.dump", dump_half)
    with pytest.raises(OSError, match="disk full"):
        observer.save_json({"status": "COMPLETED"}, "run.json")
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "RUNNING"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_the_command_line_lists_runs_and_rejects_a_bad_file(tmp_path, capsys):
    sweeps.main([str(write_sweep(tmp_path, seeds=2)), "--list", "--results", str(tmp_path)])
    assert capsys.readouterr().out.split() == ["vmas_balance/ippo/seed0", "vmas_balance/ippo/seed1"]
    with pytest.raises(SystemExit, match="hmarl.studies.sweep: .*unknown option"):
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
    assert all(sweeps.completed_config(run.directory) for run in sweeps.expand(sweep, tmp_path / "results"))


def test_shipped_sweeps_build_every_quick_run():
    paths = sorted((Path(__file__).resolve().parents[1] / "hmarl" / "configs" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"tag_paper", "himpo_paper", "hrl_cg_paper", "alma_paper"}
    for path in paths:
        sweep = sweeps.load_sweep(path)
        quick, full = sweeps.expand(sweep, "results", quick=True), sweeps.expand(sweep, "results")
        assert 0 < len(quick) < len(full)
        sweeps.prepare(quick)  # every quick config and hierarchy builds
        for run in {(r.algorithm, r.env, r.variant): r for r in full}.values():  # full configs are valid
            RunConfig.from_config(sweeps.sacred_config(run))


def test_run_spec_round_trips_through_json():
    run = sweeps.RunSpec("ippo", "vmas_balance", 0, "", {"seed": 0}, "results/x")
    assert sweeps.RunSpec(**json.loads(json.dumps(dataclasses.asdict(run)))) == run


def test_a_results_folder_of_another_config_is_refused(tmp_path):
    sweep = sweeps.load_sweep(write_sweep(tmp_path))
    assert [o["status"] for o in sweeps.run_sweep(sweep, tmp_path / "results")] == ["COMPLETED"]
    edited = sweeps.load_sweep(write_sweep(tmp_path, config={**TINY, "ppo.learning_rate": 0.1}))
    with pytest.raises(ValueError, match=r"holds a completed run of another config \(differs in ppo\)"):
        sweeps.run_sweep(edited, tmp_path / "results")


def test_an_interrupted_sweep_cancels_queued_runs_and_stops_running_ones(tmp_path):
    sweep = sweeps.load_sweep(write_sweep(tmp_path, seeds=3))

    def interrupt(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweeps.run_sweep(sweep, tmp_path / "results", workers=1, on_outcome=interrupt)
    done = [run for run in sweeps.expand(sweep, tmp_path / "results") if sweeps.completed_config(run.directory)]
    assert len(done) == 1 and not sweeps._children


def test_a_run_being_run_elsewhere_is_not_started_twice(tmp_path, capsys):
    import fcntl

    (run,) = sweeps.expand(sweeps.load_sweep(write_sweep(tmp_path)), tmp_path / "results")
    Path(run.directory).mkdir(parents=True)
    with open(Path(run.directory) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(SystemExit) as exit:
            sweeps.execute(run)
    assert exit.value.code == sweeps.BUSY
    assert "vmas_balance/ippo/seed0 is being run by another process" in capsys.readouterr().err


def test_the_completion_check_is_repeated_under_the_lock(tmp_path):
    """Pins that a run completed by another sweep after this one looked is not trained again."""
    sweep = sweeps.load_sweep(write_sweep(tmp_path))
    (run,) = sweeps.prepare(sweeps.expand(sweep, tmp_path / "results"))
    sweeps.execute(run)
    with pytest.raises(SystemExit) as exit:
        sweeps.execute(run, wait=True)  # as if it had looked before the first one finished
    assert exit.value.code == sweeps.DONE_ELSEWHERE
    assert len(list(Path(run.directory).glob("*/run.json"))) == 1


def test_two_sweeps_on_one_folder_split_the_runs_and_both_record_them(tmp_path):
    """Pins task 10: two concurrent sweeps of one file train every run once between them, and
    both leave a sweep.json with every run COMPLETED."""
    import subprocess
    import sys

    path = write_sweep(tmp_path, seeds=4)
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "hmarl.studies.sweep", str(path), "--results", str(tmp_path / "results"),
               "--workers", "1"]
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(2))
    outputs = [sweep.communicate(timeout=600) for sweep in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    runs = sweeps.expand(sweeps.load_sweep(path), tmp_path / "results")
    trained = [p for run in runs for p in Path(run.directory).glob("*/run.json")]
    assert len(trained) == 4  # one sacred run per run: none trained twice
    assert all(json.loads(p.read_text())["status"] == "COMPLETED" for p in trained)
    summary = json.loads((tmp_path / "results" / "tiny" / "sweep.json").read_text())
    assert summary["runs"] == 4 and set(statuses(summary["outcomes"]).values()) == {"COMPLETED"}
    completed = [int(out.split(": ")[-1].split(" completed")[0].split()[-1]) for out, _ in outputs]
    assert sum(completed) == 4  # each sweep's own count: together, every run once


def test_a_completed_run_keeps_its_model_and_loses_only_its_resume_state(tmp_path):
    run = sweeps.RunSpec("ippo", "vmas_balance", 0, "", {}, str(tmp_path / "run"),
                         checkpoint=str(tmp_path / "run" / "checkpoints" / "x" / "checkpoint.pt"))
    checkpoint = Path(run.checkpoint)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"resume state")
    (checkpoint.parent / ".checkpoint.pt.abc.tmp").write_bytes(b"half")
    model = tmp_path / "run" / "1" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    beside = checkpoint.parent / "model.pt"  # wherever a model is kept, it stays
    beside.write_bytes(b"weights")
    sweeps.remove_resume_state(run)
    assert not checkpoint.exists() and not (checkpoint.parent / ".checkpoint.pt.abc.tmp").exists()
    assert model.read_bytes() == beside.read_bytes() == b"weights"


def test_sweep_json_keeps_a_completion_over_a_later_skip(tmp_path):
    runs = sweeps.expand(sweeps.load_sweep(write_sweep(tmp_path, seeds=2)), tmp_path / "results")
    summary = tmp_path / "results" / "tiny" / "sweep.json"
    done = {"run": runs[0].name, "status": "COMPLETED", "seconds": 3.0, "resumed": False, "error": None}
    sweeps.record_outcome(summary, "tiny", False, runs, done)
    sweeps.record_outcome(summary, "tiny", False, runs, {**done, "status": "SKIPPED", "seconds": 0.0})
    sweeps.record_outcome(summary, "tiny", False, runs, {**done, "run": runs[1].name, "status": "FAILED"})
    recorded = json.loads(summary.read_text())
    assert statuses(recorded["outcomes"]) == {runs[0].name: "COMPLETED", runs[1].name: "FAILED"}
    assert recorded["outcomes"][0]["seconds"] == 3.0


def test_stopping_the_runs_in_flight_leaves_none_behind():
    """``stop_children`` returns with the set of runs in flight empty, whether or not the pool
    thread that started a run has discarded it yet (it had not, once, under load)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with sweeps._children_lock:
        sweeps._children.add(child)  # as run_isolated does; its thread would discard it only later
    try:
        sweeps.stop_children()
        assert child.poll() is not None and not sweeps._children
    finally:
        child.kill()
        sweeps._children.discard(child)
