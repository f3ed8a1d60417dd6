"""The native LSTM kernel's library: built on first use, loaded once, or switched off.

``lstm_cpu.cpp`` (beside this file) is compiled by ``build`` and loaded with ``ctypes``; here
its C signatures are declared, its ABI checked, and the one loaded library kept for the
process. ``available``, ``describe`` and ``disabled`` (also ``ignite_lstm.models.native``'s) tell
and decide whether the models call it; ``ignite_lstm.models.native`` makes the calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import TypedDict

import torch

from ignite_lstm.models.native.build import build_library

__all__ = ["available", "describe", "disabled", "function", "library"]

logger = logging.getLogger("ignite_lstm.models.native")  # the name its log lines have always had

_SOURCE = Path(__file__).with_name("lstm_cpu.cpp")
_ABI = 6
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}

_lock = threading.Lock()


class _LoaderState(TypedDict):
    lib: ctypes.CDLL | None  # the loaded library (None: not built, or failed)
    tried: bool  # library() ran once (the build is not retried)
    off: int  # depth of nested disabled() blocks


_state: _LoaderState = {"lib": None, "tried": False, "off": 0}


def _build() -> ctypes.CDLL:
    lib = build_library(_SOURCE)
    if lib.ignite_lstm_abi() != _ABI:
        raise RuntimeError(f"{lib._name} has ABI {lib.ignite_lstm_abi()}, expected {_ABI}")
    p, i = ctypes.c_void_p, ctypes.c_int
    for name in (
        "lstm_packed_size",
        "lstm_forward_work",
        "lstm_stack_work",
        "lstm_backward_work",
        "gru_packed_size",
        "gru_forward_work",
        "gru_backward_work",
    ):
        getattr(lib, name).restype = ctypes.c_longlong
    lib.ignite_lstm_fma_peak.restype = ctypes.c_double
    lib.ignite_lstm_fma_peak.argtypes = [i, ctypes.c_longlong, i]
    for suffix in _DTYPES.values():
        getattr(lib, f"lstm_pack_{suffix}").argtypes = [i] * 2 + [p] * 5
        getattr(lib, f"lstm_forward_{suffix}").argtypes = [i] * 5 + [p] * 11
        getattr(lib, f"lstm_stack_forward_{suffix}").argtypes = [i] * 7 + [p] * 11
        getattr(lib, f"lstm_backward_{suffix}").argtypes = [i] * 6 + [p] * 16
        getattr(lib, f"gru_pack_{suffix}").argtypes = [i] * 2 + [p] * 5
        getattr(lib, f"gru_forward_{suffix}").argtypes = [i] * 5 + [p] * 7
        getattr(lib, f"gru_backward_{suffix}").argtypes = [i] * 6 + [p] * 14
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, built on the first call; None when it is off, or could not be built (logged once)."""
    if _state["off"] or _state["tried"]:  # the per-call path: no lock
        return None if _state["off"] else _state["lib"]
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        _state["tried"] = True
        if os.environ.get("IGNITE_LSTM_NATIVE", "1") == "0":
            logger.info("Native LSTM kernel switched off by IGNITE_LSTM_NATIVE=0")
            return None
        try:
            _state["lib"] = lib = _build()
            logger.debug(
                "Native LSTM kernel loaded (SIMD %d, OpenMP %d)", lib.ignite_lstm_simd(), lib.ignite_lstm_openmp()
            )
        except Exception as exc:  # any failure means: use the PyTorch code
            logger.warning("Native LSTM kernel unavailable, using PyTorch's LSTM: %s", exc)
        return _state["lib"]


def available(*tensors: torch.Tensor) -> bool:
    """Whether the native kernel can run (on these tensors: CPU, float32/float64, one dtype).

    Args:
        tensors: the inputs and parameters of the call (none: just whether it is built).

    Returns:
        True when the kernel is built and enabled and every tensor fits it.

    Example:
        >>> available(torch.zeros(2, 3))
        True
    """
    if tensors:
        dtype = tensors[0].dtype
        if dtype not in _DTYPES or any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
            return False
    return library() is not None


def describe(device: torch.device | str | None = None) -> str:
    """Which LSTM code runs on ``device`` (the CPU by default), in words for a log line.

    Args:
        device: where the model is (``"cpu"``, ``torch.device("cuda:0")``, ...).

    Returns:
        For example ``"native (AVX-512, OpenMP, 2 threads)"`` or ``"PyTorch"``.

    Example:
        >>> logger.info("LSTM kernel: %s", describe())
    """
    if device is not None and torch.device(device).type != "cpu":
        return "PyTorch"
    lib = library()
    if lib is None:
        return "PyTorch (native kernel off or not built)"
    simd = {2: "AVX-512", 1: "AVX2/FMA"}.get(lib.ignite_lstm_simd(), "portable C++")
    n = torch.get_num_threads()
    threads = f"OpenMP, {n} thread{'s' * (n > 1)}" if lib.ignite_lstm_openmp() else "1 thread"
    return f"native ({simd}, {threads})"


@contextlib.contextmanager
def disabled():
    """Run the models' PyTorch code instead of the native kernel inside the block.

    Returns:
        A context manager.

    Example:
        >>> with disabled():
        ...     y, state = model(x)  # nn.LSTM
    """
    _state["off"] += 1
    try:
        yield
    finally:
        _state["off"] -= 1


def function(name: str, dtype: torch.dtype):
    """The library's function ``name`` for ``dtype`` (``lstm_forward`` -> ``lstm_forward_f32``)."""
    return getattr(library(), f"{name}_{_DTYPES[dtype]}")
