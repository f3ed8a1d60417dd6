import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ignite_lstm.app.config.schema import load_config, validate_config
from ignite_lstm.app.task.model import model_args, setup_model
from ignite_lstm.models.lstm import StatefulLSTM, load_model

B, T, F_IN, H, O = 3, 12, 4, 6, 2


def _model(num_layers=2, dtype=torch.float64, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=num_layers, dropout=dropout, output_size=O).to(dtype)


def _x(dtype=torch.float64, batch=B, steps=T, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, F_IN, generator=gen, dtype=torch.float64).to(dtype)


def _step_all(model, x, state=None):
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = model.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_step_over_a_sequence_equals_forward(num_layers, dtype, tol):
    model = _model(num_layers, dtype)
    x = _x(dtype)
    y_fwd, (h_fwd, c_fwd) = model(x)
    y_step, (h_step, c_step) = _step_all(model, x)
    assert y_fwd.shape == y_step.shape == (B, T, O)
    torch.testing.assert_close(y_step, y_fwd, rtol=0, atol=tol)
    torch.testing.assert_close(h_step, h_fwd, rtol=0, atol=tol)
    torch.testing.assert_close(c_step, c_fwd, rtol=0, atol=tol)


def test_step_equals_forward_in_eval_mode_with_dropout():
    model = _model(num_layers=2, dropout=0.5).eval()
    x = _x()
    torch.testing.assert_close(_step_all(model, x)[0], model(x)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_state_shapes_and_initial_state(num_layers):
    model = _model(num_layers)
    h0, c0 = model.init_state(B)
    assert h0.shape == c0.shape == (num_layers, B, H)
    assert h0.dtype == torch.float64 and not h0.any() and not c0.any()
    h32, _ = model.init_state(2, dtype=torch.float32)
    assert h32.shape == (num_layers, 2, H) and h32.dtype == torch.float32
    x = _x()
    _, (h, c) = model(x)
    assert h.shape == c.shape == (num_layers, B, H)
    y_t, (h, c) = model.step(x[:, 0])
    assert y_t.shape == (B, O) and h.shape == c.shape == (num_layers, B, H)
    # state=None means the zero state
    torch.testing.assert_close(model(x, model.init_state(B))[0], model(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(model.step(x[:, 0], (h0, c0))[0], y_t, rtol=0, atol=0)


def test_forward_last_state_is_last_hidden_output():
    model = _model(num_layers=1)
    x = _x()
    y, (h, _) = model(x)
    torch.testing.assert_close(model.head(h[0]), y[:, -1], rtol=0, atol=1e-12)


def test_state_is_carried_between_calls():
    model = _model(num_layers=3)
    x = _x()
    y_all, (h_all, c_all) = model(x)
    y1, state = model(x[:, :5])
    y2, (h2, c2) = model(x[:, 5:], state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(h2, h_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(c2, c_all, rtol=0, atol=1e-12)
    # forward then step continues the same sequence
    y_steps, _ = _step_all(model, x[:, 5:], state)
    torch.testing.assert_close(y_steps, y2, rtol=0, atol=1e-12)
    # a carried state makes a difference (guards the check above against a trivially zero state)
    assert (model(x[:, 5:])[0] - y2).abs().max() > 1e-3


def test_config_rebuilds_the_model():
    model = _model(num_layers=2, dropout=0.25)
    assert model.config == {"input_size": F_IN, "hidden_size": H, "num_layers": 2, "dropout": 0.25, "output_size": O}
    rebuilt = StatefulLSTM(**model.config).to(torch.float64)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x = _x()
    model.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0], rtol=0, atol=0)


def test_load_model_round_trip(tmp_path):
    model = _model(num_layers=2, dtype=torch.float32, dropout=0.1)
    path = tmp_path / "model.pt"
    torch.save({"model_args": model.config, "model": model.state_dict(), "epoch": 3, "metrics": {"mse": 0.5}}, path)
    loaded, rest = load_model(path)
    assert isinstance(loaded, StatefulLSTM) and not loaded.training
    assert loaded.config == model.config
    assert rest == {"epoch": 3, "metrics": {"mse": 0.5}}
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q)
    x = _x(torch.float32)
    torch.testing.assert_close(loaded(x)[0], model.eval()(x)[0], rtol=0, atol=0)
    loaded_str, _ = load_model(str(path))
    assert loaded_str.config == model.config


def test_load_model_refuses_a_missing_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"Model file {path} does not exist.")):
        load_model(path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"Model file {tmp_path} does not exist.")):
        load_model(tmp_path)  # a directory is not a model file


def test_load_model_refuses_a_file_that_is_not_torch(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a torch file\n")
    with pytest.raises(ValueError, match=re.escape(f"Model file {path} could not be read as a torch file: ")):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [
        {"model": {}},  # no model_args
        {"model_args": {"input_size": 2, "hidden_size": 2}},  # no state dict
        [1, 2, 3],  # not a dict
    ],
)
def test_load_model_refuses_a_foreign_torch_file(tmp_path, content):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    msg = f"Model file {path} is not a StatefulLSTM file of this package: it needs 'model_args' and 'model'."
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_model(path)


@pytest.mark.parametrize(
    "kwargs, error, msg",
    [
        ({"input_size": 2.0}, TypeError, "Argument input_size should be an integer, got float."),
        ({"hidden_size": "8"}, TypeError, "Argument hidden_size should be an integer, got str."),
        ({"num_layers": True}, TypeError, "Argument num_layers should be an integer, got bool."),
        ({"output_size": None}, TypeError, "Argument output_size should be an integer, got NoneType."),
        ({"input_size": 0}, ValueError, "Argument input_size should be positive, got 0."),
        ({"hidden_size": -3}, ValueError, "Argument hidden_size should be positive, got -3."),
        ({"num_layers": 0}, ValueError, "Argument num_layers should be positive, got 0."),
        ({"output_size": 0}, ValueError, "Argument output_size should be positive, got 0."),
        ({"dropout": "0.1"}, TypeError, "Argument dropout should be a float, got str."),
        ({"dropout": False}, TypeError, "Argument dropout should be a float, got bool."),
        ({"dropout": 1.0}, ValueError, "Argument dropout should be in [0, 1), got 1.0."),
        ({"dropout": -0.1}, ValueError, "Argument dropout should be in [0, 1), got -0.1."),
    ],
)
def test_constructor_argument_errors(kwargs, error, msg):
    args = {"input_size": 2, "hidden_size": 3, **kwargs}
    with pytest.raises(error, match=re.escape(msg)):
        StatefulLSTM(**args)


class _Foreign:
    """An object of a class ``torch.load(weights_only=True)`` does not know."""


def test_load_model_says_why_an_empty_or_foreign_file_cannot_be_read(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(
        ValueError, match=re.escape(f"Model file {path} could not be read as a torch file: empty file (0 bytes).")
    ):
        load_model(path)
    path = tmp_path / "state.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Model file {path} could not be read as a torch file: not a "
            f"file written by torch.save (it starts with b'\\x93NUM')."
        ),
    ):
        load_model(path)
    path = tmp_path / "object.pt"
    torch.save({"model": _Foreign()}, path)  # a real torch file, but of objects the safe loader refuses
    with pytest.raises(ValueError) as info:
        load_model(path)
    assert str(info.value).startswith(
        f"Model file {path} is not a checkpoint written by ignite_lstm: it holds "
        f"objects other than tensors, numbers, strings, lists and dicts (Unsupported "
        f"global: GLOBAL "
    )
    assert "weights_only" not in str(info.value) and "safe_globals" not in str(info.value)


def test_step_on_one_unbatched_sample_says_how_to_make_a_batch_of_one():
    model = _model()
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Argument x_t should be a (batch, features) tensor, got shape (4,); "
            "for one sequence use x_t[None] (batch of 1)."
        ),
    ):
        model.step(torch.zeros(F_IN, dtype=torch.float64))


@pytest.mark.parametrize(
    "values",
    [{}, {"data": {"frequencies": [1.0, 2.0, 3.5]}, "model": {"hidden_size": 6, "num_layers": 3, "dropout": 0.25}}],
)
def test_model_args_are_the_arguments_of_the_model_that_setup_model_builds(values):
    cfg = validate_config(values)
    args = model_args(cfg)
    model = setup_model(cfg)
    assert args == model.config
    assert {k: type(v) for k, v in args.items()} == {k: type(v) for k, v in model.config.items()}
    assert isinstance(model, StatefulLSTM)


def test_model_args_read_the_config_without_building_a_model():
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quick.yaml")
    before = torch.get_rng_state()
    assert model_args(cfg) == {"input_size": 5, "hidden_size": 16, "num_layers": 1, "dropout": 0.0, "output_size": 1}
    assert torch.equal(torch.get_rng_state(), before)  # no weights were drawn
    setup_model(cfg)
    assert not torch.equal(torch.get_rng_state(), before)
