"""Running experiments: the sacred experiment and its Trainer (``experiment``), config checks
(``config``), evaluation and rendering, observers, loggers, the progress monitor, atomic files
and Trainer callbacks. The runner is the one place that resolves names from
:mod:`hmarl.algorithms` and :mod:`hmarl.envs`; the core (:mod:`hmarl.level`,
:mod:`hmarl.hierarchy`, ...) never imports it."""
