"""Every script in ``examples/`` runs as a real subprocess, exits 0 and prints what it promises.

The scripts are started together (one module-scoped fixture) so that their start-up
(importing torch and Ignite) overlaps; each test then checks one of them.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TIMEOUT_S = 240  # generous: the suite shares two cores; each script alone takes a few seconds
NAMES = [
    "custom_window_handler",
    "gru_other_task",
    "plain_python",
    "attach_by_hand",
    "variable_lengths",
    "resume_by_hand",
    "co2_stream",
    "macro_forecast",
    "sequence_classification",
    "sequence_tagging",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """name -> (finished process, its scratch folder); all scripts run concurrently."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")  # tiny models: one thread avoids contention
    started = {}
    for name in NAMES:
        scratch = tmp_path_factory.mktemp(name)
        args = [sys.executable, str(EXAMPLES / f"{name}.py")]
        if name in ("attach_by_hand", "variable_lengths", "resume_by_hand"):
            args.append(str(scratch / "checkpoints"))
        elif name in ("co2_stream", "macro_forecast"):
            args.append(str(scratch))
        started[name] = (
            subprocess.Popen(args, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            args,
            scratch,
        )
    finished = {}
    try:
        for name, (proc, args, scratch) in started.items():
            out, err = proc.communicate(timeout=TIMEOUT_S)
            finished[name] = (subprocess.CompletedProcess(args, proc.returncode, out, err), scratch)
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return finished


def _ok(runs, name: str) -> subprocess.CompletedProcess:
    result, _ = runs[name]
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_every_example_is_tested_and_has_a_docstring():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(NAMES)
    for name in NAMES:
        doc = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
        assert doc and f"python examples/{name}.py" in doc, (
            f"{name}: the docstring says what it shows and how to run it"
        )


def test_custom_window_handler_is_loaded_from_the_config_and_fires_every_3_windows(runs):
    result = _ok(runs, "custom_window_handler")
    # 3 epochs x 1 batch x 4 windows of 50 steps = 12 windows
    assert "WindowRecorder: every 3 windows (window length 50): windows [3, 6, 9, 12]" in result.stderr
    assert len(re.findall(r"custom_window_handler: epoch \d: recorded window loss", result.stderr)) == 3
    assert "Run folder:" in result.stdout  # the CLI's final summary: the whole run went through


def test_gru_other_task_learns_and_fused_equals_stepwise(runs):
    result = _ok(runs, "gru_other_task")
    assert "execution path: fused" in result.stdout
    m = re.search(r"GRU val mse: fused ([\d.]+), stepwise ([\d.]+) \(untrained ([\d.]+)\)", result.stdout)
    assert m, result.stdout
    fused, stepwise, untrained = map(float, m.groups())
    assert abs(fused - stepwise) <= 1e-5  # printed with 5 decimals; float32 paths differ by ~1e-7
    assert fused < 0.1 * untrained
    assert "windows seen: 160 (every 50th: [50, 100, 150])" in result.stdout  # 10 epochs x 4 batches x 4 windows


def test_plain_python_takes_the_fused_detached_path(runs):
    result = _ok(runs, "plain_python")
    assert "one sequence: x (300, 5), y (300, 1)" in result.stdout
    assert "execution path: fused-detached" in result.stdout
    assert "trained 30 epochs, 18000 windows (one per time step)" in result.stdout  # 30 x 2 batches x 300 steps
    assert re.search(r"epoch 30 loss [\d.]+ val mse [\d.]+ snr -?[\d.]+ dB  mse_f1=", result.stdout)


def test_attach_by_hand_writes_a_best_checkpoint_that_reloads(runs):
    result = _ok(runs, "attach_by_hand")
    _, scratch = runs["attach_by_hand"]
    files = sorted((scratch / "checkpoints").glob("best_checkpoint_*_neg_val_mse=*.pt"))
    assert len(files) == 1  # n_saved=1
    m = re.search(r"best checkpoint: (\S+); best val mse ([\d.]+), reloaded from the file ([\d.]+)", result.stdout)
    assert m, result.stdout
    assert m.group(1) == files[0].name
    assert m.group(2) == m.group(3)
    assert re.search(r"(stopped early|ran all epochs) at epoch \d+ of 60", result.stdout)


def test_variable_lengths_trains_masked_batches_with_a_custom_loss_and_metric(runs):
    result = _ok(runs, "variable_lengths")
    _, scratch = runs["variable_lengths"]
    m = re.search(r"validation batch: \(8, (\d+), 1\) padded, lengths \[([\d, ]+)\]", result.stdout)
    assert m, result.stdout
    lengths = [int(n) for n in m.group(2).split(", ")]
    assert max(lengths) == int(m.group(1)) and min(lengths) < max(lengths)  # really padded
    assert "execution path: fused-detached (loss LogCosh)" in result.stdout  # the user's loss on the fast path
    files = sorted((scratch / "checkpoints").glob("best_model_*_neg_max_abs_error=*.pt"))
    assert len(files) == 1
    m = re.search(
        r"best checkpoint: (\S+); best val max_abs_error ([\d.]+), reloaded from the file ([\d.]+) "
        r"\(first epoch ([\d.]+)\)",
        result.stdout,
    )
    assert m, result.stdout
    assert m.group(1) == files[0].name and m.group(2) == m.group(3)
    assert float(m.group(2)) < float(m.group(4))  # it learned
    assert re.search(r"(stopped early|ran all epochs) at epoch \d+ of 40; \d+ windows", result.stdout)


def test_resume_by_hand_continues_a_stopped_run_to_the_run_left_alone(runs):
    result = _ok(runs, "resume_by_hand")
    _, scratch = runs["resume_by_hand"]
    out = result.stdout
    assert "stopped at iteration 8; saved interrupted_checkpoint_8.pt" in out
    assert "resumed from interrupted_checkpoint_8.pt: epoch 2, iteration 8 (2 of 3 batches of epoch 3 done)" in out
    resumed = re.search(r"val mse, stopped and resumed: ([\d. ]+)\n", out).group(1).split()
    alone = re.search(r"val mse, left alone: +([\d. ]+)\n", out).group(1).split()
    assert len(resumed) == 5 and resumed == alone
    m = re.search(r"best: (\S+) \(left alone: (\S+)\)", out)
    assert m and m.group(1) == m.group(2)
    assert "the resumed run equals the run left alone: True" in out
    stopped = sorted(p.name for p in (scratch / "checkpoints" / "stopped").iterdir())
    assert stopped == sorted(
        [m.group(1), "epoch_checkpoint_12.pt", "last_checkpoint_15.pt"]
    )  # no stale file of the first start, nor the interrupted file once the resumed run saved past it


def test_co2_stream_forecasts_a_real_series_in_stream_mode(runs):
    pytest.importorskip("statsmodels", reason="the example reads statsmodels' CO2 record (requirements.txt has it)")
    result = _ok(runs, "co2_stream")
    out = result.stdout
    assert "trained 60 epochs of 9 chunks (4 lanes x 52 weeks), carry_state: True" in out
    assert "test years: 398 weeks; chunk by chunk == in one piece: True" in out  # stream evaluation is exact
    # the test years start from the state at the last training week, not from zeros (issue 26: set_state was lost)
    assert (
        "from the state at the last training week: equals the whole record run by hand: True; "
        "differs from a zero start: True" in out
    )
    m = re.search(r"lstm ([\d.]+), persistence ([\d.]+), seasonal naive ([\d.]+)", out)
    assert m, out
    lstm, persistence = float(m.group(1)), float(m.group(2))
    assert lstm < 0.25 * persistence  # measured 0.518 against 10.319 ppm^2: the state knows the season
    _, scratch = runs["co2_stream"]
    assert (scratch / "co2_forecast.png").stat().st_size > 10_000  # a real figure


def test_macro_forecast_runs_the_forecasting_workflow_on_a_real_multivariate_series(runs):
    pytest.importorskip("statsmodels", reason="the example reads statsmodels' macrodata (requirements.txt has it)")
    result = _ok(runs, "macro_forecast")
    out = result.stdout
    assert re.search(r"trained \d+ epochs of 2 lanes x 16 quarters \(early stopping, patience 30\)", out), out
    # the test quarters continue the state of the whole history before them (WarmStart), not zeros
    assert "test quarters: 35; the forecast equals the whole record run by hand: True" in out
    assert re.search(r"per target \(scaled\): mse_infl [\d.]+, mse_unemp [\d.]+", out)  # channel_metrics
    mse = {}
    for name in ("infl", "unemp"):
        m = re.search(rf"next quarter's {name}: lstm ([\d.]+), persistence ([\d.]+), linear ([\d.]+)", out)
        assert m, out
        mse[name] = [float(v) for v in m.groups()]
    assert mse["unemp"][0] < mse["unemp"][1]  # measured 0.101 against 0.160 for no change
    _, scratch = runs["macro_forecast"]
    assert (scratch / "macro_forecast.png").stat().st_size > 10_000  # a real figure


def test_sequence_classification_reaches_the_published_range_on_japanese_vowels(runs):
    if importlib.util.find_spec("sktime") is None:
        pytest.skip("the example reads JapaneseVowels from sktime (requirements.txt and the examples extra have it)")
    out = _ok(runs, "sequence_classification").stdout
    assert "JapaneseVowels: 270 train, 370 test, 7-29 frames, 12 channels" in out
    m = re.search(r"test accuracy ([\d.]+) after 20 epochs", out)
    assert m, out
    assert 0.92 <= float(m.group(1)) <= 1.0  # measured 0.962; published 0.92 (1-NN ED) to about 0.99


def test_sequence_tagging_follows_the_automaton_at_every_step(runs):
    out = _ok(runs, "sequence_tagging").stdout
    m = re.search(r"test accuracy ([\d.]+) over (\d+) tagged steps after 12 epochs", out)
    assert m, out
    assert float(m.group(1)) >= 0.99  # measured 1.000; chance is about 0.33
