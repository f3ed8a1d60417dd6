"""The evaluation report of a trained model: metrics per split and frequency, tables, figures.

``write_report`` is the one entry point: the training run calls it at the end (rank 0)
and ``ignite-lstm evaluate`` calls it for an existing model. It writes, in
``<run>/report/``::

    metrics.json         {"test/mse": ..., "test/mse_f3": ..., "train/snr_f7": ...}
    metrics.md           the same as Markdown tables, with the figures embedded
    extraction_f<Hz>.png the second frequency (f2) of the figure split
    extraction_all.png   every frequency, one panel each
    training_curves.png  from the run's history (skipped without one)
    spectra.png          amplitude spectra of mixture, output and target

It computes nothing: the metrics come from the final evaluation (``evaluate.evaluate_splits``,
run once, on every rank, by the training run or by ``ignite-lstm evaluate``) and
the figures' predictions from ``evaluate.figure_predictions``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ignite_lstm._internal.atomic import atomic_write
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.figures import (
    plot_extraction,
    plot_extraction_grid,
    plot_spectra,
    plot_training_curves,
)
from ignite_lstm.app.task.metrics import METRIC_NAMES

__all__ = ["metrics_table", "write_report"]

logger = logging.getLogger(__name__)

_HEADERS = {"mse": "MSE", "rmse": "RMSE", "mae": "MAE", "corr": "corr", "r2": "R²", "snr": "SNR (dB)"}


def _cell(value: float | None, name: str) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if name == "snr" else f"{value:.4g}"


def metrics_table(metrics: Mapping[str, float], *, frequencies: Sequence[float], splits: Sequence[str]) -> str:
    """Markdown: MSE per frequency and split, then one table of every metric per split.

    Args:
        metrics: keys as returned by ``evaluate_splits``.
        frequencies: the F frequencies in Hz.
        splits: the splits to show, in column order.

    Returns:
        The Markdown text (no title). Absent values show as "–".

    Example:
        >>> print(metrics_table(metrics, frequencies=[1, 3, 5, 7], splits=["train", "test"]))
    """
    suffixes = [f"{float(f):g}" for f in frequencies]
    rows = [(f"{s} Hz", f"_f{s}") for s in suffixes] + [("all", "")]
    ratio = "train" in splits and "test" in splits
    lines = ["## MSE per frequency", ""]
    header = ["frequency"] + list(splits) + (["test / train"] if ratio else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, suffix in rows:
        cells = [_cell(metrics.get(f"{split}/mse{suffix}"), "mse") for split in splits]
        if ratio:
            train, test = metrics.get(f"train/mse{suffix}"), metrics.get(f"test/mse{suffix}")
            cells.append(f"{test / train:.3f}" if train and test is not None else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for split in splits:
        lines += ["", f"## {split}", ""]
        lines += [
            "| frequency | " + " | ".join(_HEADERS[n] for n in METRIC_NAMES) + " |",
            "|" + "---|" * (len(METRIC_NAMES) + 1),
        ]
        for label, suffix in rows:
            cells = [_cell(metrics.get(f"{split}/{name}{suffix}"), name) for name in METRIC_NAMES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _load_history(run_dir: Path, history: Mapping[str, Any] | str | os.PathLike | None) -> Mapping[str, Any] | None:
    if isinstance(history, Mapping):
        return history
    path = Path(history) if history is not None else run_dir / "history.json"
    if not path.is_file():
        if history is not None:
            raise FileNotFoundError(f"History file {path} does not exist.")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("History file %s could not be read (%s); no training curves.", path, exc)
        return None


def write_report(
    run_dir: str | os.PathLike,
    metrics: Mapping[str, float],
    *,
    dataset: SignalDataset,
    predictions: np.ndarray | None,
    frequencies: Sequence[float],
    fs: float,
    splits: Sequence[str] | None = None,
    history: Mapping[str, Any] | str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    figure_split: str = "test",
    span_s: float = 1.0,
) -> Path:
    """Write metrics.json, metrics.md and the figures from metrics and predictions already computed.

    Call it on one process only (rank 0). Files are written atomically, so a report
    folder never holds a half-written file.

    Args:
        run_dir: the run folder; the history is read from ``run_dir/history.json`` unless given.
        metrics: ``{"<split>/<name>": value, "<split>/<name>_f<Hz>": value}`` (``evaluate.evaluate_splits``).
        dataset: the split drawn in the figures (its mixture 0).
        predictions: the model's outputs (F, T) for that mixture (``evaluate.figure_predictions``);
            None writes the metrics only (no PNG, no figure links in metrics.md).
        frequencies: the F frequencies in Hz (``cfg.data.frequencies``).
        fs: sampling rate in Hz (``cfg.data.fs``).
        splits: the splits in table order; default those found in ``metrics``.
        history: a history dict (``MetricsHistory.state_dict()``), a path to a history.json,
            or None for ``run_dir/history.json`` (no training curves when absent).
        output_dir: where the report goes; default ``run_dir/report``.
        figure_split: the name of ``dataset``'s split, for the figures' titles.
        span_s: seconds shown in the time-domain figures.

    Returns:
        The report folder.

    Example:
        >>> metrics = evaluate_splits(evaluator, loaders)  # on every rank
        >>> write_report(run_dir, metrics, dataset=test_set, predictions=figure_predictions(net, test_set),
        ...              frequencies=[1, 3, 5, 7], fs=1000.0)
    """
    run_dir = Path(run_dir)
    out = Path(output_dir) if output_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    frequencies = [float(f) for f in frequencies]
    if splits is None:
        splits = list(dict.fromkeys(key.split("/", 1)[0] for key in metrics))
    _write_text(out / "metrics.json", json.dumps(dict(metrics), indent=2) + "\n")
    drawn = (
        {}
        if predictions is None
        else _draw_figures(
            out,
            run_dir,
            dataset,
            predictions,
            history,
            frequencies=frequencies,
            fs=fs,
            span_s=span_s,
            split=figure_split,
        )
    )
    text = [
        f"# Evaluation report: {run_dir.name}",
        "",
        f"Splits: {', '.join(splits)}"
        + (f"; figures on the {figure_split} split (mixture 0)" if drawn else "")
        + ". Keys in metrics.json: `<split>/<metric>` and `<split>/<metric>_f<Hz>`.",
        "",
        metrics_table(metrics, frequencies=frequencies, splits=list(splits)),
    ]
    if drawn:
        text += ["## Figures", ""] + [f"![{name}]({path.name})\n" for name, path in drawn.items()]
    _write_text(out / "metrics.md", "\n".join(text))
    logger.info("Report written to %s", out)
    return out


def _draw_figures(
    out: Path,
    run_dir: Path,
    dataset: SignalDataset,
    outputs: np.ndarray,
    history: Any,
    *,
    frequencies: list[float],
    fs: float,
    span_s: float,
    split: str,
) -> dict[str, Path]:
    """The report's figures for mixture 0 of one split; outputs (F, T). Returns name -> path."""
    n_freq = dataset.n_frequencies
    mixture = (dataset[0][0][:, 0] / dataset.input_scale).numpy()  # raw S(n) of mixture 0, not the scaled input
    targets = np.stack([dataset[k][1][:, 0].numpy() for k in range(n_freq)])  # (F, T)
    second = 1 if n_freq > 1 else 0  # f2 of the task: the second frequency
    f2 = frequencies[second]
    figures = {
        "extraction": plot_extraction(
            out / f"extraction_f{f2:g}.png",
            mixture=mixture,
            target=targets[second],
            prediction=outputs[second],
            frequency=f2,
            fs=fs,
            span_s=span_s,
            split=split,
        ),
        "extraction_all": plot_extraction_grid(
            out / "extraction_all.png",
            mixture=mixture,
            targets=targets,
            predictions=outputs,
            frequencies=frequencies,
            fs=fs,
            span_s=span_s,
            split=split,
        ),
        "spectra": plot_spectra(
            out / "spectra.png",
            mixture=mixture,
            targets=targets,
            predictions=outputs,
            frequencies=frequencies,
            fs=fs,
            split=split,
        ),
    }
    loaded = _load_history(run_dir, history)
    curves = plot_training_curves(out / "training_curves.png", loaded) if loaded is not None else None
    if curves is None:
        logger.info("No training history for %s: training_curves.png not drawn.", run_dir)
        (out / "training_curves.png").unlink(missing_ok=True)  # never leave a stale figure of another model
    else:
        figures["training_curves"] = curves
    return figures
