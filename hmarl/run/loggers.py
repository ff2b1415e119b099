"""Metric loggers beside sacred's observers: TensorBoard, Weights & Biases and CSV.

``logger=tensorboard`` (or a list, ``logger=[csv,tensorboard]``) sends every metric the
runner records to each logger under the names of ``metrics.json`` (``train/return``,
``eval/return``, ``level{l}/{learner}/{loss}``, ``perf/env_steps_per_s``, ...), with the
env step as its step. The loggers write into the run's folder (``results/<id>/``) or
``log_dir``.

A logger has ``log(name, value, step)``, ``flush()`` (called after every iteration; a
failed write raises there, so a run stops instead of training on without its records) and
``close(ok)``.
"""
from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path
from typing import Any, Protocol

from hmarl.run.observer import check_records


class MetricLogger(Protocol):
    """Where the runner sends each metric."""

    def log(self, name: str, value: float, step: int) -> None:
        """Record ``value`` of metric ``name`` at env step ``step``."""

    def flush(self) -> None:
        """Make what was logged durable; raise ``OSError`` if it could not be written."""

    def close(self, ok: bool = True) -> None:
        """Flush and release the logger (``ok``: the run succeeded)."""


class SacredLogger:
    """sacred's metric log (``_run.log_scalar``: ``metrics.json`` and the other observers).

    sacred writes metrics from a heartbeat thread and only logs a warning when that fails;
    :meth:`flush` turns such a failure into an error of the run, and :meth:`close` does the
    last write while the run can still fail.
    """

    def __init__(self, run):
        self.run = run

    def log(self, name: str, value: float, step: int) -> None:
        self.run.log_scalar(name, value, step)

    def flush(self) -> None:
        check_records(self.run)

    def close(self, ok: bool = True) -> None:
        """Write every metric logged so far now, and fail if any record was not written.

        Otherwise sacred's last metrics write comes after the main function returns, where a
        failure only gets a warning and the run ends COMPLETED. Stopping the heartbeat thread
        does that write (waited for to the end: sacred waits 2 s at most); a new heartbeat
        then records the run's last output as before. These are private parts of sacred,
        pinned at 0.8.7; ``tests/test_run_integrity.py`` pins the behaviour.
        """
        if not ok:
            return
        self.run._stop_heartbeat()
        if self.run._heartbeat is not None:
            self.run._heartbeat.join()
        check_records(self.run)
        self.run._start_heartbeat()


class CsvLogger:
    """``metrics.csv``: one row per value, columns ``name,step,value`` (any set of metrics fits)."""

    def __init__(self, folder: Path, **_: Any):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.csv"
        self.file = open(self.path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["name", "step", "value"])

    def log(self, name: str, value: float, step: int) -> None:
        self.writer.writerow([name, step, repr(float(value))])

    def flush(self) -> None:
        self.file.flush()

    def close(self, ok: bool = True) -> None:
        self.file.close()


class TensorBoardLogger:
    """TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``) in the folder:
    ``tensorboard --logdir results`` shows every run by its folder."""

    def __init__(self, folder: Path, **_: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()  # re-raises what the writer thread failed to write

    def close(self, ok: bool = True) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run (project ``wandb_project``, named after the config, grouped by
    algorithm and env so that seeds sit together); its files go under ``<folder>/wandb/``.
    ``WANDB_MODE=offline`` keeps it on disk (``wandb sync`` uploads it later)."""

    def __init__(self, folder: Path, project: str = "hmarl", name: str | None = None, group: str | None = None,
                 config: dict[str, Any] | None = None):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, group=group, dir=str(folder), config=config,
                              reinit="create_new")

    def log(self, name: str, value: float, step: int) -> None:
        self.run.log({name: value}, step=step)

    def flush(self) -> None:
        """wandb writes in its own process and reports its own errors."""

    def close(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)


LOGGERS = {"csv": CsvLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger}

#: The package each logger needs, and where it comes from.
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard, or pip install -e '.[tensorboard]'"),
            "wandb": ("wandb", "pip install wandb, or pip install -e '.[wandb]'")}


def logger_names(value: str | list | tuple) -> list[str]:
    """The loggers a ``logger`` config value asks for, checked: ``"tensorboard"``,
    ``"csv,tensorboard"``, ``"[csv, tensorboard]"`` (as sacred's command line passes a list
    it cannot parse) or a list. Unknown names and missing packages fail with one line."""
    items = re.split(r"[\s,\[\]'\"]+", value) if isinstance(value, str) else [str(v) for v in value]
    names = list(dict.fromkeys(item for item in items if item))
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"unknown logger {name!r}; available: {', '.join(LOGGERS)} "
                             f"(logger=NAME or logger=[NAME,NAME])")
        package, install = PACKAGES.get(name, (None, None))
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(f"logger={name} needs the {package} package: {install}")
    return names


def open_loggers(names: list[str], folder: Path, **options: Any) -> list[MetricLogger]:
    """The loggers ``names`` writing into ``folder``; ``options`` (``project``, ``name``,
    ``group``, ``config``) go to the loggers that take them. A logger that fails to open
    closes those opened before it; unless its files could not be written (``OSError``), its
    failure becomes a ``ValueError`` naming it (e.g. wandb without an account)."""
    opened: list[MetricLogger] = []
    for name in names:
        try:
            opened.append(LOGGERS[name](folder, **options))
        except BaseException as error:
            for logger in opened:
                logger.close(ok=False)
            if isinstance(error, OSError) or not isinstance(error, Exception):
                raise
            raise ValueError(f"logger={name} could not start: {error}") from error
    return opened
