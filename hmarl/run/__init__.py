"""Running experiments: the sacred experiment and its Trainer (``experiment``), config checks
(``config``), evaluation and rendering, observers, loggers, the progress monitor, atomic files
and Trainer callbacks. The runner is the one place that resolves names from
:mod:`hmarl.algorithms` and :mod:`hmarl.envs`; the core (:mod:`hmarl.level`,
:mod:`hmarl.hierarchy`, ...) never imports it."""
import sys
import warnings

# sacred 0.8.7 imports pkg_resources, which setuptools < 81 flags as deprecated on every import.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def _import_sacred_without_pandas() -> None:
    """Import sacred with pandas hidden, unless something imported pandas already.

    sacred imports pandas whenever it is installed (hmarl's ``stats`` extra installs it), only to
    register jsonpickle handlers for DataFrames in run records, which hmarl never writes; the
    import costs 0.4-2 s of every command, ``--help`` included. Hidden, sacred records
    ``has_pandas = False``; pandas imports normally afterwards.
    """
    if "pandas" in sys.modules or "sacred" in sys.modules:
        return
    sys.modules["pandas"] = None  # makes `import pandas` raise ImportError, which sacred catches
    try:
        import sacred  # noqa: F401
    finally:
        del sys.modules["pandas"]


_import_sacred_without_pandas()
