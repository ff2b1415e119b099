"""A run's records are complete or the run is FAILED; interrupts and resumes say what happens;
every run records its model, code and versions. Runs go through sacred in this process."""
from __future__ import annotations

import datetime
import errno
import json
import logging
import math
import subprocess
from pathlib import Path

import pytest
import torch

import hmarl.run.experiment
import hmarl.run.observer
from hmarl.run.experiment import (RECORDED_PACKAGES, RunConfig, Trainer, TrainingDiverged, build, ex, git_state,
                              resume_command)
from hmarl.hierarchy import Hierarchy
from hmarl.run.observer import AtomicFileStorageObserver
from tests.test_systems import run_config

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_envs=4, rollout_steps=20, total_steps=160, eval_envs=2, max_steps=20, progress=False)


@pytest.fixture
def results(tmp_path):
    """The experiment observed by one atomic file observer under ``tmp_path/results``."""
    saved = list(ex.observers)
    ex.observers[:] = [AtomicFileStorageObserver(str(tmp_path / "results"))]
    yield tmp_path / "results"
    ex.observers[:] = saved


def run_sacred(tmp_path, algorithm="ippo", env="vmas_balance", **updates):
    """One tiny run through sacred (``ex.run``), checkpoints under ``tmp_path``."""
    config = {**TINY, "checkpoint_dir": str(tmp_path / "ckpt"), **updates}
    return ex.run(named_configs=[algorithm, env], config_updates=config, options={"--capture": "sys"})


def run_json(results: Path) -> dict:
    return json.loads((results / "1" / "run.json").read_text())


def disk_full_for(name: str, monkeypatch, module=hmarl.run.observer):
    """Make ``module``'s atomic writer fail with ENOSPC for files called ``name``."""
    write = module.write_atomically

    def failing(path, writer):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, writer)

    monkeypatch.setattr(module, "write_atomically", failing)


@pytest.mark.parametrize("name", ["metrics.json", "model.pt"])
def test_a_record_that_cannot_be_written_fails_the_run_in_one_line(name, results, tmp_path, monkeypatch):
    """Pins that sacred's swallowed observer errors (metrics from its heartbeat thread, artifacts)
    end the run FAILED with the file and the reason, never COMPLETED with records missing."""
    disk_full_for(name, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        run_sacred(tmp_path)
    line = str(stop.value)
    assert line.startswith("hmarl: could not write the run's records (") and "\n" not in line
    assert f"{name}: No space left on device" in line and "free disk space" in line
    record = run_json(results)
    assert record["status"] == "FAILED" and record["fail_trace"][-1].startswith("SystemExit: hmarl: could not write")


def test_a_checkpoint_that_cannot_be_written_fails_the_run_in_one_line(results, tmp_path, monkeypatch):
    disk_full_for("checkpoint.pt", monkeypatch, module=hmarl.run.experiment)
    with pytest.raises(SystemExit) as stop:
        run_sacred(tmp_path, checkpoint_interval=80)
    checkpoint = RunConfig.from_config(ex.current_run.config).checkpoint_path() / "checkpoint.pt"
    assert str(stop.value) == (f"hmarl: could not write {checkpoint}: No space left on device; "
                               f"free disk space or give the run a writable folder")
    assert run_json(results)["status"] == "FAILED"


def test_an_unwritable_results_folder_stops_the_run_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")  # a results folder inside a plain file cannot be made
    saved = list(ex.observers)
    ex.observers[:] = [AtomicFileStorageObserver(str(tmp_path / "file" / "results"))]
    try:
        with pytest.raises(SystemExit) as stop:
            run_sacred(tmp_path)
    finally:
        ex.observers[:] = saved
    assert str(stop.value).startswith("hmarl: could not write the run's records (")
    assert "Not a directory" in str(stop.value) and "\n" not in str(stop.value)


def test_the_observer_never_marks_completed_after_a_failed_write(tmp_path, monkeypatch):
    """A write that fails after the main function returned (sacred's last heartbeat) still leaves
    the run FAILED on disk; the command line exits with it."""
    observer = AtomicFileStorageObserver(str(tmp_path))
    observer.dir, observer.run_entry = str(tmp_path), {"status": "RUNNING"}
    disk_full_for("metrics.json", monkeypatch)
    with pytest.raises(OSError):
        observer.log_metrics({}, {})
    observer.completed_event(datetime.datetime.now(), 1.0)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "FAILED" and "metrics.json: No space left on device" in record["fail_trace"][0]


def test_a_non_finite_loss_stops_training_with_the_step_and_a_hint(tmp_path, monkeypatch):
    update = Hierarchy.update

    def diverging(self, progress):
        metrics = update(self, progress)
        return {**metrics, "level0/ppo/pg_loss": torch.tensor(math.nan)} if progress > 0 else metrics

    monkeypatch.setattr(Hierarchy, "update", diverging)
    trainer = Trainer(run_config("ippo", "vmas_balance", tmp_path, **TINY))
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    assert str(error.value) == ("level0/ppo/pg_loss is nan in the update at step 160 of 160: lower the learning "
                                "rate (ppo.learning_rate) or check the env's rewards")
    assert not [entry for entry in trainer.history if entry[2] == 160]  # nothing of the diverged step is logged


def test_a_non_finite_loss_fails_the_sacred_run(results, tmp_path, monkeypatch):
    monkeypatch.setattr(Hierarchy, "update", lambda self, progress: {"level1/mappo/v_loss": math.inf})
    with pytest.raises(SystemExit, match=r"^hmarl: level1/mappo/v_loss is inf in the update at step 80 of 160"):
        run_sacred(tmp_path)
    assert run_json(results)["status"] == "FAILED"


def test_stray_checkpoint_temp_files_are_removed_on_the_next_start(tmp_path, caplog):
    trainer = Trainer(run_config("ippo", "vmas_balance", tmp_path, checkpoint_interval=80, **TINY))
    trainer.path.mkdir(parents=True)
    stray = trainer.path / ".checkpoint.pt.k2j4x.tmp"  # as hmarl.run.files.write_atomically names them
    stray.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.INFO, logger="hmarl"):
        trainer.fit()
    assert not stray.exists() and (trainer.path / "checkpoint.pt").exists()
    assert f"removed 1 temporary file(s) of an interrupted checkpoint write from {trainer.path}" in caplog.text


def interrupt_on_update(monkeypatch, number: int):
    """Ctrl-C during the ``number``-th update."""
    update, calls = Hierarchy.update, []

    def interrupted(self, progress):
        calls.append(progress)
        if len(calls) == number:
            raise KeyboardInterrupt
        return update(self, progress)

    monkeypatch.setattr(Hierarchy, "update", interrupted)


def test_an_interrupt_prints_the_command_that_resumes(results, tmp_path, monkeypatch, caplog):
    interrupt_on_update(monkeypatch, 4)
    with caplog.at_level(logging.INFO, logger="hmarl"), pytest.raises(KeyboardInterrupt):
        run_sacred(tmp_path, total_steps=320, checkpoint_interval=160)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted")]
    assert line == [f"interrupted at step 240 of 320; to resume from the checkpoint at step 160: python -m hmarl with "
                    f"ippo vmas_balance checkpoint_dir={tmp_path / 'ckpt'} checkpoint_interval=160 eval_envs=2 "
                    f"max_steps=20 num_envs=4 progress=False rollout_steps=20 total_steps=320 resume=True "
                    f"--capture=sys"]
    assert run_json(results)["status"] == "INTERRUPTED"

    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hmarl"):
        run = run_sacred(tmp_path, total_steps=320, checkpoint_interval=160, resume=True)
    assert run.status == "COMPLETED"
    assert "resuming from step 160 of 320 (" in caplog.text


def test_an_interrupt_without_checkpoints_says_nothing_was_saved(tmp_path, monkeypatch, caplog):
    interrupt_on_update(monkeypatch, 2)
    with caplog.at_level(logging.INFO, logger="hmarl"), pytest.raises(KeyboardInterrupt):
        run_sacred(tmp_path)
    assert ("interrupted at step 80 of 160; nothing was saved (checkpoint_interval=0), so this starts over: "
            "python -m hmarl with ippo vmas_balance") in caplog.text


def test_resume_says_whether_it_found_a_checkpoint(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hmarl"):
        Trainer(run_config("ippo", "vmas_balance", tmp_path, resume=True, checkpoint_interval=80, **TINY)).fit()
    assert "no checkpoint for this config: starting fresh (none at " in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hmarl"):
        Trainer(run_config("ippo", "vmas_balance", tmp_path, resume=True, **TINY)).fit()
    ours = [r for r in caplog.records if r.name == "hmarl"]
    assert [r.levelname for r in ours] == ["WARNING"]
    assert ours[0].getMessage().startswith("resume=True, but with checkpoint_interval=0 this config saves "
                                                     "no checkpoints: nothing to resume from (starting fresh)")


def test_resume_command_from_python_names_the_configs_and_updates():
    meta = {"named_configs": ["tag_2ppo", "mpe_simple_spread"], "options": {},
            "config_updates": {"seed": 3, "ppo": {"learning_rate": 0.001}, "resume": False, "device": "cpu"}}
    assert resume_command(meta) == ("python -m hmarl with tag_2ppo mpe_simple_spread device=cpu "
                                    "ppo.learning_rate=0.001 seed=3 resume=True")


def test_resume_command_from_the_command_line_keeps_its_words_and_flags():
    options = {"COMMAND": None, "UPDATE": ["tag_2ppo", "vmas_balance", "resume=False", "ppo.learning_rate=3e-4"],
               "with": True, "--file_storage": "elsewhere", "--debug": False, "--name": None}
    assert resume_command({"options": options}) == ("python -m hmarl with tag_2ppo vmas_balance ppo.learning_rate=3e-4 "
                                                    "resume=True --file_storage=elsewhere")


def test_ctrl_c_on_the_command_line_exits_130_without_a_traceback(monkeypatch):
    import hmarl.__main__

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "run_commandline", interrupted)
    monkeypatch.setattr(ex, "observers", [])
    with pytest.raises(SystemExit) as stop:
        hmarl.__main__.main(["hmarl", "with", "ippo", "vmas_balance", "-u"])
    assert stop.value.code == 130


def test_every_run_saves_its_model_and_records_its_code_and_versions(results, tmp_path):
    run_sacred(tmp_path)
    record, folder = run_json(results), results / "1"
    assert "model.pt" in record["artifacts"]
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert saved["hmarl_version"] == record["host"]["hmarl"]["version"] and saved["env_steps"] == 160
    # what python -m hmarl.run.evaluate does: the hierarchy rebuilt from config.json takes the modules
    config = json.loads((folder / "config.json").read_text())
    hierarchy = build(RunConfig.from_config(config))
    hierarchy.load_state_dict(saved["modules"])
    assert all(torch.equal(value, saved["modules"][key]) for key, value in hierarchy.state_dict().items())

    dependencies = dict(d.split("==") for d in record["experiment"]["dependencies"])
    assert set(RECORDED_PACKAGES) <= set(dependencies) and "<unknown>" not in dependencies.values()
    sources = dict(record["experiment"]["sources"])
    for code in ("hmarl/algorithms/ppo.py", "hmarl/envs/vmas.py", "hmarl/level.py", "hmarl/run/experiment.py"):
        relative = next(name for name in sources if (ROOT / "hmarl" / name).resolve() == (ROOT / code).resolve())
        assert (results / sources[relative]).read_bytes() == (ROOT / code).read_bytes()
    git = record["host"]["hmarl"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert git["git_commit"] == head.strip() and isinstance(git["git_dirty"], bool)
        assert saved["git_commit"] == git["git_commit"]


def test_git_state_is_none_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) is None
    assert git_state(tmp_path / "missing") is None
