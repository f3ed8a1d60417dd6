"""trainers: the engines from a config, and the handlers attached in ``HANDLER_ORDER``.

The order is observed, not read from Ignite's handler table: a probe handler is put
before every entry of ``HANDLER_ORDER`` (and after the last), on the trainer's
ITERATION_COMPLETED and EPOCH_COMPLETED and on the validation evaluator's COMPLETED, and
each probe records what the run's own handlers have done by then. Ignite calls the
handlers of an event in the order they were attached, so a probe sees the work of every
entry before it and none of the entries after it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_quick, quick_folder
from ignite.engine import Events
from torch.utils.data import DataLoader

from ignite_lstm.app.run import setup as trainers
from ignite_lstm.app.run.optim import setup_optimizer
from ignite_lstm.app.run.setup import setup_evaluators, setup_trainer
from ignite_lstm.app.run.training import setup
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.app.task.metrics import METRIC_NAMES
from ignite_lstm.app.task.model import setup_model
from ignite_lstm.engine.carry import CarryingEngine

FREQS = (1, 3, 5, 7)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A quick config (2 training mixtures: 2 iterations per epoch) and its data, shared by the tests."""
    return quick_folder(tmp_path_factory, "trainers")


_cfg = load_quick


def _engines(cfg):
    model = setup_model(cfg)
    optimizer = setup_optimizer(cfg.train.optimizer, model.parameters(), lr=cfg.train.lr)
    return model, optimizer, setup_trainer(cfg, model, optimizer, torch.device("cpu"))


@pytest.mark.parametrize(
    "overrides, path",
    [
        ([], "fused"),
        (["train.tbptt_steps=1", "train.update=sequence"], "fused-detached"),
        (["train.execution=stepwise", "train.tbptt_steps=1"], "stepwise"),
    ],
)
def test_setup_trainer_takes_its_path_from_the_train_settings(folder, overrides, path):
    cfg = _cfg(folder, *overrides)
    model, _, trainer = _engines(cfg)
    assert trainer.state.execution == path and trainer.state.scaler is None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.run(setup_data(cfg)["train_loader"], max_epochs=1)
    assert trainer.state.iteration == 2 and torch.isfinite(torch.tensor(trainer.state.output["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_setup_trainer_adds_a_grad_scaler_for_float16(folder):
    _, _, trainer = _engines(_cfg(folder, "train.amp=fp16"))
    assert isinstance(trainer.state.scaler, torch.amp.GradScaler)


def test_setup_trainer_carries_the_state_across_batches_with_train_carry_state(folder):
    # 2 mixtures x 4 frequencies = 8 training sequences, 2 full batches of 4 lanes
    _, _, trainer = _engines(_cfg(folder, "train.carry_state=true"))
    trainer.run(setup_data(_cfg(folder))["train_loader"], max_epochs=1)
    assert isinstance(trainer, CarryingEngine) and trainer.state.carried_state[0].shape == (1, 4, 8)
    assert not isinstance(_engines(_cfg(folder))[2], CarryingEngine)


def test_setup_evaluators_validates_on_the_overall_metrics_and_evaluates_every_metric_per_frequency(folder):
    cfg = _cfg(folder)
    evaluators = setup_evaluators(cfg, setup_model(cfg), torch.device("cpu"))
    assert set(evaluators) == {"val", "final"}
    loader = DataLoader(setup_data(cfg)["datasets"]["val"], batch_size=4)
    val, final = (set(evaluators[k].run(loader).metrics) for k in ("val", "final"))
    assert val == {*METRIC_NAMES, *(f"mse_f{f}" for f in FREQS), "mse_worst"}
    assert final == {*METRIC_NAMES, *(f"{m}_f{f}" for m in METRIC_NAMES for f in FREQS), "mse_worst"}


def _probed_run(folder, monkeypatch, tmp_path, overrides=(), epochs=2, user=()):
    """Train with a probe before each ``HANDLER_ORDER`` entry; returns (setup, records).

    A record is ``(event, count, "before <entry>" or "after all", snapshot)``. ``user``: more
    ``fn(trainer, evaluator, cfg)``, attached as the user's handlers are (``setup(attach=...)``).
    """
    records = []

    def probe(label):
        def attach(r):
            def snapshot(engine):
                last = r.out.checkpoints.get("last")
                return {
                    "should_terminate": r.trainer.should_terminate,
                    "timer_running": r.out.timer.running if r.out.timer else None,
                    "history_epochs": [e["epoch"] for e in r.out.history.epochs],
                    "last_file": str(last.last_checkpoint) if last and last.last_checkpoint else None,
                    "best_score": r.out.stopper.best_score if r.out.stopper else None,
                }

            r.trainer.add_event_handler(
                Events.ITERATION_COMPLETED,
                lambda e: records.append(("iteration", e.state.iteration, label, snapshot(e))),
            )

            r.trainer.add_event_handler(
                Events.EPOCH_COMPLETED, lambda e: records.append(("epoch", e.state.epoch, label, snapshot(e)))
            )
            r.val.add_event_handler(
                Events.COMPLETED, lambda e: records.append(("validation", r.trainer.state.epoch, label, snapshot(e)))
            )

        return attach

    order = []
    for entry in trainers.HANDLER_ORDER:
        order += [probe(f"before {entry.__name__}"), entry]
    monkeypatch.setattr(trainers, "HANDLER_ORDER", (*order, probe("after all")))
    cfg = _cfg(folder, "handlers.early_stopping.enabled=true", *overrides)
    s = setup(cfg, tmp_path / "run", attach=user)
    try:
        s.trainer.run(s.train_data, max_epochs=epochs)
    finally:
        s.handlers.interrupt.close()
    return s, records


def _seen(records, event, count, key):
    """label -> the snapshot value of ``key`` at that probe, for one event."""
    return {label: snap[key] for ev, n, label, snap in records if ev == event and n == count}


def test_the_probes_fire_in_handler_order_on_each_event(folder, monkeypatch, tmp_path):
    labels = [f"before {e.__name__}" for e in trainers.HANDLER_ORDER] + ["after all"]
    _, records = _probed_run(folder, monkeypatch, tmp_path)
    for event, count in (("iteration", 1), ("epoch", 1), ("validation", 2)):
        assert [label for ev, n, label, _ in records if ev == event and n == count] == labels


def test_terminate_on_nan_comes_first_on_every_iteration(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("NAN_AT", "3")
    s, records = _probed_run(folder, monkeypatch, tmp_path, ["handlers.extra=[handler_helpers:nan_batch]"])
    assert s.trainer.state.iteration == 3
    seen = _seen(records, "iteration", 3, "should_terminate")
    assert seen.pop("before _nan_stop") is False
    assert set(seen.values()) == {True}  # every later handler of the NaN iteration sees the stop
    assert not any(ev == "epoch" and n == 2 for ev, n, _, _ in records)  # no validation, no checkpoint after it


def test_the_epoch_timer_is_paused_before_validation_and_checkpoints(folder, monkeypatch, tmp_path):
    _, records = _probed_run(folder, monkeypatch, tmp_path)
    seen = _seen(records, "epoch", 1, "timer_running")
    assert seen.pop("before _nan_stop") is True and seen.pop("before _epoch_metrics") is True
    assert set(seen.values()) == {False}


def test_validation_and_early_stopping_come_before_the_checkpoints_which_hold_this_epoch(folder, monkeypatch, tmp_path):
    s, records = _probed_run(folder, monkeypatch, tmp_path)
    history = _seen(records, "epoch", 2, "history_epochs")
    assert history["before _validation"] == [1] and history["before _checkpoints"] == [1, 2]
    files = _seen(records, "epoch", 2, "last_file")
    assert files["before _checkpoints"].endswith("last_checkpoint_2.pt")  # epoch 1's file
    assert files["before _loggers"].endswith("last_checkpoint_4.pt") and files["after all"] == files["before _loggers"]
    last = torch.load(files["after all"], weights_only=True)
    assert [e["epoch"] for e in last["history"]["epochs"]] == [1, 2]
    assert last["early_stopping"] == s.handlers.stopper.state_dict()  # this epoch's count
    best = _seen(records, "validation", 1, "best_score")
    assert best["before _early_stopping"] is None and best["before _validation"] is not None


def test_the_user_handlers_come_after_the_built_in_ones_and_the_interrupt_check_last(folder, monkeypatch, tmp_path):
    seen = {}

    def stop_after_epoch_1(trainer, evaluator, cfg):
        @trainer.on(Events.EPOCH_COMPLETED(once=1))
        def _ask(engine):
            last = tmp_path / "run" / "checkpoints" / "last_checkpoint_2.pt"
            seen["history"] = torch.load(last)["history"]["epochs"] if last.exists() else None
            engine.state.interrupt_requested = True  # as a Ctrl-C during the epoch's validation would

    s, _ = _probed_run(folder, monkeypatch, tmp_path, epochs=3, user=[stop_after_epoch_1])
    assert [e["epoch"] for e in seen["history"]] == [1]  # the user's handler finds this epoch's checkpoint
    # and a stop asked for there is taken at this epoch's end, not one iteration later
    assert (s.trainer.state.epoch, s.trainer.state.iteration) == (1, 2)


def test_model_init_chrono_sets_every_units_memory_from_the_config(folder):
    default = _cfg(folder)
    chrono = _cfg(folder, "model.init=chrono", "model.chrono_t_max=50")
    torch.manual_seed(0)
    plain = setup_model(default)
    torch.manual_seed(0)
    model = setup_model(chrono)
    h = model.hidden_size
    lstm = model.layers[0]
    forget = torch.sigmoid(lstm.bias_ih_l0[h : 2 * h] + lstm.bias_hh_l0[h : 2 * h]).detach().double()
    steps = 1 / (1 - forget)  # 1 + u, u ~ U(1, t_max - 1)
    assert steps.min() >= 2 - 1e-4 and steps.max() <= 50 + 1e-3
    # torch's default keeps forget gates near 0.5 (about 2 steps); the weights are the same draws
    plain_forget = torch.sigmoid(plain.layers[0].bias_ih_l0[h : 2 * h] + plain.layers[0].bias_hh_l0[h : 2 * h])
    assert (1 / (1 - plain_forget)).max() < 3
    assert torch.equal(lstm.weight_hh_l0, plain.layers[0].weight_hh_l0)
