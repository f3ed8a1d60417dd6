"""The configuration schema, loading with ``key=value`` overrides, and validation.

The schema (dataclasses below) is the one place where keys, types, defaults and
allowed values live, with a one-line help text per key; the choice lists come from
the modules that own them (``engines.UPDATES``, ``execution.EXECUTIONS``,
``optim.OPTIMIZERS``, ``losses.LOSSES``, ``schedules.SCHEDULES``). A config file
states only what it sets differently: ``configs/base.yaml`` is the recipe's changes.
``load_config`` reads a YAML file, applies overrides, checks everything at once
and raises ``ConfigError`` listing every problem (key, value, what is allowed).

``python -m ignite_lstm.config CONFIG [key=value ...]`` prints the complete resolved
config, every key with its help text; ``--markdown`` prints the key table of the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.distributed import Backend

from ignite_lstm.engines import UPDATES
from ignite_lstm.execution import EXECUTIONS
from ignite_lstm.losses import LOSSES
from ignite_lstm.metrics import METRIC_NAMES
from ignite_lstm.optim import OPTIMIZERS
from ignite_lstm.schedules import SCHEDULES

__all__ = ["Config", "ConfigError", "load_config", "validate_config", "commented_yaml", "markdown_table", "main"]

BACKENDS = (Backend.GLOO, Backend.NCCL)  # the torch backends run.py starts processes with (idist.Parallel)

# ``python -m ignite_lstm.config`` runs this module while the package (whose __init__ imports it)
# already holds it; runpy's warning about that says nothing useful here: main() is the package's.
warnings.filterwarnings("ignore", message="'ignite_lstm.config' found in sys.modules", category=RuntimeWarning)


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"Invalid {source} ({n} problem{'s' if n != 1 else ''}):\n{lines}")


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A schema field: its default, a one-line help text, and rules: choices, gt, ge, le, lt, length."""
    metadata = {"help": help, **rules}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _copy(value: Any) -> Any:
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


@dataclass
class SplitConfig:
    seed: int = _f(1, "seed of the split's amplitude, phase and noise draws", ge=0)
    mixtures: int = _f(1, "noisy mixtures in the split; each gives one sequence per frequency", ge=1)


@dataclass
class DataConfig:
    dir: str = _f("data", "split files live here, named by a hash of their generation parameters")
    frequencies: list[float] = _f([1.0, 3.0, 5.0, 7.0], "Hz; one selector channel each", gt=0.0, min_length=1)
    fs: float = _f(1000.0, "sampling rate, Hz", gt=0.0)
    duration: float = _f(10.0, "seconds per sequence (T = round(fs * duration) steps)", gt=0.0)
    amplitude: list[float] = _f([0.8, 1.2], "per-sample amplitude draw A ~ U(low, high)", ge=0.0, length=2)
    phase_scale: float = _f(0.01, "s in phi = s * U(0, 2 pi); 1.0 is the literal specification", ge=0.0)
    noise_sigma: float = _f(0.0, "std of additive Gaussian noise on the mixture", ge=0.0)
    input_scale: float = _f(4.0, "the mixture is multiplied by this in the input (S has amplitude ~1/4 per "
                                 "component)", gt=0.0)
    train: SplitConfig = _f(SplitConfig(seed=1, mixtures=10), "the training split: fresh noise draws per mixture")
    val: SplitConfig = _f(SplitConfig(seed=3, mixtures=1), "the validation split: model selection looks only at it")
    test: SplitConfig = _f(SplitConfig(seed=2, mixtures=1), "the test split (seed 2: the specification's)")


@dataclass
class ModelConfig:
    hidden_size: int = _f(128, "LSTM units per layer", ge=1)
    num_layers: int = _f(1, "stacked LSTM layers", ge=1)
    dropout: float = _f(0.0, "dropout between layers (needs num_layers > 1)", ge=0.0, lt=1.0)


@dataclass
class TrainConfig:
    epochs: int = _f(120, "passes over the training sequences", ge=1)
    batch_size: int = _f(40, "whole sequences per batch (global, over all processes)", ge=1)
    tbptt_steps: int = _f(500, "window K: the state is detached every K steps (1 = literal L = 1, no gradient "
                               "through time)", ge=1)
    update: str = _f("window", "one optimizer step per batch (sequence) or per window", choices=UPDATES)
    engine: str = _f("auto", "how the model is called; stepwise is the literal per-step reference loop",
                     choices=EXECUTIONS)
    chunk_steps: int = _f(250, "steps per chunk of the fused tbptt_steps = 1 path (bounds memory)", ge=1)
    optimizer: str = _f("adam", "torch optimizer", choices=tuple(OPTIMIZERS))
    lr: float = _f(3e-3, "peak learning rate", gt=0.0)
    weight_decay: float = _f(0.0, "L2 (adamw: decoupled) weight decay", ge=0.0)
    momentum: float = _f(0.9, "sgd and rmsprop only", ge=0.0, lt=1.0)
    loss: str = _f("mse", "training loss, mean-reduced", choices=tuple(LOSSES))
    grad_clip: Optional[float] = _f(1.0, "max gradient norm; null disables clipping", gt=0.0)


@dataclass
class EvalConfig:
    batch_size: int = _f(40, "sequences per evaluation batch (per process)", ge=1)
    every: int = _f(1, "validate every N epochs (and after the last)", ge=1)
    engine: str = _f("auto", "auto/fused: whole sequences in one call; stepwise: model.step per time step",
                     choices=EXECUTIONS)
    report: bool = _f(True, "at the end: <run>/report with metrics JSON/Markdown and figures")


@dataclass
class CheckpointConfig:
    enabled: bool = _f(True, "write best/last/every-N checkpoints (Ctrl-C saves one even when off)")
    monitor: str = _f("mse", "validation metric deciding the best model (mse, snr, mse_f3, ...)")
    n_saved: int = _f(1, "files kept of each kind (best, last, every-N)", ge=1)
    every: int = _f(0, "also keep a training checkpoint every N epochs; 0 = off", ge=0)


@dataclass
class EarlyStoppingConfig:
    enabled: bool = _f(False, "stop when the validation monitor stops improving")
    monitor: str = _f("mse", "validation metric; direction follows the metric (lower mse, higher snr)")
    patience: int = _f(10, "validations without improvement before stopping", ge=1)
    min_delta: float = _f(0.0, "smallest change that counts as improvement", ge=0.0)
    restore_best: bool = _f(True, "load the best checkpoint's weights before the final evaluation")


@dataclass
class LRSchedulerConfig:
    name: str = _f("cosine", "learning-rate schedule, set before every optimizer step", choices=SCHEDULES)
    warmup_epochs: float = _f(0.0, "warm-up epochs (linear from 1% of lr; onecycle: its rise, 30% of the run "
                                   "when 0); 0 = none", ge=0.0)
    min_lr: float = _f(0.0, "cosine end value / plateau floor", ge=0.0)
    step_size: int = _f(10, "step: epochs between decays", ge=1)
    gamma: float = _f(0.5, "step: decay factor", gt=0.0, le=1.0)
    monitor: str = _f("mse", "plateau: validation metric")
    patience: int = _f(5, "plateau: validations without improvement before a decay", ge=0)
    factor: float = _f(0.5, "plateau: decay factor", gt=0.0, lt=1.0)


@dataclass
class TensorboardConfig:
    enabled: bool = _f(True, "event files in <run>/tb (tensorboardX)")
    every: int = _f(1, "log training loss, grad norm and lr every N iterations", ge=1)
    window_every: int = _f(10, "log the window loss every N windows; 0 = off", ge=0)
    histograms: bool = _f(False, "weight histograms per epoch")


@dataclass
class HandlersConfig:
    progress_bar: bool = _f(True, "Ignite ProgressBar with the running loss (rank 0)")
    terminate_on_nan: bool = _f(True, "stop at the first NaN/inf loss; the last good checkpoint stays")
    checkpoint: CheckpointConfig = _f(CheckpointConfig(), "checkpoints in <run>/checkpoints")
    early_stopping: EarlyStoppingConfig = _f(EarlyStoppingConfig(), "Ignite EarlyStopping on a validation metric")
    lr_scheduler: LRSchedulerConfig = _f(LRSchedulerConfig(), "Ignite param schedulers (ignite_lstm/schedules.py)")
    tensorboard: TensorboardConfig = _f(TensorboardConfig(), "Ignite TensorboardLogger")
    extra: list[str] = _f([], 'your handlers: ["package.module:function"], called with (trainer, evaluator, '
                              'config)')


@dataclass
class DistributedConfig:
    backend: Optional[str] = _f(None, "null: one process; gloo for CPU processes, nccl for GPU ones", choices=BACKENDS)
    nproc_per_node: int = _f(1, "processes started by run.py (ignored under torchrun)", ge=1)


@dataclass
class Config:
    seed: int = _f(0, "seed of weights, shuffling and dropout", ge=0, lt=2**32)  # numpy's seed range
    output_dir: str = _f("runs", "parent of the run folders")
    name: Optional[str] = _f(None, "run folder name; null: <config name>-<date-time>")
    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N or mps")
    threads: Optional[int] = _f(None, "torch CPU threads; null keeps torch's default",
                                ge=1, lt=2**31)  # torch.set_num_threads takes a C int
    resume: Optional[str] = _f(None, "null, auto (newest checkpoint of this config's runs, or of name) or "
                                     "path/to/checkpoint.pt")
    data: DataConfig = _f(DataConfig(), "the signals: generation parameters and the three splits")
    model: ModelConfig = _f(ModelConfig(), "the StatefulLSTM")
    train: TrainConfig = _f(TrainConfig(), "training: truncated BPTT, optimizer, loss")
    eval: EvalConfig = _f(EvalConfig(), "validation during training and the final evaluation")
    handlers: HandlersConfig = _f(HandlersConfig(), "Ignite handlers attached to the trainer")
    distributed: DistributedConfig = _f(DistributedConfig(), "several processes (idist.Parallel)")


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


def _rules(f: dataclasses.Field) -> dict:
    return {k: v for k, v in f.metadata.items() if k != "help"}


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
            _check(f"{prefix + '.' if prefix else ''}{name}", values[name], hints[name], _rules(f), problems)


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
    warmup = sched.get("warmup_epochs", LRSchedulerConfig().warmup_epochs)
    epochs = train.get("epochs", TrainConfig().epochs)
    if valid("handlers.lr_scheduler.warmup_epochs", "train.epochs") and _is_number(warmup) and _is_number(epochs) \
            and warmup >= epochs:
        problems.append(f"handlers.lr_scheduler.warmup_epochs: {warmup!r} must be shorter than train.epochs ({epochs})")
    stop, ckpt = _section(handlers, "early_stopping"), _section(handlers, "checkpoint")
    if stop.get("enabled") is True and stop.get("restore_best", EarlyStoppingConfig().restore_best) is True \
            and ckpt.get("enabled", CheckpointConfig().enabled) is False:
        problems.append("handlers.early_stopping.restore_best: true needs handlers.checkpoint.enabled: true "
                        "(the best weights are read from the best checkpoint)")
    dist = _section(cfg, "distributed")
    if valid("distributed.backend", "distributed.nproc_per_node") and dist.get("backend") is None \
            and dist.get("nproc_per_node", DistributedConfig().nproc_per_node) != 1:
        problems.append(f"distributed.nproc_per_node: more than 1 process needs distributed.backend "
                        f"({' or '.join(BACKENDS)})")
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
        raise ConfigError([f"{path}: the config file is empty; list the settings to change (`python -m "
                           f"ignite_lstm.config` prints every key with its default), or write {{}} to run with the schema defaults"])
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


def _fields(schema: type, values: dict, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field, Any]]:
    """``(dotted key, value, field, type)`` of every key, in schema order; a section before its keys."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, tp = prefix + f.name, hints[f.name]
        yield key, values[f.name], f, tp
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, values[f.name], key + ".")


def _yaml_value(value: Any) -> str:
    """One value as YAML on one line: ``0.003``, ``null``, ``[1.0, 3.0]``."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("\n...\n").strip()


def _defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.structured(Config))


def _lookup(values: dict, key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def commented_yaml(cfg: Any) -> str:
    """The complete config as YAML, every key with its help text as a comment.

    A value that differs from the schema's default names that default in its comment.

    Args:
        cfg: a validated config (``load_config``, ``validate_config``).

    Returns:
        YAML text that ``load_config`` reads back to the same config.

    Example:
        >>> print(commented_yaml(load_config("configs/base.yaml")))  # doctest: +ELLIPSIS
        seed: 0                           # seed of weights, shuffling and dropout
        ...
    """
    values, defaults, lines = OmegaConf.to_container(cfg), _defaults(), []
    for key, value, f, tp in _fields(Config, values):
        section, depth = dataclasses.is_dataclass(tp), key.count(".")
        if section and depth == 0:
            lines.append("")
        text = "  " * depth + key.rsplit(".", 1)[-1] + ":" + ("" if section else f" {_yaml_value(value)}")
        note, rules = f.metadata["help"], _rules(f)
        if "choices" in rules:
            note += f" ({_allowed(tp, rules)})"
        default = _lookup(defaults, key)
        if not section and value != default:
            note += f" (schema default: {_yaml_value(default)})"
        lines.append(f"{text:<33} # {note}")
    return "\n".join(lines) + "\n"


def _allowed(tp: Any, rules: dict) -> str:
    """What a key accepts, from its type and rules: ``int >= 1``, ``null or one of gloo, nccl``."""
    words = []
    if typing.get_origin(tp) is typing.Union:  # Optional[X]
        words.append("null or")
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    bounds = [_RULE_TEXT[r].format(b) for r, b in rules.items() if r in _RULE_TEXT]
    if typing.get_origin(tp) is list:
        words.append(f"list of {_type_name(typing.get_args(tp)[0])}")
        if bounds:
            words[-1] += ", each " + ", ".join(bounds)
        for rule, text in (("length", "exactly"), ("min_length", "at least")):
            if rule in rules:
                words[-1] += f", {text} {rules[rule]} entr{'y' if rules[rule] == 1 else 'ies'}"
    elif "choices" in rules:
        words.append("one of " + ", ".join(str(c) for c in rules["choices"]))
    else:
        words.append(" ".join([_type_name(tp), ", ".join(bounds)]).strip())
    return " ".join(words)


def markdown_table() -> str:
    """The table of every key (default, allowed values, meaning) that the README's Configuration section holds.

    Returns:
        A Markdown table, one row per section and per key, in schema order.

    Example:
        >>> print(markdown_table().splitlines()[2])
        | `seed` | `0` | int >= 0, < 4294967296 | seed of weights, shuffling and dropout |
    """
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, value, f, tp in _fields(Config, _defaults()):
        cells = [f"**`{key}`**", "", "", f.metadata["help"]] if dataclasses.is_dataclass(tp) else \
            [f"`{key}`", f"`{_yaml_value(value)}`", _allowed(tp, _rules(f)), f.metadata["help"]]
        rows.append("| " + " | ".join(re.sub("<(?=[A-Za-z])", "&lt;", c.replace("|", "\\|")) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ignite_lstm.config [CONFIG [key=value ...]] [--markdown]``; returns the exit status.

    Prints the complete resolved config (the schema's defaults without CONFIG), every key
    with its help text as a YAML comment; a bad config exits 2 with the messages of ``run.py``.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0, or 2 for a bad config or bad arguments.

    Example:
        >>> main(["configs/base.yaml", "train.epochs=5"])  # prints the YAML
        0
    """
    parser = argparse.ArgumentParser(
        prog="python -m ignite_lstm.config",
        description="Print a config resolved against the schema: every key, its value and its help text.",
        epilog="Example: python -m ignite_lstm.config configs/base.yaml train.lr=1e-3",
    )
    parser.add_argument("config", nargs="?", help="YAML config file, e.g. configs/base.yaml (none: the schema's "
                                                  "defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    parser.add_argument("--markdown", action="store_true", help="print the key table of the README instead")
    args = parser.parse_args(argv)
    if args.markdown:
        if args.config:
            parser.error("--markdown takes no config: the table shows the schema's defaults")
        print(markdown_table(), end="")
        return 0
    try:
        cfg = load_config(args.config, args.overrides) if args.config else validate_config({})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m ignite_lstm.config", *([args.config] if args.config else []), *args.overrides])
    print(f"# {command}\n# The complete config, every key with its help text; \"(schema default: X)\" marks a value set\n"
          f"# differently from the schema (ignite_lstm/config.py). python run.py reads this output as it is.")
    print(commented_yaml(cfg), end="")
    return 0


if __name__ == "__main__":
    from ignite_lstm.config import main as _main  # the package's module, not this second copy of it

    sys.exit(_main())
