"""Old module paths of the flat layout (before 0.2): importable for one release, with a warning.

``import ignite_lstm.engines`` (and ``from ignite_lstm.engines import create_trainer``) still work and
raise a ``DeprecationWarning`` that names the new home, as Ignite did when ``contrib`` moved. A path
whose names all moved to one module is that module (the same object, so patching it patches the
new one); a path whose names went to several is a module that looks each name up where it went.
``python -m ignite_lstm.evaluate|extract|export|tune|config|serve`` run the new modules' commands.

The finder is installed by ``ignite_lstm/__init__.py`` and costs nothing until an old path is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["OLD_MODULES", "COMMANDS", "REMOVED_IN", "install", "moved_name"]

REMOVED_IN = "0.3.0"

# old module -> (its main new home, {new module: "names that went there"}), under ignite_lstm.
OLD_MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "_atomic": ("_internal.atomic", {"_internal.atomic": "atomic_write"}),
    "_compat": (
        "_internal.compat",
        {
            "_internal.compat": "ONNX_REGISTRATION_LOGGER close_event_file engine_logger_name metric_placement quiet_handler_logger tensor_version wrap_event_file"
        },
    ),
    "_config_rules": (
        "app.config.rules",
        {
            "app.config.rules": "MIN_STEPS check_cross with_defaults",
            "app.task.metrics": "METRIC_NAMES",
            "handlers.curriculum": "stage_lengths",
        },
    ),
    "_kernel_build": (
        "models.native.build",
        {"_internal.atomic": "atomic_write", "models.native.build": "build_library cache_dirs"},
    ),
    "_native_lib": (
        "models.native.loader",
        {
            "models.native.build": "build_library",
            "models.native.loader": "available describe disabled function library",
        },
    ),
    "_schema": (
        "app.config.fields",
        {"app.config.fields": "INT_LIMIT check_section commented_yaml markdown_table setting"},
    ),
    "batches": (
        "engine.batches",
        {
            "engine.batches": "SegmentCounts check_mask check_prepared check_reset collate_sequences global_steps pad_to_length parse_batch prepare_batch segment_counts window_bounds"
        },
    ),
    "carry": (
        "engine.carry",
        {
            "engine.carry": "CarryingEngine STATE_KEY check_carry_state reset_state set_state state_batch_dim",
            "engine.execution": "unwrap",
            "engine.state": "detach_state map_state state_tensors",
        },
    ),
    "checkpointing": (
        "checkpoint.savers",
        {
            "_internal.atomic": "atomic_write",
            "checkpoint.files": "CheckpointMismatch ESSENTIAL_KEYS FixedState TRAINING_KINDS UnreadableFile find_checkpoint load_torch_file read_checkpoint require_entries",
            "checkpoint.run_checkpoints": "checkpointer_states",
            "checkpoint.savers": "attach_checkpoints",
            "handlers.common": "monitor_mode score_function",
        },
    ),
    "cli": (
        "app.cli",
        {
            "app.cli": "SUBCOMMANDS main main_exit",
            "app.config.schema": "ConfigError load_config",
            "app.run.launch": "launch setup_logging",
            "app.run.preflight": "preflight",
            "app.run.rundir": "MIN_FREE_BYTES RunDirError discard_unused_run_dir prepare_run",
            "app.run.training": "Outcome",
            "app.task.dataset": "batch_problem",
            "checkpoint.files": "CheckpointMismatch",
            "data.errors": "DataFileError",
        },
    ),
    "config": (
        "app.config.schema",
        {
            "app.config.fields": "check_section",
            "app.config.rules": "check_cross with_defaults",
            "app.config.schema": "BACKENDS CheckpointConfig Config ConfigError CurriculumConfig DataConfig DistributedConfig EarlyStoppingConfig EvalConfig HandlersConfig LAYOUTS LRSchedulerConfig ModelConfig SplitConfig StreamConfig TensorboardConfig TrainConfig load_config validate_config",
            "app.config.command": "main",
            "app.run.optim": "OPTIMIZERS",
            "engine.execution": "AMP_MODES EXECUTIONS",
            "engine.factories": "UPDATES",
            "engine.losses": "LOSSES",
            "handlers.schedules": "SCHEDULES",
        },
    ),
    "config_cli": (
        "app.config.command",
        {
            "app.config.command": "main",
            "app.config.fields": "commented_yaml markdown_table",
            "app.config.schema": "Config ConfigError load_config validate_config",
        },
    ),
    "curriculum": (
        "handlers.curriculum",
        {
            "engine.batches": "parse_batch",
            "engine.factories": "set_tbptt_steps",
            "handlers.common": "monitor_mode",
            "handlers.curriculum": "Curriculum cut_batch final_tbptt_steps setup_curriculum stage_lengths",
        },
    ),
    "data": (
        "app.task.dataset",
        {
            "app.config.schema": "ConfigError",
            "app.task.dataset": "SPLITS ShardSampler SignalDataset batch_problem ensure_split setup_data split_params",
            "app.task.generator": "SplitData canonical_params generate_split",
            "app.task.h5io": "read_split split_filename write_split",
            "data.errors": "DataFileError",
            "data.streams": "StreamLoader",
        },
    ),
    "engines": (
        "engine.factories",
        {
            "engine.batches": "check_prepared prepare_batch",
            "engine.carry": "CarryingEngine check_carry_state reset_state set_state",
            "engine.events": "TimeEvents count_windows",
            "engine.execution": "amp_context check_amp_dtype refuse_outer_autocast resolve_execution run_steps select_execution step_fn unwrap",
            "engine.factories": "UPDATES create_evaluator create_trainer epoch_loss_metric set_tbptt_steps",
            "engine.losses": "check_loss",
            "engine.updates": "BatchUpdate",
        },
    ),
    "evaluate": (
        "app.run.evaluate",
        {
            "app.config.schema": "ConfigError load_config validate_config",
            "app.run.evaluate": "RunFiles SPLITS evaluate_splits figure_predictions load_run main",
            "app.run.preflight": "device_problem resolve_device",
            "app.run.setup": "setup_evaluators",
            "app.task.dataset": "SignalDataset ensure_split split_params",
            "models.lstm": "StatefulLSTM load_model",
        },
    ),
    "execution": (
        "engine.execution",
        {
            "engine.execution": "EXECUTIONS amp_context check_amp_dtype refuse_outer_autocast resolve_execution run_steps select_execution step_fn unwrap without_grad_sync"
        },
    ),
    "export": (
        "app.export",
        {
            "_internal.compat": "ONNX_REGISTRATION_LOGGER",
            "app.config.schema": "ConfigError",
            "app.export": "ExportError export_onnx main",
            "deploy.onnx_step": "INPUTS METADATA_PREFIX OUTPUTS require_extra",
            "models.lstm": "StatefulLSTM",
            "models.native": "native",
        },
    ),
    "extract": (
        "app.run.extract",
        {
            "_internal.atomic": "atomic_write",
            "app.config.schema": "ConfigError",
            "app.run.evaluate": "load_run",
            "app.run.extract": "ExtractionError INPUT_FORMATS OUTPUT_FORMATS main read_mixture stream_extract write_signal",
            "app.run.preflight": "device_problem resolve_device",
        },
    ),
    "figures": (
        "app.task.figures",
        {
            "_internal.atomic": "atomic_write",
            "app.task.figures": "plot_extraction plot_extraction_grid plot_spectra plot_training_curves",
        },
    ),
    "h5io": (
        "app.task.h5io",
        {
            "_internal.atomic": "atomic_write",
            "app.task.generator": "SplitData canonical_params",
            "app.task.h5io": "FORMAT_VERSION read_split split_filename write_split",
            "data.errors": "DataFileError",
        },
    ),
    "handlers": (
        "handlers.common",
        {
            "_internal.compat": "quiet_handler_logger",
            "handlers.common": "attach_early_stopping attach_progress attach_terminate_on_nan load_extra_handlers monitor_mode score_function",
            "handlers.tensorboard": "attach_tensorboard",
            "metrics.directions": "metric_direction",
        },
    ),
    "history": (
        "handlers.history",
        {
            "_internal.atomic": "atomic_write",
            "handlers.history": "MetricsHistory",
            "metrics.directions": "metric_direction",
        },
    ),
    "interrupts": ("handlers.interrupts", {"handlers.interrupts": "Aborted StopOnInterrupt signal_label"}),
    "launch": (
        "app.run.launch",
        {
            "_internal.compat": "engine_logger_name",
            "app.run.launch": "launch setup_logging",
            "app.run.rundir": "RunDirError discard_unused_run_dir prepare_run",
            "app.run.training": "Outcome",
            "checkpoint.files": "CheckpointMismatch find_checkpoint",
            "data.errors": "DataFileError",
        },
    ),
    "losses": ("engine.losses", {"engine.losses": "StepLosses check_loss elementwise_loss masked_loss setup_loss"}),
    "lstm_detached": ("models.detached", {"models.detached": "detached_steps_forward"}),
    "metrics": (
        "metrics.regression",
        {
            "_internal.compat": "metric_placement",
            "app.task.metrics": "build_metrics",
            "metrics.directions": "metric_direction",
            "metrics.regression": "SignalToNoiseRatio",
        },
    ),
    "models": (
        "models.lstm",
        {
            "app.task.model": "model_args setup_model",
            "checkpoint.files": "UnreadableFile load_torch_file",
            "models.detached": "detached_steps_forward",
            "models.lstm": "LSTMState StatefulLSTM load_model",
            "models.native": "native",
        },
    ),
    "native": (
        "models.native",
        {
            "_internal.compat": "tensor_version",
            "models.native": "lstm_layer lstm_layer_inference stack_runner",
            "models.native.loader": "available describe disabled function library",
        },
    ),
    "onnx_step": (
        "deploy.onnx_step",
        {"deploy.onnx_step": "INPUTS METADATA_PREFIX OUTPUTS OnnxModelError OnnxStep require_extra"},
    ),
    "optim": ("app.run.optim", {"app.run.optim": "setup_optimizer"}),
    "preflight": (
        "app.run.preflight",
        {
            "app.config.schema": "ConfigError",
            "app.run.preflight": "available_memory device_problem estimate_memory preflight resolve_device usable_devices",
            "app.task.dataset": "SPLITS split_params",
            "app.task.h5io": "split_filename",
            "handlers.curriculum": "final_tbptt_steps",
        },
    ),
    "report": (
        "app.task.report",
        {
            "_internal.atomic": "atomic_write",
            "app.task.dataset": "SignalDataset",
            "app.task.figures": "plot_extraction plot_extraction_grid plot_spectra plot_training_curves",
            "app.task.metrics": "METRIC_NAMES",
            "app.task.report": "metrics_table write_report",
        },
    ),
    "resume": (
        "checkpoint.resume",
        {
            "app.run.rundir": "read_resumable",
            "checkpoint.files": "CheckpointMismatch ESSENTIAL_KEYS FixedState read_checkpoint require_entries",
            "checkpoint.resume": "DEFERRED_KEYS RNGState SHAPE_KEYS SkipBatches check_model_args check_resumable config_changes essential_keys resume_from_checkpoint",
        },
    ),
    "run_checkpoints": (
        "checkpoint.run_checkpoints",
        {
            "checkpoint.files": "find_checkpoint read_checkpoint require_entries",
            "checkpoint.resume": "RNGState SkipBatches essential_keys resume_from_checkpoint",
            "checkpoint.run_checkpoints": "EpochStartRNG RunCheckpoints checkpointer_states resumable_objects",
        },
    ),
    "rundir": (
        "app.run.rundir",
        {
            "app.run.rundir": "MIN_FREE_BYTES RunDirError discard_unused_run_dir prepare_run read_resumable",
            "checkpoint.files": "find_checkpoint",
        },
    ),
    "schedules": (
        "handlers.schedules",
        {
            "engine.events": "TimeEvents",
            "handlers.schedules": "SCHEDULES WARMUP_START_FACTOR setup_lr_scheduler steps_per_epoch warmup_steps",
        },
    ),
    "signal": (
        "app.task.generator",
        {"app.task.generator": "PARAM_NAMES SplitData canonical_params generate_split noisy_components"},
    ),
    "state": ("engine.state", {"engine.state": "detach_state map_state state_tensors"}),
    "stream_sources": (
        "data.sources",
        {"data.errors": "DataFileError", "data.sources": "H5Series as_series forecast_pair h5_series"},
    ),
    "streams": ("data.streams", {"data.sources": "as_series", "data.streams": "StreamLoader"}),
    "tensorboard_logging": (
        "handlers.tensorboard",
        {
            "_internal.compat": "close_event_file wrap_event_file",
            "engine.events": "TimeEvents",
            "handlers.tensorboard": "attach_tensorboard",
        },
    ),
    "time_events": ("engine.events", {"engine.events": "TimeEvents count_windows"}),
    "trainers": (
        "app.run.setup",
        {
            "app.run.setup": "RunHandlers attach_handlers setup_evaluators setup_trainer",
            "app.task.metrics": "METRIC_NAMES build_metrics",
            "checkpoint.files": "FixedState",
            "checkpoint.resume": "RNGState",
            "checkpoint.savers": "attach_checkpoints",
            "data.streams": "StreamLoader",
            "engine.execution": "AMP_MODES",
            "engine.factories": "create_evaluator create_trainer epoch_loss_metric",
            "engine.losses": "setup_loss",
            "handlers.common": "attach_early_stopping attach_progress attach_terminate_on_nan load_extra_handlers",
            "handlers.curriculum": "Curriculum final_tbptt_steps setup_curriculum",
            "handlers.history": "MetricsHistory",
            "handlers.interrupts": "StopOnInterrupt",
            "handlers.schedules": "setup_lr_scheduler steps_per_epoch",
            "handlers.tensorboard": "attach_tensorboard",
            "metrics.directions": "metric_direction",
        },
    ),
    "training": (
        "app.run.training",
        {
            "_internal.atomic": "atomic_write",
            "app.run.evaluate": "evaluate_splits figure_predictions",
            "app.run.optim": "setup_optimizer",
            "app.run.preflight": "resolve_device",
            "app.run.rundir": "read_resumable",
            "app.run.setup": "RunHandlers attach_handlers setup_evaluators setup_trainer",
            "app.run.training": "Outcome run run_training setup",
            "app.task.dataset": "setup_data",
            "app.task.model": "setup_model",
            "checkpoint.resume": "SkipBatches config_changes",
            "models.native": "native",
        },
    ),
    "tune": (
        "app.tune.study",
        {
            "app.config.schema": "ConfigError",
            "app.run.rundir": "RunDirError prepare_run",
            "app.tune.settings": "TuneSettings load_study target_trials trial_config",
            "app.tune.storage": "StudyError fail_dead_trials heartbeat locked open_study shown_url storage_url tell worker_id",
            "app.tune.study": "StudyFailed TrialDiverged main run_worker",
            "checkpoint.files": "CheckpointMismatch",
            "data.errors": "DataFileError",
        },
    ),
    "tune_config": (
        "app.tune.settings",
        {
            "app.config.schema": "ConfigError validate_config",
            "app.task.metrics": "METRIC_NAMES",
            "app.tune.settings": "PRUNERS SAMPLERS TuneSettings load_study target_trials trial_config",
            "app.tune.space": "Distribution check_space is_int set_key",
            "metrics.directions": "metric_direction",
        },
    ),
    "tune_report": (
        "app.tune.report",
        {
            "app.config.schema": "validate_config",
            "app.tune.report": "trial_rows write_outputs",
            "app.tune.settings": "target_trials",
        },
    ),
    "tune_space": (
        "app.tune.space",
        {
            "app.config.schema": "Config ConfigError validate_config",
            "app.tune.space": "Distribution check_space is_int set_key",
        },
    ),
    "tune_storage": (
        "app.tune.storage",
        {
            "app.tune.settings": "TuneSettings",
            "app.tune.storage": "StudyError fail_dead_trials heartbeat locked open_study shown_url storage_url tell worker_id",
        },
    ),
    "updates": (
        "engine.updates",
        {
            "engine.batches": "SegmentCounts global_steps pad_to_length segment_counts window_bounds",
            "engine.execution": "amp_context run_steps step_fn without_grad_sync",
            "engine.losses": "StepLosses masked_loss",
            "engine.state": "detach_state",
            "engine.updates": "BatchResult BatchUpdate",
        },
    ),
}

# ``python -m ignite_lstm.<old>`` -> the module whose ``__main__`` block runs
COMMANDS = {
    "evaluate": "app.run.evaluate",
    "extract": "app.run.extract",
    "export": "app.export",
    "tune": "app.tune.study",
    "config": "app.config.command",
    "serve": "app.serve",
}


def _home(old: str, name: str) -> str | None:
    primary, groups = OLD_MODULES[old]
    for module, names in groups.items():
        if name in names.split():
            return module
    return None


def _warn(old_path: str, new_path: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{old_path} is deprecated and will be removed in ignite_lstm {REMOVED_IN}; use {new_path} instead.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def moved_name(package: str, name: str) -> Any:
    """Module ``__getattr__`` of a package that kept an old module's name (``ignite_lstm.models``):
    a name that moved elsewhere, with a warning.

    Raises:
        AttributeError: ``name`` never lived in the old module either.
    """
    old = package.rsplit(".", 1)[1]
    home = _home(old, name) if old in OLD_MODULES else None
    if home is None or home == package.split(".", 1)[1]:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    _warn(f"{package}.{name}", f"ignite_lstm.{home}.{name}")
    module = importlib.import_module(f"ignite_lstm.{home}")
    return module if home.rsplit(".", 1)[-1] == name else getattr(module, name)


class _Alias(types.ModuleType):
    """An old module whose names went to several new ones: each looked up where it went."""

    __all__: list[str]

    def __getattr__(self, name: str) -> Any:
        old = self.__name__.rsplit(".", 1)[1]
        home = _home(old, name)
        if home is None:
            raise AttributeError(
                f"module {self.__name__!r} has no attribute {name!r} (it moved to ignite_lstm.{OLD_MODULES[old][0]})"
            )
        module = importlib.import_module(f"ignite_lstm.{home}")
        return module if home.rsplit(".", 1)[-1] == name else getattr(module, name)  # a module (native)


class _Loader(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old = old

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.old not in OLD_MODULES:  # a command's short name (ignite_lstm.serve): its module, no warning
            return importlib.import_module(f"ignite_lstm.{COMMANDS[self.old]}")
        primary, groups = OLD_MODULES[self.old]
        _warn(f"ignite_lstm.{self.old}", f"ignite_lstm.{primary}", stacklevel=8)
        if list(groups) == [primary] or not groups:
            return importlib.import_module(f"ignite_lstm.{primary}")
        module = _Alias(spec.name)
        module.__all__ = sorted(n for names in groups.values() for n in names.split())
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass

    def get_code(self, fullname: str) -> types.CodeType:
        """``python -m ignite_lstm.<old>``: run the new command module as ``__main__``."""
        target = COMMANDS.get(self.old)
        if target is None:
            raise ImportError(f"{fullname} has no command; it moved to ignite_lstm.{OLD_MODULES[self.old][0]}")
        notice = (
            f"print('python -m {fullname} is deprecated; use python -m ignite_lstm.{target} "
            f"or ignite-lstm {self.old}', file=sys.stderr)\n"
            if self.old in OLD_MODULES
            else ""
        )
        source = (
            f"import runpy, sys, warnings\n"
            f"{notice}"
            f"runpy.run_module('ignite_lstm.{target}', run_name='__main__', alter_sys=True)\n"
        )
        return compile(source, f"<{fullname}>", "exec")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != "ignite_lstm" or (old not in OLD_MODULES and old not in COMMANDS):
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(old))


def install() -> None:
    """Put the finder of old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
