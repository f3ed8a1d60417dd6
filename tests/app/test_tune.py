"""The tune command: workers sharing a study, pruning, a killed worker, the best config, refused input.

The studies are configs/tune-quick.yaml shrunk further (200-step sequences, one mixture, 2 epochs).
Workers are real subprocesses on one SQLite file; they meet at exact points (tests/tune_helpers.py).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna", reason="the tune tests need the [tune] extra: pip install -e '.[tune]'")
pytest.importorskip("optuna_integration", reason="the tune tests need the [tune] extra: pip install -e '.[tune]'")

from handler_helpers import run_cli_in, run_in_process, wait_for  # noqa: E402

from ignite_lstm.app import cli
from ignite_lstm.app.tune import study as tune  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # the helpers' folder
STUDY = str(REPO / "configs" / "tune-quick.yaml")
SHRINK = [
    "data.duration=0.2",
    "data.train.mixtures=1",
    "train.epochs=2",
    "tune.space.handlers.lr_scheduler.warmup_epochs.high=1.0",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tune-data")


def tiny(data_dir, out, *extra):
    return [STUDY, *SHRINK, f"data.dir={data_dir}", f"output_dir={out}", *extra]


def env(**variables):
    return {**os.environ, **variables, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def spawn(args, log, **variables):
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "ignite_lstm.app.tune.study", *map(str, args)],
            cwd=REPO,
            env=env(**variables),
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
        )


def run_tune(args):
    """``ignite_lstm.app.tune.study.main`` in this process (``run_in_process``)."""
    return run_in_process(tune.main, args)


def summary(out, name="tune-quick"):
    return json.loads((Path(out) / name / "summary.json").read_text())


def test_two_workers_finish_the_study_between_them_and_the_best_config_reproduces(tmp_path, data_dir):
    out = tmp_path / "runs"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ignite_lstm.app.tune.study",
            *tiny(data_dir, out, "tune.trials=4", "handlers.extra=[tune_helpers:barrier]"),
            "--workers",
            "2",
        ],
        cwd=REPO,
        env=env(BARRIER_DIR=str(tmp_path / "barrier"), BARRIER_N="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    s = summary(out)
    assert s["counts"] == {"complete": 4}  # tune.pruner.startup_trials is 4: nothing is pruned yet
    assert sorted(t["number"] for t in s["trials"]) == [0, 1, 2, 3]
    assert len({t["worker"] for t in s["trials"]}) == 2  # the barrier held a trial of each worker at once
    assert "Trial 3 " in done.stderr and " of 4 finished; best so far: trial " in done.stderr
    for t in s["trials"]:
        assert (Path(t["run_dir"]) / "metrics.json").is_file()
    study_dir = out / "tune-quick"
    assert {p.name for p in (study_dir / "figures").iterdir()} == {
        "optimization_history.png",
        "param_importances.png",
        "top_params.png",
    }
    assert "| trial | state | val/mse |" in (study_dir / "summary.md").read_text()

    # best.yaml is a plain config: run.py trains it again to the trial's validation metric
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert "tune" not in best and best["output_dir"] == str(out) and best["name"] is None
    again = run_cli_in([study_dir / "best.yaml", "name=again", "handlers.extra=[]"], REPO)  # run.py, in this process
    assert again.returncode == 0, again.stderr
    metrics = json.loads((out / "again" / "metrics.json").read_text())
    assert metrics["val/mse"] == pytest.approx(s["best"]["value"], rel=1e-6)

    # the same command on the existing study continues it
    assert run_tune(tiny(data_dir, out, "tune.trials=5")) == 0
    assert [t["number"] for t in summary(out)["trials"]] == [0, 1, 2, 3, 4]


def test_a_clearly_worse_trial_is_pruned_at_its_first_validation(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TUNE_SCRIPT", "mse:0.1,0.9")  # trial 1 validates at 0.9, trial 0 at 0.1
    out = tmp_path / "runs"
    code = run_tune(
        tiny(
            data_dir,
            out,
            "tune.trials=2",
            "tune.pruner.startup_trials=1",
            "tune.pruner.warmup_epochs=0",
            "handlers.extra=[tune_helpers:scripted_by_trial]",
        )
    )
    assert code == 0
    first, second = summary(out)["trials"]
    assert (first["state"], second["state"], second["epochs"]) == ("complete", "pruned", 1)
    assert first["value"] != 0.1  # the trial's value is the final validation, not the scripted metric
    run_dir = Path(second["run_dir"])  # a pruned trial's run folder stays, complete up to the pruned epoch
    assert [e["epoch"] for e in json.loads((run_dir / "history.json").read_text())["epochs"]] == [1]
    assert (run_dir / "checkpoints" / "last_checkpoint_1.pt").is_file() and not (run_dir / "metrics.json").exists()
    # said once, plainly: not also Ignite's "Engine run is terminating due to exception: Trial was pruned" (issue 26)
    assert "terminating due to exception" not in (run_dir / "train.log").read_text()


def test_a_diverged_trial_fails_and_the_study_goes_on_until_every_trial_fails(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("NAN_AT", "1")  # handler_helpers.nan_batch: every trial's loss is NaN at iteration 1
    out = tmp_path / "runs"
    assert run_tune(tiny(data_dir, out, "tune.trials=2", "handlers.extra=[handler_helpers:nan_batch]")) == 1
    s = summary(out)
    assert s["counts"] == {"fail": 2} and s["best"] is None and not (out / "tune-quick" / "best.yaml").exists()
    assert all(
        t["fail_reason"].startswith("TrialDiverged: Loss became nan at epoch 1, iteration 1") for t in s["trials"]
    )


def test_the_grid_sampler_runs_each_point_once_and_stops_at_the_grid_size(tmp_path, data_dir):
    out = tmp_path / "runs"
    grid = [
        "tune.sampler=grid",
        "tune.trials=10",
        "tune.space.train.lr={type: categorical, choices: [0.001, 0.01]}",
        "tune.space.train.tbptt_steps.choices=[50,100]",
        "tune.space.model.hidden_size.choices=[8]",
        "tune.space.handlers.lr_scheduler.warmup_epochs={type: categorical, choices: [0.0]}",
    ]
    assert run_tune(tiny(data_dir, out, *grid)) == 0
    points = [tuple(sorted(t["params"].items())) for t in summary(out)["trials"]]
    assert len(points) == 4 and len(set(points)) == 4


def test_a_worker_killed_in_a_trial_does_not_stop_the_other(tmp_path, data_dir):
    out = tmp_path / "runs"
    args = tiny(data_dir, out, "tune.trials=3", "handlers.extra=[tune_helpers:hold]")
    marks = {w: tmp_path / f"{w}.held" for w in "ab"}
    a = spawn(args, tmp_path / "a.log", HOLD_MARKER=str(marks["a"]), HOLD_RELEASE=str(tmp_path / "never"))
    b = spawn(args, tmp_path / "b.log", HOLD_MARKER=str(marks["b"]), HOLD_RELEASE=str(tmp_path / "b.release"))
    try:
        wait_for(marks["a"], a, tmp_path / "a.log")  # both workers are in a trial's first epoch
        wait_for(marks["b"], b, tmp_path / "b.log")
        a.send_signal(signal.SIGKILL)
        a.wait()
        (tmp_path / "b.release").touch()
        assert b.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    s = summary(out)
    assert s["counts"] == {"complete": 3, "fail": 1}
    (killed,) = [t for t in s["trials"] if t["state"] == "fail"]
    assert killed["fail_reason"] == f"its worker (pid {a.pid}) died"
    assert Path(killed["run_dir"]).name == marks["a"].read_text()
    assert f"Trial {killed['number']}: its worker (pid {a.pid}) died; marked failed" in (tmp_path / "b.log").read_text()


def _study_file(tmp_path, tune_section):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"tune": {"base": str(REPO / "configs" / "quick.yaml"), **tune_section}}))
    return path


LR = {"train": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}


@pytest.mark.parametrize(
    "tune_section, message",
    [
        (
            {"space": {"train": {"lrr": {"type": "float", "low": 0.1, "high": 0.2}}}},
            "tune.space.train.lrr: unknown config key: train.lrr is not in the schema",
        ),
        (
            {"space": {"model.hidden_size": {"type": "float", "low": 8.0, "high": 32.0}}},
            "tune.space.model.hidden_size: type float does not fit model.hidden_size, which takes int values",
        ),
        (
            {"space": {"train": {"lr": {"type": "float", "low": -0.1, "high": 0.1}}}},
            "tune.space.train.lr: low -0.1 does not fit: train.lr: -0.1 is out of range: must be > 0.0",
        ),
        (
            {"space": {"train": {"optimizer": {"type": "categorical", "choices": ["adam", "lion"]}}}},
            "tune.space.train.optimizer: choice 'lion' does not fit: train.optimizer: 'lion' is not allowed",
        ),
        (
            {"space": {"output_dir": {"type": "categorical", "choices": ["a", "b"]}}},
            "tune.space.output_dir: output_dir is set by the tune command for each trial",
        ),
        ({"space": LR, "sampler": "grid"}, "tune.space.train.lr: tune.sampler grid needs int or categorical entries"),
        ({"space": LR, "metric": "accuracy"}, "tune.metric: 'accuracy' is not allowed: choose one of 'mse'"),
        (
            {"space": LR, "storage": "sqlite:////nonexistent-dir/study.db"},
            "tune.storage: cannot open sqlite:////nonexistent-dir/study.db: No such file or directory",
        ),
        (
            {"space": LR, "storage": "journal:/nonexistent-dir/study.log"},
            "tune.storage: cannot open journal:/nonexistent-dir/study.log: ",
        ),
        (
            {"space": LR, "storage": "postgresql://tune:secret@127.0.0.1:9/study"},  # nothing listens on port 9
            "tune.storage: cannot open postgresql://tune:***@127.0.0.1:9/study: ",
        ),
    ],
)
def test_bad_input_is_refused_before_any_trial_naming_the_key(tmp_path, capsys, tune_section, message):
    out = tmp_path / "runs"
    assert run_tune([_study_file(tmp_path, tune_section), f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not list(out.glob("*/trials"))  # no trial started


def test_a_study_is_not_continued_in_the_other_direction(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_tune([_study_file(tmp_path, {"space": LR}), f"output_dir={out}", "--report"]) == 0  # no trial
    assert run_tune([_study_file(tmp_path, {"space": LR}), f"output_dir={out}", "tune.metric=snr"]) == 2
    assert "tune.direction: study 'study' in sqlite:///" in capsys.readouterr().err


def test_ignite_lstm_tune_is_a_subcommand_of_the_console_script(tmp_path, capsys, monkeypatch):
    bad = _study_file(tmp_path, {"space": LR, "trials": 0})
    monkeypatch.setattr(sys, "argv", ["ignite-lstm", "tune", str(bad)])
    with pytest.raises(SystemExit) as exc:
        cli.main_exit()
    assert exc.value.code == 2 and "tune.trials: 0 is out of range: must be >= 1" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["ignite-lstm", str(tmp_path / "missing.yaml")])  # training, as before
    with pytest.raises(SystemExit) as exc:
        cli.main_exit()
    assert exc.value.code == 2 and "the config file does not exist" in capsys.readouterr().err


def test_the_base_study_selects_on_the_worst_repeat_of_the_worst_validation_frequency():
    from ignite_lstm.app.tune.settings import load_study

    cfg, settings = load_study(REPO / "configs" / "tune-base.yaml")
    assert (settings.metric, settings.direction, settings.aggregate) == ("mse_worst", "minimize", "worst")
    assert cfg.model.init == "chrono"
    assert [(v.seed, v.threads, v.isa) for v in settings.repeats] == [
        (0, 1, "native"),
        (0, 2, "native"),
        (1, 1, "native"),
        (1, 2, "native"),
    ]
    assert {d.key for d in settings.space} == {
        "train.epochs",
        "train.lr",
        "handlers.lr_scheduler.warmup_epochs",
        "model.chrono_t_max",
    }


def test_every_monitor_of_the_application_is_a_study_metric():
    from ignite_lstm.app.config.rules import validation_metrics
    from ignite_lstm.app.tune.settings import load_study

    cfg, _ = load_study(STUDY, SHRINK)
    for metric in validation_metrics(list(cfg.data.frequencies)):  # the monitors' one list
        _, settings = load_study(STUDY, [*SHRINK, f"tune.metric={metric}"])
        assert settings.metric == metric
    _, settings = load_study(STUDY, [*SHRINK, "tune.metric=mse_worst"])  # issue 26: it was refused
    assert settings.direction == "minimize"


# one batch per epoch: a warm-up of any length is 2 steps, the whole run (setup_lr_scheduler refuses it)
NO_WARMUP = ["tune.space.handlers.lr_scheduler.warmup_epochs={type: categorical, choices: [0.0]}"]


def test_tune_seed_repeats_a_study_and_another_seed_draws_other_points(tmp_path, data_dir):
    def drawn(name, seed):
        out = tmp_path / name
        args = tiny(data_dir, out, "tune.trials=2", "tune.sampler=random", f"tune.seed={seed}", *NO_WARMUP)
        assert run_tune(args) == 0
        return [(t["params"], t["value"]) for t in summary(out)["trials"]]

    first = drawn("a", 3)
    assert drawn("b", 3) == first  # the same points and, trained alike, the same values
    assert [p for p, _ in drawn("c", 4)] != [p for p, _ in first]


def test_ctrl_c_fails_the_running_trial_exits_130_and_the_same_command_continues(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "runs"
    args = tiny(data_dir, out, "tune.trials=2", "handlers.extra=[tune_helpers:hold]", *NO_WARMUP)
    held, release = tmp_path / "held", tmp_path / "release"
    proc = spawn(args, tmp_path / "tune.log", HOLD_MARKER=str(held), HOLD_RELEASE=str(release))
    try:
        wait_for(held, proc, tmp_path / "tune.log")  # trial 0 is in its first epoch
        proc.send_signal(signal.SIGINT)
        release.touch()
        assert proc.wait(timeout=300) == 130, (tmp_path / "tune.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "tune.log").read_text()
    assert "error: interrupted; the running trial is marked failed. Continue the study with the same command" in log
    (stopped,) = summary(out)["trials"]
    assert stopped["state"] == "fail" and stopped["fail_reason"].startswith("_Interrupted")
    monkeypatch.setenv("HOLD_MARKER", str(tmp_path / "held-again"))
    monkeypatch.setenv("HOLD_RELEASE", str(release))  # released already: the trials pass
    assert run_tune(args) == 0  # the same command finishes the study
    assert summary(out)["counts"] == {"fail": 1, "complete": 2}


def test_a_study_on_mse_worst_runs_its_trials_on_it(tmp_path, data_dir):
    out = tmp_path / "runs"
    assert run_tune(tiny(data_dir, out, "tune.trials=1", "tune.metric=mse_worst", *NO_WARMUP)) == 0
    s = summary(out)
    assert s["metric"] == "val/mse_worst" and s["counts"] == {"complete": 1} and s["trials"][0]["value"] > 0
