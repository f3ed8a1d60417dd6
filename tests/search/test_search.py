"""A search over a user's own model from Python (``ignite_lstm.search``): two workers on one storage with
pruning, a pruned trial said once and plainly, repeats, the report, refused input and storages."""

from __future__ import annotations

import logging
from functools import partial

import pytest

pytest.importorskip("optuna", reason="the search needs the [tune] extra")

from search_helpers import build  # noqa: E402

from ignite_lstm.search import StudyError, create_study, search  # noqa: E402


def _states(study) -> list[str]:
    return [t.state.name.lower() for t in study.trials]


def test_two_workers_search_a_users_model_on_one_storage_with_pruning(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = search(
        partial(build, barrier=str(tmp_path / "barrier"), workers=2),  # both workers have a trial running at once
        storage=storage,
        study_name="gru",
        trials=4,
        metric="mse",
        sampler="random",
        pruner="median",
        pruner_startup_trials=1,
        workers=2,
        report_dir=tmp_path / "report",
    )
    assert len(study.trials) == 4 and set(_states(study)) <= {"complete", "pruned"}
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # two processes shared the study
    assert len(list((tmp_path / "barrier").iterdir())) == 2
    assert study.direction.name == "MINIMIZE" and isinstance(study.pruner, object)
    report = (tmp_path / "report" / "summary.md").read_text()
    assert "# Study gru" in report and "| trial | state | mse |" in report
    assert (tmp_path / "report" / "summary.json").exists()
    again, _, _ = create_study(storage, "gru", "minimize")  # the same study, from its storage
    assert len(again.trials) == 4


def test_a_worse_trial_is_pruned_and_said_once_plainly(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    study = search(
        partial(build, epochs=3, script=(0.1, 0.9)),  # trial 1 validates at 0.9 against trial 0's 0.1
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trials=2,
        pruner="median",
        pruner_startup_trials=1,
    )
    assert _states(study) == ["complete", "pruned"]
    assert study.trials[0].value == pytest.approx(0.1) and study.trials[1].user_attrs["epochs"] == 1
    said = [r.getMessage() for r in caplog.records if "prun" in r.getMessage().lower()]
    assert len(said) == 1 and said[0].startswith("Trial 1 pruned at epoch 1 (")  # issue 26: no Ignite error line
    assert not [r for r in caplog.records if "terminating due to exception" in r.getMessage()]


def test_repeats_train_a_trial_several_times_and_take_the_mean(tmp_path):
    study = search(partial(build, epochs=1), storage=f"sqlite:///{tmp_path / 'study.db'}", trials=1, repeats=2)
    (trial,) = study.trials
    values = [r["value"] for r in trial.user_attrs["repeats"]]
    assert [r["variant"] for r in trial.user_attrs["repeats"]] == ["s0", "s1"]  # seeds seed + r
    assert len(values) == 2 and values[0] != values[1]
    assert trial.value == pytest.approx(sum(values) / 2)


def test_the_seed_makes_a_search_repeat_itself(tmp_path):
    def params(folder, seed):
        s = search(partial(build, epochs=1), storage=f"sqlite:///{folder}.db", trials=2, sampler="random", seed=seed)
        return [t.params for t in s.trials], [t.value for t in s.trials]

    first, again, other = params(tmp_path / "a", 7), params(tmp_path / "b", 7), params(tmp_path / "c", 8)
    assert first == again and first[0] != other[0]


def test_bad_arguments_and_a_missing_database_driver_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Argument sampler should be one of"):
        search(build, storage=f"sqlite:///{tmp_path / 's.db'}", sampler="grid")
    with pytest.raises(ValueError, match="Argument workers should be positive, got 0."):
        search(build, storage=f"sqlite:///{tmp_path / 's.db'}", workers=0)
    with pytest.raises(ValueError, match="Unknown metric 'wer'"):
        search(build, storage=f"sqlite:///{tmp_path / 's.db'}", metric="wer")
    # a MySQL URL without its driver: the package to install is named
    with pytest.raises(StudyError, match=r"database driver 'MySQLdb' is not installed; install mysqlclient"):
        create_study("mysql://u:secret@127.0.0.1:9/db", "s", "minimize")


def test_ctrl_c_fails_the_running_trial_and_the_same_search_continues(tmp_path):
    from search_helpers import interrupted_once

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    build_it = partial(interrupted_once, flag=str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        search(build_it, storage=storage, trials=2)
    study, _, _ = create_study(storage, "search", "minimize")
    assert _states(study) == ["fail"] and study.trials[0].user_attrs["fail_reason"] == "KeyboardInterrupt"
    study = search(build_it, storage=storage, trials=2)  # the same call goes on to the target
    assert _states(study) == ["fail", "complete", "complete"]


def test_a_journal_file_is_a_storage_too(tmp_path):
    study = search(partial(build, epochs=1), storage=f"journal:{tmp_path / 'study.log'}", trials=1, pruner="none")
    assert _states(study) == ["complete"] and (tmp_path / "study.log").exists()
