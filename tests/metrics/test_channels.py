"""Per-output-channel metrics: each equals the metric computed by hand on that channel's counted rows."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import MeanAbsoluteError, MeanSquaredError

from ignite_lstm.metrics.channels import channel_metrics
from ignite_lstm.metrics.regression import R2Score


def _run(metrics: dict, outputs: list[dict]) -> dict:
    engine = Engine(lambda e, b: b)
    for key, metric in metrics.items():
        metric.attach(engine, key)
    return engine.run(outputs).metrics


def _outputs():
    g = torch.Generator().manual_seed(0)
    outs = []
    for n in (7, 5):
        y_pred, y = (
            torch.randn(n, 2, generator=g, dtype=torch.float64),
            torch.randn(n, 2, generator=g, dtype=torch.float64),
        )
        mask = torch.rand(n, generator=g) > 0.3
        outs.append({"y_pred": y_pred, "y": y, "mask": mask})
    return outs


def test_each_channel_is_the_metric_of_its_counted_rows():
    outs = _outputs()
    got = _run(channel_metrics(MeanSquaredError, "mse", ["infl", "unemp"], worst=True), outs)
    pred = torch.cat([o["y_pred"][o["mask"]] for o in outs])
    true = torch.cat([o["y"][o["mask"]] for o in outs])
    by_hand = ((pred - true) ** 2).mean(dim=0)
    assert got["mse_infl"] == pytest.approx(by_hand[0].item(), rel=1e-6)  # Ignite sums in float32
    assert got["mse_unemp"] == pytest.approx(by_hand[1].item(), rel=1e-6)
    assert got["mse_worst"] == max(got["mse_infl"], got["mse_unemp"])
    unmasked = _run(channel_metrics(MeanSquaredError, "mse", 2), [{k: o[k] for k in ("y_pred", "y")} for o in outs])
    assert sorted(unmasked) == ["mse_0", "mse_1"] and unmasked["mse_0"] != pytest.approx(got["mse_infl"])


def test_any_metric_class_and_the_worst_of_a_higher_is_better_one():
    outs = _outputs()
    mae = _run(channel_metrics(MeanAbsoluteError, "mae", 2), outs)
    r2 = _run(channel_metrics(R2Score, "r2", ["a", "b"], worst=True), outs)
    pred = torch.cat([o["y_pred"][o["mask"]] for o in outs])
    true = torch.cat([o["y"][o["mask"]] for o in outs])
    assert mae["mae_1"] == pytest.approx((pred[:, 1] - true[:, 1]).abs().mean().item(), rel=1e-6)
    r2_b = 1 - ((pred[:, 1] - true[:, 1]) ** 2).sum() / ((true[:, 1] - true[:, 1].mean()) ** 2).sum()
    assert r2["r2_b"] == pytest.approx(r2_b.item(), rel=1e-10)
    assert r2["r2_worst"] == min(r2["r2_a"], r2["r2_b"])


def test_bad_channels_are_refused():
    with pytest.raises(ValueError, match="distinct names"):
        channel_metrics(MeanSquaredError, "mse", ["a", "a"])
    with pytest.raises(ValueError, match="positive"):
        channel_metrics(MeanSquaredError, "mse", 0)
    with pytest.raises(TypeError, match="an int or a sequence"):
        channel_metrics(MeanSquaredError, "mse", "ab")
