"""Checkpoint files: best/last/every-N savers, failed writes, files that load_model reads, any metric with a mode."""

import pytest
import torch
from handler_helpers import scripted_evaluator
from ignite.engine import Engine

from ignite_lstm import attach_checkpoints, load_model
from ignite_lstm.checkpoint.files import find_checkpoint
from ignite_lstm.checkpoint.savers import FixedState
from ignite_lstm.models.lstm import StatefulLSTM


def _marked_model_trainer():
    """One iteration per epoch; the model's output bias equals the epoch, to identify saved weights."""
    model = StatefulLSTM(input_size=2, hidden_size=4)

    def step(engine, batch):
        with torch.no_grad():
            model.head.bias.fill_(float(engine.state.epoch))

    return model, Engine(step)


@pytest.mark.parametrize(
    "monitor,best_epochs,label",
    [
        ("mse", [4, 2], "neg_val_mse"),  # lower is better: 0.2 (epoch 4), then 0.3 (epoch 2)
        ("snr", [5, 1], "val_snr"),  # higher is better: 0.6 (epoch 5), then 0.5 (epoch 1)
    ],
)
def test_best_last_and_every_n_checkpoints_keep_n_saved_each(tmp_path, monitor, best_epochs, label):
    model, trainer = _marked_model_trainer()
    evaluator = scripted_evaluator(trainer, monitor, [0.5, 0.3, 0.4, 0.2, 0.6])
    model_args = FixedState(model.config, "model arguments")
    to_save = {"model": model, "model_args": model_args, "trainer": trainer}
    checkpoints = attach_checkpoints(
        trainer,
        evaluator,
        to_save,
        {"model": model, "model_args": model_args},
        tmp_path,
        monitor=monitor,
        n_saved=2,
        every=2,
    )
    trainer.run([0], max_epochs=5)

    names = sorted(p.name for p in tmp_path.iterdir())
    best = sorted(n for n in names if n.startswith("best_"))
    assert [int(n.split("_")[2]) for n in best] == sorted(best_epochs)  # iteration == epoch here
    assert all(f"_{label}=" in n for n in best)
    assert [n for n in names if not n.startswith("best_")] == [
        "epoch_checkpoint_2.pt",
        "epoch_checkpoint_4.pt",
        "last_checkpoint_4.pt",
        "last_checkpoint_5.pt",
    ]
    top = checkpoints["best"].last_checkpoint
    assert int(top.name.split("_")[2]) == best_epochs[0]
    for name in best:  # the best files are model files for load_model, holding that epoch's weights
        loaded, rest = load_model(tmp_path / name)
        assert loaded.config == model.config and rest == {}
        assert loaded.head.bias.item() == int(name.split("_")[2])
    last = torch.load(tmp_path / "last_checkpoint_5.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 5 and last["model"]["head.bias"].item() == 5.0
    # each training file knows every saver's files, its own included, for a resumed run to keep counting
    assert [f for _, f in last["checkpointer"]["_saved"]] == ["last_checkpoint_4.pt", "last_checkpoint_5.pt"]
    assert sorted(f for _, f in last["checkpointer_best"]["_saved"]) == best
    assert [f for _, f in last["checkpointer_epoch"]["_saved"]] == ["epoch_checkpoint_2.pt", "epoch_checkpoint_4.pt"]


def test_the_readme_recipe_writes_files_that_load_model_reads(tmp_path):
    """``best_objects={"model": model}``, no ``model_args``: the model's own arguments are stored with it."""
    model, trainer = _marked_model_trainer()
    evaluator = scripted_evaluator(trainer, "mse", [0.5, 0.3, 0.4])
    to_save = {"model": model, "trainer": trainer}
    attach_checkpoints(trainer, evaluator, to_save, {"model": model}, tmp_path)
    trainer.run([0], max_epochs=3)
    assert to_save == {"model": model, "trainer": trainer}  # not modified
    (best,) = tmp_path.glob("best_*.pt")
    loaded, rest = load_model(best)
    assert loaded.config == model.config and rest == {} and loaded.head.bias.item() == 2.0
    loaded, rest = load_model(tmp_path / "last_checkpoint_3.pt")
    assert loaded.head.bias.item() == 3.0 and rest["trainer"]["iteration"] == 3


def test_a_model_without_config_is_saved_as_it_is(tmp_path):
    trainer = Engine(lambda e, b: None)
    evaluator = scripted_evaluator(trainer, "mse", [0.5])
    attach_checkpoints(trainer, evaluator, {"trainer": trainer}, {"model": torch.nn.Linear(2, 1)}, tmp_path)
    trainer.run([0], max_epochs=1)
    (best,) = tmp_path.glob("best_*.pt")
    assert set(torch.load(best, weights_only=True)) == {"weight", "bias"}  # Ignite's file of one object: its state


@pytest.mark.parametrize(
    "mode,best_epoch,label",
    [
        ("min", 2, "neg_val_loss"),
        ("max", 3, "val_loss"),
    ],
)
def test_any_metric_chooses_the_best_checkpoint_in_the_mode_given(tmp_path, mode, best_epoch, label):
    model, trainer = _marked_model_trainer()
    evaluator = scripted_evaluator(trainer, "loss", [0.5, 0.3, 0.7])  # a metric of the user's own
    checkpoints = attach_checkpoints(
        trainer, evaluator, {"model": model, "trainer": trainer}, {"model": model}, tmp_path, monitor="loss", mode=mode
    )
    trainer.run([0], max_epochs=3)
    top = checkpoints["best"].last_checkpoint
    assert top.name.startswith(f"best_checkpoint_{best_epoch}_{label}=")
    assert load_model(top)[0].head.bias.item() == best_epoch


def test_an_unknown_metric_without_mode_or_a_bad_mode_is_refused(tmp_path):
    model, trainer = _marked_model_trainer()
    evaluator = Engine(lambda e, b: None)
    with pytest.raises(
        ValueError,
        match=r"Unknown metric 'acuracy'; known: .* For another metric, pass mode='min' "
        r"\(lower is better\) or mode='max'\.",
    ):
        attach_checkpoints(trainer, evaluator, {"model": model}, {"model": model}, tmp_path, monitor="acuracy")
    with pytest.raises(ValueError, match=r"^Argument mode should be 'min', 'max' or None, got 'up'\.$"):
        attach_checkpoints(trainer, evaluator, {"model": model}, {"model": model}, tmp_path, monitor="mse", mode="up")
    assert list(tmp_path.iterdir()) == []


class _FailsAt:
    """A checkpoint entry that cannot be pickled from epoch ``epoch`` on (a failing write)."""

    def __init__(self, trainer: Engine, epoch: int) -> None:
        self.trainer, self.epoch = trainer, epoch

    def state_dict(self):
        return {"ok": 1} if self.trainer.state.epoch < self.epoch else {"bad": lambda: 0}

    def load_state_dict(self, state):
        pass


def test_a_failed_checkpoint_write_leaves_no_partial_file_and_keeps_the_previous_one(tmp_path):
    model, trainer = _marked_model_trainer()
    evaluator = scripted_evaluator(trainer, "mse", [0.5, 0.4])
    attach_checkpoints(
        trainer,
        evaluator,
        {"model": model, "trainer": trainer, "flaky": _FailsAt(trainer, 2)},
        {"model": model},
        tmp_path,
        n_saved=1,
    )
    with pytest.raises(Exception, match="pickle"):
        trainer.run([0], max_epochs=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if not n.startswith("best_")] == ["last_checkpoint_1.pt"]  # no last_checkpoint_2.pt
    assert torch.load(tmp_path / "last_checkpoint_1.pt", weights_only=True)["trainer"]["iteration"] == 1


def test_find_checkpoint_takes_the_training_file_of_the_highest_iteration(tmp_path):
    assert find_checkpoint(tmp_path / "missing") is None
    for name in (
        "best_checkpoint_9_neg_val_mse=-0.1000.pt",
        "last_checkpoint_4.pt",
        "epoch_checkpoint_6.pt",
        "interrupted_checkpoint_5.pt",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    assert find_checkpoint(tmp_path) == tmp_path / "epoch_checkpoint_6.pt"  # best_* holds the model only
    (tmp_path / "epoch_checkpoint_6.pt").unlink()
    assert find_checkpoint(tmp_path) == tmp_path / "interrupted_checkpoint_5.pt"
