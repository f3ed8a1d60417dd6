"""Figures of an evaluation report, drawn with matplotlib's Agg canvas (no pyplot, no display).

Every function draws one PNG and writes it atomically (temporary file + ``os.replace``).
Signals are 1-D numpy arrays over the sample index n, with t_n = n / fs in seconds; the
mixture is the raw S(n), not the scaled model input.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from ignite_lstm._internal.atomic import atomic_write

__all__ = ["plot_extraction", "plot_extraction_grid", "plot_training_curves", "plot_spectra"]

_MIXTURE = dict(color="0.55", alpha=0.45, linewidth=0.8)
_TARGET = dict(color="tab:blue", linewidth=1.6)
_PREDICTION = dict(color="tab:red", s=9, linewidths=0, zorder=3)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def _panels(
    fig: Figure,
    rows: int,
    cols: int,
    *,
    left: float,
    right: float,
    top: float,
    bottom: float,
    hgap: float,
    wgap: float,
    **kwargs: Any,
) -> np.ndarray:
    """A rows x cols grid with fixed margins and gaps in inches.

    Fixed margins instead of constrained layout: the layout engine redraws every tick
    several times and makes a figure three times slower to save.
    """
    width, height = fig.get_size_inches()
    ax_h = (height - top - bottom - (rows - 1) * hgap) / rows
    ax_w = (width - left - right - (cols - 1) * wgap) / cols
    spec = dict(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        hspace=hgap / ax_h,
        wspace=wgap / ax_w,
    )
    return fig.subplots(rows, cols, squeeze=False, gridspec_kw=spec, **kwargs)


def _frequency_grid(n_panels: int, *, panel_height: float, left: float) -> tuple[Figure, np.ndarray]:
    """A figure of ``n_panels`` panels, one per frequency, in a ceil(sqrt(F)) x ceil(F / cols) grid
    sharing both axes, with room at the bottom for one legend (at least 10 in wide)."""
    cols = math.ceil(math.sqrt(n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(max(6.5 * cols, 10.0), panel_height * rows + 0.6))
    axes = _panels(
        fig, rows, cols, left=left, right=0.2, top=0.6, bottom=1.0, hgap=0.4, wgap=0.2, sharex=True, sharey=True
    )
    return fig, axes


def _title(fig: Figure, text: str) -> None:
    fig.suptitle(text, y=1 - 0.12 / fig.get_size_inches()[1], va="top")


def _bottom_legend(fig: Figure, ax, **kwargs: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(handles), bbox_to_anchor=(0.5, 0.0), **kwargs)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide panels past ``used``; tick labels and axis labels only on the outer panels of shared axes."""
    cols = axes.shape[1]
    for index, ax in enumerate(axes.flat):
        if index >= used:
            ax.set_visible(False)
            continue
        # A panel whose lower neighbour is hidden keeps its x labels (ceil grids leave a gap).
        inner = index + cols < used
        ax.tick_params(labelbottom=not inner)
        if inner:
            ax.set_xlabel("")
        if index % cols:
            ax.tick_params(labelleft=False)
            ax.set_ylabel("")


def _span(n_steps: int, fs: float, span_s: float) -> int:
    return max(1, min(n_steps, round(span_s * fs)))


def _draw_extraction(ax, t, mixture, target, prediction, frequency: float, n: int, legend: bool) -> None:
    ax.plot(t[:n], mixture[:n], label="noisy mixture S(t)", **_MIXTURE)
    ax.plot(t[:n], target[:n], label=f"clean target sin(2π·{frequency:g}·t)", **_TARGET)
    # About 200 dots: every sample would merge into a line and hide the target.
    stride = max(1, n // 200)
    every = "every sample" if stride == 1 else f"one dot every {stride} samples"
    ax.scatter(t[:n:stride], prediction[:n:stride], label=f"model output ({every})", **_PREDICTION)
    ax.set_xlim(t[0], t[n - 1])
    peak = max(float(np.max(np.abs(a[:n]))) for a in (mixture, target, prediction))
    ax.set_ylim(-max(1.6, 1.05 * peak), max(1.6, 1.05 * peak))  # room for the legend, nothing clipped
    ax.set_xlabel("time t (s)")
    ax.set_ylabel("amplitude (a.u.)")
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9, markerscale=2)


def plot_extraction(
    path: str | os.PathLike,
    *,
    mixture: np.ndarray,
    target: np.ndarray,
    prediction: np.ndarray,
    frequency: float,
    fs: float,
    span_s: float = 1.0,
    split: str = "test",
) -> Path:
    """Target as a line, prediction as dots, mixture faint behind, over the first ``span_s`` seconds.

    Args:
        path: the PNG to write.
        mixture, target, prediction: (T,) signals of one sequence.
        frequency: the extracted frequency in Hz.
        fs: sampling rate in Hz.
        span_s: seconds shown from t = 0 (the state is reset there, so the warm-up is visible).
        split: split name for the title.

    Returns:
        The written path.

    Example:
        >>> plot_extraction("f3.png", mixture=s, target=y[1], prediction=y_hat[1], frequency=3, fs=1000)
    """
    t = np.arange(len(target)) / fs
    n = _span(len(target), fs, span_s)
    fig = Figure(figsize=(10, 4.2))
    ax = _panels(fig, 1, 1, left=0.8, right=0.2, top=0.4, bottom=0.55, hgap=0, wgap=0)[0, 0]
    _draw_extraction(ax, t, mixture, target, prediction, frequency, n, legend=True)
    mse = float(np.mean((prediction - target) ** 2))
    ax.set_title(
        f"{split} split: extraction of {frequency:g} Hz, first {t[n - 1] + 1 / fs:g} s "
        f"(MSE over the whole sequence {mse:.3g})"
    )
    return _save(fig, path)


def plot_extraction_grid(
    path: str | os.PathLike,
    *,
    mixture: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    frequencies: Sequence[float],
    fs: float,
    span_s: float = 1.0,
    split: str = "test",
    start_s: float = 0.0,
) -> Path:
    """One panel per frequency (a ceil(sqrt(F)) x ceil(F / cols) grid) as in ``plot_extraction``.

    Args:
        path: the PNG to write.
        mixture: (T,) the shared mixture.
        targets, predictions: (F, T), row k for ``frequencies[k]``.
        frequencies: the F frequencies in Hz.
        fs, span_s, split: as in ``plot_extraction``.
        start_s: where the window of ``span_s`` seconds starts (e.g. 9.0 for the last
            second of 10: where an oscillator's drift would show). The panel titles keep
            the MSE over the whole sequence.

    Returns:
        The written path.

    Example:
        >>> plot_extraction_grid("all.png", mixture=s, targets=y, predictions=y_hat, frequencies=[1, 3, 5, 7],
        ...                      fs=1000)
    """
    return _save(_extraction_grid(mixture, targets, predictions, frequencies, fs, span_s, split, start_s), path)


def _extraction_grid(mixture, targets, predictions, frequencies, fs, span_s, split, start_s) -> Figure:
    n_freq = len(frequencies)
    first = min(targets.shape[1] - 1, max(0, round(start_s * fs)))
    t = np.arange(targets.shape[1]) / fs
    n = _span(targets.shape[1] - first, fs, span_s)
    fig, axes = _frequency_grid(n_freq, panel_height=3.6, left=0.8)
    for k, freq in enumerate(frequencies):
        ax = axes.flat[k]
        _draw_extraction(
            ax, t[first:], mixture[first:], targets[k, first:], predictions[k, first:], freq, n, legend=False
        )
        mse = float(np.mean((predictions[k] - targets[k]) ** 2))
        ax.set_title(f"{freq:g} Hz (MSE {mse:.3g}{' over the sequence' if first else ''})", fontsize=10)
    _hide_unused(axes, n_freq)
    axes.flat[0].get_lines()[1].set_label("clean target sine")  # one legend for all panels
    _bottom_legend(fig, axes.flat[0], markerscale=2)
    shown = f"first {t[n - 1] + 1 / fs:g} s" if not first else f"t = {t[first]:g} to {t[first + n - 1] + 1 / fs:g} s"
    _title(
        fig,
        f"{split} split: extraction of {'every frequency' if n_freq > 2 else 'frequencies'} from one mixture, {shown}",
    )
    return fig


def _series(epochs: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(e["epoch"], e[key]) for e in epochs if key in e and e[key] is not None]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _positive(values: list[float]) -> bool:
    return bool(values) and all(v > 0 and math.isfinite(v) for v in values)


def plot_training_curves(path: str | os.PathLike, history: Mapping[str, Any]) -> Path | None:
    """Training loss, validation metrics and learning rate per epoch, from a history.json dict.

    Panels: train loss and val MSE (log scale); val MSE per frequency (``val/mse_f*``);
    val SNR in dB; learning rate. A panel whose keys are absent says so.

    Args:
        path: the PNG to write.
        history: ``{"epochs": [{"epoch": 1, "train/loss": ..., "val/mse": ..., "lr": ...}, ...]}``.

    Returns:
        The written path, or None (nothing written) when the history has no epochs.

    Example:
        >>> plot_training_curves("curves.png", json.loads(Path("runs/x/history.json").read_text()))
    """
    epochs = list(history.get("epochs") or [])
    if not epochs:
        return None
    fig = Figure(figsize=(11, 7.5))
    (ax_loss, ax_freq), (ax_snr, ax_lr) = _panels(
        fig, 2, 2, left=0.9, right=0.2, top=0.6, bottom=0.55, hgap=0.45, wgap=1.0, sharex=True
    )
    marker = "o" if len(epochs) <= 30 else None

    def draw(ax, keys_labels, title, ylabel, log=False):
        drawn = []
        for key, label in keys_labels:
            x, y = _series(epochs, key)
            if y:
                ax.plot(x, y, marker=marker, markersize=3, label=label)
                drawn.extend(y)
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_yticks([])
        elif log and _positive(drawn) and max(drawn) / min(drawn) > 10:  # log ticks within a decade are unreadable
            ax.set_yscale("log")
            ylabel += " (log scale)"
        if len(keys_labels) > 1 and drawn:
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)

    draw(
        ax_loss,
        [("train/loss", "train loss"), ("val/mse", "val MSE")],
        "Loss and validation MSE",
        "loss / MSE",
        log=True,
    )
    freq_keys = sorted(
        {k for e in epochs for k in e if k.startswith("val/mse_f")}, key=lambda k: float(k[len("val/mse_f") :])
    )
    draw(
        ax_freq,
        [(k, f"{k[len('val/mse_f') :]} Hz") for k in freq_keys],
        "Validation MSE per frequency",
        "MSE",
        log=True,
    )
    draw(ax_snr, [("val/snr", "val SNR")], "Validation signal-to-noise ratio", "SNR (dB)")
    draw(ax_lr, [("lr", "learning rate")], "Learning rate (end of epoch)", "learning rate")
    ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # no offset text over the title
    for ax in (ax_snr, ax_lr):
        ax.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # shared by all four panels
    first, last = epochs[0]["epoch"], epochs[-1]["epoch"]
    if last - first < 2:
        ax_lr.set_xlim(first - 1, last + 1)
    _title(fig, f"Training curves ({len(epochs)} epoch{'s' if len(epochs) != 1 else ''})")
    return _save(fig, path)


def _amplitude_spectrum(signal: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    # One-sided amplitude: a sine of amplitude a shows a peak of height a at its bin.
    n = len(signal)
    spectrum = np.abs(np.fft.rfft(np.asarray(signal, dtype=np.float64))) * 2.0 / n
    spectrum[0] /= 2.0  # the mean and (n even) the Nyquist bin have no mirror image
    if n % 2 == 0:
        spectrum[-1] /= 2.0
    return np.fft.rfftfreq(n, d=1.0 / fs), spectrum


def plot_spectra(
    path: str | os.PathLike,
    *,
    mixture: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    frequencies: Sequence[float],
    fs: float,
    max_hz: float = 15.0,
    split: str = "test",
) -> Path:
    """Amplitude spectra (rfft) of mixture, prediction and target, one panel per frequency.

    Args:
        path: the PNG to write.
        mixture: (T,) raw mixture.
        targets, predictions: (F, T), row k for ``frequencies[k]``.
        frequencies: the F frequencies in Hz.
        fs: sampling rate in Hz.
        max_hz: upper end of the frequency axis.
        split: split name for the title.

    Returns:
        The written path.

    Example:
        >>> plot_spectra("spectra.png", mixture=s, targets=y, predictions=y_hat, frequencies=[1, 3, 5, 7], fs=1000)
    """
    n_freq = len(frequencies)
    fig, axes = _frequency_grid(n_freq, panel_height=3.4, left=0.9)
    hz, mix_spec = _amplitude_spectrum(mixture, fs)
    keep = hz <= max_hz
    floor = 1e-5
    top = max(2.0, 1.5 * max(float(np.max(_amplitude_spectrum(p, fs)[1][keep])) for p in predictions))
    for k, freq in enumerate(frequencies):
        ax = axes.flat[k]
        _, pred_spec = _amplitude_spectrum(predictions[k], fs)
        _, target_spec = _amplitude_spectrum(targets[k], fs)
        ax.plot(hz[keep], np.maximum(mix_spec[keep], floor), label="noisy mixture", **_MIXTURE)
        peaks = keep & (target_spec > 1e-3)  # a clean sine is one spectral line: draw it as a stem
        ax.vlines(hz[peaks], floor, target_spec[peaks], color="tab:blue", linewidth=5, alpha=0.45, label="clean target")
        ax.plot(hz[keep], np.maximum(pred_spec[keep], floor), label="model output", color="tab:red", linewidth=0.9)
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(NullLocator())  # decades are enough; minor log ticks are most of the drawing time
        ax.set_ylim(floor, top)
        ax.set_xlim(0, max_hz)
        ax.set_title(f"extracting {freq:g} Hz", fontsize=10)
        ax.set_xlabel("frequency (Hz)")
        ax.set_ylabel("amplitude 2|X(f)|/N (a.u.)")
        ax.grid(True, alpha=0.3)
    _hide_unused(axes, n_freq)
    _bottom_legend(fig, axes.flat[0])
    duration = len(mixture) / fs
    _title(
        fig,
        f"{split} split: amplitude spectra over the whole {duration:g} s sequence "
        f"({fs / len(mixture):.3g} Hz resolution)",
    )
    return _save(fig, path)
