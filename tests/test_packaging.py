"""The wheel: every shipped config inside it, one import name (``hmarl``), and an install outside
the checkout that finds its configs and runs from any directory."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(folder: Path) -> Path:
    """The wheel of a copy of the tree (so that the build leaves nothing in the checkout)."""
    source = folder / "source"
    shutil.copytree(ROOT / "hmarl", source / "hmarl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(folder / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    return next((folder / "dist").glob("hmarl-*.whl"))


def test_the_wheel_ships_every_config_under_one_import_name_and_runs_from_outside_the_tree(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "hmarl" / "configs").rglob("*.yaml"))
    assert shipped and not [path for path in shipped if path not in names]
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"hmarl"}  # no `algorithms` or `envs` to clash with other distributions

    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of any editable install of the checkout
    check = ("import hmarl, hmarl.algorithms, hmarl.envs; from hmarl.run.experiment import CONFIG_DIR, named_configs; "
             "print(hmarl.__file__); print(CONFIG_DIR); print(len(named_configs('algorithms')))")
    out = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert all(Path(path).is_relative_to(target) for path in out[:2])
    assert int(out[2]) == len(list((ROOT / "hmarl" / "configs" / "algorithms").glob("*.yaml")))
    shown = subprocess.run([sys.executable, "-m", "hmarl", "print_config", "with", "ippo", "vmas_balance"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "vmas_balance" in shown.stdout
