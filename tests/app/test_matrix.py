"""``ignite-lstm matrix`` and ``ignite-lstm check``: real child processes training the tiny config.

The command runs in this process (``matrix.main``); each run is a real ``python -m ignite_lstm.app``
child. Four trainings in all, about 3 s each: the module's matrix (seed 0, 1 thread, native and
avx2, two at a time), a deleted run trained again (beside a child that fails), and check's
2-thread run; the other calls find their runs finished and train nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from ignite_lstm.app import check, matrix

ARGS = ["--seeds", "0", "--threads", "1", "--isa", "native", "avx2", "--jobs", "2"]


def _call(module, argv: list[str]) -> tuple[int, str]:
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
    assert "ignite-lstm matrix" in saved["header"]["command"] and "torch" in stdout
    runs = [out / "runs" / "quick-s0-t1", out / "runs" / "quick-s0-t1-avx2"]
    assert [r["run_dir"] for r in saved["rows"]] == [str(r) for r in runs]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    histories = [json.loads((r / "history.json").read_text())["epochs"] for r in runs]
    freqs = ["1", "3", "5", "7"]  # the app's default frequencies
    columns = {
        "test MSE": [m["test/mse"] for m in metrics],
        **{f"test {f} Hz": [m[f"test/mse_f{f}"] for m in metrics] for f in freqs},
        "val MSE": [m["val/mse"] for m in metrics],
        "epochs": [len(h) for h in histories],
        "train min": [sum(e["time/epoch_seconds"] for e in h) / 60 for h in histories],
    }
    key = {"test MSE": "test_mse", "val MSE": "val_mse", "epochs": "epochs", "train min": "train_minutes"}

    def value(row: dict, column: str) -> float:
        return row["test_mse_f"][column.split()[1]] if column.endswith("Hz") else row[key[column]]

    rows = _md_rows(stdout)
    assert [(r["seed"], r["threads"], r["isa"]) for r in rows[:2]] == [("0", "1", "native"), ("0", "1", "avx2")]
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
    avx2 = (out / "runs" / "quick-s0-t1-avx2" / "train.log").read_text()
    assert "LSTM kernel: native (AVX2/FMA" in avx2
    assert "IGNITE_LSTM_ISA=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2" in avx2
    native = (out / "runs" / "quick-s0-t1" / "train.log").read_text()
    assert "IGNITE_LSTM_ISA=native" in native and "MKL_ENABLE_INSTRUCTIONS" not in native
    if json.loads((out / "matrix.json").read_text())["header"]["avx512f"] == "yes":
        assert "LSTM kernel: native (AVX-512" in native
    assert "quick-s0-t1-avx2/train.log" not in avx2 and (out / "runs" / "quick-s0-t1-avx2.log").stat().st_size


def test_the_same_command_again_trains_nothing_and_prints_the_same_table(made):
    config, out, _, stdout = made
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    code, again = _call(matrix, [*config, *ARGS, "--out", out])
    assert code == 0
    assert "2 of 2 runs already finished" in again and "training" not in again
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before
    assert _table_lines(again) == _table_lines(stdout)


@pytest.fixture(scope="module")
def remade(made, tmp_path_factory):
    """``made``'s folder moved elsewhere, its 1-thread native run deleted, then the matrix of threads 0 (a bad
    value: that child fails), 1 and 2, three at a time: (matrix folder, exit status, stdout, the avx2 run's mtime).
    """
    config, made_out, _, _ = made
    out = tmp_path_factory.mktemp("moved") / "out"
    shutil.copytree(made_out, out)  # a matrix folder moved elsewhere still holds its runs
    shutil.rmtree(out / "runs" / "quick-s0-t1")
    kept = (out / "runs" / "quick-s0-t1-avx2" / "metrics.json").stat().st_mtime_ns
    code, stdout = _call(matrix, [*config, "--seeds", "0", "--threads", "0", "1", "2", "--jobs", "3", "--out", out])
    return out, code, stdout, kept


def test_a_deleted_run_is_trained_again_and_a_failing_child_is_reported(remade):
    out, code, stdout, kept = remade
    assert code == 1
    assert "training quick-s0-t1 " in stdout and "training quick-s0-t0 " in stdout
    rows = {r["name"]: r for r in json.loads((out / "matrix.json").read_text())["rows"]}
    assert rows["quick-s0-t1"]["status"] == rows["quick-s0-t2"]["status"] == "done"
    assert (out / "runs" / "quick-s0-t1" / "metrics.json").is_file()
    failed = rows["quick-s0-t0"]
    log = out / "runs" / "quick-s0-t0.log"
    assert failed["status"] == "failed" and failed["message"] == f"failed (exit 2), log {log}"
    assert "error: Invalid configuration" in log.read_text() and "threads" in log.read_text()
    assert "| 0 | 0 | native | - |" in stdout and f"failed (exit 2), log {log} |" in stdout
    assert "2 of 3 runs |" in stdout  # the worst and mean rows count the finished runs only
    assert (out / "runs" / "quick-s0-t1-avx2" / "metrics.json").stat().st_mtime_ns == kept  # not asked for


def test_thresholds_mark_each_row_and_decide_the_exit_status(made):
    config, out, _, _ = made
    saved = json.loads((out / "matrix.json").read_text())
    mean, worst_freq = saved["worst"]["test_mse"], max(saved["worst"]["test_mse_f"].values())
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out, "--max-mean", mean, "--max-freq", worst_freq])
    assert code == 0 and [r["pass"] for r in _md_rows(stdout)] == ["pass"] * 4
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out, "--max-freq", worst_freq * 0.999])
    assert code == 1 and [r["pass"] for r in _md_rows(stdout)] == ["fail"] * 4
    assert "training" not in stdout
    code, stdout = _call(matrix, [*config, *ARGS, "--out", out, "--max-mean", mean * 0.999])
    assert code == 1 and "- pass: mean test MSE <= " in stdout


def test_check_prints_1_and_2_threads_side_by_side(remade, made, tmp_path):
    out = tmp_path / "check"
    shutil.copytree(remade[0], out)  # both runs are there: check trains nothing
    code, stdout = _call(check, [*made[0], "--out", out])
    assert code == 0, stdout
    assert "training" not in stdout
    lines = stdout.splitlines()
    head = next(line for line in lines if "max-min" in line)
    assert head.split() == ["1", "thread", "2", "threads", "max-min"]
    values = [json.loads((out / "runs" / f"quick-s0-t{t}" / "metrics.json").read_text()) for t in (1, 2)]
    mse = [v["test/mse"] for v in values]
    test_line = next(line for line in lines if line.startswith("test MSE"))
    assert test_line.split()[2:] == [f"{mse[0]:.6g}", f"{mse[1]:.6g}", f"{max(mse) - min(mse):.6g}"]
    freqs = {(v[f"test/mse_f{f}"], f, t) for v, t in zip(values, (1, 2)) for f in ("1", "3", "5", "7")}
    worst, freq, _ = max(freqs)
    assert f"Worst frequency: {freq} Hz, test MSE {worst:.6g} (" in stdout
