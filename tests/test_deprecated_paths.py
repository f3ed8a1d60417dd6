"""The flat layout's module paths and ``python -m`` entries keep working for a release, with a warning;
files written before the split still load."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ignite_lstm._internal.deprecated import COMMANDS, OLD_MODULES

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_split_run"
KEPT = ("models", "data", "metrics", "handlers")  # old names that are packages now


def _import_fresh(name: str) -> tuple[object, list[warnings.WarningMessage]]:
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(set(OLD_MODULES) - set(KEPT)))
def test_an_old_module_path_imports_warns_and_names_the_new_one(old):
    primary, groups = OLD_MODULES[old]
    module, caught = _import_fresh(f"ignite_lstm.{old}")
    assert [str(w.message) for w in caught] == [
        f"ignite_lstm.{old} is deprecated and will be removed in ignite_lstm 0.3.0; use ignite_lstm.{primary} instead."
    ]
    for home, names in groups.items():
        for name in names.split():
            new = importlib.import_module(f"ignite_lstm.{home}")
            expected = new if home.rsplit(".", 1)[-1] == name else getattr(new, name)
            assert getattr(module, name) is expected, (old, name, home)


@pytest.mark.parametrize("old", KEPT)
def test_a_name_that_left_a_kept_package_warns_and_resolves(old):
    primary, groups = OLD_MODULES[old]
    moved = [
        (home, name)
        for home, names in groups.items()
        for name in names.split()
        if not home.startswith(f"{old}.")
        and home != old
        and not hasattr(importlib.import_module(f"ignite_lstm.{old}"), f"_probe_{name}")
    ]
    package = importlib.import_module(f"ignite_lstm.{old}")
    for home, name in moved:
        if name in package.__dict__ or name in getattr(package, "__all__", ()):
            continue  # still exported by the package itself
        with pytest.warns(DeprecationWarning, match=rf"ignite_lstm\.{old}\.{name} is deprecated.*ignite_lstm\.{home}"):
            value = getattr(package, name)
        assert value is getattr(importlib.import_module(f"ignite_lstm.{home}"), name)
    with pytest.raises(AttributeError, match="has no attribute 'never_there'"):
        package.never_there  # noqa: B018


def test_the_old_model_import_still_builds_the_task_model():
    with pytest.warns(DeprecationWarning, match="ignite_lstm.models.setup_model is deprecated"):
        from ignite_lstm.models import setup_model
    from ignite_lstm.app.task.model import setup_model as new

    assert setup_model is new


@pytest.mark.parametrize("old", sorted(set(COMMANDS) & set(OLD_MODULES)))
def test_python_m_of_an_old_command_path_runs_the_command(old):
    result = subprocess.run(
        [sys.executable, "-m", f"ignite_lstm.{old}", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: ignite-lstm {old}" in result.stdout
    assert f"python -m ignite_lstm.{old} is deprecated; use python -m ignite_lstm.{COMMANDS[old]}" in result.stderr


def test_a_model_file_written_before_the_split_loads():
    from ignite_lstm import StatefulLSTM, load_model

    model, rest = load_model(FIXTURE / "model.pt")
    saved = torch.load(FIXTURE / "model.pt", weights_only=True)
    assert isinstance(model, StatefulLSTM) and model.config == saved["model_args"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["model"][name])


def test_a_training_checkpoint_written_before_the_split_resumes(tmp_path):
    """The old run continues for one epoch from its last checkpoint with today's command line."""
    from ignite_lstm.app.cli import main

    run = tmp_path / "runs" / "old"
    shutil.copytree(FIXTURE, run)
    (run / "metrics.json").unlink()  # a run still to finish: train.epochs=3 below
    status = main(
        [
            str(run / "config.yaml"),
            f"output_dir={tmp_path / 'runs'}",
            "name=old",
            "train.epochs=3",
            f"data.dir={tmp_path / 'data'}",
            f"resume={run / 'checkpoints' / 'last_checkpoint_2.pt'}",
        ]
    )
    assert status == 0
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]][-1] == 3


def test_python_m_ignite_lstm_serve_is_the_serve_command_without_a_warning():
    result = subprocess.run(
        [sys.executable, "-m", "ignite_lstm.serve", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ignite-lstm serve") and "deprecated" not in result.stderr
