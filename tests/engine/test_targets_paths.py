"""targets="last" with carried streams, gradient accumulation, mixed precision and two processes."""

import socket
import warnings
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Events

from ignite_lstm.engine.factories import create_evaluator, create_trainer
from ignite_lstm.engine.targets import collate_last
from ignite_lstm.models.lstm import StatefulLSTM
from tests.lstm_reference import hand_run

F_IN, H, C = 3, 5, 4


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=2, output_size=C).to(dtype)


def _sequences(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, F_IN, generator=gen, dtype=torch.float64) for n in lengths]
    return xs, torch.randint(0, C, (len(lengths),), generator=gen)


def _reference(model, xs, labels, window):
    rows = torch.stack([hand_run(model, x[None], window=window)[0][0, -1] for x in xs])
    return torch.autograd.grad(F.cross_entropy(rows, labels), list(model.parameters()))


def _rel(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def _grads(model, batches, **kwargs):
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss(), **kwargs)
    grads = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.run(batches, max_epochs=1)
    return grads, trainer


@pytest.mark.parametrize("execution", ["fused", "stepwise"])
def test_last_target_of_a_carried_stream_counts_at_its_series_end(execution):
    lengths = (8, 5, 7)
    xs, labels = _sequences(lengths)
    x, y, mask = collate_last(list(zip(xs, labels)), padding_value=float("nan"))
    first = {"x": x[:, :4], "y": y, "mask": torch.zeros(3, 4, dtype=torch.bool)}  # no series ends here
    second = {"x": x[:, 4:], "y": y, "mask": mask[:, 4:]}
    grads, trainer = _grads(
        _model(), [first, second], tbptt_steps=4, execution=execution, targets="last", carry_state=True
    )
    assert all(g is None for g in grads[0]) and trainer.state.output["loss"] == trainer.state.output["loss"]
    assert _rel(grads[1], _reference(_model(), xs, labels, window=4)) <= 1e-10
    model = _model()
    evaluator = create_evaluator(model, targets="last", carry_state=True, execution=execution)
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    evaluator.run([first, second])
    assert outputs[0]["y_pred"].shape == (0, C)
    want = torch.stack([hand_run(model, x_[None])[0][0, -1] for x_ in xs])
    torch.testing.assert_close(outputs[1]["y_pred"], want, rtol=0, atol=1e-12)


def test_last_targets_with_gradient_accumulation_equal_one_batch():
    xs, labels = _sequences((7, 3, 5, 6))
    halves = [collate_last(list(zip(xs[i : i + 2], labels[i : i + 2]))) for i in (0, 2)]
    grads, _ = _grads(_model(), halves, tbptt_steps=3, targets="last", gradient_accumulation_steps=2)
    assert _rel(grads[1], _reference(_model(), xs, labels, window=3)) <= 1e-10


@pytest.mark.parametrize("window", [1, 7])
def test_last_targets_under_bfloat16_autocast(window):
    xs, labels = _sequences((7, 3, 5, 6))
    batch = collate_last([(x.float(), c) for x, c in zip(xs, labels)], padding_value=float("nan"))
    losses = {}
    for amp in (None, torch.bfloat16):
        _, trainer = _grads(_model(dtype=torch.float32), [batch], tbptt_steps=window, targets="last", amp_dtype=amp)
        losses[amp] = trainer.state.output["loss"]
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=2e-2)
    out = create_evaluator(_model(dtype=torch.float32), targets="last", amp_dtype=torch.bfloat16).run([batch]).output
    assert out["y_pred"].dtype == torch.float32 and out["y_pred"].shape == (4, C)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_on_rank(local_rank: int, out: str, window: int) -> None:
    xs, labels = _sequences((7, 3, 5, 6))
    rank = idist.get_rank()
    mine = slice(2 * rank, 2 * rank + 2)  # rank 0: steps 7 and 3; rank 1: 5 and 6 (padded to 7)
    batch = collate_last(list(zip(xs[mine], labels[mine])), padding_value=float("nan"))
    model = idist.auto_model(_model())
    grads, trainer = _grads(model, [batch], tbptt_steps=window, targets="last")
    torch.save({"grads": grads[0], "loss": trainer.state.output["loss"]}, Path(out) / f"rank{rank}.pt")


@pytest.mark.parametrize("window", [1, 3])
def test_last_targets_on_two_processes_give_the_one_process_gradient(tmp_path, window):
    idist.spawn(
        "gloo",
        _train_on_rank,
        (str(tmp_path), window),
        nproc_per_node=2,
        master_port=_free_port(),
        start_method="fork",
    )
    xs, labels = _sequences((7, 3, 5, 6))
    want = _reference(_model(), xs, labels, window=window)
    loss = F.cross_entropy(torch.stack([hand_run(_model(), x[None])[0][0, -1] for x in xs]), labels).item()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert _rel(got["grads"], want) <= 1e-10
        assert got["loss"] == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("update", ["sequence", "window"])
def test_a_carried_chunk_that_counts_nothing_only_advances_the_state(update):
    xs, labels = _sequences((8, 5, 7))
    x, y, mask = collate_last(list(zip(xs, labels)))
    first = {"x": x[:, :4], "y": y, "mask": torch.zeros(3, 4, dtype=torch.bool)}
    second = {"x": x[:, 4:], "y": y, "mask": mask[:, 4:]}
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        tbptt_steps=4,
        update=update,
        targets="last",
        carry_state=True,
    )
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=1),
        lambda e: outputs.append(all(torch.equal(a, b) for a, b in zip(before, model.parameters()))),
    )
    trainer.run([first, second], max_epochs=1)
    first_out, unchanged, second_out = outputs
    assert unchanged  # no optimizer step moved the weights
    assert first_out["loss"] != first_out["loss"]  # NaN: nothing counted
    assert second_out["loss"] == second_out["loss"] and second_out["grad_norm"] > 0
