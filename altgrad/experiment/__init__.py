"""Everything the pipeline needs before a job starts: config -> runs, their price, the plans.

    exp = load_experiment(read_config_files(["config/config.yaml"]), data_root="data")
    exp.runs                 # run id -> Run (the matrix); exp.sweep_runs: the scaling sweep
    print(exp.budget_report()); exp.check_budget()

Modules, in dependency order: ``config`` (reading, the schema and its defaults), ``pricing``
(FLOPs, hours, dollars, the budget check), ``planning`` (dollars -> compute-optimal shapes),
``runs`` (a run's id, labels and RunConfig), ``sweep`` (the scaling study's isoFLOP sweep),
``matrix`` (the experiment: a config expanded into runs, priced).
"""

from altgrad.experiment.config import ExperimentError, read_config_files
from altgrad.experiment.matrix import Experiment, load_experiment
from altgrad.experiment.runs import Run, run_id

__all__ = ["Experiment", "ExperimentError", "Run", "load_experiment", "read_config_files", "run_id"]
