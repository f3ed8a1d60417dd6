"""The ``tune:`` section of a study file: its schema, loading and validation (no optuna here).

A study file is a config (any keys of ``configs/base.yaml``) with a ``tune:`` section;
``tune.base`` names the config file it is laid over (relative to the study file), so a
study follows its recipe. ``load_study`` reads the file, applies ``key=value`` overrides
(``tune.trials=4`` as well as ``train.epochs=2``), validates the config with the schema of
``ignite_lstm.app.config.schema`` and the ``tune:`` section here (its ``space`` in ``tune_space``), and
reports every problem at once:

    tune:
      base: quick.yaml
      trials: 8
      metric: mse                      # a validation metric; direction from the metric
      repeats: {seeds: [0, 1], threads: [1, 2]}   # 4 trainings per trial (default: one, the config's)
      aggregate: worst                 # the trial's value: worst | mean | quantile (with q)
      space:
        train.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
        model.hidden_size: {type: categorical, choices: [8, 16, 32]}

The config that ``run.py`` takes has no ``tune:`` key: a trial's config, and the best
config the study writes, are the config alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ignite_lstm.app.config.rules import validation_metrics
from ignite_lstm.app.config.schema import ConfigError, validate_config
from ignite_lstm.app.tune.space import Distribution, check_space, is_int, set_key
from ignite_lstm.metrics.directions import metric_direction
from ignite_lstm.search.repeats import AGGREGATES, ISAS, Variant, variant_grid

__all__ = ["Distribution", "TuneSettings", "load_study", "target_trials", "trial_config"]

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "successive_halving", "none")
_TUNE_KEYS = (
    "base",
    "study_name",
    "storage",
    "trials",
    "metric",
    "direction",
    "sampler",
    "seed",
    "pruner",
    "repeats",
    "aggregate",
    "q",
    "space",
)
_PRUNER_KEYS = {"name": "median", "startup_trials": 5, "warmup_epochs": 0}
_REPEAT_KEYS = ("seeds", "threads", "isa")


@dataclass(frozen=True)
class TuneSettings:
    """The validated ``tune:`` section."""

    space: tuple[Distribution, ...]
    study_name: str
    storage: str | None
    trials: int
    metric: str
    direction: str  # minimize | maximize
    sampler: str
    seed: int | None
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    repeats: tuple[Variant, ...] = (Variant(),)  # Variant(): the config's own seed and threads
    aggregate: str = "mean"
    q: float = 0.5


def _read_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise ConfigError([f"{what}{path}: the file does not exist"])
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError([f"{what}{path}: not a readable YAML file ({exc})"]) from exc
    if not isinstance(node, DictConfig):
        raise ConfigError([f"{what}{path}: the top level must be a mapping of sections"])
    return node


def _apply_overrides(top: DictConfig, overrides: Sequence[str]) -> None:
    """``key=value`` into the study file; a ``tune.space`` entry is replaced whole (another type), not merged."""
    bad = [f"override {o!r}: expected key=value" for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        raise ConfigError(bad)
    problems = []
    for o in overrides:
        key = o.split("=", 1)[0]
        try:
            value = OmegaConf.select(OmegaConf.from_dotlist([o]), key)
        except Exception as exc:
            problems.append(f"override {o!r}: the value is not valid YAML ({exc})")
            continue
        OmegaConf.update(top, key, value, merge=not key.startswith("tune.space."))
    if problems:
        raise ConfigError(problems)


def load_study(
    path: str | Path, overrides: Sequence[str] = (), default_name: str | None = None
) -> tuple[DictConfig, TuneSettings]:
    """Read a study file, apply overrides, validate the config and its ``tune:`` section.

    Args:
        path: the study file (a YAML config with a ``tune:`` section).
        overrides: dotted ``key=value`` strings, for the config and for ``tune.*``.
        default_name: ``tune.study_name`` when the file sets none (default: the file's stem).

    Returns:
        ``(cfg, settings)``: the validated, read-only config of the study's trials (without
        ``tune``) and the ``TuneSettings``.

    Raises:
        ConfigError: listing every problem, each naming its key.
    """
    path = Path(path)
    top = _read_yaml(path, "")
    try:
        _apply_overrides(top, overrides)
        tune = top.get("tune")
        layers = []
        if isinstance(tune, DictConfig) and tune.get("base") is not None:
            base = tune.get("base")
            if not isinstance(base, str):
                raise ConfigError([f"tune.base: {base!r} has the wrong type: expected the path of a config file"])
            layers.append(_read_yaml(path.parent / base, "tune.base: "))
        values = OmegaConf.to_container(OmegaConf.merge(*layers, top), resolve=True)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf merge or interpolation errors
        raise ConfigError([f"{path}: {exc}"]) from exc
    tune = values.pop("tune", None)
    if not isinstance(tune, dict):
        raise ConfigError(
            [
                f"tune: {path} has no tune: section (a study file is a config with a tune: section, "
                f"see configs/tune-quick.yaml)"
            ]
        )
    problems: list[str] = []
    cfg = None
    try:
        cfg = validate_config(values)
    except ConfigError as exc:
        problems += exc.problems
    if cfg is not None and cfg.distributed.backend is not None:
        problems.append(
            f"distributed.backend: {cfg.distributed.backend!r}: each trial trains on one process; "
            f"run trials in parallel with --workers N instead (set null)"
        )
    settings = _check_tune(tune, values, cfg, default_name or path.stem, problems)
    if problems:
        raise ConfigError(problems, f"study {path}")
    return cfg, settings


def _choose(problems: list[str], key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        problems.append(f"{key}: {value!r} is not allowed: choose one of {', '.join(repr(a) for a in allowed)}")


def _count(problems: list[str], key: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not is_int(value):
        problems.append(f"{key}: {value!r} has the wrong type: expected int")
    elif value < low:
        problems.append(f"{key}: {value!r} is out of range: must be >= {low}")


def _check_tune(tune: dict, values: dict, cfg: Any, default_name: str, problems: list[str]) -> TuneSettings | None:
    for key in tune:
        if key not in _TUNE_KEYS:
            problems.append(f"tune.{key}: unknown key; allowed here: {', '.join(_TUNE_KEYS)}")
    t = {
        "study_name": default_name,
        "storage": None,
        "trials": 20,
        "metric": "mse",
        "direction": None,
        "sampler": "tpe",
        "seed": 0,
        **{k: v for k, v in tune.items() if k != "base"},
    }
    pruner = {**_PRUNER_KEYS, **(t.get("pruner") or {})} if isinstance(t.get("pruner", {}), dict) else None
    if pruner is None:
        problems.append(
            f"tune.pruner: {t['pruner']!r} has the wrong type: expected a section with name, "
            f"startup_trials, warmup_epochs"
        )
        pruner = dict(_PRUNER_KEYS)
    for key in pruner:
        if key not in _PRUNER_KEYS:
            problems.append(f"tune.pruner.{key}: unknown key; allowed here: {', '.join(_PRUNER_KEYS)}")
    _choose(problems, "tune.pruner.name", pruner["name"], PRUNERS)
    _count(problems, "tune.pruner.startup_trials", pruner["startup_trials"], 0)
    _count(problems, "tune.pruner.warmup_epochs", pruner["warmup_epochs"], 0)
    _count(problems, "tune.trials", t["trials"], 1)
    _count(problems, "tune.seed", t["seed"], 0, optional=True)
    _choose(problems, "tune.sampler", t["sampler"], SAMPLERS)
    name = default_name if t["study_name"] is None else t["study_name"]
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        problems.append(f"tune.study_name: {name!r} must be a non-empty name without '/' (it names the study folder)")
    storage = t["storage"]
    if storage is not None and not (
        isinstance(storage, str)
        and ((storage.startswith("journal:") and len(storage) > len("journal:")) or "://" in storage)
    ):
        problems.append(
            f"tune.storage: {storage!r} is not a storage: use null (an SQLite file in the study folder), "
            f"a database URL such as sqlite:///study.db or postgresql://user@host/db, or journal:PATH"
        )
    freqs = list(cfg.data.frequencies) if cfg is not None else []
    metrics = validation_metrics(freqs)  # the monitors' list: one owner
    metric = t["metric"]
    _choose(problems, "tune.metric", metric, metrics)
    direction = t["direction"]
    if direction is None and metric in metrics:
        direction = "minimize" if metric_direction(metric) == "min" else "maximize"
    elif direction is not None:
        _choose(problems, "tune.direction", direction, ("minimize", "maximize", None))
    space = check_space(t.get("space"), values, cfg, t["sampler"], problems)
    repeats = _check_repeats(t.get("repeats"), cfg, problems)
    how, q = t.get("aggregate", "mean"), t.get("q", 0.5)
    _choose(problems, "tune.aggregate", how, AGGREGATES)
    if not isinstance(q, (int, float)) or isinstance(q, bool):
        problems.append(f"tune.q: {q!r} has the wrong type: expected a number in [0, 1]")
    elif not 0.0 <= q <= 1.0:
        problems.append(f"tune.q: {q!r} is out of range: must be in [0, 1] (0 the best repeat, 1 the worst)")
    elif "q" in t and how != "quantile":
        problems.append(f"tune.q: {q!r} is only read with tune.aggregate: quantile (it is {how!r})")
    if problems:
        return None
    return TuneSettings(
        space=space,
        study_name=name,
        storage=storage,
        trials=t["trials"],
        metric=metric,
        direction=direction,
        sampler=t["sampler"],
        seed=t["seed"],
        pruner=pruner["name"],
        pruner_startup_trials=pruner["startup_trials"],
        pruner_warmup_epochs=pruner["warmup_epochs"],
        repeats=repeats,
        aggregate=how,
        q=float(q),
    )


def _check_repeats(section: Any, cfg: Any, problems: list[str]) -> tuple[Variant, ...]:
    """``tune.repeats``: the cross product of its seeds, threads and isa (defaults: the config's own)."""
    if section is None:
        return (Variant(),)
    if not isinstance(section, dict):
        problems.append(
            f"tune.repeats: {section!r} has the wrong type: expected a section with {', '.join(_REPEAT_KEYS)} "
            f"(lists; their cross product is the repeats)"
        )
        return (Variant(),)
    for key in section:
        if key not in _REPEAT_KEYS:
            problems.append(f"tune.repeats.{key}: unknown key; allowed here: {', '.join(_REPEAT_KEYS)}")
    own = {"seeds": [cfg.seed if cfg is not None else 0], "threads": [cfg.threads if cfg is not None else None]}
    lists: dict[str, list] = {}
    for key, low in (("seeds", 0), ("threads", 1), ("isa", None)):
        value = section.get(key, own.get(key, ["native"]))
        if not isinstance(value, list):
            problems.append(f"tune.repeats.{key}: {value!r} has the wrong type: expected a list")
            value = []
        elif not value:
            problems.append(f"tune.repeats.{key}: the list is empty: give one value at least")
        elif len(set(map(repr, value))) < len(value):
            problems.append(f"tune.repeats.{key}: {value!r} repeats a value")
        for i, v in enumerate(value):
            if key == "isa":
                _choose(problems, f"tune.repeats.isa[{i}]", v, ISAS)
            elif not (v is None and key == "threads" and key not in section):
                _count(problems, f"tune.repeats.{key}[{i}]", v, low if low is not None else 0)
        lists[key] = value
    if problems:
        return (Variant(),)
    return tuple(variant_grid(lists["seeds"], lists["threads"], lists["isa"]))


def trial_config(cfg: Any, params: dict[str, Any], **top: Any) -> DictConfig:
    """The study's config with a trial's values (dotted keys) and top-level keys set, validated.

    Example:
        >>> trial_config(cfg, {"train.lr": 0.01}, output_dir="runs/s/trials", name="trial-0003").train.lr
        0.01
    """
    values = OmegaConf.to_container(cfg, resolve=True)
    for key, value in {**params, **top}.items():
        set_key(values, key, value)
    return validate_config(values)


def target_trials(settings: TuneSettings) -> int:
    """``tune.trials``, at most the size of the grid for the grid sampler."""
    if settings.sampler == "grid":
        return min(settings.trials, math.prod(len(d.grid()) for d in settings.space))
    return settings.trials
