"""``python -m hmarl [command] [with named_config ... key=value ...] [sacred flags]``."""
from __future__ import annotations

import sys
from pathlib import Path

from hmarl.run.config import writable_folder
from hmarl.run.experiment import CONFIG_SUFFIXES, KINDS, ex, load_yaml, named_configs
from hmarl.run.observer import AtomicFileStorageObserver, RecordsLost, check_records

OBSERVER_FLAGS = ("-F", "--file_storage", "-m", "--mongo_db", "-s", "--sql", "-u", "--unobserved")


def check_command_line(argv: list[str]) -> None:
    """Refuse in one line what sacred would report with a traceback or not at all.

    The configs after ``with`` (named configs, or paths to YAML files as sacred reads them)
    must exist and read as mappings; at most one may set ``algorithm`` and one ``env`` (a
    second would silently win over the first); the ``-F`` folder must be writable.
    """
    known = named_configs()
    setters: dict[str, list[str]] = {"algorithm": [], "env": []}
    for token in _with_configs(argv):
        path = Path(token)
        if path.is_file():  # sacred reads an existing file as a config file
            if path.suffix not in CONFIG_SUFFIXES:
                raise SystemExit(f"hmarl: {token}: config files end in {', '.join(CONFIG_SUFFIXES)}; rename it")
        elif token in known:
            path = known[token]
        else:
            listing = "; ".join(f"{kind}: {', '.join(named_configs(kind))}" for kind in KINDS)
            raise SystemExit(f"hmarl: unknown named config {token!r} (not a file either); {listing}")
        try:
            keys = load_yaml(path)
        except ValueError as error:
            raise SystemExit(f"hmarl: {error}") from None
        for key, tokens in setters.items():
            if key in keys:
                tokens.append(token)
    for key, tokens in setters.items():
        if len(tokens) > 1:
            raise SystemExit(f"hmarl: {', '.join(tokens)} all set {key}, and the last would silently win; "
                             f"name one {key} config (change single keys with key=value)")
    folder = _file_storage_folder(argv)
    if folder is not None:
        try:
            writable_folder(folder, "-F folder")
        except ValueError as error:
            raise SystemExit(f"hmarl: {error}") from None


def _with_configs(argv: list[str]) -> list[str]:
    """The config names or files after ``with`` (up to the first flag), without ``key=value`` updates."""
    if "with" not in argv:
        return []
    tokens = []
    for token in argv[argv.index("with") + 1:]:
        if token.startswith("-"):
            break
        if "=" not in token:
            tokens.append(token)
    return tokens


def _file_storage_folder(argv: list[str]) -> str | None:
    """The folder of ``-F DIR``, ``-FDIR``, ``--file_storage DIR`` or ``--file_storage=DIR``, if given."""
    for index, token in enumerate(argv):
        if token in ("-F", "--file_storage"):
            return argv[index + 1] if index + 1 < len(argv) else None
        if token.startswith("--file_storage="):
            return token.split("=", 1)[1]
        if token.startswith("-F") and len(token) > 2:
            return token[2:]
    return None


def main(argv: list[str] | None = None) -> None:
    """Run sacred's command line on ``argv`` (default ``sys.argv``), with a file observer under
    ``results/`` unless an observer flag is given.

    Ctrl-C exits with status 130 after the run's line on how to resume, without a traceback. A
    record that failed to be written after the run's main function returned (its last output)
    still makes the command fail: the observer marked the run FAILED.
    """
    argv = sys.argv if argv is None else argv
    check_command_line(argv)
    if not any(a.split("=")[0] in OBSERVER_FLAGS for a in argv[1:]):
        ex.observers.append(AtomicFileStorageObserver("results"))
    try:
        run = ex.run_commandline(argv)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    try:
        if run is not None:
            check_records(run)
    except RecordsLost as error:
        raise SystemExit(f"hmarl: {error}") from None


if __name__ == "__main__":
    main()
