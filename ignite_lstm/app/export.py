"""Export a trained model to ONNX: ``ignite-lstm export RUN_OR_CHECKPOINT [--output FILE.onnx] [--batch B]``.

Also ``ignite-lstm export ...``. Further options: ``--sequence T`` (the whole-sequence
model instead of the step), ``--frequencies`` and ``--input-scale`` (for a bare checkpoint,
as in ``ignite_lstm.app.run.extract``).

The default graph is the L = 1 step of the streaming filter with its state explicit and
every shape fixed: inputs ``x_t`` (B, F), ``h`` and ``c`` (L, B, H); outputs ``y_t`` (B, O),
``h_next`` and ``c_next``. ``--sequence T`` exports ``model(x, (h, c))`` over a fixed T
instead: x (B, T, F), h, c -> y (B, T, O), h_next, c_next (one ONNX LSTM node per layer),
for batch inference. The model's arguments, frequencies, input scale, batch size and this
package's version go into the file's metadata (``metadata_props``), so that
``ignite_lstm.deploy.onnx_step.OnnxStep`` and ``extract --backend onnxruntime`` need nothing else.
The model is checked with ``onnx.checker`` (full check) before the file is written.

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export``, then onnxscript), torch's
default and maintained path; the TorchScript exporter (``dynamo=False``) is deprecated.
The graph is traced from the PyTorch code with the native kernel switched off
(``torch.lstm_cell`` becomes Gemm, Sigmoid, Tanh and Mul nodes); the opset is the
exporter's default (20 with torch 2.13). The sequence graph has a fixed T: a dynamic time
axis exports, but the graph then fails at run time on any other length (a Reshape keeps
the traced one).

Exit status: 0 done, 2 bad input (not a model file, output not writable, a bad option,
the ``export`` extra not installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from ignite_lstm._internal.compat import ONNX_REGISTRATION_LOGGER
from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.run.extract import _settings
from ignite_lstm.deploy.onnx_step import INPUTS, METADATA_PREFIX, OUTPUTS, require_extra
from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM

__all__ = ["ExportError", "export_onnx", "main"]

logger = logging.getLogger("ignite_lstm")


class ExportError(ValueError):
    """Bad input for an export: the message names the file or value and what is accepted."""


class _StepGraph(nn.Module):
    """``model.step`` with the state as separate tensors: (x_t, h, c) -> (y_t, h_next, c_next)."""

    def __init__(self, model: StatefulLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t, h, c):
        y_t, (h_next, c_next) = self.model.step(x_t, (h, c))
        return y_t, h_next, c_next


class _SequenceGraph(_StepGraph):
    """``model(x, (h, c))``: (x, h, c) -> (y, h_next, c_next), x (B, T, F)."""

    def forward(self, x, h, c):
        y, (h_next, c_next) = self.model(x, (h, c))
        return y, h_next, c_next


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"Argument {name} should be positive, got {value}.")


def _check_output(path: Path) -> None:
    """Refuse an output that is not an .onnx file name or cannot be written, before any work."""
    if path.suffix.lower() != ".onnx":
        raise ExportError(f"Output {path} has an unknown extension {path.suffix!r}; allowed: ('.onnx',).")
    if path.is_dir():
        raise ExportError(f"Output {path} is a folder; expected a file name ending in .onnx.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ExportError(f"Output {path} cannot be written: {exc}") from exc
    os.close(fd)
    os.unlink(tmp)


# The exporter's chatter: "torchvision is not installed" warnings, the optimizer's INFO lines.
_QUIET = {ONNX_REGISTRATION_LOGGER: logging.ERROR, "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING}


def _trace(graph: nn.Module, example: tuple, names: tuple):
    """``torch.onnx.export(dynamo=True)`` of ``graph`` on ``example`` from PyTorch code; returns the ModelProto."""
    levels = {name: logging.getLogger(name).level for name in _QUIET}
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    was_training = graph.training
    try:
        with native.disabled(), torch.no_grad(), warnings.catch_warnings():
            # nn.LSTM re-assigns its flat weights while traced: harmless, the values are the parameters.
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
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        graph.train(was_training)
    return program.model_proto


def export_onnx(
    model: StatefulLSTM,
    path: str | os.PathLike,
    *,
    frequencies: Sequence[float],
    input_scale: float,
    batch_size: int = 1,
    steps: int | None = None,
    source: str | os.PathLike | None = None,
):
    """Export the model's step (or, with ``steps``, its whole-sequence forward) to an ONNX file.

    Step graph: x_t (B, F), h (L, B, H), c (L, B, H) -> y_t (B, O), h_next, c_next.
    Sequence graph: x (B, T, F), h, c -> y (B, T, O), h_next, c_next. All shapes fixed.
    The metadata (``ignite_lstm.*`` keys) holds the model's arguments, the frequencies,
    the input scale, B (and T), the package version and ``source``.

    Args:
        model: the float32 model to export (left in the mode it was in).
        path: the ``.onnx`` file, written atomically after ``onnx.checker`` accepts the model.
        frequencies: the model's frequencies in Hz, F - 1 of them.
        input_scale: the factor of the mixture in the input.
        batch_size: B.
        steps: None for the step graph, else T of the sequence graph.
        source: the model file, recorded in the metadata.

    Returns:
        The written ``onnx.ModelProto``.

    Raises:
        TypeError, ValueError: a bad argument.
        ModuleNotFoundError: onnx or onnxscript is not installed.
        OSError: the file cannot be written.

    Example:
        >>> export_onnx(model, "model.onnx", frequencies=[1, 3, 5, 7], input_scale=4.0)
    """
    from ignite_lstm import __version__

    if not isinstance(model, StatefulLSTM):
        raise TypeError(f"Argument model should be a StatefulLSTM, got {type(model).__name__}.")
    _check_positive("batch_size", batch_size)
    _check_positive("steps", steps, allow_none=True)
    dtype = model.head.weight.dtype
    if dtype != torch.float32:
        raise ValueError(f"Argument model should have float32 parameters, got {dtype}.")
    frequencies = [float(f) for f in frequencies]
    if len(frequencies) != model.input_size - 1:
        raise ValueError(
            f"Argument frequencies should list input_size - 1 = {model.input_size - 1} "
            f"frequencies, got {len(frequencies)}."
        )
    if not math.isfinite(input_scale):
        raise ValueError(f"Argument input_scale should be a finite number, got {input_scale}.")
    onnx = require_extra("onnx", "ONNX export")
    require_extra("onnxscript", "ONNX export (torch.onnx.export with dynamo=True)")

    device = model.head.weight.device
    b, f, layers, hidden = batch_size, model.input_size, model.num_layers, model.hidden_size
    state = (torch.zeros(layers, b, hidden, device=device), torch.zeros(layers, b, hidden, device=device))
    if steps is None:
        graph, names = _StepGraph(model), (INPUTS, OUTPUTS)
        example = (torch.zeros(b, f, device=device), *state)  # (B, F), (L, B, H), (L, B, H)
    else:
        graph, names = _SequenceGraph(model), (("x", "h", "c"), ("y", "h_next", "c_next"))
        example = (torch.zeros(b, steps, f, device=device), *state)  # (B, T, F), ...
    proto = _trace(graph, example, names)

    metadata = {
        "graph": "step" if steps is None else "sequence",
        "model_args": json.dumps(model.config),
        "frequencies": json.dumps(frequencies),
        "input_scale": repr(float(input_scale)),
        "batch_size": str(b),
        "version": __version__,
    }
    if steps is not None:
        metadata["steps"] = str(steps)
    if source is not None:
        metadata["source"] = str(source)
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + k: v for k, v in metadata.items()})
    onnx.checker.check_model(proto, full_check=True)

    path = Path(path)
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
    return proto


def _default_output(model_file: Path, batch: int, steps: int | None) -> Path:
    suffix = ("" if batch == 1 else f"-batch{batch}") + ("" if steps is None else f"-sequence{steps}")
    return model_file.with_name(f"{model_file.stem}{suffix}.onnx")


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm export") -> int:
    """The ``ignite-lstm export`` command (also ``ignite-lstm export``).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the command's name in the usage message.

    Returns:
        The exit status: 0 done, 2 bad input (the message is on stderr).

    Example:
        >>> main(["runs/base-seed0", "--output", "model.onnx"])
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained model to ONNX: the L = 1 step with its state (default), "
        "or the whole-sequence model (--sequence T).",
        epilog=f"Example: {prog} runs/base-seed0 --output model.onnx; then ignite-lstm extract "
        f"--backend onnxruntime --model model.onnx --input s.npy --frequency 3 --output sine3.npy",
    )
    parser.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder (its model.pt) or a model/checkpoint file written by a run",
    )
    parser.add_argument(
        "--output",
        help="the .onnx file (default: beside the model file, <name>.onnx; "
        "-batchB and -sequenceT are added for those graphs)",
    )
    parser.add_argument("--batch", type=int, default=1, help="the graph's fixed batch size B (default 1)")
    parser.add_argument(
        "--sequence",
        type=int,
        metavar="T",
        help="export the whole-sequence model over T steps (fixed) instead of the step, for batch inference",
    )
    parser.add_argument(
        "--input-scale",
        type=float,
        help="factor of the mixture in the model input (default: the checkpoint's data.input_scale)",
    )
    parser.add_argument(
        "--frequencies", help="the model's frequencies, e.g. 1,3,5,7 (only for a checkpoint without config)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.batch < 1:
            raise ExportError(f"--batch should be a positive integer, got {args.batch}.")
        if args.sequence is not None and args.sequence < 1:
            raise ExportError(f"--sequence should be a positive number of steps, got {args.sequence}.")
        if args.output is not None:
            _check_output(Path(args.output))  # before the model is loaded and traced
        model, frequencies, scale = _settings(args)
        source = Path(args.checkpoint)
        model_file = source / "model.pt" if source.is_dir() else source
        output = Path(args.output) if args.output else _default_output(model_file, args.batch, args.sequence)
        _check_output(output)
        proto = export_onnx(
            model,
            output,
            frequencies=frequencies,
            input_scale=scale,
            batch_size=args.batch,
            steps=args.sequence,
            source=model_file,
        )
    except (ImportError, OSError, ValueError, ConfigError) as exc:  # ExportError, ExtractionError: ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    b, lh = args.batch, f"({model.num_layers}, {args.batch}, {model.hidden_size})"
    x = f"x_t ({b}, {model.input_size})" if args.sequence is None else f"x ({b}, {args.sequence}, {model.input_size})"
    o = model.output_size
    y = f"y_t ({b}, {o})" if args.sequence is None else f"y ({b}, {args.sequence}, {o})"
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    print(
        f"Exported the {'step' if args.sequence is None else 'sequence'} model of {model_file} -> {output} "
        f"(opset {opset}, {output.stat().st_size / 1024:.1f} KiB): {x}, h, c {lh} -> {y}, h_next, c_next; "
        f"frequencies {', '.join(f'{v:g}' for v in frequencies)} Hz, input_scale {scale:g}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
