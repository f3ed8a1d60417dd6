"""The command line: refusals with exit status 2 and nothing written, and one real run end to end (all in
this process: ``run.py`` calls ``cli.main``; the subprocess runs are in test_faults, test_rundir, test_resume)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from handler_helpers import run_cli_in, unwritable_folder
from omegaconf import OmegaConf

from ignite_lstm.app.cli import main
from ignite_lstm.app.config.schema import load_config, validate_config
from ignite_lstm.app.task.dataset import split_params
from ignite_lstm.app.task.h5io import split_filename
from ignite_lstm.models.lstm import load_model


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, make_quick_config):
    """One real run of ``run.py quick.yaml name=first`` (in this process) in a fresh folder: (result, working
    folder)."""
    cwd = tmp_path_factory.mktemp("cli-run")
    config = make_quick_config(cwd)
    return run_cli_in([config, "name=first", "eval.report=true"], cwd), cwd


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "args, named",
    [
        (["model.hiden_size=8"], "model.hiden_size"),
        (["train.optimizer=adagrad"], "train.optimizer"),
        (["model.hidden_size=-3", "train.epochs=true"], "train.epochs"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(args, named, quick_config, monkeypatch, capsys):
    monkeypatch.chdir(quick_config.parent)
    assert main([str(quick_config), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid configuration")
    assert f"  - {named}: " in err
    assert [p.name for p in quick_config.parent.iterdir()] == ["quick.yaml"]  # no runs/, no data/


def test_missing_config_file_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["nope.yaml", "train.epochs=1"]) == 2
    assert "nope.yaml: the config file does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_exits_2_before_any_data(quick_config, monkeypatch, capsys):
    tmp_path = quick_config.parent
    monkeypatch.chdir(tmp_path)
    out = unwritable_folder(tmp_path, "runs")
    try:
        assert main([str(quick_config), f"output_dir={out}"]) == 2
    finally:
        (tmp_path / "locked").chmod(0o700)
    err = capsys.readouterr().err
    assert f"error: Output folder {out}/quick-" in err
    assert "is not writable" in err
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "runs").exists()


def test_run_writes_the_run_folder_and_prints_the_final_table(first_run):
    proc, cwd = first_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "train", "val", "test"]
    assert any(line.startswith("mse_f3 ") for line in lines)

    run = cwd / "runs" / "first"
    assert sorted(p.name.split("-")[0] for p in (cwd / "data").iterdir()) == ["test", "train", "val"]  # generated
    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert validate_config(saved).name == "first"  # the resolved config, loadable as it is
    assert saved["data"]["duration"] == 0.2 and saved["train"]["epochs"] == 2

    history = json.loads((run / "history.json").read_text())
    assert [entry["epoch"] for entry in history["epochs"]] == [1, 2]
    for entry in history["epochs"]:
        assert {"train/loss", "val/mse", "val/mse_f3", "lr"} <= set(entry)

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("train/mse", "val/mse", "test/mse", "test/mse_f3", "train/mse_f7", "test/snr"):
        assert math.isfinite(metrics[key]), key

    model, rest = load_model(run / "model.pt")
    assert model.hidden_size == 8
    assert rest["config"]["model"]["hidden_size"] == 8
    y, _ = model(torch.zeros(1, 3, 5))  # (B, T, 1 + F)
    assert y.shape == (1, 3, 1)

    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    assert "Epoch 2/2" in (run / "train.log").read_text()
    report = run / "report"  # the evaluation report of every run (ignite_lstm.app.task.report)
    assert json.loads((report / "metrics.json").read_text())["test/mse_f3"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test/mse_f3"], rel=1e-6
    )
    for png in ("extraction_f3.png", "extraction_all.png", "training_curves.png", "spectra.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_second_run_with_the_same_name_is_refused_and_leaves_the_first_alone(first_run, monkeypatch, capsys):
    _, cwd = first_run
    run = cwd / "runs" / "first"
    before = _files(run)
    assert "metrics.json" in before
    monkeypatch.chdir(cwd)
    assert main(["quick.yaml", "name=first"]) == 2  # in-process: refused before any training
    err = capsys.readouterr().err
    assert f"error: Run folder {Path('runs') / 'first'} already holds a run; pass resume=auto" in err
    assert _files(run) == before


def test_corrupt_data_file_exits_2_naming_it_and_leaves_it_alone(quick_config):
    cwd = quick_config.parent
    cfg = load_config(quick_config)
    name = split_filename("train", split_params(cfg.data, "train"))
    garbage = b"this is not an HDF5 file\n" * 4
    (cwd / "data").mkdir()
    (cwd / "data" / name).write_bytes(garbage)
    proc = run_cli_in([quick_config], cwd)
    assert proc.returncode == 2
    assert f"error: Data file {Path('data') / name} " in proc.stderr
    assert (cwd / "data" / name).read_bytes() == garbage
    assert [p.name for p in (cwd / "data").iterdir()] == [name]  # nothing generated around it


def test_the_reported_test_metrics_equal_an_independent_evaluation_of_model_pt(first_run):
    """metrics.json and report/metrics.json are written from one dict, so comparing them proves nothing
    about either: here the test split's HDF5 file is read with h5py, each (mixture, frequency) sequence fed
    to model.pt one step at a time in float64, and the mean squared errors computed with numpy."""
    import h5py
    import numpy as np

    _, cwd = first_run
    run = cwd / "runs" / "first"
    model, rest = load_model(run / "model.pt")
    model, scale = model.double().eval(), rest["config"]["data"]["input_scale"]
    (split,) = (cwd / "data").glob("test-*.h5")
    with h5py.File(split, "r") as f:
        mixture, target = f["mixture"][()].astype(np.float64), f["target"][()].astype(np.float64)
        frequencies = list(f.attrs["frequencies"])
    (m, steps), n_freq = mixture.shape, len(frequencies)
    errors = np.zeros((m, n_freq, steps))
    with torch.no_grad():
        for i in range(m):
            for k in range(n_freq):
                state = None
                for n in range(steps):
                    x = torch.zeros(1, 1 + n_freq, dtype=torch.float64)
                    x[0, 0], x[0, 1 + k] = scale * mixture[i, n], 1.0  # [scale * S(n), one-hot of k]
                    y, state = model.step(x, state)
                    errors[i, k, n] = y.item() - target[k, n]
    reported = json.loads((run / "metrics.json").read_text())
    assert reported["test/mse"] == pytest.approx(float(np.mean(errors**2)), rel=1e-4)
    for k, freq in enumerate(frequencies):
        assert reported[f"test/mse_f{freq:g}"] == pytest.approx(float(np.mean(errors[:, k] ** 2)), rel=1e-4)
    assert json.loads((run / "report" / "metrics.json").read_text())["test/mse"] == reported["test/mse"]


@pytest.mark.parametrize("command", ["evaluate", "extract", "export", "tune", "config", "matrix", "check"])
def test_each_subcommand_of_the_one_command_line_answers_help(command, capsys):
    from ignite_lstm.app.cli import dispatch

    with pytest.raises(SystemExit) as info:
        dispatch([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ignite-lstm {command}")


def test_the_command_line_lists_its_commands_and_train_is_the_default(quick_config, monkeypatch, capsys):
    from ignite_lstm.app.cli import SUBCOMMANDS, dispatch

    assert dispatch(["--help"]) == 0
    usage = capsys.readouterr().out
    for command in ["train", *SUBCOMMANDS]:
        assert f"\n  {command} " in usage, command
    assert dispatch([]) == 2
    monkeypatch.chdir(quick_config.parent)
    # ignite-lstm train CONFIG and ignite-lstm CONFIG are one command: both refuse a bad key the same way
    assert dispatch(["train", str(quick_config), "train.lrr=1"]) == dispatch([str(quick_config), "train.lrr=1"]) == 2
    assert capsys.readouterr().err.count("train.lrr") == 2


def test_python_m_ignite_lstm_app_is_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "ignite_lstm.app", "config", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: ignite-lstm config")
