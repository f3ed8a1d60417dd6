"""Learning-rate schedules: the rate of every optimizer step against formulas written out here."""

import io
import logging
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, TensorDataset

from ignite_lstm.engine.factories import TimeEvents, create_trainer
from ignite_lstm.handlers.schedules import setup_lr_scheduler, warmup_steps
from ignite_lstm.models.lstm import StatefulLSTM

LR, MIN_LR, STEP_SIZE, GAMMA = 0.1, 0.001, 2, 0.5


def expected_lr(name: str, s: int, *, total: int, warmup: int, spe: int) -> float:
    """The documented schedule, computed independently of Ignite."""
    if warmup and s < warmup - 1:
        return LR * (0.01 + 0.99 * s / (warmup - 1))
    u = s - (warmup - 1) if warmup else s
    remaining = total - (warmup - 1) if warmup else total
    if name == "step":
        return LR * GAMMA ** (u // (STEP_SIZE * spe))
    return MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * u / remaining)) / 2


def _recorded_run(name: str, epochs: int, spe: int, warmup_epochs: float, **kwargs):
    """A do-nothing trainer of ``spe`` iterations per epoch; the lr of every step and the schedule."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    trainer = Engine(lambda e, b: None)
    scheduler = setup_lr_scheduler(
        trainer,
        optimizer,
        name=name,
        lr=LR,
        epochs=epochs,
        steps_per_epoch=spe,
        update="sequence",
        warmup_epochs=warmup_epochs,
        min_lr=MIN_LR,
        step_size=STEP_SIZE,
        gamma=GAMMA,
        **kwargs,
    )
    lrs: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    return trainer, optimizer, scheduler, lrs


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
@pytest.mark.parametrize("name", ["step", "cosine"])
def test_step_and_cosine_follow_their_formula_at_every_step(name, warmup_epochs):
    epochs, spe = 5, 4
    trainer, _, _, lrs = _recorded_run(name, epochs, spe, warmup_epochs)
    trainer.run(range(spe), max_epochs=epochs)
    warmup = warmup_steps(warmup_epochs, spe)
    assert warmup == (6 if warmup_epochs else 0)
    expected = [expected_lr(name, s, total=epochs * spe, warmup=warmup, spe=spe) for s in range(epochs * spe)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if warmup:
        assert lrs[0] == pytest.approx(0.01 * LR) and lrs[warmup - 1] == pytest.approx(LR)


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
def test_cosine_keeps_its_last_rate_with_a_warning_when_steps_per_epoch_was_an_underestimate(warmup_epochs, caplog):
    # planned: 5 epochs x 4 steps; the epochs really have 6 steps (variable-length batches)
    epochs, spe, real = 5, 4, 6
    trainer, _, _, lrs = _recorded_run("cosine", epochs, spe, warmup_epochs)
    with caplog.at_level(logging.WARNING, logger="ignite_lstm.handlers.schedules"):
        trainer.run(range(real), max_epochs=epochs)
    total = epochs * spe
    warmup = warmup_steps(warmup_epochs, spe)
    expected = [expected_lr("cosine", s, total=total, warmup=warmup, spe=spe) for s in range(total)]
    assert lrs[:total] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[total:] == [lrs[total - 1]] * (epochs * real - total)  # no new cycle
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        f"The cosine schedule planned {total} optimizer steps (epochs 5 x steps_per_epoch 4) and the "
        f"run has reached step {total + 1}: the learning rate stays at its last value instead of "
        f"starting a new cycle. Pass steps_per_epoch of the longest epoch."
    ]


def test_window_updates_step_the_schedule_once_per_window():
    torch.manual_seed(0)
    model = StatefulLSTM(input_size=2, hidden_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = create_trainer(model, optimizer, torch.nn.MSELoss(), tbptt_steps=5, update="window")
    loader = DataLoader(TensorDataset(torch.randn(4, 20, 2), torch.randn(4, 20, 1)), batch_size=2)
    spe, epochs = 2 * 4, 3  # 2 batches of 4 windows
    setup_lr_scheduler(
        trainer,
        optimizer,
        name="cosine",
        lr=LR,
        epochs=epochs,
        steps_per_epoch=spe,
        update="window",
        warmup_epochs=1.0,
        min_lr=MIN_LR,
    )
    lrs: list[float] = []
    trainer.add_event_handler(TimeEvents.WINDOW_STARTED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run(loader, max_epochs=epochs)
    expected = [expected_lr("cosine", s, total=epochs * spe, warmup=spe, spe=spe) for s in range(epochs * spe)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


def plateau_expected(script, *, patience, factor, min_lr, first_counted):
    """torch's ReduceLROnPlateau rule (relative threshold 1e-4, mode min): the lr used in each epoch."""
    lr, best, bad, used = LR, math.inf, 0, []
    for epoch, value in enumerate(script, start=1):
        used.append(lr)
        if epoch < first_counted:
            continue
        if value < best * (1 - 1e-4):
            best, bad = value, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = max(lr * factor, min_lr), 0
    return used, lr


SCRIPT = [1.0, 0.8, 0.9, 0.85, 0.81, 0.7, 0.75, 0.72, 0.71, 0.74, 0.73, 0.72]


def _scripted_evaluator(trainer: Engine, name: str, values) -> Engine:
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, values[trainer.state.epoch - 1])
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    return evaluator


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
@pytest.mark.parametrize("monitor,sign,mode", [("mse", 1.0, "min"), ("snr", -1.0, "max")])
def test_plateau_decays_on_scripted_validation_values_and_stops_at_min_lr(monitor, sign, mode, warmup_epochs):
    spe, epochs, min_lr = 2, len(SCRIPT), 0.2 * LR
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    trainer = Engine(lambda e, b: None)
    evaluator = _scripted_evaluator(trainer, monitor, [sign * v for v in SCRIPT])
    setup_lr_scheduler(
        trainer,
        optimizer,
        name="plateau",
        lr=LR,
        epochs=epochs,
        steps_per_epoch=spe,
        update="sequence",
        warmup_epochs=warmup_epochs,
        min_lr=min_lr,
        val_evaluator=evaluator,
        monitor=monitor,
        mode=mode,
        patience=1,
        factor=0.5,
    )
    lrs: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run(range(spe), max_epochs=epochs)

    warmup = warmup_steps(warmup_epochs, spe)  # 3 steps: epoch 1 ends inside the warm-up, so it is not counted
    per_epoch, final = plateau_expected(SCRIPT, patience=1, factor=0.5, min_lr=min_lr, first_counted=2 if warmup else 1)
    expected = [per_epoch[s // spe] for s in range(epochs * spe)]
    for s in range(warmup - 1):
        expected[s] = LR * (0.01 + 0.99 * s / (warmup - 1))
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(final) == pytest.approx(min_lr)
    assert len(set(lrs[(warmup or 1) - 1 :])) == 4  # lr, lr/2, lr/4, then the floor lr/5


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
def test_onecycle_follows_one_cycle_formula_at_every_step(warmup_epochs):
    epochs, spe = 5, 4
    total = epochs * spe
    trainer, _, _, lrs = _recorded_run("onecycle", epochs, spe, warmup_epochs)
    trainer.run(range(spe), max_epochs=epochs)
    warmup = warmup_steps(warmup_epochs, spe)
    up = (warmup / total if warmup else 0.3) * total - 1  # the step at which the peak is reached
    initial, final = LR / 25.0, LR / 25.0 / 1e4

    def cos_between(start, end, frac):
        return end + (start - end) / 2.0 * (math.cos(math.pi * frac) + 1)

    expected = [
        cos_between(initial, LR, s / up) if s <= up else cos_between(LR, final, (s - up) / (total - 1 - up))
        for s in range(total)
    ]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert max(lrs) == pytest.approx(LR) and lrs[-1] == pytest.approx(final)


@pytest.mark.parametrize("name", ["step", "cosine", "plateau", "onecycle"])
def test_schedule_state_survives_a_weights_only_checkpoint_and_continues_exactly(name):
    spe, epochs = 2, 6

    def build():
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
        trainer = Engine(lambda e, b: None)
        evaluator = _scripted_evaluator(trainer, "mse", SCRIPT)
        scheduler = setup_lr_scheduler(
            trainer,
            optimizer,
            name=name,
            lr=LR,
            epochs=epochs,
            steps_per_epoch=spe,
            update="sequence",
            warmup_epochs=1.5,
            min_lr=MIN_LR,
            step_size=1,
            gamma=GAMMA,
            val_evaluator=evaluator,
            patience=0,
            factor=0.5,
        )
        lrs = []
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
        return trainer, optimizer, scheduler, lrs

    trainer, _, _, whole = build()
    trainer.run(range(spe), max_epochs=epochs)

    trainer, optimizer, scheduler, first = build()
    trainer.run(range(spe), max_epochs=3)
    buffer = io.BytesIO()
    torch.save(
        {"trainer": trainer.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()},
        buffer,
    )
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    trainer, optimizer, scheduler, rest = build()
    trainer.load_state_dict(state["trainer"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["lr_scheduler"])
    trainer.run(range(spe), max_epochs=epochs)
    assert first + rest == pytest.approx(whole, rel=1e-12)
    assert len(set(whole)) > 3  # the schedule did move in both halves


@pytest.mark.parametrize("name", ["cosine", "step", "onecycle"])
def test_a_warmup_shorter_than_the_run_in_epochs_but_not_in_steps_is_fitted_with_a_warning(name, caplog):
    # one optimizer step per epoch, 2 epochs: a warm-up of 1.5 epochs would take both steps (2 at least);
    # a study drew such a trial and the ValueError ended the whole study
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    trainer = Engine(lambda e, b: None)
    with caplog.at_level("WARNING", logger="ignite_lstm.handlers.schedules"):
        setup_lr_scheduler(
            trainer, optimizer, name=name, lr=LR, epochs=2, steps_per_epoch=1, update="sequence", warmup_epochs=1.5
        )
    assert "as long as the whole run (2): warming up over 0 steps" in caplog.text
    lrs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run(range(1), max_epochs=2)
    assert len(lrs) == 2 and all(0 < lr <= LR for lr in lrs)


def test_warmup_must_be_shorter_than_the_run():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    with pytest.raises(ValueError, match=r"Argument warmup_epochs \(2.0\) should be shorter than the run \(2 epochs\)"):
        setup_lr_scheduler(
            Engine(lambda e, b: None),
            optimizer,
            name="cosine",
            lr=LR,
            epochs=2,
            steps_per_epoch=3,
            update="sequence",
            warmup_epochs=2.0,
        )
    with pytest.raises(ValueError, match="Argument name should be one of"):
        setup_lr_scheduler(
            Engine(lambda e, b: None), optimizer, name="linear", lr=LR, epochs=2, steps_per_epoch=3, update="sequence"
        )
