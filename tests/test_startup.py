"""Start-up: the command lines that only answer import only what they need.

``python -m hmarl --help``, ``print_config`` and a refused config answer without importing
torch (about 1.2 s on a small machine), torch-geometric (1.4 s more) or any env backend:
the package ``__init__`` files, the learner, family and env registries and the experiment
module import those where they are used (:mod:`hmarl.lazy`). What each command imported
is read from ``python -X importtime`` in a subprocess; nothing here measures time (the
start-up table of ``python -m hmarl.studies.bench --only startup`` does).
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"torch_geometric", "vmas", "ray", "matplotlib", "pettingzoo", "mpe2", "pandas"}
"""Imported only by what uses them: graph learners, an env's module, sweeps on ray, plots, statistics
(pandas, which sacred would import for itself: ``hmarl.run`` hides it from sacred's import)."""


def imported(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime ARGS`` on this checkout; its result and the top-level
    packages it imported."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path})
    names = re.findall(r"^import time:\s*\d+ \|\s*\d+ \|\s*([\w.]+)\s*$", done.stderr, re.MULTILINE)
    assert names, done.stderr[-2000:]
    return done, {name.split(".")[0] for name in names}


def assert_none_of(forbidden: set[str], modules: set[str]) -> None:
    leaked = sorted(forbidden & modules)
    assert not leaked, f"imported {', '.join(leaked)}"


def messages(done: subprocess.CompletedProcess) -> str:
    """stderr without the import-time lines."""
    return "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))


def test_help_imports_neither_torch_nor_a_backend(tmp_path):
    done, modules = imported("-m", "hmarl", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "Usage:" in done.stdout and "print_config" in done.stdout, messages(done)
    assert_none_of(BACKENDS | {"torch"}, modules)


def test_print_config_imports_neither_torch_nor_a_backend(tmp_path):
    done, modules = imported("-m", "hmarl", "print_config", "with", "mappo", "vmas_balance", cwd=tmp_path)
    assert done.returncode == 0 and "algorithm = 'mappo'" in done.stdout, messages(done)
    assert_none_of(BACKENDS | {"torch"}, modules)


def test_a_refused_config_answers_before_importing_torch(tmp_path):
    done, modules = imported("-m", "hmarl", "-u", "with", "mappo", "vmas_balance", "num_envs=0", cwd=tmp_path)
    assert done.returncode != 0 and messages(done).strip() == "hmarl: num_envs must be positive, got 0", messages(done)
    assert_none_of(BACKENDS | {"torch"}, modules)


def test_pandas_imports_after_sacred_was_imported_without_it(tmp_path):
    code = ("import sys, hmarl.run.experiment, sacred.optional\nassert 'pandas' not in sys.modules\n"
            "assert not sacred.optional.has_pandas\nimport pandas\nprint(pandas.DataFrame({'a': [1]}).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "(1, 1)", done.stderr[-2000:]


def test_registries_know_every_name_before_importing_it(tmp_path):
    code = ("import sys\nfrom hmarl.algorithms import FAMILIES, LEARNERS\nfrom hmarl.envs import ENVS\n"
            "import hmarl, hmarl.nn\n"
            "assert 'graph_ppo' in LEARNERS and 'himpo' in FAMILIES and 'vmas_balance' in ENVS\n"
            "print(sorted(LEARNERS), sorted(FAMILIES), sorted(ENVS), dir(hmarl))\n")
    done, modules = imported("-c", code, cwd=tmp_path)
    assert done.returncode == 0, messages(done)
    assert_none_of(BACKENDS | {"torch"}, modules)


def test_the_shipped_env_table_matches_what_the_modules_register():
    import importlib

    from hmarl.envs import ENVS
    from hmarl.envs.registry import BUILTIN

    for name, module in BUILTIN.items():
        assert name in ENVS and ENVS[name].__module__ == module, name
    for module in set(BUILTIN.values()):
        importlib.import_module(module)
    registered = {name for name in ENVS if ENVS[name].__module__ in BUILTIN.values()}
    assert registered == set(BUILTIN), "a shipped env module registers an env envs.registry.BUILTIN does not name"


def test_a_second_registration_of_a_shipped_name_is_refused():
    from hmarl.envs import register

    with pytest.raises(ValueError, match="registered twice"):
        register("point_maze")(lambda **kwargs: None)


def test_learners_and_families_load_on_lookup():
    from hmarl.algorithms import FAMILIES, LEARNERS, Family
    from hmarl.learner import Learner

    for name in LEARNERS:
        assert issubclass(LEARNERS[name], Learner), name
    for name in FAMILIES:
        family = FAMILIES[name]
        assert isinstance(family, Family) and callable(family.build), name
        assert family.options is None or dataclasses.is_dataclass(family.options), name


def test_the_package_exports_resolve():
    import hmarl
    import hmarl.nn
    from hmarl import Level
    from hmarl.level import Level as Defined

    assert Level is Defined
    for package in (hmarl, hmarl.nn):
        assert set(package.__all__) <= set(dir(package))
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        hmarl.nothing  # noqa: B018


def test_checking_a_run_imports_only_the_learners_it_names(tmp_path):
    # The unused-options check looked up every registered learner, graph_ppo among them, so an
    # ALMA run imported torch-geometric (about 2 s here) for a check that never needed it.
    code = ("import sys\nfrom hmarl.run.experiment import check_config, CONFIG_DIR, load_yaml\n"
            "config = {**load_yaml(CONFIG_DIR / 'default.yaml'), **load_yaml(CONFIG_DIR / 'algorithms' / 'alma.yaml'),"
            " **load_yaml(CONFIG_DIR / 'envs' / 'savethecity.yaml')}\ncheck_config(config)\n")
    done, modules = imported("-c", code, cwd=tmp_path)
    assert done.returncode == 0, messages(done)
    assert_none_of({"torch_geometric"}, modules)
