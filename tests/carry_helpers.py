"""Shared pieces of the carry_state tests: a float64 model, a stream of lanes, its chunks, a training run."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.factories import TimeEvents, create_trainer
from ignite_lstm.engine.state import state_tensors
from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM

DTYPE = torch.float64
B, T, C, F_IN = 3, 24, 8, 3  # lanes, steps of the whole series, steps per chunk, inputs (1 + 2 frequencies)
TOL = 1e-10
# every execution path; kernel False: PyTorch's code (native.disabled()), where the path has a native form
PATHS = [("stepwise", False), ("fused", True), ("fused", False), ("fused-detached", True), ("fused-detached", False)]


def make_model(seed: int = 0, dtype: torch.dtype = DTYPE) -> StatefulLSTM:
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, 5, num_layers=2).to(dtype)


def stream(lanes: int = B, steps: int = T, seed: int = 1, dtype: torch.dtype = DTYPE) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(lanes, steps, F_IN, generator=g, dtype=dtype),
        "y": torch.randn(lanes, steps, 1, generator=g, dtype=dtype),
    }


def chunked(batch: dict, resets: dict | None = None) -> list[dict]:
    """Consecutive C-step chunks of a mapping batch; ``resets``: chunk index -> (B,) bool."""
    chunks = [{k: v[:, s : s + C] for k, v in batch.items()} for s in range(0, batch["x"].shape[1], C)]
    for i, reset in (resets or {}).items():
        chunks[i]["reset"] = reset
    return chunks


@contextlib.contextmanager
def backend(kernel: bool):
    if not kernel:
        with native.disabled():
            yield
        return
    if not native.available(torch.zeros(1, dtype=DTYPE)):
        pytest.skip("native kernel not built (no C++ compiler)")
    yield


def train(batches, path: str, kernel: bool, max_epochs: int = 2, model=None, **kwargs):
    model = model if model is not None else make_model()
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.MSELoss(),
        execution="stepwise" if path == "stepwise" else "auto",
        **kwargs,
    )
    assert trainer.state.execution == path
    windows = trainer.state.recorded_windows = []  # every window's loss, from CHUNK_COMPLETED (every path)
    trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: windows.extend(e.state.window_losses.tolist()))
    with backend(kernel):
        trainer.run(batches, max_epochs=max_epochs)
    return model, trainer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def max_rel(a: nn.Module, b: nn.Module) -> float:
    return max(rel(p, q) for p, q in zip(a.parameters(), b.parameters()))


def same_state(a, b) -> bool:
    """The tensors of two states of the same structure are equal."""
    return all(torch.equal(p, q) for p, q in zip(state_tensors(a), state_tensors(b)))


def two_series_in_lane_0(steps_a: int = 11):
    """Lane 0: series A (``steps_a`` < 2C, masked to the end of chunk 1), then B (C steps) from chunk 2 on.

    Lane 1 is masked at 5 steps of chunks 0 and 2, so that every chunk counts 19 positions.
    Returns the stream's chunks (B reset at chunk 2) and the whole batch of A, B and lanes 1, 2 each alone.
    """
    s = stream()
    x, y = s["x"], s["y"]
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, steps_a : 2 * C] = False
    mask[1, 1:6] = mask[1, 2 * C + 2 : 2 * C + 7] = False
    chunks = chunked({"x": x, "y": y, "mask": mask}, {2: torch.tensor([True, False, False])})
    series = [(x[0, :steps_a], y[0, :steps_a]), (x[0, 2 * C :], y[0, 2 * C :]), (x[1], y[1]), (x[2], y[2])]
    xs, ys, masks = collate_sequences(series)
    masks[2] = mask[1]
    return chunks, {"x": xs, "y": ys, "mask": masks}
