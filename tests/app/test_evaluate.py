import json
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from ignite_lstm.app.config.schema import ConfigError, validate_config
from ignite_lstm.app.run.evaluate import load_run, main
from ignite_lstm.models.lstm import StatefulLSTM


def _make_run(tmp_path, name="run"):
    """A run folder as run.py writes it: config.yaml, model.pt (with config), a best checkpoint, history."""
    cfg = validate_config(
        {
            "data": {
                "dir": str(tmp_path / "data"),
                "duration": 0.2,
                "input_scale": 4.0,
                "train": {"seed": 1, "mixtures": 1},
                "val": {"seed": 3, "mixtures": 1},
                "test": {"seed": 2, "mixtures": 1},
            },
            "model": {"hidden_size": 8},
            "eval": {"batch_size": 4},
        }
    )
    torch.manual_seed(0)
    model = StatefulLSTM(input_size=5, hidden_size=8)
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    torch.save(
        {"model": model.state_dict(), "model_args": model.config, "config": OmegaConf.to_container(cfg)},
        run / "model.pt",
    )
    torch.save(
        {"model": model.state_dict(), "model_args": model.config},
        run / "checkpoints" / "best_checkpoint_2_val_mse=-0.4000.pt",
    )
    history = {
        "epochs": [
            {"epoch": 1, "train/loss": 0.5, "val/mse": 0.45, "lr": 1e-3},
            {"epoch": 2, "train/loss": 0.4, "val/mse": 0.40, "lr": 5e-4},
        ],
        "best": {},
    }
    (run / "history.json").write_text(json.dumps(history))
    return run, model


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_load_run_from_folder_and_best_checkpoint(tmp_path):
    run, model = _make_run(tmp_path)
    files = load_run(run)
    assert files.model_file == run / "model.pt" and files.run_dir == run
    assert list(files.config.data.frequencies) == [1.0, 3.0, 5.0, 7.0] and _same_weights(files.model, model)
    best = next((run / "checkpoints").glob("best_*.pt"))
    files = load_run(best)  # no config inside: the run folder's config.yaml
    assert files.run_dir == run and files.config.data.input_scale == 4.0 and _same_weights(files.model, model)


def test_load_run_errors(tmp_path):
    run, model = _make_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"Model file or run folder .*nowhere does not exist\."):
        load_run(tmp_path / "nowhere")
    (run / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no model\.pt .*best_checkpoint_2_val_mse=-0\.4000\.pt"):
        load_run(run)
    bare = tmp_path / "bare.pt"
    torch.save({"model": model.state_dict(), "model_args": model.config}, bare)
    with pytest.raises(ConfigError, match=r"bare\.pt: holds no config and no config\.yaml was found"):
        load_run(bare)
    assert load_run(bare, require_config=False).config is None
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt is not a StatefulLSTM file of this package"):
        load_run(foreign)
    wide = StatefulLSTM(input_size=7, hidden_size=8)
    torch.save({"model": wide.state_dict(), "model_args": wide.config}, run / "wide.pt")
    with pytest.raises(ValueError, match=r"input_size 7 .* 4 frequencies, which need input_size 5"):
        load_run(run / "wide.pt")


def test_cli_writes_the_report_of_a_run(tmp_path, capsys):
    run, _ = _make_run(tmp_path)
    assert main([str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert f"Report: {run / 'report'}" in out and "| 3 Hz |" in out
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert {k.split("/")[0] for k in metrics} == {"test"}
    assert {"test/mse", "test/mse_f3", "test/snr_f7", "test/corr_f1", "test/r2_f5", "test/mae_f3"} <= set(metrics)
    assert (run / "report" / "training_curves.png").is_file()  # from the run's history.json


def test_cli_checkpoint_goes_to_its_own_report_folder(tmp_path):
    run, _ = _make_run(tmp_path)
    best = next((run / "checkpoints").glob("best_*.pt"))
    out = tmp_path / "out"
    assert main([str(best), "--split", "val", "--output", str(out), "--no-figures"]) == 0
    assert {k.split("/")[0] for k in json.loads((out / "metrics.json").read_text())} == {"val"}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]
    assert not (run / "report").exists()
    assert main([str(best), "--split", "test", "--no-figures"]) == 0  # default: report-<file stem> beside it
    assert (run / "checkpoints" / "report-best_checkpoint_2_val_mse=-0.4000" / "metrics.json").is_file()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert f"error: Model file or run folder {tmp_path / 'missing'} does not exist." in capsys.readouterr().err
    not_torch = tmp_path / "model.pt"
    not_torch.write_text("hello")
    assert main([str(not_torch)]) == 2
    assert f"error: Model file {not_torch} could not be read as a torch file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [
        ("banana", "--device 'banana' is not a torch device: choose one of 'auto', 'cpu'"),
        ("cuda:99", "--device 'cuda:99' is not available: "),
        pytest.param(
            "cuda",
            "--device 'cuda' is not available: torch.cuda.is_available() is False "
            "(a CPU-only torch build, or no GPU or driver); choose one of 'auto', 'cpu'",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this torch build has CUDA"),
        ),
    ],
)
def test_cli_unusable_device_exits_2_before_anything_is_written(device, message, tmp_path, capsys):
    run, _ = _make_run(tmp_path)
    assert main([str(run), "--device", device]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (run / "report").exists()


def test_cli_empty_and_foreign_files_say_why(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main([str(empty)]) == 2
    assert (
        f"error: Model file {empty} could not be read as a torch file: empty file (0 bytes)." in capsys.readouterr().err
    )
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))  # a pickle, not torch.save's format
    assert main([str(foreign)]) == 2
    err = capsys.readouterr().err
    assert f"error: Model file {foreign} is not a checkpoint written by ignite_lstm: it holds objects other " in err
    assert "weights_only" not in err  # torch's advice to load it unsafely is not passed on
