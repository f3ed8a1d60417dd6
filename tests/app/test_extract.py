import os
import stat

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ignite_lstm.app.config.schema import validate_config
from ignite_lstm.app.run.evaluate import figure_predictions
from ignite_lstm.app.run.extract import ExtractionError, main, read_mixture, stream_extract, write_signal
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.h5io import write_split
from ignite_lstm.models.lstm import StatefulLSTM

FREQS = [1.0, 3.0, 5.0, 7.0]
SCALE = 4.0


def _split(n_mixtures=2):
    return generate_split(
        frequencies=FREQS,
        fs=1000.0,
        duration=0.2,
        amplitude_range=[0.8, 1.2],
        phase_scale=0.01,
        noise_sigma=0.0,
        n_mixtures=n_mixtures,
        seed=2,
    )


def _model():
    torch.manual_seed(0)
    return StatefulLSTM(input_size=1 + len(FREQS), hidden_size=8).eval()


def _checkpoint(tmp_path, model, config=True):
    """model.pt as run.py writes it (with config, data.input_scale = 4), or a bare best checkpoint."""
    path = tmp_path / ("model.pt" if config else "bare.pt")
    obj = {"model": model.state_dict(), "model_args": model.config}
    if config:
        cfg = validate_config({"data": {"input_scale": SCALE}, "model": {"hidden_size": 8}})
        obj["config"] = OmegaConf.to_container(cfg)
    torch.save(obj, path)
    return path


def test_stream_equals_whole_sequence_evaluation():
    model, data = _model(), _split(1)
    dataset = SignalDataset(data.mixture, data.target, input_scale=SCALE)
    predictions = figure_predictions(model, dataset)  # (F, T): mixture 0, whole sequences in one call
    for k in range(len(FREQS)):
        streamed = stream_extract(model, data.mixture[0], frequency_index=k, num_frequencies=4, input_scale=SCALE)
        assert streamed.dtype == np.float32 and streamed.shape == (200,)
        np.testing.assert_allclose(streamed, predictions[k], rtol=0, atol=1e-5)


def _write_input(tmp_path, kind, mixture):
    if kind == "npy":
        np.save(tmp_path / "in.npy", mixture)
        return tmp_path / "in.npy", []
    if kind == "npy-column":
        np.save(tmp_path / "in.npy", mixture[:, None])
        return tmp_path / "in.npy", []
    if kind == "csv":
        (tmp_path / "in.csv").write_text("mixture\n" + "\n".join(f"{v:.9g}" for v in mixture) + "\n")
        return tmp_path / "in.csv", []
    data = _split(2)  # a split file, mixture row 1
    data.mixture[1] = mixture
    write_split(tmp_path / "in.h5", data, "test")
    return tmp_path / "in.h5", ["--row", "1"]


@pytest.mark.parametrize("kind, out", [("npy", "npy"), ("npy-column", "csv"), ("csv", "csv"), ("h5", "npy")])
def test_cli_extracts_with_the_checkpoint_input_scale(tmp_path, capsys, kind, out):
    model, mixture = _model(), _split(1).mixture[0]
    path, extra = _write_input(tmp_path, kind, mixture)
    output = tmp_path / f"out.{out}"
    args = [
        "--checkpoint",
        str(_checkpoint(tmp_path, model)),
        "--input",
        str(path),
        "--frequency",
        "3",
        "--output",
        str(output),
    ]
    assert main(args + extra) == 0
    printed = capsys.readouterr().out
    assert f"Extracted 3 Hz from {path} (200 samples) -> {output}" in printed and "µs per sample" in printed
    result = np.load(output) if out == "npy" else np.loadtxt(output, dtype=np.float32)
    expected = stream_extract(model, mixture, frequency_index=1, num_frequencies=4, input_scale=SCALE)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-7)


def test_cli_input_scale_option_and_bare_checkpoint(tmp_path, capsys):
    model, mixture = _model(), _split(1).mixture[0]
    np.save(tmp_path / "in.npy", mixture)
    bare = _checkpoint(tmp_path, model, config=False)
    args = [
        "--checkpoint",
        str(bare),
        "--input",
        str(tmp_path / "in.npy"),
        "--frequency",
        "7",
        "--output",
        str(tmp_path / "out.npy"),
    ]
    assert main(args) == 2
    assert "holds no config and no config.yaml was found beside it; pass --frequencies" in capsys.readouterr().err
    assert main(args + ["--frequencies", "1,3,5,7", "--input-scale", "2"]) == 0
    expected = stream_extract(model, mixture, frequency_index=3, num_frequencies=4, input_scale=2.0)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def _npy(tmp_path, array):
    np.save(tmp_path / "bad.npy", array)
    return tmp_path / "bad.npy"


def _text(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


ERRORS = {
    "frequency": (
        lambda p: _npy(p, np.zeros(5)),
        ["--frequency", "4"],
        "Frequency 4 Hz is not one the model was trained for; allowed: 1, 3, 5, 7 (Hz).",
    ),
    "two columns": (
        lambda p: _npy(p, np.zeros((5, 2))),
        [],
        "has shape (5, 2); expected a 1-D signal (T,) or one column (T, 1).",
    ),
    "one row": (lambda p: _npy(p, np.zeros((1, 5))), [], "has shape (1, 5); expected a 1-D signal"),
    "empty": (lambda p: _npy(p, np.zeros(0)), [], "is empty; expected at least one sample."),
    "nan": (lambda p: _npy(p, np.array([0.0, 1.0, np.nan])), [], "has NaN or infinite values at sample(s) [2]."),
    "garbage npy": (lambda p: _text(p, "bad.npy", "not numpy"), [], "could not be read as a .npy array"),
    "csv columns": (lambda p: _text(p, "bad.csv", "0.1,0.2\n"), [], "has 2 columns on line 1; expected one column."),
    "csv text": (lambda p: _text(p, "bad.csv", "s\n0.1\nabc\n"), [], "line 3: 'abc' is not a number."),
    "garbage h5": (lambda p: _text(p, "bad.h5", "not hdf5"), [], "is not a readable HDF5 file"),
    "missing": (lambda p: p / "missing.npy", [], "missing.npy does not exist."),
    "extension": (lambda p: _text(p, "bad.wav", ""), [], "has an unknown extension '.wav'; allowed:"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_cli_bad_input_exits_2(tmp_path, capsys, case):
    make, extra, message = ERRORS[case]
    path = make(tmp_path)
    args = [
        "--checkpoint",
        str(_checkpoint(tmp_path, _model())),
        "--input",
        str(path),
        "--frequency",
        "3",
        "--output",
        str(tmp_path / "out.npy"),
    ]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "out.npy").exists()


def test_cli_h5_dataset_errors(tmp_path, capsys):
    write_split(tmp_path / "in.h5", _split(2), "test")
    args = [
        "--checkpoint",
        str(_checkpoint(tmp_path, _model())),
        "--input",
        str(tmp_path / "in.h5"),
        "--frequency",
        "3",
        "--output",
        str(tmp_path / "out.csv"),
    ]
    assert main(args + ["--dataset", "signal"]) == 2
    assert "has no dataset 'signal'; datasets in the file: ['mixture', 't', 'target']." in capsys.readouterr().err
    assert main(args + ["--row", "2"]) == 2
    assert "dataset 'mixture' has 2 row(s); --row 2 is out of range." in capsys.readouterr().err
    assert main(args + ["--dataset", "t"]) == 0  # any 1-D dataset is a signal


def test_cli_checkpoint_errors(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros(5))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state": torch.zeros(2)}, foreign)
    wide = StatefulLSTM(input_size=7, hidden_size=8)
    cfg = OmegaConf.to_container(validate_config({}))
    torch.save({"model": wide.state_dict(), "model_args": wide.config, "config": cfg}, tmp_path / "wide.pt")
    base = ["--input", str(tmp_path / "in.npy"), "--frequency", "3"]
    assert main(base + ["--checkpoint", str(foreign), "--output", str(tmp_path / "out.npy")]) == 2
    assert "foreign.pt is not a StatefulLSTM file of this package" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(tmp_path / "wide.pt"), "--output", str(tmp_path / "out.npy")]) == 2
    assert "has input_size 7 and output_size 1; its config lists 4 frequencies" in capsys.readouterr().err
    good = str(_checkpoint(tmp_path, _model()))
    assert main(base + ["--checkpoint", good, "--output", str(tmp_path / "out.txt")]) == 2
    err = capsys.readouterr().err
    assert "Output " in err and "unknown extension '.txt'; allowed: ('.npy', '.csv')" in err
    assert not list(tmp_path.glob("out*"))


def test_read_and_write_signal_roundtrip(tmp_path):
    signal = np.linspace(-1, 1, 7, dtype=np.float32)
    for name in ("a.npy", "a.csv"):
        write_signal(tmp_path / name, signal)
        np.testing.assert_array_equal(read_mixture(tmp_path / name), signal)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ExtractionError, match=r"Output .*a\.h5 has an unknown extension '\.h5'"):
        write_signal(tmp_path / "a.h5", signal)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_follows_the_umask(tmp_path, capsys, umask):
    model = _model()
    np.save(tmp_path / "in.npy", _split(1).mixture[0])
    checkpoint = _checkpoint(tmp_path, model)
    previous = os.umask(umask)
    try:
        for name in ("out.npy", "out.csv"):
            assert (
                main(
                    [
                        "--checkpoint",
                        str(checkpoint),
                        "--input",
                        str(tmp_path / "in.npy"),
                        "--frequency",
                        "3",
                        "--output",
                        str(tmp_path / name),
                    ]
                )
                == 0
            )
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name  # not mkstemp's 0600
    finally:
        os.umask(previous)


@pytest.mark.parametrize(
    "device, message",
    [
        ("banana", "--device 'banana' is not a torch device: choose one of 'auto', 'cpu'"),
        pytest.param(
            "cuda",
            "--device 'cuda' is not available: torch.cuda.is_available() is False",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this torch build has CUDA"),
        ),
    ],
)
def test_cli_unusable_device_exits_2_and_writes_nothing(tmp_path, capsys, device, message):
    np.save(tmp_path / "in.npy", _split(1).mixture[0])
    args = [
        "--checkpoint",
        str(_checkpoint(tmp_path, _model())),
        "--input",
        str(tmp_path / "in.npy"),
        "--frequency",
        "3",
        "--output",
        str(tmp_path / "out.npy"),
        "--device",
        device,
    ]
    assert main(args) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()
