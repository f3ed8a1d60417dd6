"""Run an exported step model on onnxruntime: any step model without PyTorch.

``ignite_lstm.deploy.onnx_export.export_onnx`` (and ``ignite-lstm export``) writes the L = 1 step as
ONNX, inputs ``x_t`` (B, F) and the state's tensors (``h`` and ``c`` (L, B, H) for ``StatefulLSTM``,
``state`` for a GRU's tensor, ...), outputs ``y_t`` (B, O) and the next state's (``h_next``, ...), and
stores in the file's metadata (``metadata_props``, keys ``ignite_lstm.*``) what is needed to use it:
the batch size, the state's layout, the model's arguments where it has them, and a task's settings
(the signal task's frequencies and input scale; None for any other task). ``OnnxStep`` reads them
back and steps the graph on onnxruntime's CPU provider: ``run`` needs numpy only; ``step`` follows
the model contract (torch tensors, the state as the model had it: a tensor, tuple or dict) so that
``ignite_lstm.app.run.extract.stream_extract`` drives it as it drives ``model.step``. onnxruntime is
imported when an ``OnnxStep`` is made (the ``export`` extra), never at import.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METADATA_PREFIX", "OnnxModelError", "OnnxStep", "require_extra"]

METADATA_PREFIX = "ignite_lstm."
INPUTS = ("x_t", "h", "c")
OUTPUTS = ("y_t", "h_next", "c_next")
_MODEL_ARGS = ("input_size", "hidden_size", "num_layers", "output_size")


class OnnxModelError(ValueError):
    """An ONNX file that is not a step model written by ``export_onnx``: the message names it."""


def require_extra(module: str, what: str):
    """Import a module of the ``export`` extra, or raise a ModuleNotFoundError saying how to install it.

    Args:
        module: ``onnx``, ``onnxscript`` or ``onnxruntime``.
        what: what needs it, the start of the message.

    Returns:
        The module.

    Example:
        >>> ort = require_extra("onnxruntime", "--backend onnxruntime")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{what} needs {module}, which is not installed: pip install 'ignite_lstm[export]' ({exc})."
        ) from exc


def _field(path: Path, props: dict[str, str], key: str, parse, expected: str) -> Any:
    name = METADATA_PREFIX + key
    if name not in props:
        raise OnnxModelError(f"ONNX model {path} has no metadata {name!r}; expected {expected}.")
    try:
        value = parse(props[name])
    except (ValueError, TypeError, KeyError):
        value = None
    if value is None:
        raise OnnxModelError(f"ONNX model {path} metadata {name!r} is {props[name]!r}; expected {expected}.")
    return value


def _positive_int(text: str) -> int | None:
    value = int(text)
    return value if value >= 1 else None


def _model_args(text: str) -> dict | None:
    args = json.loads(text)
    ok = isinstance(args, dict) and all(
        isinstance(args.get(k), int) and not isinstance(args.get(k), bool) and args[k] >= 1 for k in _MODEL_ARGS
    )
    return args if ok else None


def _frequencies(text: str) -> list[float] | None:
    values = json.loads(text)
    ok = (
        isinstance(values, list)
        and values
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)
    )
    return [float(v) for v in values] if ok else None


def _layout(text: str) -> dict | None:
    layout = json.loads(text)
    ok = (
        isinstance(layout, dict)
        and layout.get("kind") in ("tensor", "tuple", "dict")
        and isinstance(layout.get("names"), list)
        and isinstance(layout.get("shapes"), list)
        and len(layout["names"]) == len(layout["shapes"]) >= 1
        and (layout["kind"] != "dict" or len(layout.get("keys", [])) == len(layout["names"]))
    )
    return layout if ok else None


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


class OnnxStep:
    """The L = 1 step of an exported model on onnxruntime, configured from the file's metadata alone.

    Args:
        path: an ``.onnx`` file written by ``export_onnx`` or ``ignite-lstm export`` (the step graph).
        threads: onnxruntime's intra-op threads (one sample per call gains nothing from more).
        batch_size: if given, the batch size the graph must have (1 for streaming).

    Attributes:
        config: the model's constructor arguments where the file has them (``StatefulLSTM(**config)``),
            else ``{"input_size": F, "output_size": O}``.
        state_names: the graph's state inputs, in order (``("h", "c")`` for ``StatefulLSTM``).
        frequencies: the signal task's frequencies (Hz), in the order of the one-hot input, or None.
        input_scale: the signal task's factor of the mixture in the input, or None.
        batch_size: the fixed batch size B of the graph.
        version: the ignite_lstm version that wrote the file.

    Raises:
        FileNotFoundError: no such file.
        OnnxModelError: not an ONNX model, no or foreign ``ignite_lstm.*`` metadata, the
            whole-sequence graph, inputs/outputs that do not match the metadata, another batch size.
        ModuleNotFoundError: onnxruntime is not installed.

    Example:
        >>> step = OnnxStep("runs/base-seed0/model.onnx")
        >>> state = step.init_state()
        >>> y_t, *state = step.run(np.zeros((1, 5), np.float32), *state)  # numpy only
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 1, batch_size: int | None = None) -> None:
        ort = require_extra("onnxruntime", "Running an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the exception below carries the reason
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise OnnxModelError(f"ONNX model {path} could not be loaded by onnxruntime: {exc}") from exc
        self.path = path
        meta = self.session.get_modelmeta()
        props = dict(meta.custom_metadata_map)
        if not any(k.startswith(METADATA_PREFIX) for k in props):
            raise OnnxModelError(
                f"ONNX model {path} was not written by ignite-lstm export: its metadata has no "
                f"{METADATA_PREFIX}* entries (producer {meta.producer_name!r}, metadata keys {sorted(props)})."
            )
        graph = _field(path, props, "graph", lambda s: s if s in ("step", "sequence") else None, "'step'")
        if graph != "step":
            raise OnnxModelError(
                f"ONNX model {path} holds the whole-sequence graph (exported with --sequence); "
                f"streaming needs the step graph: export again without --sequence."
            )
        self.batch_size = _field(path, props, "batch_size", _positive_int, "a positive integer")
        has = lambda key: METADATA_PREFIX + key in props  # noqa: E731
        model_args = None
        if has("model_args") or not has("state"):  # files before any-model export always have model_args
            model_args = _field(
                path, props, "model_args", _model_args, f"a JSON object with positive integers {list(_MODEL_ARGS)}"
            )
        if has("state"):
            layout = _field(path, props, "state", _layout, "a JSON object with kind, names and shapes")
            sizes = {
                k: _field(path, props, k, _positive_int, "a positive integer") for k in ("input_size", "output_size")
            }
        else:  # a StatefulLSTM's (h, c), (L, B, H) each; model_args was read above
            args: dict = model_args or {}
            shape = [args["num_layers"], self.batch_size, args["hidden_size"]]
            layout = {"kind": "tuple", "names": ["h", "c"], "shapes": [shape, shape]}
            sizes = {k: args[k] for k in ("input_size", "output_size")}
        self.layout = layout
        self.state_names = tuple(layout["names"])
        self.config = model_args if model_args is not None else sizes
        self.frequencies, self.input_scale = None, None
        if has("frequencies") or has("input_scale") or model_args is not None and not has("state"):
            # the signal task's settings: both or neither (files before any-model export always have both)
            self.frequencies = _field(path, props, "frequencies", _frequencies, "a JSON list of frequencies in Hz")
            self.input_scale = _field(path, props, "input_scale", _finite, "a finite number")
        self.version = props.get(METADATA_PREFIX + "version", "?")
        self._check_graph(sizes)
        if batch_size is not None and batch_size != self.batch_size:
            raise OnnxModelError(
                f"ONNX model {path} was exported with --batch {self.batch_size}; expected "
                f"batch {batch_size}{' (one sample at a time)' if batch_size == 1 else ''}: "
                f"export it with --batch {batch_size}."
            )

    def _check_graph(self, sizes: dict) -> None:
        b, names, shapes = self.batch_size, self.layout["names"], self.layout["shapes"]
        want_in = {"x_t": [b, sizes["input_size"]], **dict(zip(names, shapes))}
        want_out = {"y_t": [b, sizes["output_size"]], **{f"{n}_next": s for n, s in zip(names, shapes)}}
        got_in = {i.name: i.shape for i in self.session.get_inputs()}
        got_out = {o.name: o.shape for o in self.session.get_outputs()}
        if got_in != want_in or got_out != want_out:
            raise OnnxModelError(
                f"ONNX model {self.path} has inputs {got_in} and outputs {got_out}; its metadata "
                f"(model {self.config}, batch_size {b}, state {names}) needs inputs {want_in} and outputs {want_out}."
            )
        if self.frequencies is not None and len(self.frequencies) != sizes["input_size"] - 1:
            raise OnnxModelError(
                f"ONNX model {self.path} lists {len(self.frequencies)} frequencies for "
                f"input_size {sizes['input_size']}; expected input_size - 1."
            )

    def init_state(self) -> tuple[np.ndarray, ...]:
        """Zero state, one float32 array per state input (``(h, c)``, each (L, B, H), for ``StatefulLSTM``)."""
        return tuple(np.zeros(shape, np.float32) for shape in self.layout["shapes"])

    def run(self, x_t: np.ndarray, *state: np.ndarray) -> tuple[np.ndarray, ...]:
        """One step on numpy arrays: x_t (B, F) and the state's arrays -> (y_t (B, O), *next state)."""
        if len(state) != len(self.state_names):
            raise ValueError(
                f"Argument state should be {len(self.state_names)} arrays {self.state_names}, got {len(state)}."
            )
        return tuple(self.session.run(None, {"x_t": x_t, **dict(zip(self.state_names, state))}))

    # The part of the model contract stream_extract uses: eval(), to(device), step(x_t, state).

    def eval(self) -> OnnxStep:
        """No-op (the graph is the inference graph); returns self."""
        return self

    def to(self, device) -> OnnxStep:
        """Returns self for the CPU; onnxruntime's CPU provider runs nothing elsewhere."""
        if str(device).split(":")[0] != "cpu":
            raise OnnxModelError(f"ONNX model {self.path} runs on onnxruntime's CPU provider; got device {device}.")
        return self

    def step(self, x_t, state=None):
        """One step on torch tensors: x_t (B, F) -> y_t (B, O), the state as the model had it; None: zeros."""
        import torch

        kind = self.layout["kind"]
        if state is None:
            arrays = self.init_state()
        elif kind == "tensor":
            arrays = (state.numpy(),)
        elif kind == "tuple":
            arrays = tuple(t.numpy() for t in state)
        else:
            arrays = tuple(state[k].numpy() for k in self.layout["keys"])
        y_t, *out = self.run(np.ascontiguousarray(x_t.numpy(), dtype=np.float32), *arrays)
        tensors = [torch.from_numpy(a) for a in out]
        if kind == "tensor":
            return torch.from_numpy(y_t), tensors[0]
        if kind == "tuple":
            return torch.from_numpy(y_t), tuple(tensors)
        return torch.from_numpy(y_t), dict(zip(self.layout["keys"], tensors))
