"""A served stream's state and its files in ``--state-dir``.

A stream is its recurrent state (h, c) after the frames answered so far, the number of
those frames (the next ``seq`` it accepts, once the frames in flight are answered), and the
last answers, kept so that a retried frame gets the same bytes again without stepping twice.

Files (JSON; the state as base64 of the float32 bytes, so it round-trips bit for bit; each
written by ``atomic_write``: a reader sees the old file or the new one, never a mix):

- ``state.json``: every stream held in memory; written by the periodic snapshot and, with
  ``"clean": true``, by a graceful stop. Its ``model`` fingerprint must match the model served.
- ``evicted/<id>.json``: one idle stream written out of memory; read back at its next frame.
- ``lock``: locked (``flock``) by the server using the folder, holding its pid: a second
  server on the same folder is refused.

A stream may be in both (evicted after the snapshot, or restored and not yet snapshotted):
the record with more answered frames is the newer one.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ignite_lstm._internal.atomic import atomic_write

__all__ = ["STREAM_ID", "StateDir", "StateError", "Stream"]

STREAM_ID = re.compile(r"^[0-9a-f]{16}$")
FORMAT = 1


class StateError(ValueError):
    """A state folder that this server cannot continue: the message names the file and the problem."""


@dataclass(eq=False)
class Stream:
    """One stream held by the server."""

    id: str
    freq_index: int | None
    frequency: float | None
    h: np.ndarray  # (L, 1, H) float32
    c: np.ndarray
    answered: int = 0  # frames answered: seq 0 .. answered - 1
    accepted: int = 0  # frames accepted (answered + in flight): the next seq
    answers: OrderedDict = field(default_factory=OrderedDict)  # seq -> (digest, body bytes)
    inflight: dict = field(default_factory=dict)  # seq -> (digest, future of the body)
    last_active: float = field(default_factory=time.monotonic)
    deleted: bool = False

    def record(self) -> dict:
        """The JSON-able record of the answered frames (the frames in flight are not in it)."""
        return {
            "freq_index": self.freq_index,
            "frequency": self.frequency,
            "answered": self.answered,
            "shape": list(self.h.shape),
            "h": _b64(self.h),
            "c": _b64(self.c),
            "answers": [[seq, digest, body.decode()] for seq, (digest, body) in self.answers.items()],
        }

    @classmethod
    def from_record(cls, stream_id: str, rec: dict) -> Stream:
        """The stream a ``record()`` describes."""
        shape = tuple(rec["shape"])
        h, c = (np.frombuffer(base64.b64decode(rec[k]), np.float32).reshape(shape).copy() for k in ("h", "c"))
        answers = OrderedDict((int(s), (d, b.encode())) for s, d, b in rec["answers"])
        n = int(rec["answered"])
        return cls(stream_id, rec["freq_index"], rec["frequency"], h, c, answered=n, accepted=n, answers=answers)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def _dump(path: Path, obj: dict) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    atomic_write(path, lambda f: (f.write(data), f.flush(), os.fsync(f.fileno())))


class StateDir:
    """The ``--state-dir`` folder: ``state.json`` and ``evicted/``.

    Args:
        path: the folder (created).
        fingerprint: the served model's fingerprint; files written for another model are refused.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str) -> None:
        self.path = Path(path)
        self.evicted_dir = self.path / "evicted"
        self.fingerprint = fingerprint
        try:
            self.evicted_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"--state-dir {self.path} could not be created: {exc}") from exc
        if not os.access(self.path, os.W_OK) or not os.access(self.evicted_dir, os.W_OK):
            raise StateError(f"--state-dir {self.path} is not writable.")
        self._lock = open(self.path / "lock", "a+")  # held while this process lives (a SIGKILL frees it)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "?"
            self._lock.close()
            raise StateError(
                f"--state-dir {self.path} is in use by another server (pid {owner}); one folder serves one server."
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()

    def close(self) -> None:
        """Release the folder (the lock) for the next server."""
        self._lock.close()

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def _check(self, path: Path, obj) -> dict:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise StateError(f"{path} is not a state file of ignite_lstm serve (format {FORMAT}).")
        if obj.get("model") != self.fingerprint:
            raise StateError(
                f"{path} was written for model {obj.get('model')}; the model served is "
                f"{self.fingerprint}: its streams cannot continue on other weights. Serve that "
                f"model, or use another --state-dir."
            )
        return obj

    def _read(self, path: Path) -> dict:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"{path} could not be read: {exc}") from exc
        return self._check(path, obj)

    def write_state(self, records: dict[str, dict], *, clean: bool) -> None:
        """Write ``state.json`` with ``records`` (id -> ``Stream.record()``), atomically."""
        _dump(
            self.state_file,
            {"format": FORMAT, "model": self.fingerprint, "clean": clean, "written": time.time(), "streams": records},
        )

    def read_state(self) -> tuple[dict[str, dict], dict]:
        """``(records, header)`` from ``state.json``; ``({}, {})`` when there is none."""
        if not self.state_file.exists():
            return {}, {}
        obj = self._read(self.state_file)
        return obj["streams"], {k: obj.get(k) for k in ("clean", "written")}

    def evicted_file(self, stream_id: str) -> Path:
        return self.evicted_dir / f"{stream_id}.json"

    def evicted_ids(self) -> list[str]:
        """The ids of the streams written out by eviction."""
        return sorted(p.stem for p in self.evicted_dir.glob("*.json") if STREAM_ID.match(p.stem))

    def write_evicted(self, stream: Stream) -> None:
        """Write one idle stream out of memory, atomically."""
        _dump(self.evicted_file(stream.id), {"format": FORMAT, "model": self.fingerprint, "stream": stream.record()})

    def read_evicted(self, stream_id: str) -> dict:
        """The record of an evicted stream."""
        path = self.evicted_file(stream_id)
        return self._read(path)["stream"]

    def remove_evicted(self, stream_id: str) -> None:
        self.evicted_file(stream_id).unlink(missing_ok=True)
