import numpy as np
import pytest
from matplotlib.image import imread

from ignite_lstm.app.task.figures import (
    _amplitude_spectrum,
    _extraction_grid,
    plot_extraction,
    plot_extraction_grid,
    plot_spectra,
    plot_training_curves,
)

FS = 1000.0


def _signals(n_freq, T=200):
    t = np.arange(T) / FS
    freqs = [1.0 + 2 * k for k in range(n_freq)]
    targets = np.stack([np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)  # (F, T)
    mixture = targets.mean(0)
    predictions = 0.9 * targets
    return freqs, mixture, targets, predictions


def _check_png(path, width, height):
    image = imread(path)
    assert image.shape[:2] == (height, width)
    assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_plot_extraction_writes_png(tmp_path):
    freqs, mixture, targets, predictions = _signals(4)
    path = plot_extraction(
        tmp_path / "sub" / "f2.png",
        mixture=mixture,
        target=targets[1],
        prediction=predictions[1],
        frequency=freqs[1],
        fs=FS,
        span_s=0.1,
    )
    _check_png(path, 1200, 504)  # 10 x 4.2 in at 120 dpi


@pytest.mark.parametrize("n_freq, size", [(1, (1200, 504)), (3, (1560, 936)), (5, (2340, 936))])
def test_plot_extraction_grid_uses_a_ceil_grid(tmp_path, n_freq, size):
    freqs, mixture, targets, predictions = _signals(n_freq)
    path = plot_extraction_grid(
        tmp_path / "grid.png", mixture=mixture, targets=targets, predictions=predictions, frequencies=freqs, fs=FS
    )
    _check_png(path, *size)  # cols = ceil(sqrt(F)), rows = ceil(F / cols), 6.5 x 3.6 in per panel


def test_the_grid_can_show_a_later_window_of_the_sequence(tmp_path):
    freqs, mixture, targets, predictions = _signals(2, T=1000)
    fig = _extraction_grid(mixture, targets, predictions, freqs, FS, 0.3, "test", start_s=0.6)
    assert fig.axes[0].get_xlim() == pytest.approx((0.6, 0.899))  # 300 steps from step 600
    assert fig.axes[0].get_lines()[1].get_xdata()[0] == pytest.approx(0.6)
    assert "t = 0.6 to 0.9 s" in fig.texts[0].get_text()
    assert fig.axes[0].get_title().endswith("over the sequence)")
    path = plot_extraction_grid(
        tmp_path / "late.png",
        mixture=mixture,
        targets=targets,
        predictions=predictions,
        frequencies=freqs,
        fs=FS,
        span_s=0.3,
        start_s=0.6,
    )
    _check_png(path, 1560, 504)


def test_plot_spectra_writes_png(tmp_path):
    freqs, mixture, targets, predictions = _signals(4)
    path = plot_spectra(
        tmp_path / "spectra.png", mixture=mixture, targets=targets, predictions=predictions, frequencies=freqs, fs=FS
    )
    _check_png(path, 1560, 888)


def test_amplitude_spectrum_peak_is_the_sine_amplitude():
    t = np.arange(2000) / FS
    hz, spectrum = _amplitude_spectrum(0.7 * np.sin(2 * np.pi * 3.0 * t) + 0.2, FS)
    assert hz[1] == pytest.approx(0.5)
    assert spectrum[hz == 3.0][0] == pytest.approx(0.7)
    assert spectrum[0] == pytest.approx(0.2)


def test_plot_training_curves(tmp_path):
    history = {
        "epochs": [
            {"epoch": 1, "train/loss": 0.5, "lr": 1e-3, "val/mse": 0.4, "val/mse_f3": 0.3},
            {"epoch": 2, "train/loss": 0.01, "lr": 5e-4},
        ]
    }  # no val at epoch 2, no SNR at all
    path = plot_training_curves(tmp_path / "curves.png", history)
    _check_png(path, 1320, 900)


def test_plot_training_curves_skips_an_empty_history(tmp_path):
    assert plot_training_curves(tmp_path / "curves.png", {"epochs": [], "best": {}}) is None
    assert not (tmp_path / "curves.png").exists()
