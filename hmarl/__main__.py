"""``python -m hmarl [command] [with named_config ... key=value ...] [sacred flags]``."""
from __future__ import annotations

import sys
import warnings

# sacred 0.8.7 imports pkg_resources, which setuptools < 81 flags as deprecated on every run.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from hmarl.experiment import ex, named_configs  # noqa: E402
from hmarl.observer import AtomicFileStorageObserver, RecordsLost, check_records  # noqa: E402

OBSERVER_FLAGS = ("-F", "--file_storage", "-m", "--mongo_db", "-s", "--sql", "-u", "--unobserved")


def check_named_configs(argv: list[str]) -> None:
    """Unknown named configs fail with the list of what exists (sacred would say much less)."""
    if "with" not in argv:
        return
    known = set(named_configs("algorithms")) | set(named_configs("envs"))
    for token in argv[argv.index("with") + 1:]:
        if token.startswith("-"):
            break
        if "=" not in token and token not in known:
            raise SystemExit(f"unknown named config {token!r}.\n"
                             f"  algorithms: {', '.join(named_configs('algorithms'))}\n"
                             f"  envs: {', '.join(named_configs('envs'))}")


def main(argv: list[str] | None = None) -> None:
    """Run sacred's command line on ``argv`` (default ``sys.argv``), with a file observer under
    ``results/`` unless an observer flag is given.

    Ctrl-C exits with status 130 after the run's line on how to resume, without a traceback. A
    record that failed to be written after the run's main function returned (its last output)
    still makes the command fail: the observer marked the run FAILED.
    """
    argv = sys.argv if argv is None else argv
    check_named_configs(argv)
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
