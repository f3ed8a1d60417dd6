"""Where the tune command's study lives: ``tune.storage``, or an SQLite file in the study folder.

Storages, the workers' lock, dead workers and heartbeats are the library's
(``ignite_lstm.search.storage``); this module names the study's storage from its settings
and reports problems under the ``tune.`` keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ignite_lstm.app.tune.settings import TuneSettings
from ignite_lstm.search.storage import (
    StudyError,
    create_study,
    fail_dead_trials,
    heartbeat,
    locked,
    shown_url,
    tell,
    worker_id,
)

__all__ = [
    "StudyError",
    "fail_dead_trials",
    "heartbeat",
    "locked",
    "open_study",
    "shown_url",
    "storage_url",
    "tell",
    "worker_id",
]


def storage_url(settings: TuneSettings, study_dir: Path) -> str:
    """``tune.storage``, or the default SQLite file in the study folder."""
    return settings.storage or f"sqlite:///{study_dir / 'study.db'}"


def open_study(cfg: Any, settings: TuneSettings) -> tuple[Any, Any, Path | None]:
    """Create or load the study (``load_if_exists``); refuse a study of the other direction.

    Returns:
        ``(study, storage, lock_file)``.

    Raises:
        StudyError: naming the storage URL.
    """
    study_dir = Path(cfg.output_dir) / settings.study_name
    url = storage_url(settings, study_dir)
    if settings.storage is None:
        try:
            study_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(f"Study folder {study_dir} cannot be created: {exc.strerror or exc}") from exc
    return create_study(url, settings.study_name, settings.direction, key="tune.storage")
