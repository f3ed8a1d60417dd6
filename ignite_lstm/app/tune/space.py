"""The ``tune.space`` section of a study file: each entry checked against the config schema.

A space maps config keys (nested or dotted) to distributions: ``{type: float|int, low,
high, log, step}`` or ``{type: categorical, choices}``. ``check_space`` turns it into
``Distribution`` entries and reports every problem: a key the schema lacks, a section,
a key the tune command sets itself, a type that does not fit the key's, and each end of
a range or each choice that ``validate_config`` would refuse. ``ignite_lstm.app.tune.settings``
reads the rest of the ``tune:`` section.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from ignite_lstm.app.config.schema import Config, ConfigError, validate_config

__all__ = ["Distribution", "check_space", "is_int", "set_key"]

_FIELDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}
_SET_PER_TRIAL = ("output_dir", "name", "resume")  # the tune command sets these for each trial


@dataclass(frozen=True)
class Distribution:
    """One entry of ``tune.space``: the config key and what to draw for it."""

    key: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def grid(self) -> list:
        """The values of a grid search: the choices, or every int from low to high."""
        if self.type == "categorical":
            return list(self.choices)
        return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _leaves(node: Any, prefix: str, problems: list[str]) -> list[tuple[str, Any]]:
    """``{train: {lr: {type: ...}}}`` and ``{train.lr: {type: ...}}`` alike: (dotted key, spec) pairs."""
    if isinstance(node, dict) and "type" not in node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k), problems)]
    if not isinstance(node, dict):
        problems.append(
            f"tune.space.{prefix}: {node!r} is not a distribution: expected {{type: float|int|categorical, ...}}"
        )
        return []
    return [(prefix, node)]


def _schema_type(key: str) -> Any:
    """The schema's type of a dotted config key (Optional unwrapped); a dataclass for a section; None if unknown."""
    tp: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            return None
        tp = typing.get_type_hints(tp)[part]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def set_key(values: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        values = values.setdefault(part, {})
    values[last] = value


def check_space(space: Any, values: dict, cfg: Any, sampler: str, problems: list[str]) -> tuple[Distribution, ...]:
    if not isinstance(space, dict) or not space:
        problems.append(f"tune.space: {space!r} must be a non-empty mapping of config keys to distributions")
        return ()
    out, seen = [], set()
    for key, spec in _leaves(space, "", problems):
        where = f"tune.space.{key}"
        n = len(problems)
        if key in seen:
            problems.append(f"{where}: given twice (once nested, once as a dotted key)")
        seen.add(key)
        tp = _schema_type(key)
        if tp is None:
            problems.append(
                f"{where}: unknown config key: {key} is not in the schema (configs/base.yaml lists every key)"
            )
        elif dataclasses.is_dataclass(tp):
            problems.append(f"{where}: {key} is a section, not a value: search its keys ({key}.<name>)")
        elif key.split(".")[0] in _SET_PER_TRIAL or key.startswith("distributed."):
            problems.append(f"{where}: {key} is set by the tune command for each trial and cannot be searched")
        kind = spec.get("type")
        if kind not in _FIELDS:
            problems.append(f"{where}.type: {kind!r} is not allowed: choose one of 'float', 'int', 'categorical'")
        else:
            problems += [
                f"{where}.{k}: unknown key; allowed here: type, {', '.join(_FIELDS[kind])}"
                for k in spec
                if k != "type" and k not in _FIELDS[kind]
            ]
        if len(problems) > n:
            continue
        dist = _distribution(key, kind, spec, where, problems)
        if dist is None:
            continue
        if kind == "float" and tp is not float:
            problems.append(
                f"{where}: type float does not fit {key}, which takes {tp.__name__} values: use type int or categorical"
            )
        elif kind == "int" and tp not in (int, float):
            problems.append(
                f"{where}: type int does not fit {key}, which takes {getattr(tp, '__name__', tp)} "
                f"values: use type categorical"
            )
        elif sampler == "grid" and kind == "float":
            problems.append(
                f"{where}: tune.sampler grid needs int or categorical entries: list the float values as choices"
            )
        elif cfg is not None:  # every end of the range, every choice: what validate_config says of it
            probes = (
                [("choice", c) for c in dist.choices]
                if kind == "categorical"
                else [("low", dist.low), ("high", dist.high)]
            )
            for label, value in probes:
                trial = copy.deepcopy(values)
                set_key(trial, key, value)
                try:
                    validate_config(trial)
                except ConfigError as exc:
                    problems += [f"{where}: {label} {value!r} does not fit: {p}" for p in exc.problems]
        out.append(dist)
    return tuple(out)


def _distribution(key: str, kind: str, spec: dict, where: str, problems: list[str]) -> Distribution | None:
    n = len(problems)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: {choices!r} must be a non-empty list")
        elif not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            problems.append(f"{where}.choices: {choices!r}: each choice must be a number, a string, a bool or null")
        elif len({repr(c) for c in choices}) != len(choices):
            problems.append(f"{where}.choices: {choices!r} must not repeat a choice")
        return None if len(problems) > n else Distribution(key, kind, choices=tuple(choices))
    check = is_int if kind == "int" else _is_number
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for name, v in (("low", low), ("high", high)):
        if not check(v):
            problems.append(f"{where}.{name}: {v!r} has the wrong type: expected {kind}")
    if not isinstance(log, bool):
        problems.append(f"{where}.log: {log!r} has the wrong type: expected bool")
    if step is not None and not (check(step) and step > 0):
        problems.append(f"{where}.step: {step!r} must be a positive {kind} (or null)")
    if len(problems) > n:
        return None
    if low > high:
        problems.append(f"{where}: low {low!r} must not exceed high {high!r}")
    if log and low <= 0:
        problems.append(f"{where}.low: {low!r} must be > 0 on a log scale")
    if log and step not in (None, 1):
        problems.append(f"{where}.step: {step!r}: a log scale takes no step")
    return None if len(problems) > n else Distribution(key, kind, low=low, high=high, log=log, step=step)
