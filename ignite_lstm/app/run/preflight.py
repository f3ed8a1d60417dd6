"""Checks of a valid config against this machine, before anything is allocated or written.

The schema (``ignite_lstm.app.config.schema``) judges each value on its own. Whether a value can
run *here* depends on the torch build, the file system and the memory of the machine:
the device and the distributed backend must exist, every ``handlers.extra`` entry must
import, ``data.dir`` must take the split files that are still to be generated, and the
model with one training window (or one evaluation batch) must fit in memory.
``preflight`` checks all of it at once; the command line calls it right after
``load_config``, and it raises a ``ConfigError`` listing every problem like the schema's.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch

from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.task.dataset import SPLITS, split_params
from ignite_lstm.app.task.generator import sample_count
from ignite_lstm.app.task.h5io import split_filename
from ignite_lstm.engine.execution import execution_path
from ignite_lstm.handlers.curriculum import final_tbptt_steps

__all__ = ["preflight", "device_problem", "resolve_device", "usable_devices", "estimate_memory", "available_memory"]

_FLOAT = 4  # bytes of a float32
# Optimizer state per parameter, in parameter-sized buffers (momentum 0: no buffer).
_OPTIMIZER_STATE = {
    "adam": lambda m: 2,
    "adamw": lambda m: 2,
    "sgd": lambda m: int(m > 0),
    "rmsprop": lambda m: 1 + int(m > 0),
}


def usable_devices() -> list[str]:
    """The ``device`` values this torch build can use on this machine, ``"auto"`` first."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a device this torch build can use here, or None when it is.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The reason and what is allowed (to follow the key, e.g. ``"device: 'cuda' ..."``), or None.

    Example:
        >>> device_problem("cuda")  # a CPU-only torch build
        "is not available: torch.cuda.is_available() is False (a CPU-only torch build, or no GPU or driver); ..."
    """
    allowed = usable_devices()
    if name in allowed:
        return None
    choose = "choose one of " + ", ".join(repr(n) for n in allowed)
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return f"is not a torch device: {choose}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return (
            f"is not available: torch.cuda.is_available() is False (a CPU-only torch build, or no GPU or "
            f"driver); {choose}"
        )
    if device.type == "cuda":
        n = torch.cuda.device_count()
        return f"is not available: this machine has {n} CUDA device{'s' if n != 1 else ''}; {choose}"
    if device.type == "mps":
        return f"is not available: this torch build or machine has no MPS; {choose}"
    if device.type == "cpu" and device.index in (None, 0):
        return None
    return f"is not a device ignite_lstm runs on: {choose}"


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``device`` value that ``device_problem`` accepts.

    ``auto``: this process's device of the process group (``idist.device()``) on several
    processes, else cuda if available, else the CPU.
    """
    if name == "auto":
        if idist.get_world_size() > 1:
            return idist.device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _processes(cfg: Any) -> int:
    """Training processes on this machine: torchrun's local world, or those run.py starts."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    return cfg.distributed.nproc_per_node if cfg.distributed.backend else 1


def estimate_memory(cfg: Any, processes: int = 1, native: bool = False) -> dict[str, Any]:
    """Approximate memory of a training run: model state, data, one training window, one evaluation batch.

    Per process: parameters, gradients, the optimizer's state and the native kernel's
    packed copy of the weights; the three splits as the datasets hold them; and the
    larger of what a training window keeps for its backward (per layer and step of
    each sequence: gates 4H, cell and hidden states, the kernel's [x, h, 1] rows and
    the backward's gate gradients, about 12H + input floats; the window is
    ``train.chunk_steps`` steps on the fused-detached path, ``train.tbptt_steps`` on
    the others, T with a curriculum whose window follows L) and an evaluation batch of
    whole sequences (no gradients: the inputs and outputs, and with PyTorch's LSTM one
    layer's hidden sequence at a time).

    Args:
        cfg: the validated config.
        processes: training processes on this machine (each holds all of the above
            for its share of the batch).
        native: whether the native CPU kernel runs the model (its inference keeps no
            hidden sequence).

    Returns:
        ``{"model", "data", "training", "evaluation", "peak"}`` in bytes, all processes
        together (``peak = model + data + max(training, evaluation)``), and ``"parts"``:
        name -> ``(bytes, what, keys)`` with the settings that decide each part.
    """
    d, m, t, e = cfg.data, cfg.model, cfg.train, cfg.eval
    n_freq, hidden, layers = len(d.frequencies), m.hidden_size, m.num_layers
    n_in, n_out = 1 + n_freq, 1
    steps = sample_count(d.fs, d.duration)  # T
    params = sum(4 * hidden * (size + hidden + 2) for size in [n_in] + [hidden] * (layers - 1)) + hidden * n_out + n_out
    copies = 3 + _OPTIMIZER_STATE[t.optimizer](t.momentum)  # weights, gradients, packed weights, optimizer state
    model = _FLOAT * params * copies

    sequences = {split: d[split].mixtures * n_freq for split in SPLITS}
    data = sum(
        _FLOAT * (sequences[s] * steps * n_in + d[s].mixtures * steps + 2 * n_freq * steps) + 8 * steps for s in SPLITS
    )

    batch = min(max(1, t.batch_size // processes), math.ceil(sequences["train"] / processes))
    tbptt = final_tbptt_steps(cfg, steps)  # a curriculum's last stage, when its window follows L
    detached = execution_path(tbptt, t.update, t.execution, detaches=True) == "fused-detached"  # a StatefulLSTM
    window_key = (
        "train.chunk_steps" if detached else "train.tbptt_steps" if tbptt == t.tbptt_steps else "train.curriculum.tbptt"
    )
    window = min(steps, t.chunk_steps if detached else tbptt)
    training = _FLOAT * batch * (window * (layers * (12 * hidden + n_in) + 2 * n_out) + steps * (n_in + n_out))

    eval_batch = min(e.batch_size, max(math.ceil(n / processes) for n in sequences.values()))
    hidden_kept = 0 if native else (2 if layers > 1 else 1) * hidden
    evaluation = _FLOAT * eval_batch * steps * (hidden_kept + 2 * n_in + 4 * n_out)

    largest = max(SPLITS, key=lambda s: sequences[s])
    parts = {
        "model": (
            model * processes,
            f"parameters, gradients and {t.optimizer} state",
            {"model.hidden_size": hidden, **({"model.num_layers": layers} if layers > 1 else {})},
        ),
        "data": (
            data * processes,
            f"the data splits ({sum(sequences.values())} sequences x {steps} steps)",
            {f"data.{largest}.mixtures": d[largest].mixtures, "data.duration": d.duration},
        ),
        "training": (
            training * processes,
            f"one training window ({batch} sequences x {window} steps)",
            {"train.batch_size": t.batch_size, window_key: window, "model.hidden_size": hidden},
        ),
        "evaluation": (
            evaluation * processes,
            f"one evaluation batch ({eval_batch} sequences x {steps} steps)",
            {"eval.batch_size": e.batch_size, "data.duration": d.duration, "model.hidden_size": hidden},
        ),
    }
    sizes = {k: v[0] for k, v in parts.items()}
    return {
        **sizes,
        "peak": sizes["model"] + sizes["data"] + max(sizes["training"], sizes["evaluation"]),
        "parts": parts,
    }


def _native_expected(device: torch.device) -> bool:
    """Whether the native kernel will run the model (without building it here: see ``ignite_lstm.models.native``)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    return device.type == "cpu" and os.environ.get("IGNITE_LSTM_NATIVE", "1") != "0" and bool(compiler)


def available_memory() -> int | None:
    """Bytes of memory available to a new process: ``MemAvailable`` of /proc/meminfo, else ``os.sysconf``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def _memory_problem(cfg: Any, device: torch.device) -> str | None:
    """The run does not fit: name the settings of its largest part, the estimate and what is available."""
    processes = _processes(cfg)
    est = estimate_memory(cfg, processes, native=_native_expected(device))
    active = "training" if est["training"] >= est["evaluation"] else "evaluation"
    checks = []  # (parts held there, bytes available, where)
    if device.type == "cuda":  # model and activations on the GPU, the data in host memory
        if processes == 1:  # (a launcher of several processes must not touch the GPUs itself)
            try:
                checks.append(
                    (
                        ["model", active],
                        torch.cuda.get_device_properties(device.index or 0).total_memory,
                        f"{device} has",
                    )
                )
            except Exception:  # no such GPU: the device check says so
                pass
        checks.append((["data"], available_memory(), "this machine has"))
    else:
        checks.append((["model", "data", active], available_memory(), "this machine has"))
    parts = est["parts"]
    for shown, available, where in checks:
        need = sum(parts[k][0] for k in shown)
        if available is None or need <= available:
            continue
        largest = max(shown, key=lambda k: parts[k][0])
        keys = ", ".join(f"{k}={v}" for k, v in parts[largest][2].items())
        detail = "; ".join(f"{parts[k][1]} {_size(parts[k][0])}" for k in shown)
        per = f" with {processes} processes" if processes > 1 else ""
        return (
            f"{keys}: the run needs about {_size(need)} of memory{per} ({detail}); {where} {_size(available)} available"
        )
    return None


def _data_dir_problem(cfg: Any) -> str | None:
    """``data.dir`` must be a folder (or creatable), writable when a split file is still to be generated."""
    directory = Path(cfg.data.dir)
    if directory.exists() and not directory.is_dir():
        return f"data.dir: {cfg.data.dir!r} is a file, not a folder"
    missing = [s for s in SPLITS if not (directory / split_filename(s, split_params(cfg.data, s))).is_file()]
    if not missing:
        return None  # every split is there: the folder is only read
    nearest = directory
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        return f"data.dir: {cfg.data.dir!r} cannot be created: {nearest} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=nearest):  # unnamed where the OS allows: nothing appears in the folder
            pass
    except OSError as exc:
        return (
            f"data.dir: {cfg.data.dir!r} is not writable ({exc.strerror or exc}); the {', '.join(missing)} "
            f"split file(s) must be generated there: choose a writable folder"
        )
    return None


def _extra_problems(entries: Any) -> list[str]:
    """Every ``handlers.extra`` entry must import and name a callable (as ``load_extra_handlers`` needs)."""
    problems = []
    for i, entry in enumerate(entries):
        module_name, _, attr = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or whatever the module raises when run
            problems.append(f"handlers.extra[{i}]: {entry!r} cannot be imported: {type(exc).__name__}: {exc}")
            continue
        if not hasattr(module, attr):
            problems.append(f"handlers.extra[{i}]: {entry!r}: module {module_name!r} has no attribute {attr!r}")
        elif not callable(getattr(module, attr)):
            problems.append(f"handlers.extra[{i}]: {entry!r} is not callable")
    return problems


def preflight(cfg: Any) -> None:
    """Check a validated config against this machine before anything is allocated or written.

    The device and ``distributed.backend`` must be usable with this torch build, every
    ``handlers.extra`` entry importable, ``data.dir`` a writable folder (when a split
    is still to be generated) and the run must fit in memory (``estimate_memory``
    against ``available_memory``, or the GPU's memory).

    Args:
        cfg: the config from ``load_config``.

    Raises:
        ConfigError: listing every problem, each naming the key, its value and what is allowed.

    Example:
        >>> preflight(load_config("configs/base.yaml", ["device=banana"]))
        Traceback (most recent call last):
        ConfigError: Invalid configuration (1 problem):
          - device: 'banana' is not a torch device: choose one of 'auto', 'cpu'
    """
    problems = []
    bad_device = device_problem(cfg.device)
    if bad_device:
        problems.append(f"device: {cfg.device!r} {bad_device}")
    backend = cfg.distributed.backend
    if backend and backend not in idist.available_backends():
        allowed = ", ".join(repr(b) for b in idist.available_backends()) or "none"
        problems.append(
            f"distributed.backend: {backend!r} is not available in this torch build: choose one of "
            f"{allowed}, or null (one process)"
        )
    problems += _extra_problems(cfg.handlers.extra)
    data_dir = _data_dir_problem(cfg)
    if data_dir:
        problems.append(data_dir)
    if not bad_device:
        memory = _memory_problem(cfg, resolve_device(cfg.device))
        if memory:
            problems.append(memory)
    if problems:
        raise ConfigError(problems)
