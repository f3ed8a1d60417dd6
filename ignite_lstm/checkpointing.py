"""Checkpoint files: their kinds, the savers that write them, finding and reading them.

Files are written by Ignite's ``Checkpoint`` through a ``DiskSaver`` that writes
atomically, and read back with ``torch.load(weights_only=True)``, so every entry is
made of tensors, numbers, strings, lists and dicts only. Continuing a run from one
is ``resume``'s.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, global_step_from_engine

from ignite_lstm._atomic import atomic_write
from ignite_lstm.handlers import monitor_mode, score_function

if TYPE_CHECKING:
    from ignite_lstm.run_checkpoints import RunCheckpoints

__all__ = [
    "attach_checkpoints",
    "checkpointer_states",
    "find_checkpoint",
    "read_checkpoint",
    "require_entries",
    "load_torch_file",
    "UnreadableFile",
    "FixedState",
    "CheckpointMismatch",
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
        diffs = [f"{k}: checkpoint {state.get(k)!r} vs config {self.value.get(k)!r}" for k in keys
                 if state.get(k) != self.value.get(k)]
        if diffs:
            raise CheckpointMismatch(f"The checkpoint's {self.name} differs from this run's: " + "; ".join(diffs))
        self.loaded = dict(state)


def _with_model_args(objects: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``objects`` with the ``"model"``'s constructor arguments as ``model_args``, where it has a
    ``config`` (``StatefulLSTM``) and ``objects`` no ``model_args`` of its own."""
    out = dict(objects)
    config = getattr(out.get("model"), "config", None)
    if "model_args" not in out and isinstance(config, Mapping):
        out["model_args"] = FixedState(config, "model arguments")
    return out


class _SaveThenRemove(DiskSaver):
    """``DiskSaver`` that deletes the file a new one replaces only once the new one is written.

    Ignite's ``Checkpoint`` removes the oldest file before saving the next; if that save
    fails (a full disk), the run would be left without its last good checkpoint. Files are
    written by ``atomic_write``: with the umask's mode (Ignite's temporary file makes them
    0644 whatever the umask), and a failed write leaves no temporary file behind.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[str] = []

    def remove(self, filename: str) -> None:
        self._pending.append(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        pending, self._pending = self._pending, []
        if idist.get_rank() == self.save_on_rank:  # on failure the old files stay
            atomic_write(self.dirname / filename, lambda f: torch.save(checkpoint, f, **self.kwargs))
        for old in pending:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)


def attach_checkpoints(
    trainer: Engine,
    val_evaluator: Engine,
    to_save: dict[str, Any],
    best_objects: Mapping[str, Any],
    directory: str | Path,
    *,
    enabled: bool = True,
    monitor: str = "mse",
    n_saved: int = 1,
    every: int = 0,
    mode: str | None = None,
    best_filter: Callable[[Engine, int], bool] | None = None,
) -> RunCheckpoints:
    """Best model (by the validation ``monitor``), last training state, every ``every`` epochs, and Ctrl-C.

    Files go to ``directory`` through a ``DiskSaver`` that writes a temporary file and
    renames it into place (a crash never leaves a half-written checkpoint, a failed
    write no temporary file; the mode follows the umask), rank 0 only; a file replaced
    by a newer one is deleted after the newer one is written, so a failed save keeps
    the previous file:

    - ``best_checkpoint_<iteration>_<score>.pt``: ``best_objects`` (model and its
      arguments, readable by ``load_model``) after each validation that beats the
      ``n_saved`` best so far. The score is the metric, negated for a metric where
      lower is better (``neg_val_mse=-0.0123``); a NaN never beats another.
    - ``last_checkpoint_<iteration>.pt``: ``to_save`` after every epoch.
    - ``epoch_checkpoint_<iteration>.pt``: ``to_save`` every ``every`` epochs (0: off).
    - ``interrupted_checkpoint_<iteration>.pt``: ``to_save``, written on demand by
      calling ``checkpoints["interrupted"](trainer)`` (also when ``enabled`` is False).

    Where ``best_objects`` or ``to_save`` hold a ``"model"`` with a ``config`` (the
    constructor arguments of a ``StatefulLSTM``) and no ``"model_args"``, its files also
    hold ``model_args``, so that ``load_model`` rebuilds the model from them.

    Where ``to_save`` holds the trainer, its files also hold the random generators
    (``rng``: torch, numpy, Python at the save; ``rng_epoch_start``: the same when the
    epoch started, before the data loader drew its order), unless ``to_save`` has
    entries of those names. Every training file also holds each saver's list of files
    (``checkpointer`` for its own, ``checkpointer_<kind>`` for the others), so that a
    resumed run keeps counting ``n_saved``, keeps the true best and removes the files
    of the run it continues: ``checkpoints.resume(path, loader)`` restores it all.

    Args:
        trainer: the trainer; file names carry its iteration.
        val_evaluator: the validation evaluator; "best" is decided when it completes.
        to_save: everything needed to continue training (not modified).
        best_objects: what the best checkpoint holds (not modified), e.g. ``{"model": model}``.
        directory: the checkpoints folder.
        enabled: False: only the on-demand ``interrupted`` saver.
        monitor: validation metric name.
        n_saved: files kept of each kind.
        every: also keep a training checkpoint every this many epochs (0: off).
        mode: ``"min"`` (lower is better) or ``"max"``; needed for a metric of your own, whose
            direction ``metric_direction`` does not know (None: the metric's own direction).
        best_filter: an Ignite event filter on the evaluator's ``COMPLETED``: a validation it
            rejects never competes for "best" (a curriculum's ``final_stage_only``); None: all do.

    Returns:
        ``RunCheckpoints``: a dict ``{"best", "last", "epoch" (if every), "interrupted"}`` ->
        ``Checkpoint``, whose ``resume(path, data)`` continues a run from one of its files
        and ``latest()`` finds the newest.

    Example:
        >>> to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
        >>> checkpoints = attach_checkpoints(trainer, evaluator, to_save, {"model": model}, "run/checkpoints",
        ...                                  monitor="snr", n_saved=2, every=10)
        >>> trainer.run(loader, max_epochs=50)
        >>> checkpoints["best"].last_checkpoint  # the highest validation SNR
        >>> # a new process, the same objects built again, then:
        >>> trainer.run(checkpoints.resume(checkpoints.latest(), loader), max_epochs=50)
    """
    if not isinstance(n_saved, int) or n_saved < 1:
        raise ValueError(f"Argument n_saved should be a positive integer, got {n_saved!r}.")
    if not isinstance(every, int) or every < 0:
        raise ValueError(f"Argument every should be a non-negative integer, got {every!r}.")
    mode = monitor_mode(monitor, mode) if enabled else None
    saver = _SaveThenRemove(str(directory), atomic=True, create_dir=True, require_empty=False)
    step = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    kinds = [k for k in TRAINING_KINDS if enabled and (k != "epoch" or every) or k == "interrupted"]
    from ignite_lstm.run_checkpoints import RunCheckpoints, resumable_objects  # built on resume, which reads these

    training = resumable_objects(_with_model_args(to_save), trainer)
    files: dict[str, dict[str, Any]] = {kind: dict(training) for kind in kinds}
    checkpoints: dict[str, Checkpoint] = {
        kind: Checkpoint(files[kind], saver, filename_prefix=kind, n_saved=1 if kind == "interrupted" else n_saved,
                         global_step_transform=step, include_self=True)
        for kind in kinds
    }
    if enabled:
        sign = "" if mode == "max" else "neg_"
        checkpoints["best"] = Checkpoint(_with_model_args(best_objects), saver, filename_prefix="best",
                                         score_function=score_function(monitor, mode),
                                         score_name=f"{sign}val_{monitor}", n_saved=n_saved,
                                         global_step_transform=step)
    for kind in kinds:  # the other savers' bookkeeping, read when the file is saved
        files[kind].update({f"checkpointer_{k}": c for k, c in checkpoints.items() if k != kind})
    if enabled:
        event = Events.COMPLETED(event_filter=best_filter) if best_filter else Events.COMPLETED
        val_evaluator.add_event_handler(event, checkpoints["best"])
        if every:  # before "last", so that the last file knows about this epoch's file
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=every), checkpoints["epoch"])
        trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoints["last"])
    return RunCheckpoints(checkpoints, trainer=trainer, objects=training, directory=directory)


def checkpointer_states(checkpoints: Mapping[str, Checkpoint], checkpoint: Mapping[str, Any]) -> None:
    """Give each saver its list of files from a training checkpoint (see ``attach_checkpoints``).

    The file's own ``checkpointer`` goes to the saver of its kind only (its files are named
    ``<kind>_...``): a saver the checkpointed run did not have starts with no files.
    """
    own = checkpoint.get("checkpointer")
    for kind, saver in checkpoints.items():
        state = checkpoint.get(f"checkpointer_{kind}", own)
        if state is not None:
            saver.load_state_dict(state)
            if state is own and not Path(saver.last_checkpoint or "").name.startswith(f"{kind}_"):
                saver.reset()  # another kind's files


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
        raise UnreadableFile(f"it holds objects other than tensors, numbers, strings, lists and dicts "
                             f"({detail})", foreign=True) from exc
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
