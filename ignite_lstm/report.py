"""The evaluation report of a trained model: metrics per split and frequency, tables, figures.

``write_report`` is the one entry point: the training run calls it at the end and
``python -m ignite_lstm.evaluate`` calls it for an existing model. It writes, in
``<run>/report/``::

    metrics.json         {"test/mse": ..., "test/mse_f3": ..., "train/snr_f7": ...}
    metrics.md           the same as Markdown tables, with the figures embedded
    extraction_f<Hz>.png the second frequency (f2) of the figure split
    extraction_all.png   every frequency, one panel each
    training_curves.png  from the run's history (skipped without one)
    spectra.png          amplitude spectra of mixture, output and target

The numbers come from the project's evaluator (``create_evaluator``, fused path: the
whole sequence in one call from a reset state, equal to stepping ``model.step``) and
Ignite's metrics (``build_metrics``), every metric also per frequency.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from ignite_lstm._files import temp_beside
from ignite_lstm.data import SignalDataset
from ignite_lstm.engines import create_evaluator
from ignite_lstm.figures import plot_extraction, plot_extraction_grid, plot_spectra, plot_training_curves
from ignite_lstm.metrics import METRIC_NAMES, build_metrics

__all__ = ["evaluate_splits", "metrics_table", "write_report"]

logger = logging.getLogger(__name__)

_HEADERS = {"mse": "MSE", "rmse": "RMSE", "mae": "MAE", "corr": "corr", "r2": "R²", "snr": "SNR (dB)"}


def evaluate_splits(
    model: nn.Module,
    datasets: Mapping[str, SignalDataset],
    *,
    frequencies: Sequence[float],
    device: str | torch.device = "cpu",
    batch_size: int = 40,
    keep_predictions: Sequence[str] = (),
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric of ``METRIC_NAMES``, overall and per frequency, on every split.

    Args:
        model: the trained model (already on ``device``; left in eval mode).
        datasets: split name -> dataset, evaluated in this order.
        frequencies: the F frequencies in Hz, in selector order.
        device: where batches go.
        batch_size: sequences per evaluation batch.
        keep_predictions: splits whose outputs are returned.

    Returns:
        ``(metrics, predictions)``: metrics keyed ``"<split>/<name>"`` and
        ``"<split>/<name>_f<Hz>"`` (``test/mse_f3``); predictions split -> float32 (M, F, T).

    Example:
        >>> metrics, outputs = evaluate_splits(model, {"test": dataset}, frequencies=[1, 3, 5, 7],
        ...                                    keep_predictions=("test",))
        >>> metrics["test/mse_f3"], outputs["test"].shape  # (M, F, T)
    """
    frequencies = [float(f) for f in frequencies]
    evaluator = create_evaluator(
        model, build_metrics(frequencies, per_frequency=METRIC_NAMES, device=device), device=device, execution="auto"
    )
    collected: list[torch.Tensor] = []

    def collect(engine: Engine) -> None:
        y_pred, x = engine.state.output["y_pred"], engine.state.batch[0]
        collected.append(y_pred.detach().reshape(x.shape[0], x.shape[1]).cpu())  # (B, T)

    metrics: dict[str, float] = {}
    predictions: dict[str, np.ndarray] = {}
    for split, dataset in datasets.items():
        collected.clear()
        handle = evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect) if split in keep_predictions else None
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        state = evaluator.run(loader)
        if handle is not None:
            handle.remove()
            y = torch.cat(collected).numpy().astype(np.float32)  # (M*F, T), item i = (m, k) = divmod(i, F)
            predictions[split] = y.reshape(dataset.n_mixtures, dataset.n_frequencies, dataset.n_steps)
        metrics.update({f"{split}/{name}": float(value) for name, value in state.metrics.items()})
    return metrics, predictions


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
        lines += ["| frequency | " + " | ".join(_HEADERS[n] for n in METRIC_NAMES) + " |",
                  "|" + "---|" * (len(METRIC_NAMES) + 1)]
        for label, suffix in rows:
            cells = [_cell(metrics.get(f"{split}/{name}{suffix}"), name) for name in METRIC_NAMES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    fd, tmp = temp_beside(path)  # the umask's mode, not mkstemp's 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    model: nn.Module,
    datasets: Mapping[str, SignalDataset],
    *,
    frequencies: Sequence[float],
    fs: float,
    history: Mapping[str, Any] | str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 40,
    figure_split: str | None = None,
    span_s: float = 1.0,
    figures: bool = True,
) -> dict[str, float]:
    """Evaluate ``model`` on ``datasets`` and write metrics.json, metrics.md and the figures.

    Call it on one process only (rank 0) with the unwrapped model. Files are written
    atomically, so a report folder never holds a half-written file.

    Args:
        run_dir: the run folder; the history is read from ``run_dir/history.json`` unless given.
        model: the trained model, on ``device``.
        datasets: split name -> ``SignalDataset`` (e.g. ``setup_data(cfg)["datasets"]``), in table order.
        frequencies: the F frequencies in Hz (``cfg.data.frequencies``).
        fs: sampling rate in Hz (``cfg.data.fs``).
        history: a history dict (``MetricsHistory.state_dict()``), a path to a history.json,
            or None for ``run_dir/history.json`` (no training curves when absent).
        output_dir: where the report goes; default ``run_dir/report``.
        device: where batches go.
        batch_size: sequences per evaluation batch (``cfg.eval.batch_size``).
        figure_split: the split drawn in the figures; default "test" if present, else the last split.
        span_s: seconds shown in the time-domain figures.
        figures: False writes the metrics only (no PNG, no figure links in metrics.md).

    Returns:
        The metrics, keyed ``"<split>/<name>"`` and ``"<split>/<name>_f<Hz>"`` (as in metrics.json).

    Example:
        >>> data = setup_data(cfg)  # at the end of a run, on rank 0
        >>> metrics = write_report(run_dir, net, data["datasets"], frequencies=list(cfg.data.frequencies),
        ...                        fs=cfg.data.fs, device=device, batch_size=cfg.eval.batch_size)
        >>> metrics["test/mse_f3"]
    """
    if not datasets:
        raise ValueError("Argument datasets should hold at least one split, got none.")
    run_dir = Path(run_dir)
    out = Path(output_dir) if output_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    frequencies = [float(f) for f in frequencies]
    if figure_split is None:
        figure_split = "test" if "test" in datasets else list(datasets)[-1]
    if figure_split not in datasets:
        raise ValueError(f"Argument figure_split should be one of {list(datasets)}, got {figure_split!r}.")

    metrics, predictions = evaluate_splits(model, datasets, frequencies=frequencies, device=device,
                                           batch_size=batch_size, keep_predictions=(figure_split,) if figures else ())
    _write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    drawn = _draw_figures(out, run_dir, datasets[figure_split], predictions[figure_split][0], history,
                          frequencies=frequencies, fs=fs, span_s=span_s, split=figure_split) if figures else {}
    text = [f"# Evaluation report: {run_dir.name}", "",
            f"Splits: {', '.join(datasets)}" + (f"; figures on the {figure_split} split (mixture 0)" if drawn else "")
            + ". Keys in metrics.json: `<split>/<metric>` and `<split>/<metric>_f<Hz>`.", "",
            metrics_table(metrics, frequencies=frequencies, splits=list(datasets))]
    if drawn:
        text += ["## Figures", ""] + [f"![{name}]({path.name})\n" for name, path in drawn.items()]
    _write_text(out / "metrics.md", "\n".join(text))
    logger.info("Report written to %s", out)
    return metrics


def _draw_figures(
    out: Path, run_dir: Path, dataset: SignalDataset, outputs: np.ndarray, history: Any, *,
    frequencies: list[float], fs: float, span_s: float, split: str,
) -> dict[str, Path]:
    """The report's figures for mixture 0 of one split; outputs (F, T). Returns name -> path."""
    n_freq = dataset.n_frequencies
    mixture = (dataset[0][0][:, 0] / dataset.input_scale).numpy()  # raw S(n) of mixture 0, not the scaled input
    targets = np.stack([dataset[k][1][:, 0].numpy() for k in range(n_freq)])  # (F, T)
    second = 1 if n_freq > 1 else 0  # f2 of the task: the second frequency
    f2 = frequencies[second]
    figures = {
        "extraction": plot_extraction(out / f"extraction_f{f2:g}.png", mixture=mixture, target=targets[second],
                                      prediction=outputs[second], frequency=f2, fs=fs, span_s=span_s,
                                      split=split),
        "extraction_all": plot_extraction_grid(out / "extraction_all.png", mixture=mixture, targets=targets,
                                               predictions=outputs, frequencies=frequencies, fs=fs,
                                               span_s=span_s, split=split),
        "spectra": plot_spectra(out / "spectra.png", mixture=mixture, targets=targets, predictions=outputs,
                                frequencies=frequencies, fs=fs, split=split),
    }
    loaded = _load_history(run_dir, history)
    curves = plot_training_curves(out / "training_curves.png", loaded) if loaded is not None else None
    if curves is None:
        logger.info("No training history for %s: training_curves.png not drawn.", run_dir)
        (out / "training_curves.png").unlink(missing_ok=True)  # never leave a stale figure of another model
    else:
        figures["training_curves"] = curves
    return figures
