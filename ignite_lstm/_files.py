"""The temporary file of an atomic write, created with the mode ``open()`` gives.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and
``os.replace`` keeps that mode: a data file, report or extracted signal written
through it would be private to its owner although the user's umask (e.g. 022)
asks for files others can read. ``temp_beside`` creates the file with 0666, which
the kernel reduces by the umask (and a folder's default ACL) exactly as for a
plain ``open(path, "w")``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["temp_beside"]

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def temp_beside(path: str | os.PathLike, mode: int = 0o666) -> tuple[int, str]:
    """A new, empty temporary file in the folder of ``path``, for ``os.replace(tmp, path)``.

    Args:
        path: the destination file; the temporary one is ``.<name>.<random>.tmp`` beside it.
        mode: the permission bits before the umask (0666: ``mode & ~umask``, as ``open()``).

    Returns:
        ``(fd, name)``, as ``tempfile.mkstemp``: an open file descriptor and the file's path.

    Raises:
        OSError: the folder is missing or not writable.

    Example:
        >>> fd, tmp = temp_beside("data/train.h5")
        >>> os.close(fd)  # ... write tmp, then os.replace(tmp, "data/train.h5")
    """
    path = Path(path)
    for _ in range(100):
        name = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, _FLAGS, mode), name
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary file name beside {path}.")
