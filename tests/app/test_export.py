"""ONNX export of the step (``ignite_lstm.app.export``) and the onnxruntime backend (``onnx_step``, ``extract``).

Tests that run the exporter or onnxruntime are skipped, with the reason, where the
``export`` extra is missing; the argument and bad-input tests run everywhere.
"""

import json
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ignite_lstm.app import cli, export
from ignite_lstm.app.config.schema import validate_config
from ignite_lstm.app.run import extract
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.models.lstm import StatefulLSTM

FREQS = [1.0, 3.0, 5.0, 7.0]
SCALE = 4.0
EXTRA = "the export extra is not installed (pip install -r requirements.txt, or '.[export]')"


def _needs_extra():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"{name}: {EXTRA}")


@pytest.fixture
def extra():
    _needs_extra()


def _model(layers=1):
    torch.manual_seed(layers)
    return StatefulLSTM(input_size=1 + len(FREQS), hidden_size=8, num_layers=layers).eval()


def _checkpoint(folder, model, config=True, name="model.pt"):
    """model.pt as run.py writes it (with config, data.input_scale = 4), or a bare best checkpoint."""
    obj = {"model": model.state_dict(), "model_args": model.config}
    if config:
        cfg = validate_config(
            {"data": {"input_scale": SCALE}, "model": {"hidden_size": 8, "num_layers": model.num_layers}}
        )
        obj["config"] = OmegaConf.to_container(cfg)
    torch.save(obj, folder / name)
    return folder / name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run folder (1 layer, H = 8) exported by ``ignite-lstm export RUN`` (the console entry point)."""
    _needs_extra()
    folder = tmp_path_factory.mktemp("run")
    model = _model()
    checkpoint = _checkpoint(folder, model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ignite-lstm", "export", str(folder)])
        with pytest.raises(SystemExit) as exc:
            cli.main_exit()
    assert exc.value.code == 0
    return model, checkpoint, folder / "model.onnx"


def _inputs(steps, k=1, seed=2):
    """(T, 1, F): the scaled mixture and the one-hot of frequency k, as extract feeds them."""
    data = generate_split(
        frequencies=FREQS,
        fs=1000.0,
        duration=steps / 1000.0,
        amplitude_range=[0.8, 1.2],
        phase_scale=0.01,
        noise_sigma=0.1,
        n_mixtures=1,
        seed=seed,
    )
    x = np.zeros((steps, 1, 1 + len(FREQS)), np.float32)
    x[:, 0, 0] = SCALE * data.mixture[0]
    x[:, 0, 1 + k] = 1.0
    return x


@pytest.mark.parametrize("layers", [1, 2])
def test_onnxruntime_fed_its_own_state_equals_model_step_over_10000_steps(exported, tmp_path, layers):
    from ignite_lstm.deploy.onnx_step import OnnxStep

    if layers == 1:
        model, _, path = exported
    else:
        model, path = _model(2), tmp_path / "two.onnx"
        export.export_onnx(model, path, frequencies=FREQS, input_scale=SCALE)
    step = OnnxStep(path)
    x = _inputs(10_000)
    h, c = step.init_state()
    ys, hs, cs = [], [], []
    for x_t in x:  # onnxruntime carries its own state, sample after sample
        y_t, h, c = step.run(x_t, h, c)
        ys.append(y_t)
        hs.append(h)
        cs.append(c)
    state, ref_y, ref_h, ref_c = None, [], [], []
    with torch.inference_mode():
        for x_t in torch.from_numpy(x):
            y_t, state = model.step(x_t, state)
            ref_y.append(y_t.numpy())
            ref_h.append(state[0].numpy())
            ref_c.append(state[1].numpy())
    np.testing.assert_allclose(np.stack(ys), np.stack(ref_y), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.stack(hs), np.stack(ref_h), rtol=0, atol=1e-5)  # every step: no drift
    np.testing.assert_allclose(np.stack(cs), np.stack(ref_c), rtol=0, atol=1e-5)


def test_step_file_passes_the_checker_and_carries_its_metadata(exported):
    import onnx

    model, checkpoint, path = exported
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta.pop("ignite_lstm.model_args")) == model.config
    assert json.loads(meta.pop("ignite_lstm.frequencies")) == FREQS
    from ignite_lstm import __version__

    assert json.loads(meta.pop("ignite_lstm.state")) == {
        "kind": "tuple",
        "names": ["h", "c"],
        "shapes": [[1, 1, 8]] * 2,
    }
    assert meta == {
        "ignite_lstm.graph": "step",
        "ignite_lstm.input_size": "5",
        "ignite_lstm.output_size": "1",
        "ignite_lstm.model_class": "StatefulLSTM",
        "ignite_lstm.input_scale": "4.0",
        "ignite_lstm.batch_size": "1",
        "ignite_lstm.version": __version__,
        "ignite_lstm.source": str(checkpoint),
    }

    def shapes(values):
        return [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert shapes(proto.graph.input) == [("x_t", [1, 5]), ("h", [1, 1, 8]), ("c", [1, 1, 8])]
    assert shapes(proto.graph.output) == [("y_t", [1, 1]), ("h_next", [1, 1, 8]), ("c_next", [1, 1, 8])]
    assert not {n.op_type for n in proto.graph.node} & {"LSTM", "Loop", "Scan"}  # plain matmuls and gates


def test_extract_on_onnxruntime_equals_the_torch_backend(exported, tmp_path, capsys):
    _, checkpoint, path = exported
    np.save(tmp_path / "in.npy", _inputs(500)[:, 0, 0] / SCALE)
    common = ["--input", str(tmp_path / "in.npy"), "--frequency", "5"]
    assert extract.main(common + ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "torch.npy")]) == 0
    assert (
        extract.main(common + ["--backend", "onnxruntime", "--model", str(path), "--output", str(tmp_path / "ort.csv")])
        == 0
    )
    assert f"-> {tmp_path / 'ort.csv'}" in capsys.readouterr().out
    np.testing.assert_allclose(
        np.loadtxt(tmp_path / "ort.csv", dtype=np.float32), np.load(tmp_path / "torch.npy"), rtol=0, atol=1e-5
    )


def test_batch_and_sequence_graphs(extra, tmp_path, capsys):
    import onnxruntime

    from ignite_lstm.deploy.onnx_step import OnnxStep

    model = _model(2)
    checkpoint = _checkpoint(tmp_path, model)
    assert export.main([str(checkpoint), "--batch", "3"]) == 0
    assert "x_t (3, 5), h, c (2, 3, 8) -> y_t (3, 1)" in capsys.readouterr().out
    step = OnnxStep(tmp_path / "model-batch3.onnx")
    x = torch.randn(50, 3, 5, generator=torch.Generator().manual_seed(0))
    state, onnx_state = None, None
    with torch.inference_mode():
        for x_t in x:
            y_t, state = model.step(x_t, state)
            onnx_y, onnx_state = step.step(x_t, onnx_state)
            np.testing.assert_allclose(onnx_y.numpy(), y_t.numpy(), rtol=0, atol=1e-5)

    sequence = tmp_path / "sequence.onnx"
    assert export.main([str(checkpoint), "--sequence", "60", "--batch", "2", "--output", str(sequence)]) == 0
    session = onnxruntime.InferenceSession(str(sequence), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 60, 5, generator=torch.Generator().manual_seed(1))
    h0 = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        y, (h, c) = model(x, (h0, torch.zeros_like(h0)))
    got = session.run(None, {"x": x.numpy(), "h": h0.numpy(), "c": np.zeros((2, 2, 8), np.float32)})
    for a, b in zip(got, (y, h, c)):
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-5)

    np.save(tmp_path / "in.npy", np.zeros(5))
    args = [
        "--backend",
        "onnxruntime",
        "--input",
        str(tmp_path / "in.npy"),
        "--frequency",
        "3",
        "--output",
        str(tmp_path / "out.npy"),
    ]
    capsys.readouterr()
    assert extract.main(args + ["--model", str(tmp_path / "model-batch3.onnx")]) == 2
    assert "was exported with --batch 3; expected batch 1 (one sample at a time)" in capsys.readouterr().err
    assert extract.main(args + ["--model", str(sequence)]) == 2
    assert "holds the whole-sequence graph (exported with --sequence)" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()


def _foreign_checkpoint(p):
    torch.save({"state": torch.zeros(2)}, p / "f.pt")
    return [str(p / "f.pt")]


def _not_a_model(p):
    (p / "model.pt").write_text("not a model")
    return [str(p / "model.pt")]


def _under_a_file(p):
    (p / "afile").write_text("")
    return [str(_checkpoint(p, _model())), "--output", str(p / "afile" / "m.onnx")]


def _output_folder(p):
    (p / "m.onnx").mkdir()
    return [str(_checkpoint(p, _model())), "--output", str(p / "m.onnx")]


EXPORT_ERRORS = {
    "foreign checkpoint": (_foreign_checkpoint, "f.pt is not a StatefulLSTM file of this package"),
    "not a model file": (_not_a_model, "model.pt could not be read as a torch file"),
    "missing": (lambda p: [str(p / "none.pt")], "none.pt does not exist."),
    "unwritable output": (_under_a_file, "m.onnx cannot be written: "),
    "output is a folder": (_output_folder, "m.onnx is a folder; expected a file name ending in .onnx."),
    "extension": (
        lambda p: [str(_checkpoint(p, _model())), "--output", str(p / "m.pt")],
        "has an unknown extension '.pt'; allowed: ('.onnx',).",
    ),
    "batch": (
        lambda p: [str(_checkpoint(p, _model())), "--batch", "0"],
        "--batch should be a positive integer, got 0.",
    ),
    "sequence": (
        lambda p: [str(_checkpoint(p, _model())), "--sequence", "-5"],
        "--sequence should be a positive number of steps, got -5.",
    ),
    "frequencies of another model": (
        lambda p: [str(_checkpoint(p, _model(), config=False)), "--frequencies", "1,3", "--input-scale", "4"],
        "2 frequencies need input_size 3 and output_size 1 (for a model of another task, leave --frequencies out)",
    ),
    "frequencies without the scale": (
        lambda p: [str(_checkpoint(p, _model(), config=False)), "--frequencies", "1,3,5,7"],
        "--frequencies needs --input-scale",
    ),
}


def test_a_bare_checkpoint_of_any_task_exports_without_signal_settings(extra, tmp_path, capsys):
    torch.manual_seed(0)
    classifier = StatefulLSTM(input_size=12, hidden_size=8, num_layers=2, output_size=9).eval()
    checkpoint = _checkpoint(tmp_path, classifier, config=False)
    assert export.main([str(checkpoint)]) == 0
    assert "no signal-task settings (a model of another task)" in capsys.readouterr().out
    from ignite_lstm.deploy.onnx_step import OnnxStep

    step = OnnxStep(tmp_path / "model.onnx")
    assert step.config == classifier.config and step.frequencies is None and step.input_scale is None
    x = torch.randn(1, 12)
    y, _ = step.step(x)
    torch.testing.assert_close(y, classifier.step(x)[0].detach(), rtol=1e-5, atol=1e-5)
    out = tmp_path / "y.npy"
    np.save(tmp_path / "x.npy", np.zeros(10, np.float32))
    code = extract.main(
        [
            "--backend",
            "onnxruntime",
            "--model",
            str(tmp_path / "model.onnx"),
            "--input",
            str(tmp_path / "x.npy"),
            "--frequency",
            "3",
            "--output",
            str(out),
        ]
    )
    assert code == 2 and "holds no signal-task settings" in capsys.readouterr().err


@pytest.mark.parametrize("case", list(EXPORT_ERRORS))
def test_export_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, case):
    make, message = EXPORT_ERRORS[case]
    assert export.main(make(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".onnx", ".tmp")]


def _foreign_graph(path, metadata=None, producer="someone"):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
    )
    proto = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # readable by older onnxruntime builds too
    if metadata:
        helper.set_model_props(proto, metadata)
    onnx.save(proto, path)


def _ours_edited(exported, path, key, value):
    import onnx

    proto = onnx.load(exported[2])
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.pop(key) if value is None else meta.__setitem__(key, value)
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, path)


def _ours_on_a_foreign_graph(exported, path):
    import onnx

    _foreign_graph(path, {p.key: p.value for p in onnx.load(exported[2]).metadata_props})


ONNX_ERRORS = {
    "no metadata": (
        lambda e, p: _foreign_graph(p),
        "was not written by ignite-lstm export: its metadata "
        "has no ignite_lstm.* entries (producer 'someone', metadata keys []).",
    ),
    "foreign metadata": (
        lambda e, p: _foreign_graph(p, {"author": "x"}, "other"),
        "has no ignite_lstm.* entries (producer 'other', metadata keys ['author']).",
    ),
    "bad value": (
        lambda e, p: _ours_edited(e, p, "ignite_lstm.frequencies", "abc"),
        "metadata 'ignite_lstm.frequencies' is 'abc'; expected a JSON list of frequencies in Hz.",
    ),
    "missing key": (
        lambda e, p: _ours_edited(e, p, "ignite_lstm.input_scale", None),
        "has no metadata 'ignite_lstm.input_scale'; expected a finite number.",
    ),
    "foreign graph": (_ours_on_a_foreign_graph, "has inputs {'x': [1, 5]} and outputs {'y': [1, 5]}; its metadata"),
    "not onnx": (lambda e, p: p.write_text("not onnx"), "could not be loaded by onnxruntime: "),
    "missing": (lambda e, p: None, "does not exist."),
}


@pytest.mark.parametrize("case", list(ONNX_ERRORS))
def test_extract_refuses_an_onnx_file_made_by_something_else(exported, tmp_path, capsys, case):
    make, message = ONNX_ERRORS[case]
    make(exported, tmp_path / "other.onnx")
    np.save(tmp_path / "in.npy", np.zeros(5))
    args = [
        "--backend",
        "onnxruntime",
        "--model",
        str(tmp_path / "other.onnx"),
        "--input",
        str(tmp_path / "in.npy"),
        "--frequency",
        "3",
        "--output",
        str(tmp_path / "out.npy"),
    ]
    assert extract.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: ONNX model {tmp_path / 'other.onnx'} ") and message in err
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: --checkpoint (or --backend onnxruntime --model FILE)"),
        (["--checkpoint", "m.pt", "--model", "m.onnx"], "argument --model: only with --backend onnxruntime"),
        (["--backend", "onnxruntime"], "argument --backend onnxruntime: needs --model FILE.onnx, and no --checkpoint"),
        (["--backend", "onnxruntime", "--model", "m.onnx", "--checkpoint", "m.pt"], "needs --model FILE.onnx, and no"),
    ],
)
def test_extract_backend_arguments(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        extract.main(["--input", "s.npy", "--frequency", "3", "--output", "y.npy"] + args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_onnxruntime_backend_is_cpu_only(tmp_path, capsys):
    args = [
        "--backend",
        "onnxruntime",
        "--model",
        "m.onnx",
        "--input",
        "s.npy",
        "--frequency",
        "3",
        "--output",
        str(tmp_path / "y.npy"),
        "--device",
        "cuda",
    ]
    assert extract.main(args) == 2
    assert "--device cuda does not apply to --backend onnxruntime" in capsys.readouterr().err


def test_missing_extra_is_named_with_its_install_command(tmp_path, capsys, monkeypatch):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import raises ImportError
    assert export.main([str(_checkpoint(tmp_path, _model())), "--output", str(tmp_path / "m.onnx")]) == 2
    assert (
        "ONNX export needs onnx, which is not installed: pip install 'ignite_lstm[export]'" in capsys.readouterr().err
    )
    (tmp_path / "m.onnx").write_text("")
    assert (
        extract.main(
            [
                "--backend",
                "onnxruntime",
                "--model",
                str(tmp_path / "m.onnx"),
                "--input",
                "s.npy",
                "--frequency",
                "3",
                "--output",
                str(tmp_path / "y.npy"),
            ]
        )
        == 2
    )
    assert "needs onnxruntime, which is not installed: pip install 'ignite_lstm[export]'" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


def test_console_entry_point_dispatches_export_and_keeps_training_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ignite-lstm", "export", "--help"])
    with pytest.raises(SystemExit) as exc:
        cli.main_exit()
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage: ignite-lstm export ")
    monkeypatch.setattr(sys, "argv", ["ignite-lstm", str(tmp_path / "export.yaml")])  # a config, even so named
    with pytest.raises(SystemExit) as exc:
        cli.main_exit()
    assert exc.value.code == 2 and "export.yaml" in capsys.readouterr().err
