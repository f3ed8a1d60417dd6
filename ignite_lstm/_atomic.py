"""Atomic file writes for the run folder: a temporary file renamed into place, nothing left on failure."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write"]


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: torch.save reports a failed write as a RuntimeError raised while
    handling it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into ``<path>.tmp``, then rename it over ``path``.

    The file gets the mode of any new file (0666 less the umask). On any failure (a full
    disk, a second Ctrl-C) the temporary file is removed and ``path`` is left as it was; a
    failed write raises an ``OSError`` that names ``path``, also when the writer (torch.save)
    wrapped it in another error.

    Args:
        path: the file to write.
        write: writes the content into the open binary file it is given.

    Example:
        >>> atomic_write("run/model.pt", lambda f: torch.save(state, f))
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)  # one left by a killed run keeps its mode if reopened
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _os_error(exc) if isinstance(exc, Exception) else None
        if cause is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from exc
        raise
