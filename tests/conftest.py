"""Shared fixtures: a tiny config file and a runner for ``python run.py`` as a real subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The tests mirror the package (tests/engine, tests/app, ...); the shared helpers (handler_helpers,
# lstm_reference, ...) stay here, importable from every folder.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP
# threads that wait for each other slow torch down by orders of magnitude. Subprocesses
# (run.py) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402  (after the variable, which torch reads once at import)

torch.set_num_threads(1)

# The quick preset shrunk further: 200 steps per sequence, one mixture per split, two epochs.
QUICK_YAML = """\
output_dir: runs
data:
  dir: data
  duration: 0.2
  train: {seed: 1, mixtures: 1}
  val: {seed: 3, mixtures: 1}
  test: {seed: 2, mixtures: 1}
model:
  hidden_size: 8
train:
  epochs: 2
  batch_size: 4
  tbptt_steps: 50
eval:
  batch_size: 4
  report: false
handlers:
  progress_bar: false
"""


def write_quick_config(directory: Path, name: str = "quick.yaml") -> Path:
    """Write the tiny config into ``directory`` and return its path."""
    path = Path(directory) / name
    path.write_text(QUICK_YAML)
    return path


def _run_cli(args: Sequence[str | Path], cwd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python run.py ARGS`` in ``cwd`` with this interpreter; output is captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def quick_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, Path]:
    """A folder holding the tiny config, and its data folder: ``(config path, data dir)``."""
    root = tmp_path_factory.mktemp(name)
    return write_quick_config(root), root / "data"


def load_quick(folder: tuple[Path, Path], *overrides: str):
    """The tiny config of ``quick_folder`` with 2 training mixtures (2 iterations per epoch) and ``overrides``."""
    from ignite_lstm.app.config.schema import load_config

    config, data = folder
    return load_config(config, ["data.train.mixtures=2", f"data.dir={data}", *overrides])


@pytest.fixture
def quick_config(tmp_path: Path) -> Path:
    """The tiny config written to ``tmp_path / "quick.yaml"`` (relative ``runs`` and ``data`` folders)."""
    return write_quick_config(tmp_path)


@pytest.fixture(scope="session")
def make_quick_config() -> Callable[..., Path]:
    """``make_quick_config(directory)``: write the tiny config there (for fixtures wider than a test)."""
    return write_quick_config


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(args, cwd)``: run ``python run.py`` as a subprocess and return the CompletedProcess."""
    return _run_cli


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Each test leaves the root logger as it found it: a handler that a command added in-process
    (``logging.basicConfig`` of ``ignite-lstm export``, say) writes to that test's captured
    stderr, which is closed once the test ends."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
