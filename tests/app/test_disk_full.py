"""A full disk during training: exit 1 with one line naming the folder, no hang (also with TensorBoard), no
temporary files, the last complete checkpoint kept; every file written with the umask's mode.

The disk is a real one where the tests may mount a small tmpfs (as root), filled to the last byte at the end
of epoch 1 (``handler_helpers:fill_disk``). Elsewhere those tests are skipped and the same runs get ENOSPC from
``/dev/full`` under the run folder's files (``handler_helpers:disk_full``). Each run is a ``run.py``
subprocess with a hard timeout, so a hang fails its test instead of blocking the suite.
"""

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from handler_helpers import ITERATIONS_PER_EPOCH, run_cli, spawn_cli, tiny_args
from ignite.engine import Engine

from ignite_lstm.checkpoint.savers import attach_checkpoints
from ignite_lstm.handlers.history import MetricsHistory
from ignite_lstm.models.lstm import load_model

HANG = 180  # seconds: a run that has not ended by then is stuck (it ends within seconds)

# TensorBoard events are written by tensorboardX's thread through an 8 KiB buffer, so they reach the disk
# only once that buffer overflows: 32 training sequences in windows of 2 steps, one train/window_loss point
# per window, make about 45 KB of events per epoch: epoch 2 surely writes after the disk is full.
TB_ON = ["data.train.mixtures=8", "train.tbptt_steps=2", "handlers.tensorboard.window_every=1"]
TB_OFF = ["handlers.tensorboard.enabled=false"]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (a new folder) while in the block; the test is skipped where
    mounting is refused."""
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); test_disk_full_injected covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 56 MiB tmpfs (the CLI wants 50 MiB free before a run starts), mounted for one test."""
    with _tmpfs(tmp_path / "disk", "56m") as disk:
        yield disk


def _run(args, env, log: Path) -> int:
    proc = spawn_cli(args, env, log)
    try:
        return proc.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(
            f"run.py still running {HANG} s after it started (hung on the full disk):\n{log.read_text()[-4000:]}"
        )


def _check_stopped_cleanly(code: int, log: Path, run_dir: Path) -> Path:
    """Exit 1, one error line naming the folder, no traceback, no temporary file; returns the checkpoint kept."""
    output = log.read_text()
    assert code == 1, output
    assert "Traceback" not in output
    kept = sorted((run_dir / "checkpoints").glob("last_checkpoint_*.pt"))
    assert len(kept) == 1, kept
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"error: No space left on device while writing {run_dir}{os.sep}"), output
    assert f" (folder {run_dir}" in last
    assert last.endswith(
        f"; training stopped. The last complete checkpoint is {kept[0]}: free some space, then "
        f"continue with resume=auto."
    ), last
    left = [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.startswith("tmp")]
    assert left == []
    trainer = torch.load(kept[0], weights_only=True)["trainer"]
    assert trainer["iteration"] == trainer["epoch_length"]  # the end of epoch 1, before the disk filled
    model, _ = load_model(kept[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return kept[0]


@pytest.mark.parametrize("tensorboard", ["on", "off"])
def test_disk_full_during_training_exits_1_and_keeps_the_last_checkpoint(small_disk, tmp_path, tensorboard):
    run_dir = small_disk / "runs" / "full"
    ballast = small_disk / "ballast"
    args = tiny_args(tmp_path / "data", small_disk / "runs", "full", *(TB_ON if tensorboard == "on" else TB_OFF))
    log = tmp_path / "run.log"
    code = _run([*args, "handlers.extra=[handler_helpers:fill_disk]"], {"FILL_AT": "1", "FILL_FILE": str(ballast)}, log)
    _check_stopped_cleanly(code, log, run_dir)
    if tensorboard == "off":  # the kept checkpoint is whole: once there is room again, the run continues
        ballast.unlink()
        assert run_cli([*args, "resume=auto"]) == 0
        assert (run_dir / "metrics.json").exists()
        assert sorted((run_dir / "checkpoints").glob("last_*")) == [
            run_dir / "checkpoints" / f"last_checkpoint_{4 * ITERATIONS_PER_EPOCH}.pt"
        ]


@pytest.mark.parametrize("tensorboard", ["on", "off"])
def test_disk_full_injected(tmp_path, tensorboard):
    """The same without a filesystem to fill: the run folder's writes get ENOSPC from /dev/full."""
    run_dir = tmp_path / "runs" / "full"
    args = tiny_args(tmp_path / "data", tmp_path / "runs", "full", *(TB_ON if tensorboard == "on" else TB_OFF))
    log = tmp_path / "run.log"
    code = _run([*args, "handlers.extra=[handler_helpers:disk_full]"], {"FULL_AT": "1"}, log)
    _check_stopped_cleanly(code, log, run_dir)


def test_a_failed_write_keeps_the_previous_file_names_it_and_leaves_no_temporary_file(tmp_path):
    with _tmpfs(tmp_path / "disk", "256k") as disk:
        trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
        layer = torch.nn.Linear(1, 1)
        savers = attach_checkpoints(trainer, evaluator, {"w": layer}, {"w": layer}, disk / "checkpoints", enabled=False)
        savers["interrupted"](trainer)  # a small file that fits
        first = disk / "checkpoints" / "interrupted_w_0.pt"
        assert first.exists()
        layer.weight = torch.nn.Parameter(torch.zeros(256, 256))  # 256 KiB: more than the disk holds
        trainer.state.iteration = 1
        with pytest.raises(OSError, match="No space left on device.*interrupted_w_1.pt"):
            savers["interrupted"](trainer)
        assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == [first.name]
        assert torch.load(first, weights_only=True)["weight"].shape == (1, 1)

        history = MetricsHistory()
        history.record(1, {"val/mse": 0.5})
        history.save(disk / "history.json")
        history.record(2, {"big": 0.0, **{f"x{i}": 0.0 for i in range(20000)}})  # about 400 KB of JSON
        with pytest.raises(OSError, match="No space left on device.*history.json"):
            history.save(disk / "history.json")
        assert sorted(p.name for p in disk.iterdir()) == ["checkpoints", "history.json"]
        assert json.loads((disk / "history.json").read_text())["epochs"] == [{"epoch": 1, "val/mse": 0.5}]


@pytest.mark.parametrize(
    "umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["umask022", "umask002", "umask077"]
)
def test_checkpoints_follow_the_umask(tmp_path, umask, mode):
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    weights = {"w": torch.nn.Linear(1, 1)}
    savers = attach_checkpoints(trainer, evaluator, weights, weights, tmp_path, enabled=False)
    before = os.umask(umask)
    try:
        savers["interrupted"](trainer)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "interrupted_w_0.pt").stat().st_mode) == mode


def test_every_file_of_the_run_folder_follows_the_umask(tmp_path):
    """Checkpoints, history, metrics, model, config, log and event files (the data files and the report are
    written by other modules)."""
    before = os.umask(0o002)
    try:
        assert (
            run_cli(
                tiny_args(
                    tmp_path / "data",
                    tmp_path / "runs",
                    "shared",
                    "train.epochs=2",
                    "handlers.checkpoint.every=1",
                    "eval.report=false",
                )
            )
            == 0
        )
    finally:
        os.umask(before)
    run_dir = tmp_path / "runs" / "shared"
    files = {
        str(p.relative_to(run_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in run_dir.rglob("*") if p.is_file()
    }
    last = 2 * ITERATIONS_PER_EPOCH
    assert {
        f"checkpoints/last_checkpoint_{last}.pt",
        f"checkpoints/epoch_checkpoint_{last}.pt",
        "history.json",
        "metrics.json",
        "model.pt",
        "train.log",
    } <= files.keys() and any(f.startswith("tb/") for f in files)
    assert {f: mode for f, mode in files.items() if mode != "0o664"} == {}
