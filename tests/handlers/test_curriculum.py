"""curriculum: stages of growing length, their rules, the cut batches, and a real run that is interrupted and resumed.

The engine-level tests drive ``Curriculum`` on factory-made engines with tiny random
sequences of 40 steps; the validation metric of the metric rule is scripted per epoch (an
evaluator handler overwrites it after it is computed), so no decision depends on luck.
The run-level tests use ``run.py``'s code in-process on the tiny config of
``handler_helpers`` (sequences of 200 steps, 2 iterations per epoch).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.nn as nn
from handler_helpers import ITERATIONS_PER_EPOCH, assert_same_history, history, run_cli, tiny_args
from ignite.engine import Events
from test_handlers import read_events

from ignite_lstm.app.config.schema import ConfigError, load_config, validate_config
from ignite_lstm.app.run.evaluate import evaluate_splits
from ignite_lstm.app.run.setup import setup_evaluators
from ignite_lstm.app.run.training import setup
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.app.task.metrics import build_metrics
from ignite_lstm.engine.factories import create_evaluator, create_trainer
from ignite_lstm.handlers.curriculum import Curriculum, cut_batch, stage_lengths
from ignite_lstm.models.lstm import StatefulLSTM, load_model

T, F_IN = 40, 3


def _sequences(n=4, steps=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(steps, F_IN, generator=g), torch.randn(steps, 1, generator=g)) for _ in range(n)]


def _loader(sequences, batch=2):
    return torch.utils.data.DataLoader(sequences, batch_size=batch)


def _engines(tbptt_steps=8, update="window", seed=0):
    torch.manual_seed(seed)
    model = StatefulLSTM(F_IN, 4)
    trainer = create_trainer(
        model, torch.optim.Adam(model.parameters(), lr=0.01), nn.MSELoss(), tbptt_steps=tbptt_steps, update=update
    )
    return model, trainer


def _per_epoch(trainer, fn):
    values = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: values.append(fn(e)))
    return values


# --- stages and batches ----------------------------------------------------------------------------------


def test_stage_lengths_grow_by_the_factor_or_follow_the_list_and_end_at_the_full_length():
    assert stage_lengths(10000, start=250) == [250, 500, 1000, 2000, 4000, 8000, 10000]
    assert stage_lengths(1000, start=100, factor=3) == [100, 300, 900, 1000]
    assert stage_lengths(1000, lengths=[100, 300]) == [100, 300, 1000]
    assert stage_lengths(1000, lengths=[100, 1000]) == [100, 1000]  # T already last
    assert stage_lengths(200, start=200) == [200]
    assert stage_lengths(10, start=1, factor=1.2) == [1, 2, 3, 4, 5, 6, 7, 9, 10]  # no repeated length
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Argument lengths should increase, each between 1 and the sequence length T = 1000, got [300, 100]."
        ),
    ):
        stage_lengths(1000, lengths=[300, 100])
    with pytest.raises(ValueError, match=re.escape("got [100, 2000]")):
        stage_lengths(1000, lengths=[100, 2000])
    with pytest.raises(ValueError, match="Arguments lengths and start: give exactly one of them."):
        stage_lengths(1000, lengths=[100], start=100)
    with pytest.raises(ValueError, match="Argument factor should be greater than 1, got 1."):
        stage_lengths(1000, start=100, factor=1)


def test_cut_batch_keeps_the_first_steps_of_every_batch_form():
    x, y, mask = torch.randn(2, 10, 3), torch.randn(2, 10, 1), torch.rand(2, 10) > 0.5
    cx, cy = cut_batch((x, y), 4)
    assert torch.equal(cx, x[:, :4]) and torch.equal(cy, y[:, :4])
    assert [p.shape[1] for p in cut_batch((x, y, mask), 4)] == [4, 4, 4]
    cut = cut_batch({"x": x, "y": y, "mask": mask}, 4)
    assert set(cut) == {"x", "y", "mask"} and torch.equal(cut["mask"], mask[:, :4])
    assert cut_batch((x, y), 10)[0] is x and cut_batch((x, y), 50)[0] is x  # the full length: the batch itself
    reset = torch.tensor([True, False])  # per lane: kept as it is
    cut = cut_batch((x, y, None, reset), 4)
    assert cut[2] is None and cut[3] is reset and cut[0].shape[1] == 4
    assert cut_batch({"x": x, "y": y, "reset": reset}, 4)["reset"] is reset


def test_curriculum_arguments_are_checked():
    with pytest.raises(ValueError, match=r"Argument lengths should increase, each >= 1, got \[20, 10\]"):
        Curriculum([20, 10], epochs_per_stage=1)
    with pytest.raises(ValueError, match="give exactly one"):
        Curriculum([10, 20])
    with pytest.raises(ValueError, match="give exactly one"):
        Curriculum([10, 20], epochs_per_stage=1, metric="mse", threshold=0.1)
    with pytest.raises(ValueError, match="Arguments metric and threshold go together."):
        Curriculum([10, 20], metric="mse")
    with pytest.raises(ValueError, match=re.escape("Argument max_epochs should be a positive integer or None, got 0.")):
        Curriculum([10, 20], metric="mse", threshold=0.1, max_epochs=0)
    with pytest.raises(ValueError, match="For another metric, pass mode="):
        Curriculum([10, 20], metric="acuracy", threshold=0.1)


# --- the epoch rule, the trainer's batches and its window ---------------------------------------------------


def test_the_epoch_rule_changes_the_stage_at_the_scheduled_epochs_and_the_model_sees_L_steps():
    model, trainer = _engines(tbptt_steps=8)
    curriculum = Curriculum([10, 20, T], epochs_per_stage=2)
    curriculum.attach(trainer)
    calls = []  # (epoch, steps) of every model call: one per window
    model.register_forward_pre_hook(lambda m, args: calls.append((trainer.state.epoch, args[0].shape[1])))
    lengths = _per_epoch(trainer, lambda e: e.state.curriculum_length)
    trainer.run(_loader(_sequences()), max_epochs=7)
    assert lengths == [10, 10, 20, 20, T, T, T]
    for epoch, length in enumerate(lengths, 1):
        steps = [n for e, n in calls if e == epoch]
        assert sum(steps) == 2 * length and max(steps) == 8  # 2 batches of L steps, in windows of 8
    assert trainer.state.window == sum(2 * math.ceil(length / 8) for length in lengths)
    assert curriculum.final and curriculum.state_dict() == {
        "lengths": [10, 20, T],
        "stage": 2,
        "epochs_in_stage": 3,
        "score": None,
        "best": None,
        "retried": [0, 0, 0],
        "snapshot": None,
    }


def test_lr_factor_scales_the_learning_rate_once_at_every_stage_change_and_needs_the_optimizer():
    model, trainer = _engines(tbptt_steps=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=8, update="window")
    curriculum = Curriculum([10, 20, T], epochs_per_stage=2, lr_factor=0.5)
    with pytest.raises(ValueError, match=re.escape("Argument optimizer is needed: lr_factor=0.5 scales")):
        curriculum.attach(trainer)
    curriculum.attach(trainer, optimizer=optimizer)
    rates = _per_epoch(trainer, lambda e: optimizer.param_groups[0]["lr"])
    trainer.run(_loader(_sequences()), max_epochs=6)
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]  # stages 10, 10, 20, 20, T, T
    with pytest.raises(ValueError, match=re.escape("Argument lr_factor should be in (0, 1], got 0.")):
        Curriculum([10, 20], epochs_per_stage=1, lr_factor=0)


def test_reset_optimizer_clears_the_moments_at_every_stage_change_and_keeps_the_rate():
    model, _ = _engines()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=8, update="window")
    with pytest.raises(ValueError, match=re.escape("Argument optimizer is needed: reset_optimizer=True clears")):
        Curriculum([10, 20, T], epochs_per_stage=2, reset_optimizer=True).attach(trainer)
    Curriculum([10, 20, T], epochs_per_stage=2, lr_factor=0.5, reset_optimizer=True).attach(
        trainer, optimizer=optimizer
    )
    first = next(iter(model.parameters()))
    steps = _per_epoch(trainer, lambda e: int(optimizer.state[first]["step"]))  # Adam's count since its state began
    rates = _per_epoch(trainer, lambda e: optimizer.param_groups[0]["lr"])
    trainer.run(_loader(_sequences()), max_epochs=6)
    # windows of 8 per epoch: 2 batches x 2 (10 steps), x 3 (20 steps), x 5 (40 steps); the count restarts per stage
    assert steps == [4, 8, 6, 12, 10, 20]
    assert rates == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]


def test_the_window_follows_L_with_full_window_bptt_and_the_path_follows_the_window():
    model, trainer = _engines(tbptt_steps=1, update="sequence")
    assert trainer.state.execution == "fused-detached"
    Curriculum([10, 20, T], epochs_per_stage=1, follow_tbptt=True).attach(trainer)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    windows = _per_epoch(trainer, lambda e: (e.state.tbptt_steps, e.state.execution))
    trainer.run(_loader(_sequences()), max_epochs=3)
    assert windows == [(10, "fused"), (20, "fused"), (T, "fused")]
    assert calls == [10, 10, 20, 20, T, T]  # one call per batch: the whole of its L steps


def test_training_on_the_cut_batches_equals_training_on_sequences_of_that_length():
    sequences = _sequences()
    a, trainer = _engines(tbptt_steps=5)
    b = copy.deepcopy(a)
    Curriculum([12, T], epochs_per_stage=9).attach(trainer)
    losses = _per_epoch(trainer, lambda e: e.state.metrics["epoch_loss"])
    trainer.run(_loader(sequences), max_epochs=2)
    short = [(x[:12].clone(), y[:12].clone()) for x, y in sequences]
    plain = create_trainer(b, torch.optim.Adam(b.parameters(), lr=0.01), nn.MSELoss(), tbptt_steps=5, update="window")
    plain_losses = _per_epoch(plain, lambda e: e.state.metrics["epoch_loss"])
    plain.run(_loader(short), max_epochs=2)
    assert losses == plain_losses
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


# --- the metric rule ------------------------------------------------------------------------------------------


def _metric_run(script, max_epochs=None, **rule):
    """Train with the metric rule on mse, the validation's mse scripted per epoch; the lengths per epoch,
    the number of steps each validation saw, and the curriculum."""
    model, trainer = _engines()
    evaluator = create_evaluator(model, build_metrics(names=("mse",)))
    curriculum = Curriculum([10, 20, T], metric="mse", max_epochs=max_epochs, **rule)
    curriculum.attach(trainer, evaluator)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("mse", script[trainer.state.epoch - 1])
    )  # after the metrics are computed, before COMPLETED reads them
    seen = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output["y"].shape[0]))
    val = _loader(_sequences(seed=1), batch=4)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val))
    lengths = _per_epoch(trainer, lambda e: e.state.curriculum_length)
    trainer.run(_loader(_sequences()), max_epochs=len(script))
    return lengths, seen, curriculum


def test_the_metric_rule_advances_at_the_first_validation_that_beats_the_threshold():
    lengths, seen, _ = _metric_run([0.5, 0.1, 0.5, 0.3, 0.1, 0.5], threshold=0.2)
    assert lengths == [10, 10, 20, 20, 20, T]
    assert seen == [4 * length for length in lengths]  # each validation saw the first L steps of its 4 sequences


def test_the_metric_rule_waits_min_epochs_and_ends_a_stage_after_max_epochs():
    assert _metric_run([0.1] * 5, threshold=0.2, min_epochs=2)[0] == [10, 10, 20, 20, T]
    assert _metric_run([0.5] * 6, threshold=0.2, max_epochs=2)[0] == [10, 10, 20, 20, T, T]
    assert _metric_run([0.5, float("nan"), 0.1, 0.1], threshold=0.2)[0] == [10, 10, 10, 20]  # NaN never passes


def test_a_metric_where_higher_is_better_must_rise_above_the_threshold():
    model, trainer = _engines()
    evaluator = create_evaluator(model, build_metrics(names=("snr",)))
    Curriculum([10, T], metric="snr", threshold=3.0).attach(trainer, evaluator)
    script = [1.0, 5.0, 1.0]
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("snr", script[trainer.state.epoch - 1])
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(_loader(_sequences(seed=1))))
    lengths = _per_epoch(trainer, lambda e: e.state.curriculum_length)
    trainer.run(_loader(_sequences()), max_epochs=3)
    assert lengths == [10, 10, T]


def test_a_run_that_ends_before_the_full_length_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="ignite_lstm"):
        lengths, _, curriculum = _metric_run([0.5] * 3, threshold=0.2)
    assert lengths == [10, 10, 10] and not curriculum.final
    assert (
        "Curriculum: the run ended in stage 1 of 3 (10 of 40 steps): the full length was never trained" in caplog.text
    )


def test_the_state_restores_the_stage_and_refuses_other_stages():
    curriculum = Curriculum([10, 20, T], epochs_per_stage=2)
    curriculum.load_state_dict({"lengths": [10, 20, T], "stage": 1, "epochs_in_stage": 1, "score": 0.25})
    assert (curriculum.length, curriculum.epochs_in_stage, curriculum.score) == (20, 1, 0.25)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "The checkpoint's curriculum has the stages [10, 40], this run's "
            "[10, 20, 40]: resume with the same train.curriculum lengths."
        ),
    ):
        curriculum.load_state_dict({"lengths": [10, T], "stage": 0, "epochs_in_stage": 0, "score": None})


# --- retries: a stage that does not pass starts again from its start ------------------------------------------


def _retry_run(script, epochs=None, **rule):
    """The metric rule with retries on a real trainer (Adam), the validation's mse scripted per epoch.

    Returns the lengths per epoch, the parameters and Adam's first moments at the end of every
    epoch and at the start of every epoch, the learning rate per epoch, and the curriculum."""
    model, _ = _engines()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=8, update="window")
    evaluator = create_evaluator(model, build_metrics(names=("mse",)))
    curriculum = Curriculum([10, 20, T], metric="mse", threshold=0.2, lr_factor=0.5, **rule)
    curriculum.attach(trainer, evaluator, optimizer, model)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("mse", script[trainer.state.epoch - 1])
    )
    val = _loader(_sequences(seed=1), batch=4)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val))

    def params():
        return [p.detach().clone() for p in model.parameters()]

    def moments():
        return [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]

    started, ended = [], []
    # after the curriculum's own EPOCH_STARTED handler (attached first), before the first batch
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: started.append((params(), moments() if ended else None)))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: ended.append((params(), moments())))
    lengths = _per_epoch(trainer, lambda e: e.state.curriculum_length)
    rates = _per_epoch(trainer, lambda e: optimizer.param_groups[0]["lr"])
    trainer.run(_loader(_sequences()), max_epochs=epochs or len(script))
    return lengths, started, ended, rates, curriculum


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_stage_that_does_not_pass_starts_again_from_the_model_and_optimizer_it_started_with(caplog):
    # epoch 1 passes stage 1 (10 steps); stage 2 (20 steps) starts at epoch 2 from the state at the end of
    # epoch 1; epochs 2-3 fail, so epoch 4 starts from that state again; epochs 4-5 fail too, and with one
    # retry allowed the stage goes on from epoch 6; epoch 7 passes it
    script = [0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.5]
    with caplog.at_level(logging.WARNING, logger="ignite_lstm"):
        lengths, started, ended, rates, curriculum = _retry_run(script, retry_after=2, retries=1)
    assert lengths == [10, 20, 20, 20, 20, 20, 20, T]
    end_of_stage_1 = ended[0]
    assert _same(started[1][0], end_of_stage_1[0])  # stage 2 starts from where stage 1 ended (no restore)
    assert not _same(ended[2][0], end_of_stage_1[0])  # epochs 2-3 trained the model away from it
    assert _same(started[3][0], end_of_stage_1[0]) and _same(started[3][1], end_of_stage_1[1])  # the retry
    assert not _same(started[5][0], end_of_stage_1[0])  # no second retry: epoch 6 goes on from epoch 5
    assert _same(started[5][0], ended[4][0])
    assert rates == [0.01, 0.005, 0.005, 0.005, 0.005, 0.005, 0.005, 0.0025]  # the retry keeps the stage's rate
    assert curriculum.retried == [0, 1, 0]
    assert caplog.text.count("starting it again from the state it started with") == 1
    assert "Curriculum: stage 2 of 3 (20 steps) has not passed in 2 epochs (best mse 0.5, threshold 0.2)" in caplog.text
    assert curriculum.final and curriculum.snapshot is None  # the last stage is not retried: nothing kept


def test_the_first_stage_is_never_retried_and_max_epochs_ends_a_stage_after_its_retries():
    lengths, started, ended, _, curriculum = _retry_run([0.5] * 4, retry_after=1, retries=3)
    assert lengths == [10] * 4 and curriculum.retried == [0, 0, 0]
    assert all(_same(started[e][0], ended[e - 1][0]) for e in range(1, 4))  # never restored
    # stage 2 from epoch 2: retried after epochs 3 and 5 (2 retries), then max_epochs 3 ends it after epoch 8
    script = [0.1] + [0.5] * 8
    lengths, started, ended, _, curriculum = _retry_run(script, retry_after=2, retries=2, max_epochs=3)
    assert lengths == [10, 20, 20, 20, 20, 20, 20, 20, T]
    assert [e for e in range(1, 9) if _same(started[e][0], ended[0][0])] == [1, 3, 5]
    assert curriculum.retried == [0, 2, 0]


def test_a_checkpoint_holds_the_stage_start_and_a_resumed_run_retries_from_it(tmp_path):
    script = [0.1, 0.5, 0.5, 0.5]
    _, _, ended, _, curriculum = _retry_run(script, retry_after=3, retries=1)
    assert curriculum.epochs_in_stage == 3 and curriculum.retried == [0, 0, 0]  # the retry is due at epoch 5
    torch.save(curriculum.state_dict(), tmp_path / "curriculum.pt")
    # a new process: other weights, another optimizer state; the loaded snapshot is what the retry restores
    model, _ = _engines(seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=8, update="window")
    resumed = Curriculum([10, 20, T], metric="mse", threshold=0.2, lr_factor=0.5, retry_after=3, retries=1)
    resumed.attach(trainer, None, optimizer, model)
    resumed.load_state_dict(torch.load(tmp_path / "curriculum.pt", weights_only=True))
    starts = []
    trainer.add_event_handler(
        Events.EPOCH_STARTED, lambda _: starts.append([p.detach().clone() for p in model.parameters()])
    )
    trainer.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", 4))  # as a resumed run at epoch 4
    trainer.run(_loader(_sequences()), max_epochs=5)
    assert resumed.retried == [0, 1, 0] and _same(starts[0], ended[0][0])
    # Adam's steps: the snapshot's 4 (epoch 1: 2 batches x 2 windows of 10 steps), then epoch 5's 6 (2 x 3 of 20)
    assert optimizer.param_groups[0]["lr"] == 0.005 and int(optimizer.state_dict()["state"][0]["step"]) == 4 + 6


def test_retries_need_the_metric_rule_the_model_and_the_optimizer():
    with pytest.raises(ValueError, match="Argument retry_after belongs to the metric rule"):
        Curriculum([10, 20], epochs_per_stage=1, retry_after=2, retries=1)
    with pytest.raises(ValueError, match=re.escape("Argument max_epochs (2) should be greater than retry_after (2)")):
        Curriculum([10, 20], metric="mse", threshold=0.1, retry_after=2, retries=1, max_epochs=2)
    with pytest.raises(ValueError, match="Argument retries should be a non-negative integer, got -1."):
        Curriculum([10, 20], metric="mse", threshold=0.1, retries=-1)
    model, trainer = _engines()
    with pytest.raises(ValueError, match=re.escape("Arguments model and optimizer are needed: retry_after=2")):
        Curriculum([10, 20], metric="mse", threshold=0.1, retry_after=2, retries=1).attach(trainer)


# --- the config -------------------------------------------------------------------------------------------------


def _problems(curriculum, **sections):
    values = {
        "data": {"duration": 0.2},
        "train": {"epochs": 6, "curriculum": {"enabled": True, **curriculum}},
        **sections,
    }
    with pytest.raises(ConfigError) as info:
        validate_config(values)
    return info.value.problems


T_NOTE = " (T = round(data.fs * data.duration))"
C = "train.curriculum"


@pytest.mark.parametrize(
    "curriculum, problem",
    [
        (
            {"epochs_per_stage": 1},
            f"{C}: lengths and start: give exactly one of them (lengths, e.g. [250, 500, 1000], or start and factor)",
        ),
        ({"lengths": [50], "start": 50, "epochs_per_stage": 1}, f"{C}: lengths and start: give exactly one of them"),
        (
            {"lengths": [100, 50], "epochs_per_stage": 1},
            f"{C}.lengths: lengths should increase, each between 1 and the sequence length T = 200, got [100, 50]{T_NOTE}",
        ),
        (
            {"lengths": [50, 300], "epochs_per_stage": 1},
            f"{C}.lengths: lengths should increase, each between 1 and the sequence length T = 200, got [50, 300]",
        ),
        (
            {"start": 500, "epochs_per_stage": 1},
            f"{C}.start: start should be between 1 and the sequence length T = 200, got 500",
        ),
        ({"lengths": [0, 50], "epochs_per_stage": 1}, f"{C}.lengths[0]: 0 is out of range: must be >= 1"),
        (
            {"start": 50},
            f"{C}: needs a rule to advance: epochs_per_stage (fixed epochs per stage), or metric and threshold",
        ),
        (
            {"start": 50, "epochs_per_stage": 1, "metric": "mse", "threshold": 0.1},
            f"{C}.epochs_per_stage: 1 and metric 'mse' are two rules to advance: choose one",
        ),
        ({"start": 50, "metric": "mse"}, f"{C}.threshold: null: the metric rule ('mse') needs the value to beat"),
        ({"start": 50, "epochs_per_stage": 1, "threshold": 0.1}, f"{C}.threshold: 0.1 needs {C}.metric"),
        (
            {"start": 50, "metric": "accuracy", "threshold": 0.1},
            f"{C}.metric: 'accuracy' is not a validation metric: choose one of mse, rmse, mae, corr, r2, snr, mse_f1",
        ),
        (
            {"start": 50, "metric": "mse", "threshold": 0.1, "min_epochs": 3, "max_epochs": 2},
            f"{C}.max_epochs: 2 must be >= min_epochs (3)",
        ),
        (
            {"start": 50, "epochs_per_stage": 1, "max_epochs": 2},
            f"{C}.max_epochs: min_epochs 1 and max_epochs 2 belong to the metric rule; with epochs_per_stage leave them at "
            f"1 and null",
        ),
        (
            {"start": 50, "epochs_per_stage": 3},  # stages 50, 100, then 200 from epoch 7: after the run
            f"{C}.epochs_per_stage: 3 x 2 stages below the full length = 6 epochs leaves none of train.epochs=6 at the full "
            f"length",
        ),
        ({"start": 50, "factor": 1.0, "epochs_per_stage": 1}, f"{C}.factor: 1.0 is out of range: must be > 1.0"),
        (
            {"start": 50, "epochs_per_stage": 1, "tbptt": "auto"},
            f"{C}.tbptt: 'auto' is not allowed: choose one of 'fixed', 'follow'",
        ),
        (
            {"start": 50, "epochs_per_stage": 1, "lr_factor": 0.5},
            f"{C}.lr_factor: 0.5 with handlers.lr_scheduler.name='cosine', which sets the rate at every step and would undo "
            f"it: use none or plateau, or lr_factor 1.0",
        ),
        ({"start": 50, "epochs_per_stage": 1, "lr_factor": 1.5}, f"{C}.lr_factor: 1.5 is out of range: must be <= 1.0"),
        (
            {"start": 50, "epochs_per_stage": 1, "retry_after": 5, "retries": 1},
            f"{C}.retry_after: 5 belongs to the metric rule (metric and threshold)",
        ),
        (
            {"start": 50, "metric": "mse", "threshold": 0.1, "retries": 2},
            f"{C}.retries: 2 needs {C}.retry_after (the epochs before a stage starts again)",
        ),
        (
            {"start": 50, "metric": "mse", "threshold": 0.1, "min_epochs": 4, "retry_after": 3, "retries": 1},
            f"{C}.retry_after: 3 must be >= min_epochs (4)",
        ),
        (
            {"start": 50, "metric": "mse", "threshold": 0.1, "max_epochs": 3, "retry_after": 3, "retries": 1},
            f"{C}.max_epochs: 3 must be greater than retry_after (3), or it ends every stage before its first retry",
        ),
        (
            {"start": 50, "metric": "mse", "threshold": 0.1, "retries": -1},
            f"{C}.retries: -1 is out of range: must be >= 0",
        ),
    ],
)
def test_a_curriculum_that_cannot_run_is_refused_naming_the_key(curriculum, problem):
    problems = _problems(curriculum)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_a_curriculum_that_fits_is_accepted_and_off_by_default():
    assert not validate_config({}).train.curriculum.enabled
    cfg = validate_config(
        {
            "data": {"duration": 0.2},
            "train": {
                "epochs": 6,
                "curriculum": {
                    "enabled": True,
                    "start": 50,
                    "metric": "mse_f3",
                    "threshold": 0.01,
                    "max_epochs": 2,
                    "tbptt": "follow",
                },
            },
        }
    )
    assert cfg.train.curriculum.tbptt == "follow"
    validate_config({"train": {"curriculum": {"lengths": [300, 100]}}})  # off: its keys are not checked together


# --- a real run: resume, early stopping, TensorBoard, the final metrics ----------------------------------------

# Stages of 50 and 100 steps, then the 200 of the tiny config, with full-window BPTT; the metric rule with
# a threshold that any mse beats: each stage lasts its min_epochs = 2 epochs (no luck involved).
CURRICULUM = [
    "train.epochs=6",
    "eval.report=false",
    "train.curriculum.enabled=true",
    "train.curriculum.lengths=[50,100]",
    "train.curriculum.metric=mse",
    "train.curriculum.threshold=1e9",
    "train.curriculum.min_epochs=2",
    "train.curriculum.tbptt=follow",
]
STAGES = [50, 50, 100, 100, 200, 200]


@pytest.fixture(scope="module")
def left_alone(tmp_path_factory):
    root = tmp_path_factory.mktemp("curriculum")
    assert run_cli(tiny_args(root / "data", root / "runs", "alone", *CURRICULUM)) == 0
    return root / "runs" / "alone"


def test_the_length_reaches_T_and_the_final_metrics_are_on_the_full_length(left_alone):
    assert [e["train/curriculum_length"] for e in history(left_alone)] == STAGES
    cfg = load_config(left_alone / "config.yaml")
    model, _ = load_model(left_alone / "model.pt")
    evaluator = setup_evaluators(cfg, model, torch.device("cpu"))["final"]
    assert json.loads((left_alone / "metrics.json").read_text()) == pytest.approx(
        evaluate_splits(evaluator, setup_data(cfg)["eval_loaders"]), rel=1e-6
    )
    # the best checkpoint competes among full-length validations only (epochs 5 and 6), although
    # the short stages' validations scored lower
    best = [p.name for p in (left_alone / "checkpoints").glob("best_*.pt")]
    assert len(best) == 1 and int(best[0].split("_")[2]) > 4 * ITERATIONS_PER_EPOCH
    assert min(e["val/mse"] for e in history(left_alone)[:4]) < min(e["val/mse"] for e in history(left_alone)[4:])


def test_the_cosine_schedule_plans_the_optimizer_steps_that_the_stages_take(left_alone):
    # One window per batch in every stage (it follows L): 2 optimizer steps per epoch, 12 in the run, which is
    # what the schedule plans; planned from the config's 50-step windows (8 per epoch) it would end at 48.
    lr = load_config(left_alone / "config.yaml").train.lr
    rates = [e["lr"] for e in history(left_alone)]
    assert rates[-1] < 0.05 * lr and rates == sorted(rates, reverse=True)


def test_tensorboard_holds_the_length_of_every_epoch(left_alone):
    events = read_events(left_alone / "tb")
    assert events["train/curriculum_length"] == [(epoch, length) for epoch, length in enumerate(STAGES, 1)]


def test_a_run_interrupted_at_a_stage_change_and_in_the_middle_of_a_stage_resumes_to_the_same_history(
    left_alone, tmp_path, monkeypatch
):
    # Ctrl-C at the end of epoch 2 (iteration 4: the advance to 100 steps is decided when epoch 3 starts,
    # from the state that checkpoint holds), then in the middle of epoch 4 (iteration 7, the second
    # epoch of the 100-step stage), then to the end.
    args = tiny_args(
        tmp_path / "data", tmp_path / "runs", "interrupted", *CURRICULUM, "handlers.extra=[handler_helpers:ctrl_c]"
    )
    checkpoints = tmp_path / "runs" / "interrupted" / "checkpoints"
    monkeypatch.setenv("CTRL_C_AT", str(2 * ITERATIONS_PER_EPOCH))
    assert run_cli(args) == 130
    saved = torch.load(checkpoints / "interrupted_checkpoint_4.pt", weights_only=True)["curriculum"]
    assert saved["stage"] == 0 and saved["epochs_in_stage"] == 2 and saved["score"] < 1e9
    monkeypatch.setenv("CTRL_C_AT", str(3 * ITERATIONS_PER_EPOCH + 1))
    assert run_cli([*args, "resume=auto"]) == 130
    saved = torch.load(checkpoints / "interrupted_checkpoint_7.pt", weights_only=True)["curriculum"]
    assert (saved["stage"], saved["epochs_in_stage"], saved["score"]) == (1, 1, None)
    monkeypatch.setenv("CTRL_C_AT", "1000")
    assert run_cli([*args, "resume=auto"]) == 0
    run_dir = tmp_path / "runs" / "interrupted"
    assert_same_history(history(run_dir), history(left_alone), tol=1e-6)
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(
        json.loads((left_alone / "metrics.json").read_text()), rel=1e-6
    )


def test_early_stopping_and_the_plateau_schedule_count_the_last_stage_only(tmp_path, monkeypatch):
    # Validation mse scripted to worsen every epoch: without the curriculum's filter, patience 2 would stop
    # the run at epoch 3 and the plateau schedule would halve the rate after epoch 2. Stages of 2 epochs:
    # the full length from epoch 5, its best validation, then two worse ones: the run stops at epoch 7.
    monkeypatch.setenv("SCRIPT", "mse:" + ",".join(str(0.1 * n) for n in range(1, 9)))
    args = tiny_args(
        tmp_path / "data",
        tmp_path / "runs",
        "stopped",
        "train.epochs=8",
        "eval.report=false",
        "train.curriculum.enabled=true",
        "train.curriculum.lengths=[50,100]",
        "train.curriculum.epochs_per_stage=2",
        "handlers.early_stopping.patience=2",
        "handlers.lr_scheduler.name=plateau",
        "handlers.lr_scheduler.warmup_epochs=0",
        "handlers.lr_scheduler.patience=0",
        "handlers.extra=[handler_helpers:scripted_metric]",
    )
    assert run_cli(args) == 0
    run_dir = tmp_path / "runs" / "stopped"
    epochs = history(run_dir)
    assert [e["train/curriculum_length"] for e in epochs] == [50, 50, 100, 100, 200, 200, 200]
    lr = load_config(run_dir / "config.yaml").train.lr
    assert [e["lr"] for e in epochs] == [lr] * 6 + [lr / 2]  # the first reduction: after epoch 6's worse score
    best = [p.name for p in (run_dir / "checkpoints").glob("best_*.pt")]
    assert best == [f"best_checkpoint_{5 * ITERATIONS_PER_EPOCH}_neg_val_mse=-0.5000.pt"]  # epoch 5, not epoch 1


# --- several processes -----------------------------------------------------------------------------------------


def _ranks_disagree(local_rank, data_dir, out):
    """Train with the metric rule where each rank's own validation score says otherwise: rank 0's always
    passes, rank 1's never; record the length of every epoch. (A fixed window: ranks at other lengths would
    then still train, padded, instead of waiting for each other's gradients forever.)"""
    args = tiny_args(
        Path(data_dir),
        Path(out),
        "ranks",
        "train.curriculum.enabled=true",
        "train.curriculum.lengths=[50,100]",
        "train.curriculum.metric=mse",
        "train.curriculum.threshold=0.5",
        "handlers.checkpoint.enabled=false",
        "handlers.early_stopping.enabled=false",
        "handlers.tensorboard.enabled=false",
    )
    cfg = load_config(args[0], args[1:])
    rank = idist.get_rank()
    run_dir = Path(out) / "ranks"
    run_dir.mkdir(exist_ok=True)
    s = setup(cfg, run_dir)
    s.evaluators["val"].add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("mse", 0.0 if rank == 0 else 1.0)
    )
    seen = _per_epoch(s.trainer, lambda e: e.state.curriculum_length)
    try:
        s.trainer.run(s.train_data, max_epochs=cfg.train.epochs)
    finally:
        s.handlers.interrupt.close()
    torch.save(seen, Path(out) / f"rank-{rank}.pt")


def test_every_rank_takes_rank_0s_decision_at_the_same_epoch(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    idist.spawn(
        "gloo",
        _ranks_disagree,
        (str(tmp_path / "data"), str(tmp_path)),
        nproc_per_node=2,
        master_port=port,
        start_method="fork",
    )
    expected = [50, 100, 200, 200]
    assert [torch.load(tmp_path / f"rank-{r}.pt") for r in range(2)] == [expected, expected]


def test_a_curriculum_refuses_an_engine_that_carries_its_state():
    # issue 26: from Python it cut every chunk and carried the state across the dropped steps
    model = StatefulLSTM(3, 4)
    carrying = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), carry_state=True)
    with pytest.raises(ValueError, match=r"Argument trainer carries its state across batches \(carry_state=True\)"):
        Curriculum([10, 20], epochs_per_stage=1).attach(carrying)
    plain = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
    with pytest.raises(ValueError, match="Argument val_evaluator carries its state"):
        Curriculum([10, 20], epochs_per_stage=1).attach(plain, create_evaluator(model, carry_state=True))
    Curriculum([10, 20], epochs_per_stage=1).attach(plain, create_evaluator(model))
