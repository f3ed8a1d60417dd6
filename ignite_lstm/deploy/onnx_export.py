"""Export any step model to ONNX: ``export_onnx(model, path, ...)`` for a module with ``step(x_t, state)``.

The default graph is the L = 1 step with its state explicit and every shape fixed: inputs
``x_t`` (B, F) and the state's tensors, outputs ``y_t`` (B, O) and the next state's tensors.
The state may be a tensor (a GRU's h: ``state`` -> ``state_next``), a tuple (an LSTM's
(h, c): ``h``, ``c`` for ``StatefulLSTM``, else ``state0``, ``state1``, ...) or a dict (its keys),
as the model's own ``step(x_t, None)`` returns it. ``steps=T`` exports ``model(x, state)``
over a fixed T instead (x (B, T, F) -> y (B, T, O)), for batch inference.

The file's metadata (``metadata_props``, keys ``ignite_lstm.*``) says what ``OnnxStep`` needs
to run it with nothing else: the graph, B, F, O, the state's layout (kind, names, shapes),
the model's arguments where it has them (``model.config``), the package version, and any
``metadata`` given (the signal task adds its frequencies and input scale). onnx and
onnxscript are imported when an export runs (the ``export`` extra), never at import.

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export``, then onnxscript), traced from
the PyTorch code with the native kernel switched off; the model is checked with
``onnx.checker`` (full check) before the file is written, atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn

from ignite_lstm._internal.compat import ONNX_REGISTRATION_LOGGER
from ignite_lstm.deploy.onnx_step import METADATA_PREFIX, require_extra
from ignite_lstm.models import native

__all__ = ["export_onnx", "state_layout"]

# The exporter's chatter: "torchvision is not installed" warnings, the optimizer's INFO lines.
_QUIET = {ONNX_REGISTRATION_LOGGER: logging.ERROR, "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING}


def state_layout(model: nn.Module, state: Any) -> dict[str, Any]:
    """How a state is laid out as graph tensors: ``{"kind": "tensor"|"tuple"|"dict", "names": [...]}``.

    Args:
        model: the model (``StatefulLSTM``'s (h, c) are named ``h`` and ``c``).
        state: an example state, as ``model.step(x_t, None)`` returns it.

    Returns:
        The layout, with ``"keys"`` for a dict.
    """
    if isinstance(state, torch.Tensor):
        return {"kind": "tensor", "names": ["state"]}
    if isinstance(state, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in state) and state:
        names = ["h", "c"] if len(state) == 2 and type(model).__name__ == "StatefulLSTM" else None
        return {"kind": "tuple", "names": names or [f"state{i}" for i in range(len(state))]}
    if isinstance(state, Mapping) and state and all(isinstance(t, torch.Tensor) for t in state.values()):
        keys = [str(k) for k in state]
        return {"kind": "dict", "names": [f"state_{k}" for k in keys], "keys": keys}
    raise TypeError(
        f"Argument model should return a state that is a tensor, a tuple or a dict of tensors from step(x_t, None); "
        f"{type(model).__name__} returned {type(state).__name__}, which ONNX cannot take as graph inputs."
    )


def _flatten(state: Any, layout: dict) -> list[torch.Tensor]:
    if layout["kind"] == "tensor":
        return [state]
    if layout["kind"] == "tuple":
        return list(state)
    return [state[k] for k in layout["keys"]]


def _rebuild(tensors: tuple, layout: dict) -> Any:
    if layout["kind"] == "tensor":
        return tensors[0]
    if layout["kind"] == "tuple":
        return tuple(tensors)
    return dict(zip(layout["keys"], tensors))


class _StepGraph(nn.Module):
    """``model.step`` with the state as separate tensors: (x_t, *state) -> (y_t, *state_next)."""

    def __init__(self, model: nn.Module, layout: dict) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, x_t, *state):
        y_t, state = cast(Any, self.model).step(x_t, _rebuild(state, self.layout))
        return (y_t, *_flatten(state, self.layout))


class _SequenceGraph(_StepGraph):
    """``model(x, state)``: (x, *state) -> (y, *state_next), x (B, T, F)."""

    def forward(self, x, *state):
        y, state = self.model(x, _rebuild(state, self.layout))
        return (y, *_flatten(state, self.layout))


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"Argument {name} should be positive, got {value}.")


def _trace(graph: nn.Module, example: tuple, names: tuple, model_name: str):
    """``torch.onnx.export(dynamo=True)`` of ``graph`` on ``example``; returns the ModelProto."""
    levels = {name: logging.getLogger(name).level for name in _QUIET}
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    was_training = graph.training
    try:
        with native.disabled(), torch.no_grad(), warnings.catch_warnings():
            # nn.LSTM/nn.GRU re-assign their flat weights while traced: harmless, the values are the parameters.
            warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.onnx.export(
                graph.eval(),
                example,
                dynamo=True,
                verbose=False,
                input_names=list(names[0]),
                output_names=list(names[1]),
            )
    except Exception as exc:  # torch.export's and onnxscript's own error types
        raise ValueError(
            f"Argument model ({model_name}) could not be exported: torch.onnx could not trace its step "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})."
        ) from exc
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        graph.train(was_training)
    if program is None:  # only with an f= file argument, which is not given here
        raise ValueError(f"Argument model ({model_name}) could not be exported: torch.onnx returned no program.")
    return program.model_proto


def _write(onnx: Any, proto: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would keep the model from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    batch_size: int = 1,
    steps: int | None = None,
    metadata: Mapping[str, str] | None = None,
    source: str | os.PathLike | None = None,
):
    """Export a model's step (or, with ``steps``, its whole-sequence forward) to an ONNX file.

    Step graph: x_t (B, F) and the state's tensors -> y_t (B, O) and the next state's.
    Sequence graph: x (B, T, F) and the state -> y (B, T, O) and the next state. All shapes fixed;
    the layout of the state comes from ``model.step(zeros(B, F), None)``.

    Args:
        model: a float32 module with ``step(x_t, state) -> (y_t, state)`` (and ``forward(x, state)``
            for ``steps``); left in the mode it was in.
        path: the ``.onnx`` file, written atomically after ``onnx.checker`` accepts the model.
        input_size: F (default: the model's ``input_size`` attribute).
        batch_size: B.
        steps: None for the step graph, else T of the sequence graph.
        metadata: more ``ignite_lstm.*`` metadata (strings), e.g. a task's settings.
        source: the model file, recorded in the metadata.

    Returns:
        The written ``onnx.ModelProto``.

    Raises:
        TypeError, ValueError: a bad argument, or a model torch.onnx cannot trace (the reason given).
        ModuleNotFoundError: onnx or onnxscript is not installed.
        OSError: the file cannot be written.

    Example:
        >>> export_onnx(StatefulLSTM(12, 64, output_size=9), "classifier.onnx")
        >>> export_onnx(my_gru_model, "gru.onnx", input_size=3)  # state: a tensor
    """
    from ignite_lstm import __version__

    name = type(model).__name__
    if not isinstance(model, nn.Module) or not callable(getattr(model, "step", None)):
        raise TypeError(f"Argument model should be an nn.Module with a step(x_t, state) method, got {name}.")
    input_size = getattr(model, "input_size", None) if input_size is None else input_size
    if input_size is None:
        raise ValueError(f"Argument input_size should be given: {name} has no input_size attribute.")
    _check_positive("input_size", input_size)
    _check_positive("batch_size", batch_size)
    _check_positive("steps", steps, allow_none=True)
    params = list(model.parameters())
    dtype = params[0].dtype if params else torch.float32
    if dtype != torch.float32:
        raise ValueError(f"Argument model should have float32 parameters, got {dtype}.")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("Argument metadata should map strings to strings.")
    onnx = require_extra("onnx", "ONNX export")
    require_extra("onnxscript", "ONNX export (torch.onnx.export with dynamo=True)")

    device = params[0].device if params else torch.device("cpu")
    x_t = torch.zeros(batch_size, input_size, device=device)
    was_training = model.training
    with torch.no_grad(), native.disabled():
        model.eval()
        y_t, state = cast(Any, model).step(x_t, None)
        model.train(was_training)
    layout = state_layout(model, state)
    state = [torch.zeros_like(t) for t in _flatten(state, layout)]
    outputs = [f"{n}_next" for n in layout["names"]]
    if steps is None:
        graph, names = _StepGraph(model, layout), (["x_t", *layout["names"]], ["y_t", *outputs])
        example = (x_t, *state)
    else:
        graph, names = _SequenceGraph(model, layout), (["x", *layout["names"]], ["y", *outputs])
        example = (torch.zeros(batch_size, steps, input_size, device=device), *state)
    proto = _trace(graph, example, names, name)

    props = {
        "graph": "step" if steps is None else "sequence",
        "batch_size": str(batch_size),
        "input_size": str(input_size),
        "output_size": str(y_t.shape[-1]),
        "state": json.dumps({**layout, "shapes": [list(t.shape) for t in state]}),
        "model_class": name,
        "version": __version__,
    }
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        props["model_args"] = json.dumps(dict(config))
    if steps is not None:
        props["steps"] = str(steps)
    if source is not None:
        props["source"] = str(source)
    props.update(metadata or {})
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + k: v for k, v in props.items()})
    onnx.checker.check_model(proto, full_check=True)
    _write(onnx, proto, Path(path))
    return proto
