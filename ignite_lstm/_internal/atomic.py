"""Atomic file writes: a temporary file beside the target, renamed into place, nothing left on failure.

Every file the package writes goes through ``atomic_write`` (run folders, data splits,
reports, figures, extracted signals, the kernel cache): a reader never sees a
half-written file, a failed write (a full disk, a second Ctrl-C) leaves the previous
file as it was, and the new file gets the mode ``open()`` gives (0666 less the umask),
not ``tempfile.mkstemp``'s 0600. Temporary names are random, so several processes
writing the same file at once (ranks, simultaneous launches) never share one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _temp_beside(path: Path, mode: int) -> tuple[int, Path]:
    """A new, empty ``.<name>.<random>.tmp`` beside ``path``, created with ``mode`` less the umask."""
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(name, _FLAGS, mode), name
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary file name beside {path}.")


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


def atomic_write(path: str | os.PathLike, write: Callable, *, by_name: bool = False, mode: int = 0o666) -> Path:
    """Write ``path`` through ``write`` into a temporary file beside it, then rename it over ``path``.

    Args:
        path: the file to write (its folder must exist).
        write: ``write(file)`` with the open binary file, or with ``by_name`` ``write(temp_path)``
            for writers that open the file themselves (h5py, a compiler).
        by_name: pass the temporary file's path instead of an open file.
        mode: permission bits before the umask (0777 for a shared library).

    Returns:
        ``path``.

    Raises:
        OSError: the write failed; it names ``path``, also when the writer (torch.save)
            wrapped the error in another one.

    Example:
        >>> atomic_write("run/model.pt", lambda f: torch.save(state, f))
        >>> atomic_write("data/train.h5", lambda tmp: write_h5(tmp), by_name=True)
    """
    path = Path(path)
    fd, tmp = _temp_beside(path, mode)
    try:
        if by_name:
            os.close(fd)
            write(str(tmp))
        else:
            with os.fdopen(fd, "wb") as f:
                write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _os_error(exc) if isinstance(exc, Exception) else None
        if cause is not None and not isinstance(exc, OSError):
            raise OSError(cause.errno, cause.strerror, str(path)) from exc
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename != str(path):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path
