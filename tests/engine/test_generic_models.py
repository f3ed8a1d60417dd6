"""The engines with models that are not ours: a GRU (tensor state) and a model with a dict state.

Both follow the contract ``forward(x, state=None) -> (y, state)`` with x (B, T, F); the GRU has
no ``step`` (the engine calls ``model(x[:, None], state)``), the dict model has one.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.metrics import MeanSquaredError
from torch.utils.data import DataLoader, TensorDataset

from ignite_lstm import StatefulLSTM, TimeEvents, create_evaluator, create_trainer, select_execution

N_SEQ, T, BATCH, EPOCHS = 6, 10, 3, 2  # 2 batches per epoch
DTYPE = torch.float64


class GRUModel(nn.Module):
    """nn.GRU plus a linear read-out; the state is one tensor (num_layers, B, H)."""

    def __init__(self, n_in: int = 3, hidden: int = 5, n_out: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x, state=None):
        out, h = self.gru(x, state)  # (B, T, H), (1, B, H)
        return self.head(out), h


class DictStateModel(nn.Module):
    """An LSTM cell with state ``{"cell": (h, c), "steps": (B,)}`` and a ``step`` method.

    Every call (``forward`` or ``step``) appends the state it was given to ``self.seen``.
    """

    def __init__(self, n_in: int = 2, hidden: int = 4, n_out: int = 1) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(n_in, hidden)
        self.head = nn.Linear(hidden, n_out)
        self.seen: list = []

    def _step(self, x_t, state):
        if state is None:
            zeros = x_t.new_zeros(x_t.shape[0], self.cell.hidden_size)
            state = {"cell": (zeros, zeros), "steps": x_t.new_zeros(x_t.shape[0])}
        h, c = self.cell(x_t, state["cell"])
        return self.head(h), {"cell": (h, c), "steps": state["steps"] + 1}

    def step(self, x_t, state=None):
        self.seen.append(state)
        return self._step(x_t, state)

    def forward(self, x, state=None):
        self.seen.append(state)
        outputs = []
        for t in range(x.shape[1]):
            y_t, state = self._step(x[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state


MODELS = {"gru": (GRUModel, 3, 2), "dict": (DictStateModel, 2, 1)}


def _model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[kind][0]().to(DTYPE)


def _loader(kind: str) -> DataLoader:
    _, n_in, n_out = MODELS[kind]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_SEQ, T, n_in, generator=gen, dtype=DTYPE)
    y = torch.cumsum(x[..., :n_out], dim=1) * 0.3  # (N, T, O): running sums of the first inputs
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _leaves(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _leaves(v)]
    if isinstance(state, (tuple, list)):
        return [t for v in state for t in _leaves(v)]
    return []


# (tbptt_steps, update, engine) -> execution for a model that is not a StatefulLSTM
GENERIC_PATHS = [
    (1, "sequence", "auto", "stepwise"),
    (1, "sequence", "fused", "fused"),
    (1, "sequence", "stepwise", "stepwise"),
    (1, "window", "auto", "stepwise"),
    (4, "sequence", "auto", "fused"),
    (4, "window", "auto", "fused"),
    (4, "window", "fused", "fused"),
    (4, "window", "stepwise", "stepwise"),
    (3, "sequence", "stepwise", "stepwise"),
]


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("tbptt, update, engine, expected", GENERIC_PATHS)
def test_execution_path_for_generic_models(kind, tbptt, update, engine, expected):
    model = _model(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = create_trainer(model, opt, nn.MSELoss(), tbptt_steps=tbptt, update=update, execution=engine)
    assert trainer.execution == expected
    assert select_execution(model, nn.MSELoss(), tbptt, update, engine) == expected


def test_stateful_lstm_takes_the_exact_fused_path_where_it_applies():
    model = StatefulLSTM(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    assert create_trainer(model, opt, nn.MSELoss(), tbptt_steps=1).execution == "fused-detached"
    assert create_trainer(model, opt, nn.MSELoss(), tbptt_steps=1, update="window").execution == "stepwise"
    assert create_trainer(model, opt, nn.MSELoss(), tbptt_steps=4).execution == "fused"


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("engine", ["auto", "fused", "stepwise"])
@pytest.mark.parametrize("tbptt, update", [(1, "sequence"), (4, "sequence"), (4, "window"), (3, "window")])
def test_generic_model_trains_and_window_events_fire(kind, engine, tbptt, update):
    model = _model(kind)
    loader = _loader(kind)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = create_trainer(model, opt, nn.MSELoss(), tbptt_steps=tbptt, update=update, execution=engine)
    started, completed, every_2, losses = [], [], [], []
    trainer.add_event_handler(TimeEvents.WINDOW_STARTED, lambda e: started.append(e.state.window))

    @trainer.on(TimeEvents.WINDOW_COMPLETED)
    def _record(e):
        completed.append(e.state.window)
        losses.append(e.state.window_loss)

    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED(every=2), lambda e: every_2.append(e.state.window))
    iteration_losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iteration_losses.append(e.state.output["loss"]))

    trainer.run(loader, max_epochs=EPOCHS)

    n_windows = EPOCHS * len(loader) * math.ceil(T / tbptt)
    assert started == completed == list(range(1, n_windows + 1))
    assert every_2 == list(range(2, n_windows + 1, 2))
    assert all(loss.dim() == 0 and not loss.requires_grad for loss in losses)
    assert len(iteration_losses) == EPOCHS * len(loader) and all(math.isfinite(v) for v in iteration_losses)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("tbptt, update", [(1, "sequence"), (4, "sequence"), (3, "window")])
def test_fused_and_stepwise_training_agree(kind, tbptt, update):
    results = []
    for engine in ("fused", "stepwise"):
        model = _model(kind)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        trainer = create_trainer(model, opt, nn.MSELoss(), tbptt_steps=tbptt, update=update, execution=engine)
        state = trainer.run(_loader(kind), max_epochs=EPOCHS)
        results.append((state.output["loss"], [p.detach().clone() for p in model.parameters()]))
    (loss_f, params_f), (loss_s, params_s) = results
    assert loss_f == pytest.approx(loss_s, rel=1e-10)
    for p_f, p_s in zip(params_f, params_s):
        torch.testing.assert_close(p_f, p_s, rtol=0, atol=1e-10)


@pytest.mark.parametrize("engine, tbptt", [("stepwise", 4), ("stepwise", 1), ("fused", 4), ("fused", 3)])
def test_nested_state_is_reset_per_batch_and_detached_per_window(engine, tbptt):
    model = _model("dict")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = create_trainer(model, opt, nn.MSELoss(), tbptt_steps=tbptt, update="sequence", execution=engine)
    trainer.run(_loader("dict"), max_epochs=1)

    calls_per_batch = T if engine == "stepwise" else math.ceil(T / tbptt)
    steps_per_call = 1 if engine == "stepwise" else tbptt
    assert len(model.seen) == 2 * calls_per_batch
    for i, state in enumerate(model.seen):
        t = (i % calls_per_batch) * steps_per_call  # the time step the call starts at
        if t == 0:
            assert state is None, "every batch must start from a reset state"
            continue
        assert isinstance(state, dict) and isinstance(state["cell"], tuple), "the state keeps its structure"
        assert torch.equal(state["steps"], torch.full((BATCH,), float(t), dtype=DTYPE))
        boundary = t % tbptt == 0
        has_graph = [leaf.grad_fn is not None for leaf in _leaves(state)]
        if boundary:
            assert not any(has_graph), f"state at window boundary t={t} must be detached"
        else:
            assert any(has_graph), f"state inside a window (t={t}) must carry the graph"


@pytest.mark.parametrize("kind", list(MODELS))
def test_generic_model_evaluates_with_create_evaluator(kind):
    model = _model(kind)
    loader = _loader(kind)
    x, y = loader.dataset.tensors
    with torch.no_grad():
        y_pred = model(x)[0]  # (N, T, O)
    n_out = MODELS[kind][2]
    for engine in ("auto", "fused", "stepwise"):
        outputs = []
        evaluator = create_evaluator(
            model, {"mse": MeanSquaredError(output_transform=lambda o: (o["y_pred"], o["y"]))}, execution=engine
        )
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output["y_pred"]))  # noqa: B023
        metrics = evaluator.run(loader).metrics
        assert all(o.shape == (BATCH * T, n_out) for o in outputs)
        torch.testing.assert_close(torch.cat(outputs), y_pred.reshape(-1, n_out), rtol=0, atol=1e-12)
        # Ignite's MSE: squared error summed over O, averaged over the N*T rows
        assert metrics["mse"] == pytest.approx(((y_pred - y) ** 2).sum(-1).mean().item(), rel=1e-6)
