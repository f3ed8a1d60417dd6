"""preflight: values this machine cannot run are refused with exit 2 before anything is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from handler_helpers import CONFIG, TINY, run_cli, unwritable_folder

from ignite_lstm.app.config.schema import ConfigError, load_config
from ignite_lstm.app.run.preflight import device_problem, estimate_memory, preflight

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = not torch.cuda.is_available()


def _refused(tmp_path: Path, capsys, *overrides: str) -> str:
    """``run.py base.yaml TINY overrides`` in-process: exit 2, nothing written; returns stderr."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    args = [CONFIG, *TINY, f"data.dir={data}", f"output_dir={runs}", *overrides]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid configuration"), err
    assert not runs.exists(), "a run folder was created"
    assert not data.exists(), "data files were written"
    return err


@pytest.mark.parametrize(
    "override, message",
    [
        ("device=banana", "device: 'banana' is not a torch device: choose one of 'auto', 'cpu'"),
        ("device=cuda:99", "device: 'cuda:99' is not available: "),
        pytest.param(
            "device=cuda",
            "device: 'cuda' is not available: torch.cuda.is_available() is False "
            "(a CPU-only torch build, or no GPU or driver); choose one of 'auto', 'cpu'",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this torch build has CUDA"),
        ),
        (
            "handlers.extra=[no_such_module_xyz.hooks:attach]",
            "handlers.extra[0]: 'no_such_module_xyz.hooks:attach' cannot be imported: ModuleNotFoundError: "
            "No module named 'no_such_module_xyz'",
        ),
        (
            "handlers.extra=[handler_helpers:no_such_function]",
            "handlers.extra[0]: 'handler_helpers:no_such_function': module 'handler_helpers' has no attribute "
            "'no_such_function'",
        ),
        ("handlers.extra=[handler_helpers:CONFIG]", "handlers.extra[0]: 'handler_helpers:CONFIG' is not callable"),
        ("seed=99999999999999999999", "seed: 99999999999999999999 is out of range: must be < 4294967296"),
        ("data.duration=0.0001", "data.duration: 0.0001 at data.fs=1000.0 gives 0 sample(s) per sequence"),
    ],
)
def test_a_value_this_machine_cannot_run_exits_2_naming_it(override, message, tmp_path, capsys):
    assert f"  - {message}" in _refused(tmp_path, capsys, override)


def test_a_model_too_large_for_memory_is_refused_with_the_estimate(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "model.hidden_size=100000000", "model.num_layers=1", "model.dropout=0.0")
    found = re.search(
        r"  - model\.hidden_size=100000000: the run needs about ([0-9.e+]+) GiB of memory "
        r"\(parameters, gradients and adam state ([0-9.e+]+) GiB; .*\); this machine has "
        r"[0-9.]+ [GM]iB available",
        err,
    )
    assert found, err
    # 4 H (H + ...) = 4e16 weights, each held 5 times in float32: the weights, their gradients,
    # the native kernel's packed copy and adam's two moments
    assert float(found.group(2)) == pytest.approx(4e16 * 4 * 5 / 2**30, rel=1e-3)


def test_data_too_large_for_memory_names_the_split(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "data.train.mixtures=1000000000000")
    assert "  - data.train.mixtures=1000000000000, data.duration=0.2: the run needs about " in err
    assert "the data splits (4000000000008 sequences x 200 steps)" in err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("a regular file, not a folder\n")
    err = _refused(
        tmp_path,
        capsys,
        "handlers.extra=[no_such_module_xyz:f]",
        "model.hidden_size=100000000",
        "model.num_layers=1",
        "model.dropout=0.0",
        f"data.dir={afile}",
    )  # the last data.dir wins
    assert "(3 problems)" in err
    for key in ("handlers.extra[0]: ", "data.dir: ", "model.hidden_size=100000000: "):
        assert f"  - {key}" in err, key


def test_unwritable_data_dir_is_refused_naming_the_key(tmp_path, capsys):
    data_dir = unwritable_folder(tmp_path, "data")
    runs = tmp_path / "runs"
    try:
        assert run_cli([CONFIG, *TINY, f"data.dir={data_dir}", f"output_dir={runs}"]) == 2
    finally:
        (tmp_path / "locked").chmod(0o700)
    err = capsys.readouterr().err
    assert re.search(rf"  - data\.dir: '{re.escape(str(data_dir))}' (is not writable|cannot be created)", err), err
    assert not runs.exists() and not data_dir.exists()


def test_data_dir_that_is_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "data"
    afile.write_text("a regular file, not a folder\n")
    runs = tmp_path / "runs"
    assert run_cli([CONFIG, *TINY, f"data.dir={afile}", f"output_dir={runs}"]) == 2
    assert f"  - data.dir: '{afile}' is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "a regular file, not a folder\n" and not runs.exists()


@pytest.mark.parametrize("name", ["base.yaml", "quick.yaml", "assignment.yaml", "stream.yaml"])
def test_the_presets_pass_and_need_little_memory(name):
    cfg = load_config(REPO / "configs" / name)
    preflight(cfg)
    assert estimate_memory(cfg)["peak"] < 2**30  # any machine that runs PyTorch has a GiB


def test_tiny_test_config_passes():
    preflight(load_config(CONFIG, TINY))


def test_device_problem_accepts_what_this_build_has():
    assert device_problem("auto") is None and device_problem("cpu") is None
    if NO_CUDA:
        assert device_problem("cuda").startswith("is not available: torch.cuda.is_available() is False")
    else:
        assert device_problem("cuda") is None and device_problem("cuda:0") is None


def test_preflight_raises_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("device: 'gpu' is not a torch device: choose one of 'auto'")):
        preflight(load_config(CONFIG, [*TINY, "device=gpu"]))


def test_a_curriculum_whose_window_follows_L_is_estimated_at_its_last_stage():
    # base.yaml trains windows of 250 steps; full-window BPTT in the curriculum's last stage keeps T = 10,000
    curriculum = ["train.curriculum.enabled=true", "train.curriculum.start=250", "train.curriculum.epochs_per_stage=1"]
    fixed = estimate_memory(load_config(REPO / "configs" / "base.yaml", curriculum))["parts"]["training"]
    follow = estimate_memory(
        load_config(REPO / "configs" / "base.yaml", [*curriculum, "train.curriculum.tbptt=follow"])
    )
    assert fixed[2]["train.tbptt_steps"] == 250 and "x 250 steps" in fixed[1]
    assert follow["parts"]["training"][2]["train.curriculum.tbptt"] == 10000
    assert follow["training"] > 30 * fixed[0]  # the window's share grows T / K = 40 times
