"""The configuration schema, loading with ``key=value`` overrides, and validation.

The schema (dataclasses below) is the one place where keys, types and allowed
values live; ``configs/base.yaml`` holds the defaults with a comment per key.
``load_config`` reads a YAML file, applies overrides, checks everything at once
and raises ``ConfigError`` listing every problem (key, value, what is allowed).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ignite_lstm.execution import AMP_MODES
from ignite_lstm.metrics import METRIC_NAMES

__all__ = ["Config", "ConfigError", "load_config", "validate_config"]


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"Invalid {source} ({n} problem{'s' if n != 1 else ''}):\n{lines}")


def _f(default: Any, **rules: Any) -> Any:
    """A schema field with its default and rules: choices, gt, ge, le, lt, length."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=rules)
    return field(default=default, metadata=rules)


def _copy(value: Any) -> Any:
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


@dataclass
class SplitConfig:
    seed: int = _f(1, ge=0)
    mixtures: int = _f(1, ge=1)


@dataclass
class DataConfig:
    dir: str = "data"
    frequencies: list[float] = _f([1.0, 3.0, 5.0, 7.0], gt=0.0, min_length=1)
    fs: float = _f(1000.0, gt=0.0)
    duration: float = _f(10.0, gt=0.0)
    amplitude: list[float] = _f([0.8, 1.2], ge=0.0, length=2)
    phase_scale: float = _f(0.01, ge=0.0)
    noise_sigma: float = _f(0.0, ge=0.0)
    input_scale: float = _f(4.0, gt=0.0)
    train: SplitConfig = _f(SplitConfig(seed=1, mixtures=10))
    val: SplitConfig = _f(SplitConfig(seed=3, mixtures=1))
    test: SplitConfig = _f(SplitConfig(seed=2, mixtures=1))


@dataclass
class ModelConfig:
    hidden_size: int = _f(128, ge=1)
    num_layers: int = _f(1, ge=1)
    dropout: float = _f(0.0, ge=0.0, lt=1.0)


@dataclass
class TrainConfig:
    epochs: int = _f(120, ge=1)
    batch_size: int = _f(40, ge=1)
    tbptt_steps: int = _f(500, ge=1)
    update: str = _f("window", choices=("sequence", "window"))
    engine: str = _f("auto", choices=("auto", "fused", "stepwise"))
    chunk_steps: int = _f(250, ge=1)
    optimizer: str = _f("adam", choices=("adam", "adamw", "sgd", "rmsprop"))
    lr: float = _f(3e-3, gt=0.0)
    weight_decay: float = _f(0.0, ge=0.0)
    momentum: float = _f(0.9, ge=0.0, lt=1.0)
    loss: str = _f("mse", choices=("mse", "l1", "huber", "smooth_l1"))
    grad_clip: Optional[float] = _f(1.0, gt=0.0)
    amp: Optional[str] = _f(None, choices=tuple(AMP_MODES))
    gradient_accumulation_steps: int = _f(1, ge=1)


@dataclass
class EvalConfig:
    batch_size: int = _f(40, ge=1)
    every: int = _f(1, ge=1)
    engine: str = _f("auto", choices=("auto", "fused", "stepwise"))
    report: bool = True


@dataclass
class CheckpointConfig:
    enabled: bool = True
    monitor: str = "mse"
    n_saved: int = _f(1, ge=1)
    every: int = _f(0, ge=0)


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "mse"
    patience: int = _f(10, ge=1)
    min_delta: float = _f(0.0, ge=0.0)
    restore_best: bool = True


@dataclass
class LRSchedulerConfig:
    name: str = _f("cosine", choices=("none", "step", "cosine", "plateau", "onecycle"))
    warmup_epochs: float = _f(0.0, ge=0.0)
    min_lr: float = _f(0.0, ge=0.0)
    step_size: int = _f(10, ge=1)
    gamma: float = _f(0.5, gt=0.0, le=1.0)
    monitor: str = "mse"
    patience: int = _f(5, ge=0)
    factor: float = _f(0.5, gt=0.0, lt=1.0)


@dataclass
class TensorboardConfig:
    enabled: bool = True
    every: int = _f(1, ge=1)
    window_every: int = _f(10, ge=0)
    histograms: bool = False


@dataclass
class HandlersConfig:
    progress_bar: bool = True
    terminate_on_nan: bool = True
    checkpoint: CheckpointConfig = _f(CheckpointConfig())
    early_stopping: EarlyStoppingConfig = _f(EarlyStoppingConfig())
    lr_scheduler: LRSchedulerConfig = _f(LRSchedulerConfig())
    tensorboard: TensorboardConfig = _f(TensorboardConfig())
    extra: list[str] = _f([])


@dataclass
class DistributedConfig:
    backend: Optional[str] = _f(None, choices=("gloo", "nccl"))
    nproc_per_node: int = _f(1, ge=1)


@dataclass
class Config:
    seed: int = _f(0, ge=0, lt=2**32)  # numpy's seed range
    output_dir: str = "runs"
    name: Optional[str] = None
    device: str = "auto"
    threads: Optional[int] = _f(None, ge=1, lt=2**31)  # torch.set_num_threads takes a C int
    resume: Optional[str] = None
    data: DataConfig = _f(DataConfig())
    model: ModelConfig = _f(ModelConfig())
    train: TrainConfig = _f(TrainConfig())
    eval: EvalConfig = _f(EvalConfig())
    handlers: HandlersConfig = _f(HandlersConfig())
    distributed: DistributedConfig = _f(DistributedConfig())


INT_LIMIT = 2**63  # every integer setting is below it (int64), unless its own rule says less
MIN_STEPS = 2  # samples per sequence: the first one of every target is sin(0) = 0

_RULE_TEXT = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}"}
_RULE_OK = {
    "gt": lambda v, b: v > b,
    "ge": lambda v, b: v >= b,
    "lt": lambda v, b: v < b,
    "le": lambda v, b: v <= b,
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_scalar(key: str, value: Any, tp: Any, rules: dict, problems: list[str]) -> None:
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        problems.append(f"{key}: {value!r} has the wrong type: expected {_type_name(tp)}")
        return
    if "choices" in rules and value not in rules["choices"]:
        allowed = ", ".join(repr(c) for c in rules["choices"])
        problems.append(f"{key}: {value!r} is not allowed: choose one of {allowed}")
    if tp is int and "lt" not in rules and "le" not in rules:
        rules = {**rules, "lt": INT_LIMIT}  # torch, numpy and the data files take int64 values
    for rule, bound in rules.items():
        if rule in _RULE_OK and not _RULE_OK[rule](value, bound):
            problems.append(f"{key}: {value!r} is out of range: must be {_RULE_TEXT[rule].format(bound)}")


def _check(key: str, value: Any, tp: Any, rules: dict, problems: list[str]) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        _check_section(key, value, tp, problems)
    elif origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: {value!r} has the wrong type: expected a list of {_type_name(args[0])}")
            return
        if "length" in rules and len(value) != rules["length"]:
            problems.append(f"{key}: {value!r} must have exactly {rules['length']} entries")
        if "min_length" in rules and len(value) < rules["min_length"]:
            problems.append(f"{key}: {value!r} must have at least {rules['min_length']} entries")
        item_rules = {k: v for k, v in rules.items() if k not in ("length", "min_length")}
        for i, item in enumerate(value):
            _check_scalar(f"{key}[{i}]", item, args[0], item_rules, problems)
    else:
        _check_scalar(key, value, tp, rules, problems)


def _check_section(prefix: str, values: Any, schema: type, problems: list[str]) -> None:
    if not isinstance(values, dict):
        problems.append(f"{prefix}: {values!r} has the wrong type: expected a section (mapping)")
        return
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in values:
        if key not in fields:
            allowed = ", ".join(fields)
            problems.append(f"{prefix + '.' if prefix else ''}{key}: unknown key; allowed here: {allowed}")
    for name, f in fields.items():
        if name in values:
            _check(f"{prefix + '.' if prefix else ''}{name}", values[name], hints[name], dict(f.metadata), problems)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _section(values: Any, key: str) -> dict:
    section = values.get(key) if isinstance(values, dict) else None
    return section if isinstance(section, dict) else {}


def _check_cross(cfg: dict, problems: list[str]) -> None:
    """Rules that involve more than one key (each guarded: types are checked elsewhere).

    A rule is skipped when one of its keys is already in ``problems``: one complaint per bad value.
    """
    reported = {p.split(":", 1)[0] for p in problems}

    def valid(*keys: str) -> bool:
        return not any(r == k or r.startswith((k + ".", k + "[")) for k in keys for r in reported)

    data = _section(cfg, "data")
    amp = data.get("amplitude")
    if isinstance(amp, list) and len(amp) == 2 and all(isinstance(a, (int, float)) for a in amp) and amp[0] > amp[1]:
        problems.append(f"data.amplitude: {amp!r} must be [low, high] with low <= high")
    fs, duration = data.get("fs", DataConfig().fs), data.get("duration", DataConfig().duration)
    if valid("data.fs", "data.duration") and _is_number(fs) and _is_number(duration):
        steps = fs * duration
        if not math.isfinite(steps):
            problems.append(f"data.duration: {duration!r} at data.fs={fs!r} gives no finite number of samples")
        elif round(steps) < MIN_STEPS:
            problems.append(
                f"data.duration: {duration!r} at data.fs={fs!r} gives {round(steps)} sample(s) per sequence "
                f"(round(fs * duration)); at least {MIN_STEPS} are needed (every target starts at sin(0) = 0 and "
                f"the metrics need one that varies): use data.duration >= {MIN_STEPS / fs:g}"
            )
    freqs = data.get("frequencies", DataConfig().frequencies)  # the defaults name the mse_f<Hz> monitors too
    if isinstance(freqs, list) and len(set(freqs)) != len(freqs):
        problems.append(f"data.frequencies: {freqs!r} must not repeat a frequency")
    handlers = _section(cfg, "handlers")
    allowed = list(METRIC_NAMES)
    if isinstance(freqs, list) and all(isinstance(f, (int, float)) for f in freqs):
        allowed += [f"mse_f{f:g}" for f in freqs]
    for section in ("checkpoint", "early_stopping", "lr_scheduler"):
        monitor = _section(handlers, section).get("monitor")
        if isinstance(monitor, str) and monitor not in allowed:
            problems.append(
                f"handlers.{section}.monitor: {monitor!r} is not a validation metric: choose one of {', '.join(allowed)}"
            )
    sched, train = _section(handlers, "lr_scheduler"), _section(cfg, "train")
    warmup, epochs = sched.get("warmup_epochs", 0.0), train.get("epochs", TrainConfig().epochs)
    if valid("handlers.lr_scheduler.warmup_epochs", "train.epochs") and _is_number(warmup) and _is_number(epochs) \
            and warmup >= epochs:
        problems.append(f"handlers.lr_scheduler.warmup_epochs: {warmup!r} must be shorter than train.epochs ({epochs})")
    stop, ckpt = _section(handlers, "early_stopping"), _section(handlers, "checkpoint")
    if stop.get("enabled") is True and stop.get("restore_best", True) is True and ckpt.get("enabled", True) is False:
        problems.append("handlers.early_stopping.restore_best: true needs handlers.checkpoint.enabled: true "
                        "(the best weights are read from the best checkpoint)")
    dist = _section(cfg, "distributed")
    if valid("distributed.backend", "distributed.nproc_per_node") and dist.get("backend") is None \
            and dist.get("nproc_per_node", 1) != 1:
        problems.append("distributed.nproc_per_node: more than 1 process needs distributed.backend (gloo or nccl)")
    extra = handlers.get("extra")
    for i, entry in enumerate(extra if isinstance(extra, list) else []):
        if isinstance(entry, str) and (entry.count(":") != 1 or not all(entry.split(":"))):
            problems.append(f"handlers.extra[{i}]: {entry!r} must look like 'package.module:function'")


def validate_config(values: dict, source: str = "configuration") -> DictConfig:
    """Check a plain dict against the schema and return the complete, read-only config.

    Missing keys take the schema's defaults.

    Args:
        values: the nested plain dict (e.g. a loaded YAML file).
        source: what to call it in the error message.

    Returns:
        The complete, read-only ``DictConfig``.

    Raises:
        ConfigError: listing every problem at once.

    Example:
        >>> cfg = validate_config({"train": {"epochs": 5}})
        >>> cfg.train.epochs, cfg.train.batch_size  # the rest from the schema
        (5, 40)
        >>> validate_config({"train": {"epochs": 0, "lr": "fast"}})
        Traceback (most recent call last):
        ConfigError: Invalid configuration (2 problems):
          - train.epochs: 0 is out of range: must be >= 1
          - train.lr: 'fast' has the wrong type: expected float
    """
    problems: list[str] = []
    _check_section("", values, Config, problems)
    if isinstance(values, dict):
        _check_cross(values, problems)
    if problems:
        raise ConfigError(problems, source)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), values)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _override_problem(override: str) -> str | None:
    try:
        OmegaConf.from_dotlist([override])
    except Exception as exc:  # yaml.YAMLError for a value such as [1,2
        return f"override {override!r}: the value is not valid YAML ({exc})"
    return None


def _is_blank(path: Path) -> bool:
    """Whether a file holds nothing but white space and comments (an empty YAML document)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return not any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate once.

    Args:
        path: the YAML file.
        overrides: dotted ``key=value`` strings (YAML values), e.g. ``train.lr=1e-3``.

    Returns:
        The validated, read-only ``DictConfig``.

    Raises:
        ConfigError: unreadable file, bad override, unknown key, wrong type or value.

    Example:
        >>> cfg = load_config("configs/base.yaml", ["train.lr=1e-3", "train.epochs=5"])
        >>> cfg.train.lr, cfg.train.epochs
        (0.001, 5)
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path}: is a directory, not a config file"])
    if not path.is_file():
        raise ConfigError([f"{path}: the config file does not exist"])
    try:
        base = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise ConfigError([f"{path}: not a readable YAML file ({exc})"]) from exc
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError([f"{path}: not a readable YAML file ({exc})"]) from exc
    if not isinstance(base, DictConfig):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    if not base and _is_blank(path):  # OmegaConf reads an empty file as {}: every setting its schema default
        raise ConfigError([f"{path}: the config file is empty; list the settings to change (configs/base.yaml "
                           f"has them all), or write {{}} to run with the schema defaults"])
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        raise ConfigError([f"override {o!r}: expected key=value" for o in bad])
    bad = [_override_problem(o) for o in overrides]
    if any(bad):
        raise ConfigError([p for p in bad if p])
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        values = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return validate_config(values, source=f"configuration {path}")
