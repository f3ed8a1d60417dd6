"""Export a trained model to ONNX: ``ignite-lstm export RUN_OR_CHECKPOINT [--output FILE.onnx] [--batch B]``.

A model of any task exports: a run of the signal task writes its frequencies and input scale
into the file too (from its config, or ``--frequencies`` and ``--input-scale`` for a bare
checkpoint, as in ``ignite_lstm.app.run.extract``); a model file without them (a classifier
trained from Python with ``attach_checkpoints``, say) exports its graph and arguments only.
``--sequence T`` exports the whole-sequence model instead of the step. The exporter itself
is the library's, ``ignite_lstm.deploy.onnx_export.export_onnx`` (any step model).

The default graph is the L = 1 step of the streaming filter with its state explicit and
every shape fixed: inputs ``x_t`` (B, F), ``h`` and ``c`` (L, B, H); outputs ``y_t`` (B, O),
``h_next`` and ``c_next``. ``--sequence T`` exports ``model(x, (h, c))`` over a fixed T
instead: x (B, T, F), h, c -> y (B, T, O), h_next, c_next (one ONNX LSTM node per layer),
for batch inference. The model's arguments, the task's settings, the batch size and this
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
from collections.abc import Sequence
from pathlib import Path

import torch.nn as nn

from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.run.evaluate import load_run
from ignite_lstm.deploy.onnx_export import export_onnx as _export

__all__ = ["ExportError", "export_onnx", "main"]

logger = logging.getLogger("ignite_lstm")


class ExportError(ValueError):
    """Bad input for an export: the message names the file or value and what is accepted."""


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


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    frequencies: Sequence[float] | None = None,
    input_scale: float | None = None,
    batch_size: int = 1,
    steps: int | None = None,
    source: str | os.PathLike | None = None,
):
    """The library's ``export_onnx`` with the signal task's metadata (frequencies, input scale) when given.

    Step graph: x_t (B, F), h (L, B, H), c (L, B, H) -> y_t (B, O), h_next, c_next for a
    ``StatefulLSTM`` (any step model: see ``ignite_lstm.deploy.onnx_export.export_onnx``).

    Args:
        model: the float32 model to export (left in the mode it was in).
        path: the ``.onnx`` file, written atomically after ``onnx.checker`` accepts the model.
        frequencies: the signal task's frequencies in Hz, input_size - 1 of them, or None (another task).
        input_scale: the factor of the mixture in the input (with ``frequencies``).
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
    metadata = None
    if (frequencies is None) != (input_scale is None):
        raise ValueError(
            "Arguments frequencies and input_scale should be given together (the signal task) or not at all."
        )
    if frequencies is not None:
        frequencies = [float(f) for f in frequencies]
        input_size = getattr(model, "input_size", None)
        if input_size is not None and len(frequencies) != input_size - 1:
            raise ValueError(
                f"Argument frequencies should list input_size - 1 = {input_size - 1} frequencies, got {len(frequencies)}."
            )
        if not math.isfinite(input_scale):
            raise ValueError(f"Argument input_scale should be a finite number, got {input_scale}.")
        metadata = {"frequencies": json.dumps(frequencies), "input_scale": repr(float(input_scale))}
    return _export(model, path, batch_size=batch_size, steps=steps, metadata=metadata, source=source)


def _settings(args: argparse.Namespace) -> tuple[nn.Module, list[float] | None, float | None]:
    """The model and, for a signal-task run, its frequencies and input scale (None, None for another task)."""
    files = load_run(args.checkpoint, require_config=False)
    model = files.model
    signal = files.config is not None and "data" in files.config and "frequencies" in files.config.data
    if signal:
        frequencies = [float(f) for f in files.config.data.frequencies]
        scale = float(files.config.data.input_scale)
        if args.input_scale is not None and not math.isclose(args.input_scale, scale):
            logger.warning("--input-scale %g overrides the checkpoint's data.input_scale %g.", args.input_scale, scale)
            scale = args.input_scale
        if args.frequencies is not None:
            logger.warning("--frequencies is ignored: the checkpoint's config lists %s.", frequencies)
        return model, frequencies, scale
    if args.frequencies is None:
        if args.input_scale is not None:
            raise ExportError(
                "--input-scale goes with --frequencies (the signal task's settings); pass both or neither."
            )
        return model, None, None  # any task: the graph and the model's arguments only
    try:
        frequencies = [float(f) for f in args.frequencies.split(",")]
    except ValueError:
        raise ExportError(f"--frequencies {args.frequencies!r} should be numbers separated by commas.") from None
    if args.input_scale is None:
        raise ExportError("--frequencies needs --input-scale (the training data.input_scale) for the signal task.")
    if model.input_size != 1 + len(frequencies) or model.output_size != 1:
        raise ExportError(
            f"Checkpoint {files.model_file} has input_size {model.input_size} and output_size {model.output_size}; "
            f"{len(frequencies)} frequencies need input_size {1 + len(frequencies)} and output_size 1 (for a model of "
            f"another task, leave --frequencies out)."
        )
    return model, frequencies, args.input_scale


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
        "--frequencies",
        help="the signal task's frequencies, e.g. 1,3,5,7 (only for a checkpoint without config; leave it out "
        "for a model of another task)",
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
    task = (
        f"frequencies {', '.join(f'{v:g}' for v in frequencies)} Hz, input_scale {scale:g}."
        if frequencies is not None
        else "no signal-task settings (a model of another task)."
    )
    print(
        f"Exported the {'step' if args.sequence is None else 'sequence'} model of {model_file} -> {output} "
        f"(opset {opset}, {output.stat().st_size / 1024:.1f} KiB): {x}, h, c {lh} -> {y}, h_next, c_next; {task}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
