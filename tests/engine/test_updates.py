"""The trainer's batch update: any loss on the fast paths, mixed precision, gradient accumulation."""

from __future__ import annotations

import contextlib
import copy
import logging
import re

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events

from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.factories import TimeEvents, create_evaluator, create_trainer
from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM

F_IN, H, O = 3, 5, 2
RTOL = 1e-10


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=2, output_size=O).to(dtype)


def _batch(lengths=(9, 14, 5), seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return collate_sequences(
        [
            (torch.randn(n, F_IN, generator=gen, dtype=dtype), torch.randn(n, O, generator=gen, dtype=dtype))
            for n in lengths
        ]
    )


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _train(model, batches, loss_fn, epochs=1, optimizer=None, **kwargs):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, loss_fn, **kwargs)
    windows, losses = [], []
    trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: windows.extend(e.state.window_losses.tolist()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run(batches, max_epochs=epochs)
    return trainer, windows, losses


# --- any loss on the fast path ----------------------------------------------------------------------------


class LogCosh(nn.Module):
    """A user's loss: mean of log(cosh(error)) over every element."""

    def forward(self, y_pred, y):
        return torch.log(torch.cosh(y_pred - y)).mean()


class Thresholded(nn.Module):
    """A loss that torch.func.vmap cannot take (a Python branch on a tensor's value)."""

    def forward(self, y_pred, y):
        error = (y_pred - y).abs()
        return error.mean() if float(error.detach().max()) < 1e6 else error.square().mean()


@pytest.mark.parametrize(
    "loss_fn",
    [LogCosh(), lambda a, b: ((a - b) ** 4).mean(), Thresholded()],
    ids=["module", "function", "not-vmappable"],
)
@pytest.mark.parametrize("masked", [False, True])
def test_a_users_loss_keeps_the_fused_detached_path_and_its_numbers(loss_fn, masked, caplog):
    x, y, mask = _batch()
    batch = (x, y, mask) if masked else (x[:, :5], y[:, :5])
    results = {}
    for execution in ("auto", "stepwise"):
        model = _model()
        with caplog.at_level(logging.WARNING, logger="ignite_lstm"):
            trainer, windows, losses = _train(model, [batch, batch], loss_fn, execution=execution, chunk_steps=4)
        results[trainer.state.execution] = (model, windows, losses)
    assert set(results) == {"fused-detached", "stepwise"}
    (fast, fast_windows, fast_losses), (slow, slow_windows, slow_losses) = results.values()
    assert fast_losses == pytest.approx(slow_losses, rel=RTOL)
    assert fast_windows == pytest.approx(slow_windows, rel=RTOL)
    for a, b in zip(fast.parameters(), slow.parameters()):
        assert _rel(a.detach(), b.detach()) <= RTOL
    fallback = [r for r in caplog.records if "one loss_fn call per step" in r.getMessage()]
    if isinstance(loss_fn, Thresholded):  # said once, with the reason and the cost
        assert len(fallback) == 1
        assert re.search(
            r"torch\.func\.vmap could not vectorise Thresholded \(.+\)\. Expected cost: 4 extra loss "
            r"calls per chunk of 4 steps",
            fallback[0].getMessage(),
        )
    else:
        assert fallback == []


# --- mixed precision -----------------------------------------------------------------------------------------


class ElmanRNN(nn.Module):
    """A user's model that autocast computes in low precision (nn.RNN and nn.Linear)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(1, 16, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def _sine_task():
    t = torch.arange(64, dtype=torch.float32)
    phases = torch.linspace(0, 3, 8)[:, None]
    signal = torch.sin(0.3 * t + phases)[..., None]  # (8, 64, 1): predict the next sample
    return [(signal[:, :-1], signal[:, 1:])]


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_training_ends_within_ten_percent_of_float32(amp_dtype):
    final = {}
    for dtype in (None, amp_dtype):
        torch.manual_seed(0)
        model = ElmanRNN()
        trainer, _, losses = _train(
            model,
            _sine_task(),
            nn.MSELoss(),
            epochs=60,
            tbptt_steps=21,
            optimizer=torch.optim.Adam(model.parameters(), 0.01),
            amp_dtype=dtype,
        )
        final[dtype] = losses[-1]
        assert (trainer.state.scaler is not None) == (dtype is torch.float16)
    assert final[None] < 0.1 * _untrained_loss()  # it learned
    assert abs(final[amp_dtype] - final[None]) <= 0.1 * final[None]
    torch.manual_seed(0)
    evaluator = create_evaluator(ElmanRNN(), amp_dtype=amp_dtype)
    assert evaluator.run(_sine_task()).output["y_pred"].dtype == torch.float32  # y's dtype


def _untrained_loss():
    torch.manual_seed(0)
    model = ElmanRNN()
    ((x, y),) = _sine_task()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x)[0], y).item()


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("tbptt_steps", [1, 4])
def test_stateful_lstm_computes_in_float32_under_autocast_on_the_native_kernel_and_pytorch(
    kernel, tbptt_steps, monkeypatch
):
    # bf16 training of StatefulLSTM gives the float32 numbers bit for bit, on the native kernel
    # (counted: its layer function, or on the detached path its stack function, is called, under autocast
    # too) and on PyTorch's code.
    calls = []
    for name in ("lstm_layer", "detached_stack"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    x, y, mask = _batch(dtype=torch.float32)
    runs = {}
    for amp_dtype in (None, torch.bfloat16):
        model = _model(dtype=torch.float32)
        calls.clear()
        with native.disabled() if not kernel else contextlib.nullcontext():
            _, windows, losses = _train(
                model, [(x, y, mask)], nn.MSELoss(), tbptt_steps=tbptt_steps, amp_dtype=amp_dtype
            )
        assert bool(calls) == kernel, (amp_dtype, len(calls))  # the backend asked for is the one that ran
        runs[amp_dtype] = (windows, losses, [p.detach().clone() for p in model.parameters()])
    same, amp = runs[None], runs[torch.bfloat16]
    assert amp[:2] == same[:2] and all(torch.equal(a, b) for a, b in zip(amp[2], same[2]))


def test_autocast_around_run_is_refused_pointing_to_amp_dtype():
    model = _model(dtype=torch.float32)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
    evaluator = create_evaluator(model)
    batch = _batch(dtype=torch.float32)
    msg = (
        "torch.autocast is active around the engine (cpu): its cached low-precision weights go stale across "
        "optimizer steps. Remove it and pass amp_dtype=torch.bfloat16 (or torch.float16)"
    )
    for engine in (trainer, evaluator):
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match=re.escape(msg)):
            engine.run([batch], max_epochs=1)


# --- gradient accumulation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tbptt_steps, execution, expected",
    [(4, "auto", "fused"), (1, "auto", "fused-detached"), (3, "stepwise", "stepwise")],
)
@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_n_accumulated_batches_update_as_one_batch_of_n_times_b(tbptt_steps, execution, expected, grad_clip):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 10, F_IN, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 10, O, generator=gen, dtype=torch.float64)
    big = [(x[:6], y[:6]), (x[6:], y[6:])]  # 2 optimizer steps of 6 sequences
    small = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 12, 2)]  # 6 batches of 2, a step every 3
    params = {}
    for name, batches, n in (("big", big, 1), ("small", small, 3)):
        model = _model()
        trainer, _, losses = _train(
            model,
            batches,
            nn.MSELoss(),
            optimizer=torch.optim.Adam(model.parameters(), 0.01),
            tbptt_steps=tbptt_steps,
            execution=execution,
            grad_clip=grad_clip,
            gradient_accumulation_steps=n,
        )
        assert trainer.state.execution == expected
        params[name] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(params["small"], params["big"]):
        assert _rel(a, b) <= RTOL
    assert max(_rel(a, p.detach()) for a, p in zip(params["big"], _model().parameters())) > 1e-3  # it moved


def test_accumulation_steps_the_optimizer_every_n_iterations_only():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(trainer.state.iteration))
    trainer = create_trainer(model, optimizer, nn.MSELoss(), gradient_accumulation_steps=3)
    trainer.run([_batch()] * 7, max_epochs=1)
    assert steps == [3, 6]


def test_an_accumulated_masked_batch_scales_by_one_over_n_as_ignite_does():
    # Ignite's meaning: each batch's mean loss over its counted steps, divided by N.
    x, y, mask = _batch()
    halves = [(x[:1], y[:1], mask[:1]), (x[1:], y[1:], mask[1:])]
    model = _model()
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.0), nn.MSELoss(), gradient_accumulation_steps=2
    )
    trainer.run(halves, max_epochs=1)
    expected = copy.deepcopy(_model())
    loss = sum(_masked_mse(expected, *b) for b in halves) / 2
    loss.backward()
    for a, b in zip(model.parameters(), expected.parameters()):
        assert _rel(a.grad, b.grad) <= RTOL


def _masked_mse(model, x, y, mask):
    with native.disabled():
        y_pred, _ = model(x, None, detach_every_step=True)
    return nn.functional.mse_loss(y_pred[mask], y[mask])
