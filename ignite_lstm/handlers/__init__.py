"""Handlers around the loop: early stopping, progress, NaN, LR schedules, the length curriculum,
interrupts, a metrics history, TensorBoard, and the forecasting workflow (``WarmStart``,
``PredictionCollector``, ``SkipFirstSteps``). They take arguments, never a config object.

Names load on first use (the progress bar's tqdm and TensorBoard's writer only when asked for).
"""

from ignite_lstm._internal.deprecated import moved_name
from ignite_lstm._internal.lazy import lazy_getattr

_EXPORTS = {
    "attach_early_stopping": "common",
    "attach_progress": "common",
    "attach_terminate_on_nan": "common",
    "load_extra_handlers": "common",
    "monitor_mode": "common",
    "score_function": "common",
    "Curriculum": "curriculum",
    "MetricsHistory": "history",
    "WarmStart": "forecast",
    "PredictionCollector": "forecast",
    "SkipFirstSteps": "warmup",
    "StopOnInterrupt": "interrupts",
    "setup_lr_scheduler": "schedules",
    "attach_tensorboard": "tensorboard",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, moved_name)
