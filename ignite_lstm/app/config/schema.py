"""The configuration schema, loading with ``key=value`` overrides, and validation.

The schema (dataclasses below) is the one place where keys, types, defaults and
allowed values live, with a one-line help text per key; the choice lists come from
the modules that own them (``engines.UPDATES``, ``execution.EXECUTIONS``,
``optim.OPTIMIZERS``, ``losses.LOSSES``, ``schedules.SCHEDULES``). A config file
states only what it sets differently: ``configs/base.yaml`` is the recipe's changes.
``load_config`` reads a YAML file, applies overrides, checks everything at once (each
key here, the rules between keys in ``_config_rules``) and raises ``ConfigError``
listing every problem (key, value, what is allowed).

``ignite-lstm config CONFIG [key=value ...]`` prints the complete resolved
config, every key with its help text; ``--markdown`` prints the key table of the configuration reference (docs/reference/configuration.md).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.distributed import Backend

from ignite_lstm.app.config.fields import check_section
from ignite_lstm.app.config.fields import setting as _f
from ignite_lstm.app.config.rules import check_cross, with_defaults
from ignite_lstm.app.run.optim import OPTIMIZERS
from ignite_lstm.engine.execution import AMP_MODES, EXECUTIONS
from ignite_lstm.engine.factories import UPDATES
from ignite_lstm.engine.losses import LOSSES
from ignite_lstm.handlers.schedules import SCHEDULES

__all__ = ["Config", "ConfigError", "load_config", "validate_config"]

BACKENDS = (Backend.GLOO, Backend.NCCL)  # the torch backends run.py starts processes with (idist.Parallel)

# ``ignite-lstm config`` runs this module while the package (whose __init__ imports it)
# already holds it; runpy's warning about that says nothing useful here: main() is the package's.


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"Invalid {source} ({n} problem{'s' if n != 1 else ''}):\n{lines}")


@dataclass
class SplitConfig:
    seed: int = _f(1, "seed of the split's amplitude, phase and noise draws", ge=0)
    mixtures: int = _f(1, "noisy mixtures in the split; each gives one sequence per frequency", ge=1)


LAYOUTS = ("sequences", "streams")  # how setup_data batches the splits


@dataclass
class StreamConfig:
    chunk_steps: int | None = _f(None, "steps per batch of the streams layout; null: train.tbptt_steps", ge=1)
    shuffle: bool = _f(True, "a new order of the training sequences in the lanes every epoch (seeded by seed)")


@dataclass
class DataConfig:
    dir: str = _f("data", "split files live here, named by a hash of their generation parameters")
    frequencies: list[float] = _f([1.0, 3.0, 5.0, 7.0], "Hz; one selector channel each", gt=0.0, min_length=1)
    fs: float = _f(1000.0, "sampling rate, Hz", gt=0.0)
    duration: float = _f(10.0, "seconds per sequence (T = round(fs * duration) steps)", gt=0.0)
    amplitude: list[float] = _f([0.8, 1.2], "per-sample amplitude draw A ~ U(low, high)", ge=0.0, length=2)
    phase_scale: float = _f(0.01, "s in phi = s * U(0, 2 pi); 1.0 is the literal specification", ge=0.0)
    noise_sigma: float = _f(0.0, "std of additive Gaussian noise on the mixture", ge=0.0)
    input_scale: float = _f(
        4.0, "the mixture is multiplied by this in the input (S has amplitude ~1/4 per component)", gt=0.0
    )
    train: SplitConfig = _f(SplitConfig(seed=1, mixtures=10), "the training split: fresh noise draws per mixture")
    val: SplitConfig = _f(SplitConfig(seed=3, mixtures=1), "the validation split: model selection looks only at it")
    test: SplitConfig = _f(SplitConfig(seed=2, mixtures=1), "the test split (seed 2: the specification's)")
    layout: str = _f(
        "sequences",
        "sequences: a batch holds whole sequences; streams: the sequences one after another "
        "in lanes, cut into chunks (StreamLoader; needs train.carry_state)",
        choices=LAYOUTS,
    )
    stream: StreamConfig = _f(StreamConfig(), "the streams layout (ignite_lstm/data/streams.py)")


@dataclass
class ModelConfig:
    hidden_size: int = _f(128, "LSTM units per layer", ge=1)
    num_layers: int = _f(1, "stacked LSTM layers", ge=1)
    dropout: float = _f(0.0, "dropout between layers (needs num_layers > 1)", ge=0.0, lt=1.0)
    init: str = _f(
        "default",
        "gate biases: default (torch's) or chrono (each unit its own memory, 1 to chrono_t_max steps)",
        choices=("default", "chrono"),
    )
    chrono_t_max: float = _f(1000.0, "chrono: the longest memory in steps (1 Hz at 1 kHz: 1000)", gt=2.0)
    chrono_fraction: float = _f(
        1.0, "chrono: the share of each layer's units that get it (the others keep torch's biases)", gt=0.0, le=1.0
    )


@dataclass
class CurriculumConfig:
    enabled: bool = _f(False, "train on the first L steps of each sequence, L growing by stages up to T")
    lengths: list[int] = _f([], "stage lengths L in steps, increasing, each <= T; T follows as the last stage", ge=1)
    start: int | None = _f(None, "with lengths []: stages start, start*factor, ... (below T), then T", ge=1)
    factor: float = _f(2.0, "growth of L per stage, with start", gt=1.0)
    epochs_per_stage: int | None = _f(None, "epoch rule: every stage before the last lasts this many epochs", ge=1)
    metric: str | None = _f(None, "metric rule: advance when this validation metric on L beats threshold")
    threshold: float | None = _f(None, "metric rule: the value to beat (below for errors, above for snr, r2, corr)")
    min_epochs: int = _f(1, "metric rule: epochs a stage lasts at least", ge=1)
    max_epochs: int | None = _f(None, "metric rule: epochs after which a stage ends anyway; null: no limit", ge=1)
    tbptt: str = _f(
        "fixed", "window per stage: fixed (train.tbptt_steps) or follow (tbptt_steps = L)", choices=("fixed", "follow")
    )
    lr_factor: float = _f(
        1.0,
        "the learning rate is multiplied by this at every stage change (lr_scheduler none or plateau)",
        gt=0.0,
        le=1.0,
    )
    reset_optimizer: bool = _f(False, "clear the optimizer's moments at every stage change (its rate is kept)")
    retry_after: int | None = _f(
        None, "metric rule: a stage after the first not passed after this many epochs starts again from its start", ge=1
    )
    retries: int = _f(0, "how many times each stage may start again (retry_after)", ge=0)


@dataclass
class TrainConfig:
    epochs: int = _f(120, "passes over the training sequences", ge=1)
    batch_size: int = _f(40, "whole sequences per batch (global, over all processes); streams layout: the lanes", ge=1)
    tbptt_steps: int = _f(
        500, "window K: the state is detached every K steps (1 = literal L = 1, no gradient through time)", ge=1
    )
    update: str = _f("window", "one optimizer step per batch (sequence) or per window", choices=UPDATES)
    execution: str = _f(
        "auto",
        "how the model is called (create_trainer's execution=); stepwise is the literal per-step reference loop",
        choices=EXECUTIONS,
    )
    chunk_steps: int = _f(250, "steps per chunk of the fused tbptt_steps = 1 path (bounds memory)", ge=1)
    optimizer: str = _f("adam", "torch optimizer", choices=tuple(OPTIMIZERS))
    lr: float = _f(3e-3, "peak learning rate", gt=0.0)
    weight_decay: float = _f(0.0, "L2 (adamw: decoupled) weight decay", ge=0.0)
    momentum: float = _f(0.9, "sgd and rmsprop only", ge=0.0, lt=1.0)
    loss: str = _f("mse", "training loss, mean-reduced", choices=tuple(LOSSES))
    grad_clip: float | None = _f(1.0, "max gradient norm; null disables clipping", gt=0.0)
    amp: str | None = _f(
        None,
        "mixed precision: null (float32), bf16 or fp16 (autocast around forward and loss)",
        choices=tuple(AMP_MODES),
    )
    gradient_accumulation_steps: int = _f(
        1, "an optimizer step every N batches (each batch's gradient scaled 1/N); needs update: sequence", ge=1
    )
    carry_state: bool = _f(
        False,
        "stateful mode: lane i of each batch continues the state of lane i of the previous "
        "one (reset at each epoch start and by a batch's reset); sequences layout: needs "
        "full batches",
    )
    curriculum: CurriculumConfig = _f(
        CurriculumConfig(), "sequence-length curriculum (ignite_lstm/handlers/curriculum.py)"
    )


@dataclass
class EvalConfig:
    batch_size: int = _f(40, "sequences per evaluation batch (per process); streams layout: the lanes", ge=1)
    every: int = _f(1, "validate every N epochs (and after the last)", ge=1)
    execution: str = _f(
        "auto", "auto/fused: whole sequences in one call; stepwise: model.step per time step", choices=EXECUTIONS
    )
    report: bool = _f(True, "at the end: <run>/report with metrics JSON/Markdown and figures")
    warm_up_steps: int = _f(
        0, "the first N steps of every validation and test sequence warm the state up and count in no metric", ge=0
    )


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
    warmup_epochs: float = _f(
        0.0, "warm-up epochs (linear from 1% of lr; onecycle: its rise, 30% of the run when 0); 0 = none", ge=0.0
    )
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
    lr_scheduler: LRSchedulerConfig = _f(
        LRSchedulerConfig(), "Ignite param schedulers (ignite_lstm/handlers/schedules.py)"
    )
    tensorboard: TensorboardConfig = _f(TensorboardConfig(), "Ignite TensorboardLogger")
    extra: list[str] = _f([], 'your handlers: ["package.module:function"], called with (trainer, evaluator, config)')


@dataclass
class DistributedConfig:
    backend: str | None = _f(None, "null: one process; gloo for CPU processes, nccl for GPU ones", choices=BACKENDS)
    nproc_per_node: int = _f(1, "processes started by run.py (ignored under torchrun)", ge=1)


@dataclass
class Config:
    seed: int = _f(0, "seed of weights, shuffling and dropout", ge=0, lt=2**32)  # numpy's seed range
    output_dir: str = _f("runs", "parent of the run folders")
    name: str | None = _f(None, "run folder name; null: <config name>-<date-time>")
    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N or mps")
    threads: int | None = _f(
        None, "torch CPU threads; null keeps torch's default", ge=1, lt=2**31
    )  # torch.set_num_threads takes a C int
    resume: str | None = _f(
        None, "null, auto (newest checkpoint of this config's runs, or of name) or path/to/checkpoint.pt"
    )
    data: DataConfig = _f(DataConfig(), "the signals: generation parameters and the three splits")
    model: ModelConfig = _f(ModelConfig(), "the StatefulLSTM")
    train: TrainConfig = _f(TrainConfig(), "training: truncated BPTT, optimizer, loss")
    eval: EvalConfig = _f(EvalConfig(), "validation during training and the final evaluation")
    handlers: HandlersConfig = _f(HandlersConfig(), "Ignite handlers attached to the trainer")
    distributed: DistributedConfig = _f(DistributedConfig(), "several processes (idist.Parallel)")


@functools.cache
def _defaults() -> dict:
    """The schema's defaults as a plain dict (read only: shared by every call)."""
    return OmegaConf.to_container(OmegaConf.structured(Config))


# keys renamed since 0.1 -> their names now; a config (or a run folder's config.yaml) with the old name still
# loads, with a DeprecationWarning, for one release
RENAMED_KEYS = {("train", "engine"): "execution", ("eval", "engine"): "execution"}


def _renamed_keys(values: Any) -> Any:
    """``values`` with the keys of ``RENAMED_KEYS`` under their new names (a copy where one was renamed)."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for (section, old), new in RENAMED_KEYS.items():
        part = out.get(section)
        if isinstance(part, dict) and old in part:
            part = dict(part)
            if new not in part:
                part[new] = part[old]
            del part[old]
            out[section] = part
            warnings.warn(
                f"{section}.{old} is deprecated and will be removed in ignite_lstm 0.3.0; use {section}.{new}.",
                DeprecationWarning,
                stacklevel=3,
            )
    return out


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
    values = _renamed_keys(values)
    check_section("", values, Config, problems)
    if isinstance(values, dict):
        check_cross(with_defaults(values, _defaults()), problems, backends=BACKENDS)
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
        raise ConfigError(
            [
                f"{path}: the config file is empty; list the settings to change (`python -m "
                f"ignite_lstm.app.config.schema` prints every key with its default), or write {{}} to run with "
                f"the schema defaults"
            ]
        )
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
