"""``ignite-lstm matrix`` and ``ignite-lstm check``: real child processes training the tiny config.

The command runs in this process (``matrix.main``); each run is a real ``python -m ignite_lstm.app``
child. Four trainings in all, about 3 s each, all as an AVX2-only processor (``--isa avx2``: the
environment under test; native is the same code with other variables): the module's matrix (seeds
0 and 1, so that its rows differ), then that folder moved, one run deleted, and the matrix of 0
(a bad value: that child fails), 1 and 2 threads, which trains the deleted run again and the
2-thread one; every other call finds its runs finished and trains nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ignite_lstm.app import check, matrix

ARGS = ["--seeds", "0", "1", "--threads", "1", "--isa", "avx2", "--jobs", "2"]
RUNS = ["quick-s0-t1-avx2", "quick-s1-t1-avx2"]
FREQS = ["1", "3", "5", "7"]  # the app's default frequencies


def _call(module, argv: list) -> tuple[int, str]:
    """``module.main(argv)`` in this process: (exit status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = module.main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def made(tmp_path_factory, make_quick_config):
    """One matrix of the tiny config (one epoch): (config and shared overrides, matrix folder, exit status, stdout)."""
    root = tmp_path_factory.mktemp("matrix")
    config = [make_quick_config(root), "train.epochs=1", f"data.dir={root / 'data'}"]
    out = root / "out"
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out])
    return config, out, code, stdout


@pytest.fixture(scope="module")
def remade(made, tmp_path_factory):
    """``made``'s folder moved elsewhere, its seed-0 run deleted, then the matrix of seed 0 on threads 0 (a bad
    value: that child fails), 1 and 2, three at a time: (matrix folder, exit status, stdout, seed 1's mtime)."""
    config, made_out, _, _ = made
    out = tmp_path_factory.mktemp("moved") / "out"
    shutil.copytree(made_out, out)  # a matrix folder moved elsewhere still holds its runs
    shutil.rmtree(out / "runs" / RUNS[0])
    kept = (out / "runs" / RUNS[1] / "metrics.json").stat().st_mtime_ns
    argv = [*config, "--seeds", "0", "--threads", "0", "1", "2", "--isa", "avx2", "--jobs", "3", "--out", out]
    code, stdout = _call(matrix, argv)
    return out, code, stdout, kept


def _table_lines(stdout: str) -> list[str]:
    """The table's lines (the header's date and command left out)."""
    return [line for line in stdout.splitlines() if line.startswith("|")]


def _md_rows(stdout: str) -> list[dict[str, str]]:
    lines = _table_lines(stdout)
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_the_table_holds_each_runs_metrics_then_the_worst_and_the_mean(made):
    _, out, code, stdout = made
    assert code == 0, stdout
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["header"]["processor"] and saved["header"]["avx512f"] in ("yes", "no", "unknown")
    assert "ignite-lstm matrix" in saved["header"]["command"] and "- torch " in stdout
    runs = [out / "runs" / name for name in RUNS]
    assert [r["run_dir"] for r in saved["rows"]] == [str(r) for r in runs]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    histories = [json.loads((r / "history.json").read_text())["epochs"] for r in runs]
    columns = {
        "test MSE": [m["test/mse"] for m in metrics],
        **{f"test {f} Hz": [m[f"test/mse_f{f}"] for m in metrics] for f in FREQS},
        "val MSE": [m["val/mse"] for m in metrics],
        "epochs": [len(h) for h in histories],
        "train min": [sum(e["time/epoch_seconds"] for e in h) / 60 for h in histories],
    }
    assert columns["test MSE"][0] != columns["test MSE"][1]  # two seeds: the worst and the mean tell apart
    key = {"test MSE": "test_mse", "val MSE": "val_mse", "epochs": "epochs", "train min": "train_minutes"}

    def value(row: dict, column: str) -> float:
        return row["test_mse_f"][column.split()[1]] if column.endswith("Hz") else row[key[column]]

    rows = _md_rows(stdout)
    assert [(r["seed"], r["threads"], r["isa"]) for r in rows[:2]] == [("0", "1", "avx2"), ("1", "1", "avx2")]
    assert [r["seed"] for r in rows[2:]] == ["**worst**", "**mean**"]
    for column, values in columns.items():
        digits = ".2f" if column == "train min" else ".6g"
        worst, mean = float(np.max(values)), float(np.mean(values))
        for i in range(2):
            assert value(saved["rows"][i], column) == values[i], column
            assert rows[i][column] == f"{values[i]:{digits}}", column
        assert value(saved["worst"], column) == pytest.approx(worst, rel=1e-12), column
        assert value(saved["mean"], column) == pytest.approx(mean, rel=1e-12), column
        assert rows[2][column] == f"{worst:{digits}}" and rows[3][column] == f"{mean:{digits}}", column
    assert (out / "matrix.md").read_text().count("\n| ") == 5  # head, 2 runs, worst, mean


def test_an_avx2_run_had_the_avx2_environment_and_kernel(made):
    _, out, _, _ = made
    for name in RUNS:
        log = (out / "runs" / name / "train.log").read_text()
        assert "LSTM kernel: native (AVX2/FMA" in log
        assert "IGNITE_LSTM_ISA=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2" in log
        assert "Epoch 1/1" in (out / "runs" / f"{name}.log").read_text()  # the console output, beside the folder


def test_a_native_child_gets_no_avx2_variables_and_this_package(monkeypatch):
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")  # exported in the user's shell: not for native rows
    env = matrix._child_env("native")
    assert env["IGNITE_LSTM_ISA"] == "native" and "MKL_ENABLE_INSTRUCTIONS" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(matrix.__file__).resolve().parents[2])


def test_the_same_command_again_trains_nothing_and_prints_the_same_table(made):
    config, out, _, stdout = made
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    code, again = _call(matrix, [*config, *ARGS, "--out", out])
    assert code == 0
    assert "2 of 2 runs already finished" in again and "training" not in again
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before
    assert _table_lines(again) == _table_lines(stdout)


def test_a_deleted_run_is_trained_again_and_a_failing_child_is_reported(remade):
    out, code, stdout, kept = remade
    assert code == 1
    assert "training quick-s0-t1-avx2 " in stdout and "training quick-s0-t0-avx2 " in stdout
    rows = {r["name"]: r for r in json.loads((out / "matrix.json").read_text())["rows"]}
    assert rows["quick-s0-t1-avx2"]["status"] == rows["quick-s0-t2-avx2"]["status"] == "done"
    assert (out / "runs" / RUNS[0] / "metrics.json").is_file()
    failed = rows["quick-s0-t0-avx2"]
    log = out / "runs" / "quick-s0-t0-avx2.log"
    assert failed["status"] == "failed" and failed["message"] == f"failed (exit 2), log {log}"
    assert "error: Invalid configuration" in log.read_text() and "threads" in log.read_text()
    assert f"| 0 | 0 | avx2 | {' | '.join(['-'] * 8)} | failed (exit 2), log {log} |" in stdout
    assert len({line.count("|") for line in _table_lines(stdout)}) == 1  # a failed row has every cell
    assert "2 of 3 runs |" in stdout  # the worst and mean rows count the finished runs only
    assert (out / "runs" / RUNS[1] / "metrics.json").stat().st_mtime_ns == kept  # not asked for


def test_thresholds_mark_each_row_and_decide_the_exit_status(made):
    config, out, _, _ = made
    saved = json.loads((out / "matrix.json").read_text())
    mse = sorted(r["test_mse"] for r in saved["rows"])
    worst_freq = max(saved["worst"]["test_mse_f"].values())
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out, "--max-mean", mse[1], "--max-freq", worst_freq])
    assert code == 0 and [r["pass"] for r in _md_rows(stdout)] == ["pass"] * 4
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out, "--max-mean", (mse[0] + mse[1]) / 2])
    verdicts = {r["test MSE"]: r["pass"] for r in _md_rows(stdout)[:2]}
    assert code == 1 and verdicts == {f"{mse[0]:.6g}": "pass", f"{mse[1]:.6g}": "fail"}
    assert "- pass: mean test MSE <= " in stdout and "training" not in stdout
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out, "--max-freq", worst_freq * 0.999999])
    assert code == 1 and "fail" in [r["pass"] for r in _md_rows(stdout)[:2]]


def test_check_prints_1_and_2_threads_side_by_side(remade, made, tmp_path):
    out = tmp_path / "check"
    shutil.copytree(remade[0], out)  # both runs are there: check trains nothing
    code, stdout = _call(check, [*made[0], "--isa", "avx2", "--out", out])
    assert code == 0, stdout
    assert "training" not in stdout
    lines = stdout.splitlines()
    head = next(line for line in lines if "max-min" in line)
    assert head.split() == ["1", "thread", "avx2", "2", "threads", "avx2", "max-min"]
    values = [json.loads((out / "runs" / f"quick-s0-t{t}-avx2" / "metrics.json").read_text()) for t in (1, 2)]
    mse = [v["test/mse"] for v in values]
    test_line = next(line for line in lines if line.startswith("test MSE"))
    assert test_line.split()[2:] == [f"{mse[0]:.6g}", f"{mse[1]:.6g}", f"{max(mse) - min(mse):.6g}"]
    worst, freq, t = max(
        ((v[f"test/mse_f{f}"], f, t) for v, t in zip(values, (1, 2)) for f in FREQS), key=lambda x: x[0]
    )
    assert f"Worst frequency: {freq} Hz, test MSE {worst:.6g} ({t} thread{'s' * (t > 1)} avx2)" in stdout
