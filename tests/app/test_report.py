import json
import logging
import math
import os
import stat

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ignite_lstm.app.run.evaluate import evaluate_splits, figure_predictions
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.metrics import METRIC_NAMES, build_metrics
from ignite_lstm.app.task.report import metrics_table, write_report
from ignite_lstm.engine.factories import create_evaluator
from ignite_lstm.models.lstm import StatefulLSTM

FREQS = [1.0, 3.0, 5.0, 7.0]
FS = 1000.0
SCALE = 4.0


def _datasets():
    """train: 2 mixtures, test: 1 mixture, T = 200 steps each."""
    datasets = {}
    for split, seed, mixtures in (("train", 1, 2), ("test", 2, 1)):
        data = generate_split(
            frequencies=FREQS,
            fs=FS,
            duration=0.2,
            amplitude_range=[0.8, 1.2],
            phase_scale=0.01,
            noise_sigma=0.0,
            n_mixtures=mixtures,
            seed=seed,
        )
        datasets[split] = SignalDataset(data.mixture, data.target, input_scale=SCALE)
    return datasets


def _model():
    torch.manual_seed(0)
    return StatefulLSTM(input_size=1 + len(FREQS), hidden_size=8).eval()


def _evaluate(model, datasets, batch_size=40):
    """The final evaluation of a run: every metric per frequency, on every split."""
    evaluator = create_evaluator(model, build_metrics(FREQS, per_frequency=METRIC_NAMES))
    return evaluate_splits(evaluator, {s: DataLoader(d, batch_size=batch_size) for s, d in datasets.items()})


def _write(tmp_path, model, datasets, **kwargs):
    """evaluate, then write_report on the test split, as the training run does."""
    metrics = _evaluate(model, datasets)
    write_report(
        tmp_path,
        metrics,
        dataset=datasets["test"],
        predictions=figure_predictions(model, datasets["test"]),
        frequencies=FREQS,
        fs=FS,
        **kwargs,
    )
    return metrics


def _reference(model, dataset):
    """Direct numpy metrics of model(x) on every item of the dataset: {name, name_f<Hz>: value}."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (M*F, T, 1+F)
    y = torch.stack([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        pred = model(x)[0][..., 0].double().numpy()  # (M*F, T)
    y = y[..., 0].double().numpy()
    k = dataset.frequency_index.numpy()

    def stats(p, t):
        err = p - t
        return {
            "mse": np.mean(err**2),
            "rmse": np.sqrt(np.mean(err**2)),
            "mae": np.mean(np.abs(err)),
            "corr": np.corrcoef(p, t)[0, 1],
            "r2": 1 - np.sum(err**2) / np.sum((t - t.mean()) ** 2),
            "snr": 10 * np.log10(np.sum(t**2) / np.sum(err**2)),
        }

    values = stats(pred.ravel(), y.ravel())
    for i, f in enumerate(FREQS):
        values.update({f"{n}_f{f:g}": v for n, v in stats(pred[k == i].ravel(), y[k == i].ravel()).items()})
    values["mse_worst"] = max(values[f"mse_f{f:g}"] for f in FREQS)
    return values, pred.reshape(dataset.n_mixtures, len(FREQS), -1)


def test_evaluate_splits_matches_numpy():
    model, datasets = _model(), _datasets()
    metrics = _evaluate(model, datasets, batch_size=3)
    for split, dataset in datasets.items():
        reference, pred = _reference(model, dataset)
        assert {k for k in metrics if k.startswith(f"{split}/")} == {f"{split}/{k}" for k in reference}
        for key, value in reference.items():
            # corr and r2 are differences of float32-accumulated sums in Ignite: absolute tolerance
            tolerance = 1e-5 if key.startswith(("corr", "r2")) else 1e-7
            assert metrics[f"{split}/{key}"] == pytest.approx(value, rel=1e-5, abs=tolerance), key
    predictions = figure_predictions(model, datasets["test"])  # mixture 0, one sequence per frequency
    assert predictions.shape == (4, 200) and predictions.dtype == np.float32
    np.testing.assert_allclose(predictions, pred[0], rtol=0, atol=1e-6)


def test_metrics_table_layout():
    metrics = {f"{s}/{n}{f}": 0.5 for s in ("train", "test") for n in METRIC_NAMES for f in ["", "_f1", "_f3"]}
    metrics["test/mse_f3"] = 0.25
    metrics["train/mse_f3"] = 0.125
    metrics["test/snr"] = math.inf
    del metrics["train/mae_f1"]
    text = metrics_table(metrics, frequencies=[1.0, 3.0], splits=["train", "test"])
    lines = text.splitlines()
    assert lines[:3] == ["## MSE per frequency", "", "| frequency | train | test | test / train |"]
    assert "| 3 Hz | 0.125 | 0.25 | 2.000 |" in lines
    assert "| frequency | MSE | RMSE | MAE | corr | R² | SNR (dB) |" in lines
    assert "| 1 Hz | 0.5 | 0.5 | – | 0.5 | 0.5 | 0.50 |" in lines  # missing train/mae_f1
    assert "| all | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 | inf |" in lines  # test/snr


def test_write_report_writes_json_markdown_and_figures(tmp_path):
    model, datasets = _model(), _datasets()
    history = {
        "epochs": [
            {
                "epoch": e,
                "train/loss": 0.5 / e,
                "val/mse": 0.6 / e,
                "val/mse_f3": 0.7 / e,
                "val/snr": float(e),
                "lr": 1e-3 / e,
            }
            for e in (1, 2, 3)
        ]
    }
    metrics = _write(tmp_path, model, datasets, history=history)
    report = tmp_path / "report"
    assert json.loads((report / "metrics.json").read_text()) == metrics
    assert metrics["test/mse_f3"] == pytest.approx(_reference(model, datasets["test"])[0]["mse_f3"], rel=1e-5)
    names = ["extraction_f3.png", "extraction_all.png", "spectra.png", "training_curves.png"]
    for name in names:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in report.iterdir()) == sorted(names + ["metrics.json", "metrics.md"])
    text = (report / "metrics.md").read_text()
    assert "![extraction](extraction_f3.png)" in text and "![training_curves](training_curves.png)" in text
    assert "| 3 Hz |" in text and "## test" in text


def test_write_report_without_history_skips_curves(tmp_path, caplog):
    datasets = {"test": _datasets()["test"]}
    out = tmp_path / "elsewhere"
    with caplog.at_level(logging.INFO, logger="ignite_lstm.app.task.report"):
        metrics = _write(tmp_path, _model(), datasets, output_dir=out)
    assert set(k.split("/")[0] for k in metrics) == {"test"}
    assert not (out / "training_curves.png").exists()
    assert "training_curves" not in (out / "metrics.md").read_text()
    assert "No training history" in caplog.text


def test_write_report_without_predictions_writes_the_metrics_only(tmp_path):
    metrics = _evaluate(_model(), _datasets())
    out = write_report(tmp_path, metrics, dataset=_datasets()["test"], predictions=None, frequencies=FREQS, fs=FS)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]
    assert "## Figures" not in (out / "metrics.md").read_text()


def test_report_files_follow_the_umask(tmp_path):
    history = {"epochs": [{"epoch": e, "train/loss": 0.5 / e, "val/mse": 0.6 / e, "lr": 1e-3} for e in (1, 2)]}
    previous = os.umask(0o027)
    try:
        _write(tmp_path, _model(), _datasets(), history=history)
    finally:
        os.umask(previous)
    files = sorted((tmp_path / "report").iterdir())
    assert {p.suffix for p in files} == {".json", ".md", ".png"}
    for path in files:  # metrics (report.py) and figures (figures.py): as open() would, not mkstemp's 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name
