"""The config schema, ``load_config`` with overrides, and every refusal's exact wording."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from ignite_lstm.app.config.command import main
from ignite_lstm.app.config.schema import Config, ConfigError, load_config, validate_config
from ignite_lstm.app.run.optim import OPTIMIZERS
from ignite_lstm.engine.execution import EXECUTIONS
from ignite_lstm.engine.factories import UPDATES
from ignite_lstm.engine.losses import LOSSES
from ignite_lstm.handlers.schedules import SCHEDULES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TOP_KEYS = "seed, output_dir, name, device, threads, resume, data, model, train, eval, handlers, distributed"
MONITORS = "mse, rmse, mae, corr, r2, snr, mse_f1, mse_f3, mse_f5, mse_f7, mse_worst"


def _problems(values: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(values)
    return info.value.problems


@pytest.mark.parametrize("name", ["base.yaml", "quick.yaml", "stream.yaml"])
def test_presets_load_and_validate(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.hidden_size >= 1
    assert list(cfg.data.frequencies) == [1.0, 3.0, 5.0, 7.0]


# configs/base.yaml resolved as it was when it listed every key (before the schema held every default).
# A new key changes it on purpose: add the key here with its default.
BASE_RESOLVED = {
    "seed": 0,
    "output_dir": "runs",
    "name": None,
    "device": "auto",
    "threads": None,
    "resume": None,
    "data": {
        "dir": "data",
        "frequencies": [1.0, 3.0, 5.0, 7.0],
        "fs": 1000.0,
        "duration": 10.0,
        "amplitude": [0.8, 1.2],
        "phase_scale": 0.01,
        "noise_sigma": 0.0,
        "input_scale": 4.0,
        "train": {"seed": 1, "mixtures": 10},
        "val": {"seed": 3, "mixtures": 1},
        "test": {"seed": 2, "mixtures": 1},
        "layout": "sequences",
        "stream": {"chunk_steps": None, "shuffle": True},
    },
    "model": {
        "hidden_size": 128,
        "num_layers": 1,
        "dropout": 0.0,
        "init": "default",
        "chrono_t_max": 1000.0,
        "chrono_fraction": 1.0,
    },
    "train": {
        "epochs": 200,
        "batch_size": 40,
        "tbptt_steps": 500,
        "update": "window",
        "execution": "auto",  # train.engine before 0.2
        "chunk_steps": 250,
        "optimizer": "adam",
        "lr": 0.003,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "loss": "mse",
        "grad_clip": 1.0,
        "amp": None,
        "gradient_accumulation_steps": 1,
        "carry_state": False,
        "curriculum": {
            "enabled": False,
            "lengths": [],
            "start": None,
            "factor": 2.0,
            "epochs_per_stage": None,
            "metric": None,
            "threshold": None,
            "min_epochs": 1,
            "max_epochs": None,
            "tbptt": "fixed",
            "lr_factor": 1.0,
            "reset_optimizer": False,
            "retry_after": None,
            "retries": 0,
        },
    },
    "eval": {"batch_size": 40, "every": 1, "execution": "auto", "report": True, "warm_up_steps": 0},
    "handlers": {
        "progress_bar": True,
        "terminate_on_nan": True,
        "checkpoint": {"enabled": True, "monitor": "mse", "n_saved": 1, "every": 0},
        "early_stopping": {"enabled": False, "monitor": "mse", "patience": 10, "min_delta": 0.0, "restore_best": True},
        "lr_scheduler": {
            "name": "onecycle",
            "warmup_epochs": 60.0,
            "min_lr": 0.0,
            "step_size": 10,
            "gamma": 0.5,
            "monitor": "mse",
            "patience": 5,
            "factor": 0.5,
        },
        "tensorboard": {"enabled": True, "every": 1, "window_every": 10, "histograms": False},
        "extra": [],
    },
    "distributed": {"backend": None, "nproc_per_node": 1},
}
# quick.yaml and assignment.yaml resolved as they were then, as their differences from BASE_RESOLVED.
PRESET_CHANGES = {
    "quick.yaml": {
        "data.duration": 1.0,
        "data.train.mixtures": 2,
        "eval.batch_size": 8,
        "handlers.lr_scheduler.name": "cosine",
        "handlers.lr_scheduler.warmup_epochs": 0.0,
        "model.hidden_size": 16,
        "train.batch_size": 8,
        "train.epochs": 2,
        "train.tbptt_steps": 100,
    },
    "stream.yaml": {
        "data.duration": 1.0,
        "data.train.mixtures": 2,
        "data.layout": "streams",
        "data.stream.chunk_steps": 100,
        "eval.batch_size": 4,
        "handlers.lr_scheduler.name": "cosine",
        "handlers.lr_scheduler.warmup_epochs": 0.0,
        "model.hidden_size": 16,
        "train.batch_size": 4,
        "train.carry_state": True,
        "train.epochs": 2,
        "train.tbptt_steps": 100,
    },
    # session 4 replaced assignment.yaml's recipe by the length curriculum (issue 17)
    "assignment.yaml": {
        "data.input_scale": 1.0,
        "data.phase_scale": 1.0,
        "data.train.mixtures": 64,
        "handlers.early_stopping.enabled": True,
        "handlers.early_stopping.patience": 30,
        "handlers.lr_scheduler.name": "none",
        "handlers.lr_scheduler.warmup_epochs": 0.0,
        "model.hidden_size": 64,
        "model.init": "chrono",
        "model.chrono_t_max": 1000.0,
        "model.chrono_fraction": 0.5,
        "train.batch_size": 16,
        "train.curriculum.enabled": True,
        "train.curriculum.lr_factor": 0.5,
        "train.curriculum.metric": "mse_worst",
        "train.curriculum.reset_optimizer": True,
        "train.curriculum.start": 250,
        "train.curriculum.tbptt": "follow",
        "train.curriculum.threshold": 0.02,
        "train.epochs": 3000,
        "train.tbptt_steps": 250,
    },
}


def _leaves(node: dict, prefix: str = "") -> dict:
    """Dotted key -> (type, value) of every setting: 200 and 200.0 differ."""
    leaves = {}
    for key, value in node.items():
        if isinstance(value, dict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[prefix + key] = (type(value), value)
    return leaves


def _resolved(name: str) -> dict:
    return _leaves(OmegaConf.to_container(load_config(CONFIGS / name)))


def _schema_fields(schema: type = Config, prefix: str = ""):
    """``(dotted key, field, type)`` of every key of the schema, sections included."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        yield prefix + f.name, f, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _schema_fields(hints[f.name], f"{prefix}{f.name}.")


def _field(key: str) -> dataclasses.Field:
    return next(f for k, f, _ in _schema_fields() if k == key)


# Session 3 adopted the recipe of the study configs/tune-base.yaml (trial 8); session 6 the chrono
# initialisation with a shorter schedule (issue 24): these keys changed, no other.
RECIPE_CHANGES = {
    "data.train.mixtures": 5,
    "train.tbptt_steps": 250,
    "train.lr": 0.005,
    "train.epochs": 100,
    "model.init": "chrono",
    "handlers.lr_scheduler.warmup_epochs": 10.0,
}


def _base_expected() -> dict:
    expected = _leaves(BASE_RESOLVED)
    expected.update({key: (type(value), value) for key, value in RECIPE_CHANGES.items()})
    return expected


def test_base_yaml_resolves_exactly_as_before_the_schema_held_every_default():
    # BASE_RESOLVED is base.yaml as it resolved when its values moved into the schema; since
    # then only the study's recipe changed it
    assert _resolved("base.yaml") == _base_expected()


@pytest.mark.parametrize("name", sorted(PRESET_CHANGES))
def test_the_other_presets_resolve_exactly_as_before(name):
    expected = _leaves(BASE_RESOLVED)
    expected.update({key: (type(value), value) for key, value in PRESET_CHANGES[name].items()})
    assert _resolved(name) == expected


def test_base_yaml_states_only_what_the_recipe_sets_differently_from_the_schema():
    schema = _leaves(OmegaConf.to_container(OmegaConf.structured(Config)))
    differs = {key for key, value in _base_expected().items() if schema[key] != value}
    in_file = _leaves(OmegaConf.to_container(OmegaConf.load(CONFIGS / "base.yaml")))
    assert (
        set(in_file)
        == differs
        == {
            "train.epochs",
            "handlers.lr_scheduler.name",
            "handlers.lr_scheduler.warmup_epochs",
            "data.train.mixtures",
            "train.tbptt_steps",
            "train.lr",
            "model.init",
        }
    )


def test_every_setting_of_base_yaml_says_why():
    lines = (CONFIGS / "base.yaml").read_text().splitlines()
    settings = [i for i, line in enumerate(lines) if re.match(r"\s*\w+: \S", line)]  # key: value, not a comment
    assert len(settings) == 7
    for i in settings:
        assert "#" in lines[i] or lines[i - 1].lstrip().startswith("#"), lines[i]
    assert "#   ignite-lstm config configs/base.yaml" in lines[:10]


def test_every_key_has_a_help_text():
    missing = [key for key, f, _ in _schema_fields() if not f.metadata.get("help", "").strip()]
    assert missing == []


def test_choice_lists_are_those_of_the_modules_that_use_them():
    assert _field("train.update").metadata["choices"] is UPDATES
    assert _field("train.execution").metadata["choices"] is EXECUTIONS
    assert _field("eval.execution").metadata["choices"] is EXECUTIONS
    assert _field("train.optimizer").metadata["choices"] == tuple(OPTIMIZERS)
    assert _field("train.loss").metadata["choices"] == tuple(LOSSES)
    assert _field("handlers.lr_scheduler.name").metadata["choices"] is SCHEDULES
    assert _field("distributed.backend").metadata["choices"] == ("gloo", "nccl")


def _printed(capsys, args: list[str]) -> str:
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


@pytest.mark.parametrize("args", [["configs/base.yaml"], ["configs/quick.yaml", "train.lr=1e-3", "name=trial"], []])
def test_the_printed_config_is_complete_commented_and_reads_back_the_same(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = _printed(capsys, args)
    expected = load_config(args[0], args[1:]) if args else validate_config({})
    path = tmp_path / "printed.yaml"
    path.write_text(out)
    assert OmegaConf.to_container(load_config(path)) == OmegaConf.to_container(expected)
    assert _leaves(OmegaConf.to_container(OmegaConf.load(path))) == _leaves(OmegaConf.to_container(expected))
    comments = {}  # dotted key -> its comment
    stack: list[str] = []
    for line in out.splitlines():
        match = re.match(r"( *)(\w+):.*? # (.*)$", line)
        if match:
            stack[len(match[1]) // 2 :] = [match[2]]
            comments[".".join(stack)] = match[3]
    assert set(comments) == {key for key, _, _ in _schema_fields()}
    for key, f, _ in _schema_fields():
        assert comments[key].startswith(f.metadata["help"]), key


def test_the_printed_config_names_the_schema_default_of_what_differs(capsys):
    out = _printed(capsys, [str(CONFIGS / "quick.yaml"), "train.lr=1e-3"])
    assert "  lr: 0.001                       # peak learning rate (schema default: 0.003)\n" in out
    assert "  loss: mse                       # training loss, mean-reduced (one of mse, l1, huber, smooth_l1)\n" in out
    assert "(schema default:" not in _printed(capsys, []).split("\n", 3)[3]  # below the header


def test_a_bad_config_exits_2_with_the_message_of_run_py():
    overrides = ["model.hidden_size=-3", "train.lrr=1"]
    with pytest.raises(ConfigError) as info:
        load_config("configs/quick.yaml", overrides)
    proc = subprocess.run(
        [sys.executable, "-m", "ignite_lstm.app.config.command", "configs/quick.yaml", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {info.value}\n")


def test_a_frequency_at_nyquist_exits_2_naming_the_key_and_the_limit():
    proc = subprocess.run(
        [sys.executable, "-m", "ignite_lstm.app.cli", "train", "configs/quick.yaml", "data.frequencies=[500]"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "data.frequencies: [500] at data.fs=1000.0 must be below the Nyquist frequency data.fs / 2 = 500 Hz" in (
        proc.stderr
    )


def test_markdown_takes_no_config(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--markdown", "configs/base.yaml"])
    assert info.value.code == 2
    assert "--markdown takes no config: the table shows the schema's defaults" in capsys.readouterr().err


def test_the_docs_key_table_is_the_schema_table(capsys):
    page = (REPO / "docs" / "reference" / "configuration.md").read_text()
    section = page.split("\n## Every key\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = lines.index("| key | default | allowed | meaning |")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = "\n".join(lines[start:end]) + "\n"
    assert table == _printed(capsys, ["--markdown"]), (
        "update docs/reference/configuration.md's table with: ignite-lstm config --markdown"
    )
    for key, _, _ in _schema_fields():
        assert f"`{key}`" in table
    assert (
        "\n| `train.update` | `window` | one of sequence, window | one optimizer step per batch (sequence) or "
        "per window |\n" in table
    )


def test_missing_keys_take_the_schema_defaults():
    cfg = validate_config({"model": {"hidden_size": 8}, "train": {"optimizer": "sgd"}})
    defaults = Config()
    assert cfg.model.hidden_size == 8
    assert cfg.model.num_layers == defaults.model.num_layers
    assert cfg.train.optimizer == "sgd"
    assert cfg.train.lr == defaults.train.lr
    assert list(cfg.data.frequencies) == defaults.data.frequencies
    assert cfg.data.train.seed == defaults.data.train.seed
    assert cfg.handlers.checkpoint.monitor == "mse"
    assert cfg.name is None and cfg.distributed.backend is None


def test_overrides_apply_with_yaml_typing():
    cfg = load_config(
        CONFIGS / "quick.yaml", ["train.lr=1e-3", "model.hidden_size=8", "data.frequencies=[1,2]", "name=trial"]
    )
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.hidden_size == 8 and isinstance(cfg.model.hidden_size, int)
    assert list(cfg.data.frequencies) == [1.0, 2.0]
    assert all(isinstance(f, float) for f in cfg.data.frequencies)
    assert cfg.name == "trial"
    assert cfg.train.epochs == 2  # from quick.yaml, untouched by the overrides


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"foo": 1}, f"foo: unknown key; allowed here: {TOP_KEYS}"),
        (
            {"model": {"hidden": 3}},
            "model.hidden: unknown key; allowed here: hidden_size, num_layers, dropout, init, chrono_t_max, chrono_fraction",
        ),
        ({"data": {"train": {"seeds": 3}}}, "data.train.seeds: unknown key; allowed here: seed, mixtures"),
        ({"model": 3}, "model: 3 has the wrong type: expected a section (mapping)"),
        ({"model": {"hidden_size": "8"}}, "model.hidden_size: '8' has the wrong type: expected int"),
        ({"train": {"epochs": True}}, "train.epochs: True has the wrong type: expected int"),
        ({"train": {"lr": [0.1]}}, "train.lr: [0.1] has the wrong type: expected float"),
        ({"model": {"hidden_size": None}}, "model.hidden_size: None has the wrong type: expected int"),
        ({"data": {"frequencies": 3.0}}, "data.frequencies: 3.0 has the wrong type: expected a list of float"),
        ({"model": {"hidden_size": -4}}, "model.hidden_size: -4 is out of range: must be >= 1"),
        ({"train": {"lr": 0}}, "train.lr: 0 is out of range: must be > 0.0"),
        ({"model": {"dropout": 1.0}}, "model.dropout: 1.0 is out of range: must be < 1.0"),
        ({"model": {"chrono_t_max": 2}}, "model.chrono_t_max: 2 is out of range: must be > 2.0"),
        ({"model": {"chrono_fraction": 0}}, "model.chrono_fraction: 0 is out of range: must be > 0.0"),
        ({"model": {"init": "xavier"}}, "model.init: 'xavier' is not allowed: choose one of 'default', 'chrono'"),
        ({"data": {"frequencies": [1.0, -3.0]}}, "data.frequencies[1]: -3.0 is out of range: must be > 0.0"),
        (
            {"train": {"optimizer": "adagrad"}},
            "train.optimizer: 'adagrad' is not allowed: choose one of 'adam', 'adamw', 'sgd', 'rmsprop'",
        ),
        (
            {"train": {"loss": "hinge"}},
            "train.loss: 'hinge' is not allowed: choose one of 'mse', 'l1', 'huber', 'smooth_l1'",
        ),
        ({"train": {"update": "batch"}}, "train.update: 'batch' is not allowed: choose one of 'sequence', 'window'"),
        (
            {"train": {"execution": "cuda"}},
            "train.execution: 'cuda' is not allowed: choose one of 'auto', 'fused', 'stepwise'",
        ),
        (
            {"eval": {"execution": "cuda"}},
            "eval.execution: 'cuda' is not allowed: choose one of 'auto', 'fused', 'stepwise'",
        ),
        ({"train": {"amp": "fp8"}}, "train.amp: 'fp8' is not allowed: choose one of 'bf16', 'fp16'"),
        (
            {"train": {"gradient_accumulation_steps": 0}},
            "train.gradient_accumulation_steps: 0 is out of range: must be >= 1",
        ),
        (
            {"handlers": {"lr_scheduler": {"name": "exp"}}},
            "handlers.lr_scheduler.name: 'exp' is not allowed: choose one of 'none', 'step', 'cosine', 'plateau', 'onecycle'",
        ),
        (
            {"distributed": {"backend": "mpi", "nproc_per_node": 2}},
            "distributed.backend: 'mpi' is not allowed: choose one of 'gloo', 'nccl'",
        ),
        ({"data": {"amplitude": [1.2, 0.8]}}, "data.amplitude: [1.2, 0.8] must be [low, high] with low <= high"),
        ({"data": {"amplitude": [0.8, 1.0, 1.2]}}, "data.amplitude: [0.8, 1.0, 1.2] must have exactly 2 entries"),
        ({"data": {"frequencies": []}}, "data.frequencies: [] must have at least 1 entries"),
        ({"data": {"frequencies": [1.0, 3.0, 1.0]}}, "data.frequencies: [1.0, 3.0, 1.0] must not repeat a frequency"),
        (  # issue 26: 500 Hz at fs=1000 trained to R2 = -4e21, 600 Hz aliased, both silently
            {"data": {"fs": 1000, "frequencies": [3.0, 500.0, 600.0]}, "handlers": {"checkpoint": {"monitor": "mse"}}},
            "data.frequencies: [500.0, 600.0] at data.fs=1000 must be below the Nyquist frequency data.fs / 2 = "
            "500 Hz (at or above it the samples alias or vanish)",
        ),
        (
            {"handlers": {"checkpoint": {"monitor": "loss"}}},
            f"handlers.checkpoint.monitor: 'loss' is not a validation metric: choose one of {MONITORS}",
        ),
        (
            {"handlers": {"early_stopping": {"monitor": "mse_f2"}}},
            f"handlers.early_stopping.monitor: 'mse_f2' is not a validation metric: choose one of {MONITORS}",
        ),
        (
            {"handlers": {"lr_scheduler": {"monitor": "accuracy"}}},
            f"handlers.lr_scheduler.monitor: 'accuracy' is not a validation metric: choose one of {MONITORS}",
        ),
        (
            {"distributed": {"nproc_per_node": 2}},
            "distributed.nproc_per_node: more than 1 process needs distributed.backend (gloo or nccl)",
        ),
        (
            {"handlers": {"extra": ["mypkg.handlers"]}},
            "handlers.extra[0]: 'mypkg.handlers' must look like 'package.module:function'",
        ),
        (
            {"handlers": {"extra": ["mypkg:a:b"]}},
            "handlers.extra[0]: 'mypkg:a:b' must look like 'package.module:function'",
        ),
        ({"handlers": {"extra": [3]}}, "handlers.extra[0]: 3 has the wrong type: expected str"),
    ],
)
def test_each_refusal_names_key_value_and_what_is_allowed(values, problem):
    assert _problems(values) == [problem]
    with pytest.raises(ConfigError, match=re.escape(problem)):
        validate_config(values)


def test_monitor_accepts_a_per_frequency_metric():
    cfg = validate_config({"handlers": {"checkpoint": {"monitor": "mse_f3"}}})  # default frequencies 1, 3, 5, 7
    assert cfg.handlers.checkpoint.monitor == "mse_f3"
    cfg = validate_config(
        {"data": {"frequencies": [1.5, 2.0]}, "handlers": {"early_stopping": {"monitor": "mse_f1.5"}}}
    )
    assert cfg.handlers.early_stopping.monitor == "mse_f1.5"
    # quick.yaml does not list the frequencies: the defaults decide which mse_f<Hz> exist
    cfg = load_config(CONFIGS / "quick.yaml", ["handlers.lr_scheduler.monitor=mse_f7"])
    assert cfg.handlers.lr_scheduler.monitor == "mse_f7"
    assert _problems({"data": {"frequencies": [1.0, 2.0]}, "handlers": {"checkpoint": {"monitor": "mse_f3"}}}) == [
        "handlers.checkpoint.monitor: 'mse_f3' is not a validation metric: "
        "choose one of mse, rmse, mae, corr, r2, snr, mse_f1, mse_f2, mse_worst"
    ]


def test_several_problems_are_reported_at_once():
    overrides = [
        "foo=1",
        "model.hidden_size=0",
        "train.optimizer=adagrad",
        "data.amplitude=[2,1]",
        "distributed.nproc_per_node=4",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "quick.yaml", overrides)
    problems = info.value.problems
    assert len(problems) == 5
    for key in ("foo", "model.hidden_size", "train.optimizer", "data.amplitude", "distributed.nproc_per_node"):
        assert sum(p.startswith(f"{key}: ") for p in problems) == 1, key
    assert str(info.value).startswith(f"Invalid configuration {CONFIGS / 'quick.yaml'} (5 problems):\n  - ")


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: the config file does not exist")):
        load_config(path)


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [8, 16\ntrain:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not a readable YAML file (")):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: the top level must be a mapping of sections")):
        load_config(path, ["train.lr=0.1"])


@pytest.mark.parametrize("override", ["train.lr", "=3"])
def test_override_without_key_and_equals_sign(override):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: expected key=value")):
        load_config(CONFIGS / "quick.yaml", [override])


def test_override_with_a_value_that_is_not_yaml():
    with pytest.raises(ConfigError, match=re.escape("override 'data.frequencies=[1,2': the value is not valid YAML")):
        load_config(CONFIGS / "quick.yaml", ["train.lr=0.1", "data.frequencies=[1,2"])


def test_the_returned_config_is_read_only():
    cfg = load_config(CONFIGS / "quick.yaml")
    with pytest.raises(ReadonlyConfigError):
        cfg.train.lr = 1.0
    with pytest.raises(ReadonlyConfigError):
        cfg.data.frequencies[0] = 2.0
    assert OmegaConf.is_readonly(cfg)
    assert cfg.train.lr == Config().train.lr


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"seed": 2**32}, "seed: 4294967296 is out of range: must be < 4294967296"),  # numpy's seed range
        ({"seed": 99999999999999999999}, "seed: 99999999999999999999 is out of range: must be < 4294967296"),
        (
            {"data": {"test": {"seed": 2**63}}},
            "data.test.seed: 9223372036854775808 is out of range: must be < 9223372036854775808",
        ),
        (
            {"train": {"batch_size": 10**20}},
            "train.batch_size: 100000000000000000000 is out of range: must be < 9223372036854775808",
        ),
        ({"threads": 2**31}, "threads: 2147483648 is out of range: must be < 2147483648"),
        ({"train": {"epochs": -(10**20)}}, "train.epochs: -100000000000000000000 is out of range: must be >= 1"),
        (
            {"data": {"duration": 0.0001}},
            "data.duration: 0.0001 at data.fs=1000.0 gives 0 sample(s) per sequence (round(fs * duration)); at least "
            "2 are needed (every target starts at sin(0) = 0 and the metrics need one that varies): "
            "use data.duration >= 0.002",
        ),
        (
            {"data": {"duration": 0.001}},
            "data.duration: 0.001 at data.fs=1000.0 gives 1 sample(s) per sequence (round(fs * duration)); at least "
            "2 are needed (every target starts at sin(0) = 0 and the metrics need one that varies): "
            "use data.duration >= 0.002",
        ),
        (
            {"data": {"fs": 1e308, "duration": 10.0}},
            "data.duration: 10.0 at data.fs=1e+308 gives no finite number of samples",
        ),
    ],
)
def test_values_that_overflow_or_give_no_samples_are_refused(values, problem):
    assert _problems(values) == [problem]


def test_the_shortest_sequence_is_accepted():
    assert validate_config({"data": {"duration": 0.002}}).data.duration == 0.002
    assert validate_config({"seed": 2**32 - 1}).seed == 2**32 - 1


@pytest.mark.parametrize(
    "values, problems",
    [
        ({"train": {"epochs": -1}}, ["train.epochs: -1 is out of range: must be >= 1"]),
        ({"train": {"epochs": "ten"}}, ["train.epochs: 'ten' has the wrong type: expected int"]),
        (
            {"handlers": {"lr_scheduler": {"warmup_epochs": -5.0}}, "train": {"epochs": -1}},
            [
                "train.epochs: -1 is out of range: must be >= 1",
                "handlers.lr_scheduler.warmup_epochs: -5.0 is out of range: must be >= 0.0",
            ],
        ),
        ({"distributed": {"nproc_per_node": 0}}, ["distributed.nproc_per_node: 0 is out of range: must be >= 1"]),
        ({"data": {"fs": -1.0}}, ["data.fs: -1.0 is out of range: must be > 0.0"]),
    ],
)
def test_a_bad_value_is_reported_once_not_again_by_a_rule_that_uses_it(values, problems):
    # e.g. not also "handlers.lr_scheduler.warmup_epochs: 0.0 must be shorter than train.epochs (-1)"
    assert _problems(values) == problems


def test_empty_config_file_is_refused(tmp_path):
    for text in ("", "\n  \n", "# only a comment\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"{path}: the config file is empty; ")):
            load_config(path, ["train.epochs=1"])
    path.write_text("{}\n")  # explicitly nothing: the schema defaults
    assert load_config(path).train.epochs == Config().train.epochs


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: is a directory, not a config file")):
        load_config(tmp_path)


def test_gradient_accumulation_needs_one_optimizer_step_per_batch():
    with pytest.raises(ConfigError) as info:
        validate_config({"train": {"gradient_accumulation_steps": 4, "update": "window"}})
    assert info.value.problems == [
        "train.gradient_accumulation_steps: 4 needs train.update: sequence (with "
        "update: window every window takes its own optimizer step)"
    ]
    assert validate_config({"train": {"gradient_accumulation_steps": 4, "update": "sequence"}})


def test_carry_state_needs_full_training_batches():
    # 5 mixtures x 4 frequencies = 20 training sequences: batches of 8 leave a last one of 4 lanes
    with pytest.raises(ConfigError) as info:
        validate_config({"train": {"carry_state": True, "batch_size": 8}, "data": {"train": {"mixtures": 5}}})
    assert info.value.problems == [
        "train.carry_state: true needs every training batch full, so that lane i of a batch continues lane i of the "
        "previous one: the 20 training sequences (data.train.mixtures x data.frequencies) are not a multiple of "
        "train.batch_size=8; or set data.layout: streams, whose batches are always full"
    ]
    assert validate_config({"train": {"carry_state": True, "batch_size": 10}, "data": {"train": {"mixtures": 5}}})
    assert validate_config({"train": {"carry_state": False, "batch_size": 8}, "data": {"train": {"mixtures": 5}}})
    with pytest.raises(ConfigError) as info:
        validate_config({"train": {"carry_state": True, "curriculum": {"enabled": True, "start": 50}}})
    assert (
        "train.carry_state: true cannot run with train.curriculum.enabled: true (the curriculum cuts every batch "
        "to its first L steps, so lane i of the next batch would not continue where lane i was cut)"
        in info.value.problems
    )


def test_the_old_key_engine_still_loads_as_execution_with_a_warning():
    """train.engine and eval.engine fed create_trainer's execution= (whose own old name, engine=, was
    deprecated); a config or a run folder's config.yaml written with them loads for one release."""
    with pytest.warns(DeprecationWarning, match=r"train\.engine is deprecated .* use train\.execution"):
        cfg = validate_config({"train": {"engine": "stepwise"}})
    assert cfg.train.execution == "stepwise" and "engine" not in cfg.train
    with pytest.warns(DeprecationWarning, match=r"eval\.engine is deprecated"):
        assert load_config(CONFIGS / "quick.yaml", ["eval.engine=stepwise"]).eval.execution == "stepwise"
