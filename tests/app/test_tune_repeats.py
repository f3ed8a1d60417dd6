"""The tune command's repeats (``tune.repeats``, ``tune.aggregate``, ``tune.q``): the settings refused with the
key named, the cross product of the variants, and a study whose summary and figure list every repeat.

The study is configs/tune-quick.yaml shrunk as in test_tune.py (200-step sequences, one mixture, 1 epoch).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("optuna", reason="the tune tests need the [tune] extra: pip install -e '.[tune]'")

from handler_helpers import run_in_process  # noqa: E402

from ignite_lstm.app.config.schema import ConfigError  # noqa: E402
from ignite_lstm.app.tune import study as tune  # noqa: E402
from ignite_lstm.app.tune.settings import load_study  # noqa: E402
from ignite_lstm.search.repeats import Variant  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STUDY = str(REPO / "configs" / "tune-quick.yaml")
SHRINK = [
    "data.duration=0.2",
    "data.train.mixtures=1",
    "train.epochs=1",
    "tune.space.handlers.lr_scheduler.warmup_epochs={type: categorical, choices: [0.0]}",
]
LR = {"train": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}


def _study_file(tmp_path, tune_section):
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {"threads": 1, "tune": {"base": str(REPO / "configs" / "quick.yaml"), "space": LR, **tune_section}}
        )
    )
    return path


@pytest.mark.parametrize(
    "tune_section, message",
    [
        ({"repeats": {"seed": [0, 1]}}, "tune.repeats.seed: unknown key; allowed here: seeds, threads, isa"),
        ({"repeats": 3}, "tune.repeats: 3 has the wrong type: expected a section with seeds, threads, isa"),
        ({"repeats": {"seeds": 2}}, "tune.repeats.seeds: 2 has the wrong type: expected a list"),
        ({"repeats": {"threads": []}}, "tune.repeats.threads: the list is empty: give one value at least"),
        ({"repeats": {"seeds": [0, "one"]}}, "tune.repeats.seeds[1]: 'one' has the wrong type: expected int"),
        ({"repeats": {"threads": [0]}}, "tune.repeats.threads[0]: 0 is out of range: must be >= 1"),
        ({"repeats": {"seeds": [1, 1]}}, "tune.repeats.seeds: [1, 1] repeats a value"),
        ({"repeats": {"isa": ["sse"]}}, "tune.repeats.isa[0]: 'sse' is not allowed: choose one of 'native', 'avx2'"),
        ({"aggregate": "median"}, "tune.aggregate: 'median' is not allowed: choose one of 'worst', 'mean', 'quantile'"),
        ({"aggregate": "quantile", "q": 1.5}, "tune.q: 1.5 is out of range: must be in [0, 1]"),
        ({"aggregate": "quantile", "q": "high"}, "tune.q: 'high' has the wrong type: expected a number in [0, 1]"),
        ({"aggregate": "worst", "q": 0.9}, "tune.q: 0.9 is only read with tune.aggregate: quantile"),
    ],
)
def test_bad_repeats_are_refused_naming_the_key(tmp_path, tune_section, message):
    with pytest.raises(ConfigError) as err:
        load_study(_study_file(tmp_path, tune_section))
    assert message in str(err.value), str(err.value)


def test_the_repeats_are_the_cross_product_of_seeds_threads_and_isa_defaulting_to_the_configs_own(tmp_path):
    _, settings = load_study(_study_file(tmp_path, {"repeats": {"seeds": [0, 1, 2], "threads": [1, 2]}}))
    assert [v.label for v in settings.repeats] == ["s0 t1", "s0 t2", "s1 t1", "s1 t2", "s2 t1", "s2 t2"]
    path = _study_file(tmp_path, {"repeats": {"isa": ["native", "avx2"]}, "aggregate": "quantile", "q": 0.75})
    cfg, settings = load_study(path)  # seeds and threads: the config's own
    assert settings.repeats == (Variant(cfg.seed, 1), Variant(cfg.seed, 1, "avx2"))
    assert (settings.aggregate, settings.q) == ("quantile", 0.75)
    _, settings = load_study(_study_file(tmp_path, {}))  # no repeats: one training, the config's seed and threads
    assert (settings.repeats, settings.aggregate) == ((Variant(),), "mean")


def test_a_study_with_repeats_lists_each_repeat_and_takes_the_worst(tmp_path):
    out = tmp_path / "runs"
    args = [STUDY, *SHRINK, f"data.dir={tmp_path / 'data'}", f"output_dir={out}", "tune.trials=1"]
    args += ["tune.repeats={seeds: [0, 1]}", "tune.aggregate=worst"]
    assert run_in_process(tune.main, args) == 0
    study_dir = out / "tune-quick"
    (trial,) = json.loads((study_dir / "summary.json").read_text())["trials"]
    finals = [
        json.loads((study_dir / "trials" / f"trial-0000-{label}" / "metrics.json").read_text())["val/mse"]
        for label in ("s0-t1", "s1-t1")
    ]
    assert [(r["variant"], r["value"]) for r in trial["repeats"]] == [("s0 t1", finals[0]), ("s1 t1", finals[1])]
    assert finals[0] != finals[1] and trial["value"] == pytest.approx(np.max(finals))
    summary = (study_dir / "summary.md").read_text()
    assert "| trial | state | val/mse | s0 t1 | s1 t1 | epochs |" in summary
    assert f"| 0 | complete | {trial['value']:.4g} | {finals[0]:.4g} | {finals[1]:.4g} | 1 |" in summary
    assert (study_dir / "figures" / "repeats.png").is_file()
    best = yaml.safe_load((study_dir / "best.yaml").read_text())  # the best trial's params, its first repeat's seed
    assert best["seed"] == 0 and best["train"]["lr"] == pytest.approx(trial["params"]["train.lr"])
