"""Export any step model (a GRU's tensor state, a dict state, a classifier StatefulLSTM) and run it on onnxruntime."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from ignite_lstm.deploy.onnx_export import export_onnx
from ignite_lstm.models.lstm import StatefulLSTM

for _name in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_name, reason=f"{_name}: the export extra is not installed ('.[export]')")

from ignite_lstm.deploy.onnx_step import OnnxStep  # noqa: E402


class GRUStep(nn.Module):
    """A user's model: nn.GRU, its state one tensor (layers, B, H)."""

    def __init__(self, f=3, h=6, o=2):
        super().__init__()
        self.gru, self.head = nn.GRU(f, h, num_layers=2, batch_first=True), nn.Linear(h, o)

    def forward(self, x, state=None):
        out, state = self.gru(x, state)
        return self.head(out), state

    def step(self, x_t, state=None):
        y, state = self(x_t.unsqueeze(1), state)
        return y.squeeze(1), state


class DictCell(nn.Module):
    """A state as a dict of tensors."""

    input_size = 3

    def __init__(self):
        super().__init__()
        self.cell, self.head = nn.GRUCell(3, 4), nn.Linear(4, 1)

    def step(self, x_t, state=None):
        h = torch.zeros(x_t.shape[0], 4) if state is None else state["h"]
        h = self.cell(x_t, h)
        return self.head(h), {"h": h, "steps": (state["steps"] + 1) if state else torch.ones(x_t.shape[0], 1)}


def _compare(model, path, steps=20, batch=1, f=3):
    onnx_step = OnnxStep(path)
    gen = torch.Generator().manual_seed(0)
    state_t, state_o = None, None
    with torch.no_grad():
        for _ in range(steps):
            x = torch.randn(batch, f, generator=gen)
            y_t, state_t = model.step(x, state_t)
            y_o, state_o = onnx_step.step(x, state_o)
            torch.testing.assert_close(y_o, y_t, rtol=1e-5, atol=1e-5)
    return onnx_step, state_o


def test_a_gru_with_a_tensor_state_exports_and_runs(tmp_path):
    torch.manual_seed(0)
    model = GRUStep().eval()
    export_onnx(model, tmp_path / "gru.onnx", input_size=3)
    step, state = _compare(model, tmp_path / "gru.onnx")
    assert step.state_names == ("state",) and isinstance(state, torch.Tensor) and state.shape == (2, 1, 6)
    assert step.frequencies is None and step.input_scale is None and step.config == {"input_size": 3, "output_size": 2}


def test_a_dict_state_exports_and_runs(tmp_path):
    torch.manual_seed(0)
    model = DictCell().eval()
    export_onnx(model, tmp_path / "cell.onnx", batch_size=2)
    step, state = _compare(model, tmp_path / "cell.onnx", batch=2)
    assert step.state_names == ("state_h", "state_steps") and set(state) == {"h", "steps"}
    np.testing.assert_array_equal(state["steps"].numpy(), np.full((2, 1), 20.0, np.float32))


def test_a_classifier_lstm_exports_without_task_settings(tmp_path):
    torch.manual_seed(0)
    model = StatefulLSTM(12, 16, num_layers=2, output_size=9).eval()
    export_onnx(model, tmp_path / "classifier.onnx")
    step, state = _compare(model, tmp_path / "classifier.onnx", f=12)
    assert step.state_names == ("h", "c") and step.config == model.config and step.frequencies is None
    h, c = step.init_state()
    y, h, c = step.run(np.zeros((1, 12), np.float32), h, c)
    assert y.shape == (1, 9) and h.shape == (2, 1, 16)


def test_what_cannot_be_exported_is_refused_with_the_reason(tmp_path):
    with pytest.raises(TypeError, match=r"Argument model should be an nn.Module with a step\(x_t, state\) method"):
        export_onnx(nn.Linear(3, 1), tmp_path / "x.onnx", input_size=3)
    with pytest.raises(ValueError, match="Argument input_size should be given: GRUStep has no input_size attribute."):
        export_onnx(GRUStep(), tmp_path / "x.onnx")

    class DataDependent(GRUStep):
        def step(self, x_t, state=None):
            y, state = super().step(x_t, state)
            if float(y.sum()) > 0:  # a Python branch on a value: torch.export cannot trace it
                y = y * 2
            return y, state

    with pytest.raises(ValueError, match=r"could not be exported: torch.onnx could not trace its step"):
        export_onnx(DataDependent(), tmp_path / "x.onnx", input_size=3)
    assert not (tmp_path / "x.onnx").exists()

    class ListState(GRUStep):
        def step(self, x_t, state=None):
            return x_t, [1, 2]

    with pytest.raises(TypeError, match="returned list, which ONNX cannot take as graph inputs"):
        export_onnx(ListState(), tmp_path / "x.onnx", input_size=3)


def test_the_exporter_module_imports_no_onnx():
    code = "import sys, ignite_lstm.deploy.onnx_export, ignite_lstm.deploy.onnx_step; print([m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
