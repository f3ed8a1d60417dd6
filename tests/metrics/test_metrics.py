import math
import re

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from ignite_lstm.app.task.metrics import METRIC_NAMES, build_metrics
from ignite_lstm.metrics.directions import metric_direction
from ignite_lstm.metrics.regression import SignalToNoiseRatio

FREQS = (1.0, 2.5, 3.0)


def _batch(gen, selector, num_outputs=1, noise=0.3):
    """One evaluator output with rows selecting frequency indices `selector`."""
    selector = torch.as_tensor(selector)
    n = selector.numel()
    mixture = torch.randn(n, 1, generator=gen)
    one_hot = torch.nn.functional.one_hot(selector, len(FREQS)).float()
    y = torch.randn(n, num_outputs, generator=gen)
    y_pred = y + noise * torch.randn(n, num_outputs, generator=gen)
    return {"y_pred": y_pred, "y": y, "x": torch.cat([mixture, one_hot], dim=1)}


def _batches(num_outputs=1):
    gen = torch.Generator().manual_seed(0)
    selectors = [[0, 1, 2, 0, 1, 2, 2, 0], [2, 2, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0]]  # last batch lacks 3 Hz
    return [_batch(gen, s, num_outputs) for s in selectors]


def _run(metrics, batches):
    engine = Engine(lambda engine, batch: batch)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    return engine.run(batches, max_epochs=1).metrics


def _numpy_metrics(batches, rows=None):
    """Reference values over every element of the rows where `rows(batch)` is True."""
    ys, preds = [], []
    for b in batches:
        keep = np.ones(len(b["y"]), dtype=bool) if rows is None else rows(b)
        ys.append(b["y"].numpy()[keep].astype(np.float64).ravel())
        preds.append(b["y_pred"].numpy()[keep].astype(np.float64).ravel())
    y, p = np.concatenate(ys), np.concatenate(preds)
    sse = np.sum((y - p) ** 2)
    return {
        "mse": np.mean((y - p) ** 2),
        "rmse": np.sqrt(np.mean((y - p) ** 2)),
        "mae": np.mean(np.abs(y - p)),
        "corr": np.corrcoef(y, p)[0, 1],
        "r2": 1.0 - sse / np.sum((y - y.mean()) ** 2),
        "snr": 10.0 * np.log10(np.sum(y**2) / sse),
    }


def test_overall_metrics_match_numpy_over_several_batches():
    batches = _batches()
    got = _run(build_metrics(), batches)
    expected = _numpy_metrics(batches)
    assert set(got) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        # Ignite's own metrics accumulate in float32
        assert got[name] == pytest.approx(expected[name], rel=1e-5), name


def test_per_frequency_metrics_match_numpy_with_a_frequency_absent_from_a_batch():
    batches = _batches()
    assert not (batches[2]["x"][:, 3] == 1).any()  # 3 Hz absent from the last batch
    got = _run(build_metrics(FREQS, names=(), per_frequency=METRIC_NAMES, worst=("mse", "snr")), batches)
    assert set(got) == {f"{n}_f{s}" for n in METRIC_NAMES for s in ("1", "2.5", "3")} | {"mse_worst", "snr_worst"}
    # the worst frequency: the largest error, the smallest signal-to-noise ratio
    assert got["mse_worst"] == max(got[f"mse_f{s}"] for s in ("1", "2.5", "3"))
    assert got["snr_worst"] == min(got[f"snr_f{s}"] for s in ("1", "2.5", "3"))
    for k, suffix in enumerate(("1", "2.5", "3")):
        expected = _numpy_metrics(batches, rows=lambda b, k=k: b["x"][:, 1:].argmax(dim=1).numpy() == k)
        for name in METRIC_NAMES:
            assert got[f"{name}_f{suffix}"] == pytest.approx(expected[name], rel=1e-5), (name, suffix)


def test_default_keys():
    assert set(build_metrics()) == set(METRIC_NAMES)
    assert set(build_metrics(FREQS)) == set(METRIC_NAMES) | {"mse_f1", "mse_f2.5", "mse_f3", "mse_worst"}
    assert "mse_worst" not in build_metrics([1.0])  # one frequency: nothing to be worst of
    with pytest.raises(ValueError, match="Argument worst should name metrics of per_frequency, got 'snr'."):
        build_metrics(FREQS, worst=("snr",))
    assert set(build_metrics(per_frequency=("mae",))) == set(METRIC_NAMES)  # no frequencies: none per frequency


def test_each_call_returns_new_instances():
    first, second = build_metrics(FREQS), build_metrics(FREQS)
    assert all(first[key] is not second[key] for key in first)


def test_perfect_prediction():
    gen = torch.Generator().manual_seed(1)
    batch = _batch(gen, [0, 1, 2, 0, 1, 2], noise=0.0)
    got = _run(build_metrics(), [batch, batch])
    assert got["mse"] == 0.0
    assert got["rmse"] == 0.0
    assert got["mae"] == 0.0
    assert got["snr"] == math.inf
    assert got["corr"] == pytest.approx(1.0, abs=1e-6)
    assert got["r2"] == pytest.approx(1.0, abs=1e-6)


def test_zero_prediction():
    gen = torch.Generator().manual_seed(2)
    batch = _batch(gen, [0, 1, 2, 0, 1, 2])
    batch["y_pred"] = torch.zeros_like(batch["y"])
    got = _run(build_metrics(names=("mse", "snr", "corr")), [batch])
    assert got["mse"] == pytest.approx(batch["y"].double().square().mean().item(), rel=1e-6)
    assert got["snr"] == 0.0
    assert got["corr"] == 0.0  # Ignite clamps the zero variance to eps


def test_multi_output_is_flattened_element_wise():
    batches = _batches(num_outputs=2)
    got = _run(build_metrics(FREQS, names=("mse", "mae", "corr")), batches)
    y = torch.cat([b["y"] for b in batches]).double()  # (N, 2)
    y_pred = torch.cat([b["y_pred"] for b in batches]).double()
    assert got["mse"] == pytest.approx((y - y_pred).square().mean().item(), rel=1e-5)
    assert got["mae"] == pytest.approx((y - y_pred).abs().mean().item(), rel=1e-5)
    rows = torch.cat([b["x"][:, 1:].argmax(dim=1) for b in batches]) == 1
    assert got["mse_f2.5"] == pytest.approx((y[rows] - y_pred[rows]).square().mean().item(), rel=1e-5)


def test_frequency_absent_from_the_whole_split_is_not_computable():
    gen = torch.Generator().manual_seed(3)
    batches = [_batch(gen, [0, 1, 1]), _batch(gen, [1, 0])]
    with pytest.raises(NotComputableError, match="MeanSquaredError must have at least one example"):
        _run(build_metrics(FREQS, names=()), batches)


def test_snr_empty_raises():
    with pytest.raises(
        NotComputableError, match="SignalToNoiseRatio must have at least one example before it can be computed."
    ):
        SignalToNoiseRatio().compute()


def test_snr_takes_the_evaluator_dict_and_accumulates_in_float64():
    batches = _batches(num_outputs=2)
    metric = SignalToNoiseRatio()
    got = _run({"snr": metric}, batches)["snr"]
    y = np.concatenate([b["y"].numpy().astype(np.float64).ravel() for b in batches])
    p = np.concatenate([b["y_pred"].numpy().astype(np.float64).ravel() for b in batches])
    assert got == pytest.approx(10.0 * np.log10(np.sum(y**2) / np.sum((y - p) ** 2)), rel=1e-12)
    assert metric._sum_signal.dtype == torch.float64
    assert metric._num_elements == y.size


def test_snr_zero_signal_with_error_is_minus_inf():
    metric = SignalToNoiseRatio()
    metric.update((torch.ones(4), torch.zeros(4)))
    assert metric.compute() == -math.inf


def test_snr_shape_mismatch():
    with pytest.raises(ValueError, match=re.escape("Input data shapes should be the same, but given")):
        SignalToNoiseRatio().update((torch.zeros(4, 2), torch.zeros(4, 1)))


def test_unknown_metric_name():
    allowed = "allowed: ['mse', 'rmse', 'mae', 'corr', 'r2', 'snr']."
    with pytest.raises(ValueError, match=re.escape(f"Argument names has unknown metric names ['acc']; {allowed}")):
        build_metrics(names=("mse", "acc"))
    with pytest.raises(ValueError, match=re.escape("Argument per_frequency has unknown metric names ['l1']")):
        build_metrics(FREQS, per_frequency=("l1",))
    with pytest.raises(TypeError, match="Argument names should be a sequence of metric names, got a string 'mse'."):
        build_metrics(names="mse")


def test_bad_frequencies():
    with pytest.raises(ValueError, match=re.escape("Argument frequencies should have distinct values")):
        build_metrics((1.0, 1.0000001))
    with pytest.raises(ValueError, match=re.escape("Argument frequencies should be a non-empty sequence or None")):
        build_metrics(())


def test_metric_direction():
    for name in ("mse", "rmse", "mae", "mse_f3", "rmse_f2.5", "mae_f1"):
        assert metric_direction(name) == "min", name
    for name in ("corr", "r2", "snr", "snr_f2.5", "corr_f1"):
        assert metric_direction(name) == "max", name
    for name in ("loss", "accuracy", "accuracy_f3", "f1_macro"):
        assert metric_direction(name) == ("min" if name == "loss" else "max"), name
    for name in ("acuracy", "mse_", "msef3", "not_a_metric", ""):
        with pytest.raises(ValueError, match=re.escape(f"Unknown metric {name!r}; known: ")):
            metric_direction(name)


def test_regression_metrics_on_class_logits_say_what_to_attach_instead():
    evaluator = Engine(
        lambda e, b: {"y_pred": torch.randn(6, 9), "y": torch.randint(0, 9, (6,)), "x": torch.zeros(6, 3)}
    )
    for name, metric in build_metrics(names=("mse",)).items():
        metric.attach(evaluator, name)
    with pytest.raises(
        ValueError,
        match=r"got y_pred of shape \(6, 9\) and y of shape \(6,\) \(class indices: attach Ignite's Accuracy\(\)",
    ):
        evaluator.run([0])
