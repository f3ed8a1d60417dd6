"""Checkpoints: the files (read, find, errors), the savers that write them, and exact resume.

Names load on first use: ``checkpoint.files`` alone (what ``load_model`` needs) loads no saver.
"""

from ignite_lstm._internal.lazy import lazy_getattr

_EXPORTS = {
    "attach_checkpoints": "savers",
    "RunCheckpoints": "run_checkpoints",
    "resume_from_checkpoint": "resume",
    "find_checkpoint": "files",
    "read_checkpoint": "files",
    "CheckpointMismatch": "files",
    "UnreadableFile": "files",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
