"""Checkpoint files: their kinds, finding the newest, reading one back safely.

Every entry of a checkpoint is made of tensors, numbers, strings, lists and dicts only, read back with
``torch.load(weights_only=True)``: a file that names code to run is refused, never loaded. The savers
that write them are in ``savers``; continuing a run from one is ``resume``'s.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "find_checkpoint",
    "read_checkpoint",
    "require_entries",
    "load_torch_file",
    "UnreadableFile",
    "CheckpointMismatch",
    "FixedState",
    "TRAINING_KINDS",
    "ESSENTIAL_KEYS",
]

TRAINING_KINDS = ("last", "epoch", "interrupted")  # checkpoint files that hold everything needed to continue
ESSENTIAL_KEYS = ("model", "model_args", "optimizer", "trainer")  # a training checkpoint without these is refused


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the run that tries to load it."""


class FixedState:
    """A value saved with the checkpoint that must match on load (model arguments, config).

    Args:
        value: a dict of plain values.
        name: what it is, for the error message.
        must_match: keys whose values must be equal on load (None: no check).
    """

    def __init__(self, value: Mapping[str, Any], name: str, must_match: tuple[str, ...] | None = None) -> None:
        self.value = dict(value)
        self.name = name
        self.must_match = must_match
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return dict(self.value)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = self.must_match or ()
        diffs = [
            f"{k}: checkpoint {state.get(k)!r} vs config {self.value.get(k)!r}"
            for k in keys
            if state.get(k) != self.value.get(k)
        ]
        if diffs:
            raise CheckpointMismatch(f"The checkpoint's {self.name} differs from this run's: " + "; ".join(diffs))
        self.loaded = dict(state)


_STEP = re.compile(r"_(\d+)(?:\.\d+)?\.pt$")


def find_checkpoint(directory: str | Path) -> Path | None:
    """The newest training checkpoint of a run's ``checkpoints`` folder, or None.

    Training checkpoints are the ``TRAINING_KINDS`` files: ``last_*``, ``epoch_*`` and
    ``interrupted_*`` (``best_*`` hold the model only); newest means the highest training iteration in
    the file name, then the latest modification time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    files = [p for p in directory.glob("*.pt") if p.name.startswith(tuple(f"{k}_" for k in TRAINING_KINDS))]
    if not files:
        return None

    def key(p: Path) -> tuple[int, float]:
        m = _STEP.search(p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    return max(files, key=key)


class UnreadableFile(ValueError):
    """Why ``torch.load(weights_only=True)`` failed; ``foreign``: a pickle of other objects."""

    def __init__(self, reason: str, foreign: bool = False) -> None:
        super().__init__(reason)
        self.foreign = foreign


_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.*?)(?:\s+Please use\b|\n\n|$)", re.DOTALL)


def load_torch_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with a reason of our own when it fails.

    Torch's own message for a file holding other objects advises loading it again with
    ``weights_only=False`` (which runs whatever code the file names): never passed on.

    Raises:
        UnreadableFile: the reason (an empty file, not a torch.save file, a pickle of
            other objects, a damaged archive).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from exc
    if not head:
        raise UnreadableFile("empty file (0 bytes)")
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or its legacy pickle
        raise UnreadableFile(f"not a file written by torch.save (it starts with {head!r})")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNPICKLER_DETAIL.search(str(exc))
        detail = found.group(1).strip().rstrip(".") if found else type(exc).__name__
        raise UnreadableFile(
            f"it holds objects other than tensors, numbers, strings, lists and dicts ({detail})", foreign=True
        ) from exc
    except Exception as exc:  # torch raises many types for a damaged file
        raise UnreadableFile(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


def require_entries(checkpoint: Any, required: Sequence[str], source: str | Path) -> None:
    """Refuse a checkpoint that is no dict or lacks one of the ``required`` entries.

    Raises:
        CheckpointMismatch: naming the entries missing.
    """
    missing = [k for k in required if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointMismatch(
            f"Checkpoint {source} is not a training checkpoint (no {', '.join(missing)}); resume from a "
            f"last_*, epoch_* or interrupted_* file (best_* files hold the model only)."
        )


def read_checkpoint(path: str | Path, required: Sequence[str] = ESSENTIAL_KEYS) -> dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``, on the CPU) and check that it is one.

    Args:
        path: the file.
        required: the entries it must hold (a model of your own has no ``model_args``).

    Raises:
        CheckpointMismatch: the file cannot be read, or lacks what a resume needs
            (a ``best_*`` file holds the model only).
    """
    path = Path(path)
    try:
        checkpoint = load_torch_file(path)
    except UnreadableFile as exc:
        what = "is not a checkpoint written by ignite_lstm" if exc.foreign else "could not be read"
        raise CheckpointMismatch(f"Checkpoint {path} {what}: {str(exc).rstrip('.')}.") from exc
    require_entries(checkpoint, required, path)
    return checkpoint
