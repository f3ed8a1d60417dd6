"""Compile and load a one-file C++ library for ``ctypes`` (the native LSTM kernel's build).

The library is built on the machine that runs it (``-march=native``) with the system
compiler (``$CXX``, else ``c++``/``g++``), into a cache folder keyed by the source, the
compiler, the flags and the machine, and reused from there. ``IGNITE_LSTM_ISA=avx2`` builds
without AVX-512 (``-mno-avx512f`` after ``-march=native``): the code a processor with AVX2
only runs, on any machine, to see what results depend on (with ``MKL_ENABLE_INSTRUCTIONS=AVX2``
for torch's MKL; ``ignite-lstm matrix --isa avx2`` sets both). Each build goes to a
temporary file first and is renamed into place, so processes that build at the same
time (the ranks of a distributed run) each find a whole file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ignite_lstm._internal.atomic import atomic_write

__all__ = ["ISA_FLAGS", "build_library", "cache_dirs", "isa"]

_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC"]
# -march=native: AVX2/FMA where the CPU has them; -fopenmp: PyTorch's OpenMP threads (see the .cpp).
# Each later set drops what an earlier one may have failed on.
_FLAG_SETS = (_FLAGS + ["-march=native", "-fopenmp"], _FLAGS + ["-march=native"], _FLAGS)
# IGNITE_LSTM_ISA: which instruction sets the build may use beyond the baseline.
ISA_FLAGS = {"native": [], "avx2": ["-mno-avx512f"]}


def isa() -> str:
    """The instruction-set choice of this process's builds: ``$IGNITE_LSTM_ISA``, else ``"native"``.

    Raises:
        ValueError: an unknown value (the known ones are named).
    """
    value = os.environ.get("IGNITE_LSTM_ISA", "native") or "native"
    if value not in ISA_FLAGS:
        raise ValueError(f"IGNITE_LSTM_ISA should be one of {sorted(ISA_FLAGS)}, got {value!r}.")
    return value


def cache_dirs() -> list[Path]:
    """Where built libraries go: ``$IGNITE_LSTM_CACHE``, else ``~/.cache/ignite_lstm``; then a temp folder.

    Returns:
        The folders to try, in order (the second serves a read-only home).

    Example:
        >>> cache_dirs()[0]
        PosixPath('/home/me/.cache/ignite_lstm')
    """
    if os.environ.get("IGNITE_LSTM_CACHE"):
        first = Path(os.environ["IGNITE_LSTM_CACHE"])
    else:
        first = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ignite_lstm"
    return [first, Path(tempfile.gettempdir()) / f"ignite_lstm-{os.getuid()}"]


def _compile(cxx: str, flags: list[str], source: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # atomic: another process building the same file finds a whole one; the compiler keeps the mode
    atomic_write(
        out,
        lambda tmp: subprocess.run(
            [cxx, *flags, str(source), "-o", tmp], check=True, capture_output=True, text=True, timeout=300
        ),
        by_name=True,
        mode=0o777,
    )


def build_library(source: Path) -> ctypes.CDLL:
    """The compiled ``source``, built now or found in the cache.

    Args:
        source: a self-contained C++ file with a C ABI.

    Returns:
        The loaded library.

    Raises:
        RuntimeError: no compiler, or every flag set and cache folder failed (the last
            compiler message is in the text).

    Example:
        >>> lib = build_library(Path("ignite_lstm/models/native/lstm_cpu.cpp"))
    """
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    extra = ISA_FLAGS[isa()]
    text = source.read_bytes()
    last: Exception = RuntimeError("nothing tried")
    for flags in _FLAG_SETS:
        flags = flags + extra if "-march=native" in flags else flags
        key = hashlib.sha256(text + " ".join([cxx, *flags, platform.machine(), platform.node()]).encode())
        for folder in cache_dirs():
            path = folder / f"{source.stem}-{key.hexdigest()[:16]}.so"
            try:
                if not path.exists():
                    _compile(cxx, flags, source, path)
                return ctypes.CDLL(str(path))
            except subprocess.CalledProcessError as exc:
                lines = exc.stderr.strip().splitlines()
                last = RuntimeError(f"{cxx} {' '.join(flags)} failed: {lines[-1] if lines else exc}")
                break  # the compiler refused these flags: the other folder would not help
            except (OSError, subprocess.TimeoutExpired) as exc:  # an unwritable folder, a missing compiler
                last = RuntimeError(str(exc))
    raise last
