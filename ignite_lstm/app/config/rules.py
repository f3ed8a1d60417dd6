"""The config rules that involve more than one key (``validate_config`` applies them).

The schema (``ignite_lstm.app.config.schema``) checks each key on its own; what is left is here:
sample count from ``data.fs`` and ``data.duration``, monitors that name a validation
metric of these frequencies, warm-up shorter than the run, ``restore_best`` with
checkpoints, several processes with a backend, the form of ``handlers.extra``, the
curriculum's stages (within T) and its one rule to advance, ``train.carry_state`` for the
streams layout, full batches (sequences layout) and no curriculum with it. The rules read
a plain dict already merged over the schema's defaults (``with_defaults``), so no default
is written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ignite_lstm.app.task.generator import sample_count
from ignite_lstm.app.task.metrics import METRIC_NAMES
from ignite_lstm.handlers.curriculum import stage_lengths

__all__ = ["MIN_STEPS", "check_cross", "with_defaults", "validation_metrics"]

MIN_STEPS = 2  # samples per sequence: the first one of every target is sin(0) = 0


def with_defaults(values: Any, defaults: Any) -> Any:
    """``values`` laid over ``defaults``, section by section.

    A section that is not a mapping (the schema check reports it) reads as its defaults, so that
    the rules of its keys see what the run would get; any other value is kept as it is.
    """
    if not isinstance(defaults, dict):
        return values
    if not isinstance(values, dict):
        return defaults
    return {**defaults, **{k: with_defaults(v, defaults.get(k)) for k, v in values.items()}}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _section(values: Any, key: str) -> dict:
    section = values.get(key) if isinstance(values, dict) else None
    return section if isinstance(section, dict) else {}


def check_cross(cfg: dict, problems: list[str], *, backends: Sequence[str]) -> None:
    """Append the problems of the rules that involve more than one key (each guarded: types are checked elsewhere).

    A rule is skipped when one of its keys is already in ``problems``: one complaint per bad value.

    Args:
        cfg: the config as a plain dict, merged over the schema's defaults (``with_defaults``).
        problems: the list to extend.
        backends: the ``distributed.backend`` choices, for the message of the rule that needs one.
    """
    reported = {p.split(":", 1)[0] for p in problems}

    def valid(*keys: str) -> bool:
        return not any(r == k or r.startswith((k + ".", k + "[")) for k in keys for r in reported)

    data = _section(cfg, "data")
    amp = data.get("amplitude")
    if isinstance(amp, list) and len(amp) == 2 and all(isinstance(a, (int, float)) for a in amp) and amp[0] > amp[1]:
        problems.append(f"data.amplitude: {amp!r} must be [low, high] with low <= high")
    fs, duration = data.get("fs"), data.get("duration")
    if valid("data.fs", "data.duration") and _is_number(fs) and _is_number(duration):
        if not math.isfinite(fs * duration):
            problems.append(f"data.duration: {duration!r} at data.fs={fs!r} gives no finite number of samples")
        elif sample_count(fs, duration) < MIN_STEPS:
            problems.append(
                f"data.duration: {duration!r} at data.fs={fs!r} gives {sample_count(fs, duration)} sample(s) per sequence "
                f"(round(fs * duration)); at least {MIN_STEPS} are needed (every target starts at sin(0) = 0 and "
                f"the metrics need one that varies): use data.duration >= {MIN_STEPS / fs:g}"
            )
    warm = _section(cfg, "eval").get("warm_up_steps")
    if (
        valid("eval.warm_up_steps", "data.fs", "data.duration")
        and _is_number(warm)
        and _is_number(fs)
        and (_is_number(duration) and math.isfinite(fs * duration) and 0 < round(fs * duration) <= warm)
    ):
        problems.append(
            f"eval.warm_up_steps: {warm!r} must be shorter than a sequence ({round(fs * duration)} steps at "
            f"data.fs={fs!r}, data.duration={duration!r}): no step would count"
        )
    freqs = data.get("frequencies")  # they name the mse_f<Hz> monitors too
    if isinstance(freqs, list) and len(set(freqs)) != len(freqs):
        problems.append(f"data.frequencies: {freqs!r} must not repeat a frequency")
    if valid("data.fs", "data.frequencies") and _is_number(fs) and isinstance(freqs, list):
        high = [f for f in freqs if _is_number(f) and f >= fs / 2]
        if high:  # at fs/2 a sine is sampled at its zeros (or aliases above it): no signal to extract
            problems.append(
                f"data.frequencies: {high!r} at data.fs={fs!r} must be below the Nyquist frequency "
                f"data.fs / 2 = {fs / 2:g} Hz (at or above it the samples alias or vanish)"
            )
    handlers = _section(cfg, "handlers")
    _check_monitors(handlers, freqs, problems)
    sched, train = _section(handlers, "lr_scheduler"), _section(cfg, "train")
    warmup, epochs = sched.get("warmup_epochs"), train.get("epochs")
    if (
        valid("handlers.lr_scheduler.warmup_epochs", "train.epochs")
        and _is_number(warmup)
        and _is_number(epochs)
        and warmup >= epochs
    ):
        problems.append(f"handlers.lr_scheduler.warmup_epochs: {warmup!r} must be shorter than train.epochs ({epochs})")
    steps = train.get("gradient_accumulation_steps")
    if (
        valid("train.gradient_accumulation_steps", "train.update")
        and _is_number(steps)
        and steps > 1
        and train.get("update") == "window"
    ):
        problems.append(
            f"train.gradient_accumulation_steps: {steps!r} needs train.update: sequence (with "
            f"update: window every window takes its own optimizer step)"
        )
    _check_carry_state(train, data, problems)
    stop, ckpt = _section(handlers, "early_stopping"), _section(handlers, "checkpoint")
    if stop.get("enabled") is True and stop.get("restore_best") is True and ckpt.get("enabled") is False:
        problems.append(
            "handlers.early_stopping.restore_best: true needs handlers.checkpoint.enabled: true "
            "(the best weights are read from the best checkpoint)"
        )
    dist = _section(cfg, "distributed")
    if (
        valid("distributed.backend", "distributed.nproc_per_node")
        and dist.get("backend") is None
        and dist.get("nproc_per_node") != 1
    ):
        problems.append(
            f"distributed.nproc_per_node: more than 1 process needs distributed.backend ({' or '.join(backends)})"
        )
    _check_curriculum(cfg, problems, valid)
    extra = handlers.get("extra")
    for i, entry in enumerate(extra if isinstance(extra, list) else []):
        if isinstance(entry, str) and (entry.count(":") != 1 or not all(entry.split(":"))):
            problems.append(f"handlers.extra[{i}]: {entry!r} must look like 'package.module:function'")


def _check_carry_state(train: dict, data: dict, problems: list[str]) -> None:
    """``train.carry_state``: what it runs with. The streams layout needs it; the sequences layout gives it full
    training batches only (a smaller last one is refused); no curriculum cuts the batches."""
    streams = data.get("layout") == "streams"
    if streams and train.get("carry_state") is not True:
        problems.append(
            f"data.layout: 'streams' needs train.carry_state: true (lane i of a chunk continues the series "
            f"that lane i of the previous chunk played), got {train.get('carry_state')!r}"
        )
    if train.get("carry_state") is not True:
        return
    if _section(train, "curriculum").get("enabled") is True:
        problems.append(
            "train.carry_state: true cannot run with train.curriculum.enabled: true (the curriculum cuts "
            "every batch to its first L steps, so lane i of the next batch would not continue where lane "
            "i was cut)"
        )
    freqs, mixtures, batch = data.get("frequencies"), _section(data, "train").get("mixtures"), train.get("batch_size")
    if streams or not isinstance(freqs, list) or not _is_number(mixtures) or not _is_number(batch) or batch < 1:
        return  # a stream loader's batches are always full: lanes without a series are masked
    sequences = mixtures * len(freqs)  # a training sequence per (mixture, frequency)
    if sequences % batch:
        problems.append(
            f"train.carry_state: true needs every training batch full, so that lane i of a batch continues "
            f"lane i of the previous one: the {sequences} training sequences (data.train.mixtures x "
            f"data.frequencies) are not a multiple of train.batch_size={batch}; or set data.layout: "
            f"streams, whose batches are always full"
        )


def validation_metrics(freqs: Any) -> list[str]:
    """The validation evaluator's metrics: ``METRIC_NAMES``, ``mse_f<Hz>`` of ``freqs`` and ``mse_worst``.

    The one list of what the application's monitors, the curriculum's rule and ``tune.metric`` may name.
    """
    allowed = list(METRIC_NAMES)
    if isinstance(freqs, list) and all(isinstance(f, (int, float)) for f in freqs):
        allowed += [f"mse_f{f:g}" for f in freqs] + (["mse_worst"] if len(freqs) > 1 else [])
    return allowed


def _check_monitors(handlers: dict, freqs: Any, problems: list[str]) -> None:
    """Every ``monitor`` names a validation metric: one of ``METRIC_NAMES`` or ``mse_f<Hz>`` of ``freqs``."""
    allowed = validation_metrics(freqs)
    for section in ("checkpoint", "early_stopping", "lr_scheduler"):
        monitor = _section(handlers, section).get("monitor")
        if isinstance(monitor, str) and monitor not in allowed:
            problems.append(
                f"handlers.{section}.monitor: {monitor!r} is not a validation metric: choose one of {', '.join(allowed)}"
            )


def _check_curriculum(cfg: dict, problems: list[str], valid: Callable[..., bool]) -> None:
    """``train.curriculum``: its stages fit the sequences, one rule to advance, and the rule's keys."""
    train, data = _section(cfg, "train"), _section(cfg, "data")
    c, key = _section(train, "curriculum"), "train.curriculum"
    if c.get("enabled") is not True or not valid(key):
        return
    lengths, start, metric, per = c.get("lengths"), c.get("start"), c.get("metric"), c.get("epochs_per_stage")
    fs, duration = data.get("fs"), data.get("duration")
    if valid("data.fs", "data.duration") and _is_number(fs) and _is_number(duration) and math.isfinite(fs * duration):
        steps = sample_count(fs, duration)
        try:  # the stages' rule is the curriculum's own (stage_lengths), said here with the keys' names
            stage_lengths(steps, lengths or (), start, c.get("factor") or 2.0)
        except ValueError as exc:
            which = "" if bool(lengths) == (start is not None) else ".start" if start is not None else ".lengths"
            problems.append(f"{key}{which}: {_keyed(str(exc))} (T = round(data.fs * data.duration))")
        else:
            if per is not None and valid("train.epochs"):
                _check_stage_epochs(c, train, steps, problems)
    if per is None and metric is None:
        problems.append(
            f"{key}: needs a rule to advance: epochs_per_stage (fixed epochs per stage), or metric and threshold"
        )
    elif per is not None and metric is not None:
        problems.append(
            f"{key}.epochs_per_stage: {per!r} and metric {metric!r} are two rules to advance: choose one "
            f"(min_epochs and max_epochs bound the stages of the metric rule)"
        )
    if metric is not None and c.get("threshold") is None:
        problems.append(f"{key}.threshold: null: the metric rule ({metric!r}) needs the value to beat")
    elif metric is None and c.get("threshold") is not None:
        problems.append(f"{key}.threshold: {c.get('threshold')!r} needs {key}.metric")
    if isinstance(metric, str) and metric not in validation_metrics(data.get("frequencies")):
        allowed = ", ".join(validation_metrics(data.get("frequencies")))
        problems.append(f"{key}.metric: {metric!r} is not a validation metric: choose one of {allowed}")
    low, high = c.get("min_epochs"), c.get("max_epochs")
    if per is not None and metric is None and (high is not None or low != 1):
        problems.append(
            f"{key}.max_epochs: min_epochs {low!r} and max_epochs {'null' if high is None else high!r} "
            f"belong to the metric rule; with epochs_per_stage leave them at 1 and null"
        )
    elif _is_number(low) and _is_number(high) and high < low:
        problems.append(f"{key}.max_epochs: {high!r} must be >= min_epochs ({low!r})")
    after, retries = c.get("retry_after"), c.get("retries")
    if after is not None and metric is None:
        problems.append(f"{key}.retry_after: {after!r} belongs to the metric rule (metric and threshold)")
    elif _is_number(after) and _is_number(low) and after < low:
        problems.append(f"{key}.retry_after: {after!r} must be >= min_epochs ({low!r})")
    elif _is_number(after) and _is_number(high) and _is_number(retries) and retries > 0 and high <= after:
        problems.append(
            f"{key}.max_epochs: {high!r} must be greater than retry_after ({after!r}), or it ends every stage "
            f"before its first retry"
        )
    if _is_number(retries) and retries > 0 and after is None:
        problems.append(f"{key}.retries: {retries!r} needs {key}.retry_after (the epochs before a stage starts again)")
    schedule = _section(_section(cfg, "handlers"), "lr_scheduler").get("name", "cosine")
    if _is_number(c.get("lr_factor")) and c.get("lr_factor") != 1 and schedule not in ("none", "plateau"):
        problems.append(
            f"{key}.lr_factor: {c.get('lr_factor')!r} with handlers.lr_scheduler.name={schedule!r}, which "
            f"sets the rate at every step and would undo it: use none or plateau, or lr_factor 1.0"
        )


def _keyed(message: str) -> str:
    """A library argument message in the config's words: "Argument start should ..." -> "start should ..."."""
    return message.replace("Arguments ", "").replace("Argument ", "").rstrip(".")


def _check_stage_epochs(c: dict, train: dict, steps: int, problems: list[str]) -> None:
    """The epoch rule leaves the run some epochs at the full length."""
    per, epochs = c.get("epochs_per_stage"), train.get("epochs")
    shorter = len(stage_lengths(steps, c.get("lengths") or (), c.get("start"), c.get("factor") or 2.0)) - 1
    if _is_number(per) and _is_number(epochs) and per * shorter >= epochs:
        problems.append(
            f"train.curriculum.epochs_per_stage: {per!r} x {shorter} stages below the full length = "
            f"{per * shorter} epochs leaves none of train.epochs={epochs} at the full length"
        )
