"""logger=csv / tensorboard / wandb: every metric of metrics.json, under the same names, read back."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest

import hmarl.run.loggers
from hmarl.run.loggers import WandbLogger, logger_names
from tests.test_run_integrity import results, run_json, run_sacred  # noqa: F401 - results is a fixture


def sacred_metrics(folder) -> dict[str, list[tuple[int, float]]]:
    """metrics.json as name -> [(step, value)]."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return {name: list(zip(m["steps"], m["values"])) for name, m in metrics.items()}


def test_tensorboard_and_csv_get_every_metric_of_metrics_json(results, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_sacred(tmp_path, logger="[csv, tensorboard]", eval_interval=80)
    folder = results / "1"
    expected = sacred_metrics(folder)
    assert {"train/return", "eval/return", "perf/env_steps_per_s", "level0/ppo/pg_loss"} <= set(expected)

    events = EventAccumulator(str(folder))  # the event file sits in the run's folder
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():
        read = [(event.step, event.value) for event in events.Scalars(name)]
        assert [step for step, _ in read] == [step for step, _ in points]
        assert [value for _, value in read] == pytest.approx([value for _, value in points], rel=1e-6)

    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    from_csv: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        from_csv.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    assert from_csv == expected  # exact: the csv keeps every digit
    assert json.loads((folder / "info.json").read_text())["log_dir"] == str(folder)


def test_log_dir_puts_the_loggers_files_elsewhere(results, tmp_path):  # noqa: F811
    run_sacred(tmp_path, logger="csv", log_dir=str(tmp_path / "logs" / "mine"))
    assert (tmp_path / "logs" / "mine" / "metrics.csv").exists()
    assert not (results / "1" / "metrics.csv").exists()


def test_an_unknown_logger_is_one_line_before_training(results, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit) as stop:
        run_sacred(tmp_path, logger="tensorbord")
    assert str(stop.value) == ("hmarl: unknown logger 'tensorbord'; available: csv, tensorboard, wandb "
                               "(logger=NAME or logger=[NAME,NAME])")
    assert not (results / "1").exists()  # refused before sacred made a run folder: nothing trained


@pytest.mark.parametrize("value, names", [
    ("", []), ("tensorboard", ["tensorboard"]), ("csv,tensorboard", ["csv", "tensorboard"]),
    ("[csv, tensorboard]", ["csv", "tensorboard"]), ("['csv','csv']", ["csv"]), (["wandb", "csv"], ["wandb", "csv"]),
])
def test_logger_accepts_a_name_or_a_list(value, names, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # as if every package were installed
    assert logger_names(value) == names


def test_a_logger_without_its_package_says_how_to_install_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else find_spec(name))
    with pytest.raises(ValueError, match=r"^logger=wandb needs the wandb package: pip install wandb, "
                                         r"or pip install -e '\.\[wandb\]'$"):
        logger_names("csv,wandb")


def test_wandb_offline_gets_the_metrics_of_metrics_json(results, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summaries = []

    class Spy(WandbLogger):
        def close(self, ok=True):
            summaries.append(dict(self.run.summary))  # what wandb holds before it finishes
            super().close(ok)

    monkeypatch.setitem(hmarl.run.loggers.LOGGERS, "wandb", Spy)
    run_sacred(tmp_path, logger="wandb", eval_interval=80)
    folder = results / "1"
    assert run_json(results)["status"] == "COMPLETED"
    assert list((folder / "wandb").glob("offline-run-*/run-*.wandb"))  # wandb sync uploads it later
    expected = sacred_metrics(folder)
    # wandb commits a step's row when the next step begins: the summary holds the first step's values
    first = {name: points[0][1] for name, points in expected.items() if points[0][0] == 80}
    assert summaries[0]["_step"] == 80
    assert {name: summaries[0][name] for name in first} == pytest.approx(first)
