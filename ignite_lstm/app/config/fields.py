"""The machinery under the config schema: settings with rules and help, checks, renderings.

A schema is a tree of dataclasses whose fields come from ``setting`` (a default, a
one-line help text and rules: ``choices``, ``gt``, ``ge``, ``lt``, ``le``, ``length``,
``min_length``). ``check_section`` checks plain values against it and collects one
problem per bad value (key, value, what is allowed); ``commented_yaml`` and
``markdown_table`` render a config and the schema. This module knows no key itself:
``ignite_lstm.app.config.schema`` holds the schema.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import yaml

__all__ = ["setting", "check_section", "commented_yaml", "markdown_table"]

INT_LIMIT = 2**63  # every integer setting is below it (int64), unless its own rule says less

_RULE_TEXT = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}"}
_RULE_OK = {
    "gt": lambda v, b: v > b,
    "ge": lambda v, b: v >= b,
    "lt": lambda v, b: v < b,
    "le": lambda v, b: v <= b,
}


def setting(default: Any, help: str, **rules: Any) -> Any:
    """A schema field: its default, a one-line help text, and rules: choices, gt, ge, le, lt, length."""
    metadata = {"help": help, **rules}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _copy(value: Any) -> Any:
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


def _rules(f: dataclasses.Field) -> dict:
    return {k: v for k, v in f.metadata.items() if k != "help"}


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
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        if value is None:
            return
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        check_section(key, value, tp, problems)
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


def check_section(prefix: str, values: Any, schema: type, problems: list[str]) -> None:
    """Append to ``problems`` every key of ``values`` that ``schema`` does not know or does not accept."""
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


def _lookup(values: dict, key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def _allowed(tp: Any, rules: dict) -> str:
    """What a key accepts, from its type and rules: ``int >= 1``, ``null or one of gloo, nccl``."""
    words = []
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X], X | None
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


def commented_yaml(schema: type, values: dict, defaults: dict) -> str:
    """``values`` (complete) as YAML, every key with its help text as a comment.

    A key with choices lists them; a value that differs from ``defaults`` names the default.
    """
    lines = []
    for key, value, f, tp in _fields(schema, values):
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


def markdown_table(schema: type, defaults: dict) -> str:
    """One row per section and per key of ``schema`` (default, allowed values, meaning), in schema order."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, value, f, tp in _fields(schema, defaults):
        cells = (
            [f"**`{key}`**", "", "", f.metadata["help"]]
            if dataclasses.is_dataclass(tp)
            else [f"`{key}`", f"`{_yaml_value(value)}`", _allowed(tp, _rules(f)), f.metadata["help"]]
        )
        rows.append("| " + " | ".join(re.sub("<(?=[A-Za-z])", "&lt;", c.replace("|", "\\|")) for c in cells) + " |")
    return "\n".join(rows) + "\n"
