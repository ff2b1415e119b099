"""Study tools over many runs: sweeps (``python -m hmarl.studies.sweep``), generated reports
(``report``), their statistics (``analysis``) and the speed bench (``python -m hmarl.studies.bench``)."""
