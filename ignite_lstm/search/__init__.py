"""Hyperparameter search over any model (Optuna, imported only when a search runs: the ``tune`` extra).

``search(build, storage=..., trials=..., metric=..., workers=...)`` runs a study whose trials
``build(trial) -> TrialRun`` makes (model, data, engines from the trial's parameters), with
pruning on the validation metric, workers sharing one storage, repeats and a report. The
``ignite-lstm tune`` command drives the application's task through the same worker loop,
storages and report.
"""

from ignite_lstm._internal.lazy import lazy_getattr

_EXPORTS = {
    "search": "study",
    "TrialRun": "objective",
    "run_trial": "objective",
    "Variant": "repeats",
    "aggregate": "repeats",
    "variant_grid": "repeats",
    "attach_pruning": "pruning",
    "quiet_pruned": "pruning",
    "StudyError": "storage",
    "create_study": "storage",
    "StudyFailed": "worker",
    "run_worker": "worker",
    "write_report": "report",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
