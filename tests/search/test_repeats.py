"""Robust model selection in a search (``ignite_lstm.search.repeats``): repeats over seeds and numeric variants,
their aggregate, pruning on the aggregate, a repeat on AVX2 in a child process, a killed worker's repeats reused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("optuna", reason="the search needs the [tune] extra")

from handler_helpers import wait_for  # noqa: E402
from search_helpers import counted_and_held, recording_environment, scripted_repeats  # noqa: E402

from ignite_lstm.search import Variant, aggregate, create_study, search, variant_grid  # noqa: E402
from ignite_lstm.search.objective import resolve_repeats  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
VALUES = [0.31, 0.12, 0.25, 0.4, 0.18]


@pytest.mark.parametrize(
    "how, direction, by_hand",
    [
        ("worst", "minimize", np.max(VALUES)),
        ("worst", "maximize", np.min(VALUES)),
        ("mean", "minimize", np.mean(VALUES)),
        ("mean", "maximize", np.mean(VALUES)),
        ("quantile", "minimize", np.quantile(VALUES, 0.75)),  # q counts from the best value to the worst
        ("quantile", "maximize", np.quantile(VALUES, 0.25)),
    ],
)
def test_the_aggregate_of_the_repeats_is_worst_mean_or_a_quantile(how, direction, by_hand):
    assert aggregate(VALUES, how, direction=direction, q=0.75) == pytest.approx(by_hand)


def test_the_aggregate_refuses_a_bad_choice_and_a_diverged_repeat_gives_nan():
    assert np.isnan(aggregate([0.1, float("nan")], "worst"))
    with pytest.raises(ValueError, match=r"Argument q should be a number in \[0, 1\], got 1.5"):
        aggregate(VALUES, "quantile", q=1.5)
    with pytest.raises(ValueError, match="Argument aggregate should be one of"):
        aggregate(VALUES, "median")


def test_repeats_are_an_int_or_a_list_of_variants_and_their_labels_name_them():
    assert [v.label for v in resolve_repeats(2, seed=5)] == ["s5", "s6"]
    assert [v.label for v in variant_grid([0, 1], [1, 2], ["native", "avx2"])][:3] == ["s0 t1", "s0 t1 avx2", "s0 t2"]
    assert resolve_repeats([{"seed": 1, "threads": 2, "isa": "avx2"}]) == [Variant(1, 2, "avx2")]
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_repeats([{"seed": 1, "thread": 2}])
    with pytest.raises(ValueError, match="variant twice"):
        resolve_repeats([{"seed": 1}, {"seed": 1}])
    with pytest.raises(ValueError, match="should not be an empty list"):
        resolve_repeats([])


def test_a_trial_good_in_its_first_repeat_is_pruned_on_the_aggregate_in_its_second(tmp_path):
    curves = {  # (trial, seed): the validation mse of epochs 1, 2
        (0, 0): (0.2, 0.1),
        (0, 1): (0.1, 0.05),  # better than its first repeat: the worst at each epoch is the first's
        (1, 0): (0.15, 0.05),  # better than trial 0...
        (1, 1): (0.9, 0.8),  # ...until its second repeat
    }
    study = search(
        partial(scripted_repeats, curves=curves, epochs=2),
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trials=2,
        repeats=2,
        aggregate="worst",
        pruner="median",
        pruner_startup_trials=1,
    )
    first, second = study.trials
    assert first.state.name == "COMPLETE" and first.value == pytest.approx(np.max([0.1, 0.05]))
    # step r * 2 + e: the worst over repeats 0..r at epoch e
    assert first.intermediate_values == pytest.approx({1: 0.2, 2: 0.1, 3: np.max([0.2, 0.1]), 4: np.max([0.1, 0.05])})
    assert second.state.name == "PRUNED" and second.user_attrs["epochs"] == 1
    assert second.intermediate_values == pytest.approx({1: 0.15, 2: 0.05, 3: np.max([0.15, 0.9])})
    assert [(r["variant"], r["value"]) for r in second.user_attrs["repeats"]] == [("s0", pytest.approx(0.05))]


def test_no_repeat_is_pruned_in_its_own_warm_up_epochs(tmp_path):
    # every repeat starts untrained: a later repeat's first epochs are bad in every trial, and the
    # median of such values would prune at random; warm-up epochs count in every repeat
    curves = {
        (0, 0): (0.2, 0.1, 0.05),
        (0, 1): (0.5, 0.1, 0.05),
        (1, 0): (0.15, 0.05, 0.03),
        (1, 1): (0.9, 0.04, 0.02),  # its second repeat starts worse than trial 0's, then learns
        (2, 0): (0.1, 0.05, 0.02),
        (2, 1): (0.9, 0.9, 0.9),  # its second repeat never learns
    }
    study = search(
        partial(scripted_repeats, curves=curves, epochs=3),
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trials=3,
        repeats=2,
        aggregate="worst",
        pruner="median",
        pruner_startup_trials=1,
        pruner_warmup_epochs=1,
    )
    first, second, third = study.trials
    assert second.state.name == "COMPLETE" and second.value == pytest.approx(np.max([0.03, 0.02]))
    assert second.intermediate_values[4] == pytest.approx(np.max([0.15, 0.9]))  # reported, not judged
    assert third.state.name == "PRUNED" and third.user_attrs["epochs"] == 2  # judged after the warm-up
    assert third.intermediate_values[5] == pytest.approx(np.max([0.05, 0.9]))


def test_a_maximised_metric_takes_the_least_of_its_repeats_as_worst(tmp_path):
    curves = {(0, 0): (0.7,), (0, 3): (0.4,), (0, 4): (0.6,)}
    study = search(
        partial(scripted_repeats, curves=curves, epochs=1),
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trials=1,
        direction="maximize",
        repeats=[{"seed": 0}, {"seed": 3, "threads": 1}, {"seed": 4}],
        aggregate="worst",
        pruner="none",
        report_dir=tmp_path / "report",
    )
    (trial,) = study.trials
    assert trial.value == pytest.approx(np.min([0.7, 0.4, 0.6]))
    assert [r["variant"] for r in trial.user_attrs["repeats"]] == ["s0", "s3 t1", "s4"]
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| trial | state | mse | s0 | s3 t1 | s4 | epochs |" in summary and "| 0.7 | 0.4 | 0.6 |" in summary
    assert (tmp_path / "report" / "figures" / "repeats.png").is_file()


def test_an_avx2_repeat_runs_in_a_child_process_with_the_instruction_set_variables(tmp_path):
    threads = torch.get_num_threads()
    study = search(
        recording_environment,
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trials=1,
        repeats=[{"seed": 0, "threads": 1}, {"seed": 1, "isa": "avx2"}],
        pruner="none",
    )
    (trial,) = study.trials
    here, child = trial.user_attrs["env s0"], trial.user_attrs["env s1"]
    assert here["pid"] == os.getpid() and here["threads"] == 1 and here["IGNITE_LSTM_ISA"] is None
    assert child["pid"] != os.getpid()
    assert (child["IGNITE_LSTM_ISA"], child["MKL_ENABLE_INSTRUCTIONS"]) == ("avx2", "AVX2")
    if child["kernel"].startswith("native"):  # the native kernel is built: without AVX-512
        assert "AVX2/FMA" in child["kernel"]
    assert "IGNITE_LSTM_ISA" not in os.environ and torch.get_num_threads() == threads  # restored
    assert [r["variant"] for r in trial.user_attrs["repeats"]] == ["s0 t1", "s1 avx2"]
    assert trial.value == pytest.approx(np.mean([r["value"] for r in trial.user_attrs["repeats"]]))


def test_a_worker_killed_in_a_repeat_is_continued_reusing_its_finished_repeats(tmp_path):
    log, marker, release = tmp_path / "trainings.log", tmp_path / "held", tmp_path / "release"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    options = dict(storage=storage, trials=2, repeats=2, sampler="random", pruner="none")
    build_it = partial(counted_and_held, log=str(log), marker=str(marker), release=str(release))
    script = (
        "import sys; from search_helpers import counted_and_held as c; from functools import partial; "
        "from ignite_lstm.search import search; "
        f"search(partial(c, log=sys.argv[1], marker=sys.argv[2], release=sys.argv[3]), **{options!r})"
    )
    with open(tmp_path / "worker.log", "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", script, str(log), str(marker), str(release)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(marker, worker, tmp_path / "worker.log")  # trial 0 is in its second repeat
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    release.touch()
    study = search(build_it, **options)  # the same search again
    killed, retry, other = study.trials
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert killed.user_attrs["fail_reason"] == f"its worker (pid {worker.pid}) died"
    assert retry.user_attrs["retry_of"] == 0 and retry.params == killed.params
    # trial 0's seed-0 repeat was trained once, and reused by its retry (trial 1): not trained again
    assert log.read_text().split("\n")[:-1] == ["0 s0", "0 s1", "1 s1", "2 s0", "2 s1"]
    (finished,) = killed.user_attrs["repeats"]
    assert retry.user_attrs["repeats"][0] == finished and finished["trial"] == 0
    for t in (retry, other):
        assert t.value == pytest.approx(np.mean([r["value"] for r in t.user_attrs["repeats"]]))
    again, _, _ = create_study(storage, "search", "minimize")
    assert sum(t.state.name == "COMPLETE" for t in again.trials) == 2
