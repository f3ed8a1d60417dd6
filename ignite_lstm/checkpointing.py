"""What a training checkpoint holds beyond model and optimizer, and how a run resumes.

Files are written by Ignite's ``Checkpoint`` through ``DiskSaver(atomic=True)`` and
read back with ``Checkpoint.load_objects`` (``weights_only=True``), so every entry
here is made of tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["RNGState", "FixedState", "find_checkpoint", "CheckpointMismatch"]


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the run that tries to load it."""


class RNGState:
    """The torch, numpy and Python random generators as a checkpointable object."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


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

    def state_dict(self) -> dict[str, Any]:
        return dict(self.value)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = self.must_match or ()
        diffs = [f"{k}: checkpoint {state.get(k)!r} vs config {self.value.get(k)!r}" for k in keys
                 if state.get(k) != self.value.get(k)]
        if diffs:
            raise CheckpointMismatch(f"The checkpoint's {self.name} differs from this run's: " + "; ".join(diffs))


_STEP = re.compile(r"_(\d+)(?:\.\d+)?\.pt$")


def find_checkpoint(directory: str | Path) -> Path | None:
    """The newest training checkpoint of a run's ``checkpoints`` folder, or None.

    Training checkpoints are the ``last_*``, ``epoch_*`` and ``interrupted_*`` files
    (``best_*`` hold the model only); newest means the highest training iteration in
    the file name, then the latest modification time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    files = [p for p in directory.glob("*.pt") if p.name.startswith(("last_", "epoch_", "interrupted_"))]
    if not files:
        return None

    def key(p: Path) -> tuple[int, float]:
        m = _STEP.search(p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    return max(files, key=key)
