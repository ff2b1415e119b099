"""The library refuses what the command line refuses, with the same line, before any training.

Every bad config of the command line's list (``tests/test_cli_inputs.py``) is merged as sacred
merges it, then given to the library: ``RunConfig.from_config`` and ``Trainer``. Each must stop
there with the ValueError whose message the command line prints after ``hmarl: ``
(``check_config``'s), and which names what to change (the case's pattern); the warning case
must warn once, as the command line does.
"""
from __future__ import annotations

import re
import warnings

import pytest
from sacred.arg_parser import _convert_value
from sacred.utils import set_by_dotted_path

from hmarl.run.experiment import RunConfig, Trainer, UnusedOptions, check_config, ex
from tests.test_cli_inputs import CASES, Case

#: cases about the command line itself (config files, -F), which the library has no counterpart of
COMMAND_LINE_ONLY = {"malformed YAML file", "malformed YAML on HMARL_CONFIG_PATH", "list-shaped YAML",
                     "two algorithm configs", "unwritable -F folder"}
CONFIG_CASES = [case for case in CASES if case.tool == "hmarl" and case.name not in COMMAND_LINE_ONLY]


def merged_config(case: Case) -> dict:
    """The case's config as the command line gets it: sacred merges the named configs after
    ``with`` over the default config, then each ``key=value`` (read as sacred reads it)."""
    tokens = case.args[case.args.index("with") + 1:]
    tokens = tokens[:next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))]
    names = [t for t in tokens if "=" not in t]
    # print_config: sacred's merge without the run's config hook (the command line's check)
    config = dict(ex._create_run("print_config", named_configs=names).config)
    for token in tokens:
        if "=" in token:
            key, value = token.split("=", 1)
            set_by_dotted_path(config, key, _convert_value(value))
    return config


def test_every_command_line_case_is_sorted():
    """A new case of the command line's list is either a config the library must refuse too, or named here."""
    assert {case.name for case in CASES if case.tool == "hmarl"} - COMMAND_LINE_ONLY == \
        {case.name for case in CONFIG_CASES}
    assert COMMAND_LINE_ONLY <= {case.name for case in CASES}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[case.name for case in CONFIG_CASES])
def test_library_refuses_what_the_command_line_refuses(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    config = merged_config(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_config(dict(config), warn=lambda warning: None)
        except ValueError as error:
            command_line = str(error)
        else:
            command_line = None
        library = None
        try:
            Trainer(RunConfig.from_config(dict(config)), log=lambda *entry: None)
        except ValueError as error:
            library = str(error)
    if case.warning:
        assert command_line is None and library is None
        unused = [str(w.message) for w in caught if issubclass(w.category, UnusedOptions)]
        assert len(unused) == 1 and re.search(case.names, unused[0]), unused
        return
    assert command_line is not None, f"check_config accepted {case.name}"
    assert library == command_line, f"the library said {library!r}, the command line {command_line!r}"
    assert re.search(case.names, library) and "\n" not in library


def test_trainer_refuses_before_any_training(tmp_path, monkeypatch):
    """The refusal comes from building: no rollout, no update (``fit`` is never reached)."""
    monkeypatch.chdir(tmp_path)
    case = next(case for case in CONFIG_CASES if case.name == "unknown eval_env_options")
    run = RunConfig.from_config(merged_config(case))  # the keys are fine; the eval env refuses
    with pytest.raises(ValueError, match=r"^eval_env_options: vmas_balance has no option wind"):
        Trainer(run)


def test_from_config_checks_the_logger_names():
    config = merged_config(Case("logger", "hmarl", ["with", "ippo", "vmas_balance", "logger=nope"], ""))
    with pytest.raises(ValueError, match=r"unknown logger 'nope'"):
        RunConfig.from_config(config)
