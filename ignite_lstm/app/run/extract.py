"""Streaming extraction: run a trained model over a mixture one sample at a time (``model.step``).

``ignite-lstm extract --checkpoint PATH --input FILE --frequency 3 --output FILE``

The input is a mixture S(n) in ``.npy`` (1-D, or one column), ``.csv`` (one column, an
optional one-line header) or ``.h5`` (``--dataset``, default ``mixture``: a 1-D dataset,
one column, or one row ``--row`` of a 2-D (M, T) dataset such as a split file). The
output, the extracted sine, is written as ``.npy`` or ``.csv`` (by extension). The
frequencies and the input scale come from the checkpoint's config (or its run folder's
config.yaml); ``--frequencies`` and ``--input-scale`` supply them for a bare checkpoint.

``--backend onnxruntime --model FILE.onnx`` runs the same loop on onnxruntime's CPU
provider instead, with a step model written by ``ignite-lstm export``: the
frequencies and the input scale then come from the ONNX file's metadata (no checkpoint).

Exit status: 0 done, 2 bad input (frequency, file, shape, checkpoint, ONNX model).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn

from ignite_lstm._internal.atomic import atomic_write
from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.run.evaluate import load_run
from ignite_lstm.app.run.preflight import device_problem, resolve_device

__all__ = ["ExtractionError", "read_mixture", "stream_extract", "write_signal", "main"]

logger = logging.getLogger("ignite_lstm")

INPUT_FORMATS = (".npy", ".csv", ".h5", ".hdf5")
OUTPUT_FORMATS = (".npy", ".csv")


class ExtractionError(ValueError):
    """Bad input for an extraction: the message names the file or value and what is accepted."""


def _as_signal(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise ExtractionError(f"Input {path}{what} holds {array.dtype} values, expected numbers.")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ExtractionError(
            f"Input {path}{what} has shape {array.shape}; expected a 1-D signal (T,) or one column (T, 1)."
        )
    if array.size == 0:
        raise ExtractionError(f"Input {path}{what} is empty; expected at least one sample.")
    if not np.isfinite(array).all():
        raise ExtractionError(
            f"Input {path}{what} has NaN or infinite values at sample(s) "
            f"{np.flatnonzero(~np.isfinite(array))[:5].tolist()}."
        )
    return array.astype(np.float32)


def _read_csv(path: Path) -> np.ndarray:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtractionError(f"Input {path} could not be read as a text file: {exc}") from exc
    values, first = [], True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 1:
            raise ExtractionError(f"Input {path} has {len(fields)} columns on line {number}; expected one column.")
        try:
            values.append(float(fields[0]))
        except ValueError:
            if not first:  # only the first non-empty line may be a header
                raise ExtractionError(f"Input {path} line {number}: {fields[0]!r} is not a number.") from None
        first = False
    return _as_signal(path, np.asarray(values, dtype=np.float64), "")


def _read_h5(path: Path, dataset: str, row: int) -> np.ndarray:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ExtractionError(f"Input {path} is not a readable HDF5 file ({exc}).") from exc
    with f:
        node = f.get(dataset)
        if not isinstance(node, h5py.Dataset):
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            raise ExtractionError(f"Input {path} has no dataset {dataset!r}; datasets in the file: {names}.")
        what = f" dataset {dataset!r}"
        if node.ndim == 2 and node.shape[1] != 1:  # (M, T): one sequence per row, as in a split file
            if not -node.shape[0] <= row < node.shape[0]:
                raise ExtractionError(f"Input {path}{what} has {node.shape[0]} row(s); --row {row} is out of range.")
            return _as_signal(path, np.asarray(node[row]), f"{what} row {row}")
        return _as_signal(path, np.asarray(node[()]), what)


def read_mixture(path: str | os.PathLike, *, dataset: str = "mixture", row: int = 0) -> np.ndarray:
    """Read a mixture S(n) from a ``.npy``, ``.csv`` or ``.h5`` file.

    Args:
        path: the file; the format follows the extension.
        dataset: HDF5 only: the dataset path inside the file.
        row: HDF5 only: the row taken from a 2-D (M, T) dataset.

    Returns:
        float32 (T,), finite, T >= 1.

    Raises:
        ExtractionError: missing or unreadable file, unknown extension, wrong shape, empty, NaN.

    Example:
        >>> s = read_mixture("data/test-95ca65e031.h5", row=0)  # (T,)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ExtractionError(f"Input {path} has an unknown extension {path.suffix!r}; allowed: {INPUT_FORMATS}.")
    if not path.is_file():
        raise ExtractionError(f"Input {path} does not exist.")
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".h5", ".hdf5"):
        return _read_h5(path, dataset, row)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ExtractionError(f"Input {path} could not be read as a .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise ExtractionError(f"Input {path} holds {type(array).__name__}, expected one .npy array.")
    return _as_signal(path, array, "")


def stream_extract(
    model: nn.Module,
    mixture: np.ndarray,
    *,
    frequency_index: int,
    num_frequencies: int,
    input_scale: float = 1.0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Feed the mixture to ``model.step`` one sample at a time, from a reset state.

    The input at step n is ``[input_scale * S(n), one_hot(frequency_index)]``, as in training.

    Args:
        model: a model with ``step(x_t, state) -> (y_t, state)``, x_t (1, 1 + F), y_t (1, 1).
        mixture: (T,) raw mixture.
        frequency_index: k, the position of the wanted frequency in the model's list.
        num_frequencies: F.
        input_scale: the factor of the mixture in the input.
        device: where the model is.

    Returns:
        float32 (T,): the model's output at every step.

    Example:
        >>> sine_3hz = stream_extract(model, s, frequency_index=1, num_frequencies=4, input_scale=4.0)
    """
    if not 0 <= frequency_index < num_frequencies:
        raise ValueError(f"Argument frequency_index should be in [0, {num_frequencies}), got {frequency_index}.")
    x = torch.zeros(len(mixture), 1, 1 + num_frequencies, device=device)  # (T, B=1, 1 + F)
    x[:, 0, 0] = input_scale * torch.as_tensor(mixture, dtype=torch.float32, device=device)
    x[:, 0, 1 + frequency_index] = 1.0
    model.eval()
    outputs, state = [], None
    with torch.inference_mode():
        for x_t in x:  # the real-time loop: one sample in, one sample out
            y_t, state = model.step(x_t, state)
            outputs.append(y_t)
        return torch.cat(outputs)[:, 0].cpu().numpy().astype(np.float32)


def write_signal(path: str | os.PathLike, signal: np.ndarray) -> Path:
    """Write a 1-D signal as ``.npy`` or ``.csv`` (one value per line), atomically.

    Args:
        path: the file; the format follows the extension.
        signal: (T,) values, written as float32.

    Returns:
        The written path.

    Raises:
        ExtractionError: an extension other than .npy or .csv.

    Example:
        >>> write_signal("sine3.csv", sine_3hz)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ExtractionError(f"Output {path} has an unknown extension {path.suffix!r}; allowed: {OUTPUT_FORMATS}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(signal, dtype=np.float32)
    if suffix == ".npy":
        return atomic_write(path, lambda f: np.save(f, values))
    return atomic_write(path, lambda f: np.savetxt(f, values, fmt="%.9g"))


def _match_frequency(value: float, frequencies: Sequence[float]) -> int:
    for k, freq in enumerate(frequencies):
        if math.isclose(value, freq, rel_tol=1e-9, abs_tol=1e-12):
            return k
    allowed = ", ".join(f"{f:g}" for f in frequencies)
    raise ExtractionError(f"Frequency {value:g} Hz is not one the model was trained for; allowed: {allowed} (Hz).")


def _settings(args: argparse.Namespace) -> tuple[nn.Module, list[float], float]:
    """The model, its frequencies and the input scale, from the checkpoint and the options."""
    files = load_run(args.checkpoint, require_config=False)
    model = files.model
    if files.config is not None:
        frequencies = [float(f) for f in files.config.data.frequencies]
        scale = float(files.config.data.input_scale)
        if args.input_scale is not None and not math.isclose(args.input_scale, scale):
            logger.warning("--input-scale %g overrides the checkpoint's data.input_scale %g.", args.input_scale, scale)
            scale = args.input_scale
        if args.frequencies is not None:
            logger.warning("--frequencies is ignored: the checkpoint's config lists %s.", frequencies)
    else:
        if args.frequencies is None or args.input_scale is None:
            raise ExtractionError(
                f"Checkpoint {files.model_file} holds no config and no config.yaml was found beside it; "
                f"pass --frequencies (e.g. 1,3,5,7) and --input-scale (the training data.input_scale)."
            )
        try:
            frequencies = [float(f) for f in args.frequencies.split(",")]
        except ValueError:
            raise ExtractionError(
                f"--frequencies {args.frequencies!r} should be numbers separated by commas."
            ) from None
        scale = args.input_scale
        if model.input_size != 1 + len(frequencies) or model.output_size != 1:
            raise ExtractionError(
                f"Checkpoint {files.model_file} has input_size {model.input_size} and output_size "
                f"{model.output_size}; {len(frequencies)} frequencies need input_size {1 + len(frequencies)} "
                f"and output_size 1."
            )
    if not math.isfinite(scale):
        raise ExtractionError(f"--input-scale should be a finite number, got {scale}.")
    return model, frequencies, scale


def _onnx_settings(args: argparse.Namespace):
    """``--backend onnxruntime``: the ONNX step model, its frequencies and input scale, from its metadata."""
    from ignite_lstm.deploy.onnx_step import OnnxStep

    if args.device != "cpu":
        raise ExtractionError(
            f"--device {args.device} does not apply to --backend onnxruntime, which runs on "
            f"onnxruntime's CPU provider; leave --device at cpu."
        )
    try:
        model = OnnxStep(args.model, batch_size=1)
    except ImportError as exc:
        raise ExtractionError(str(exc)) from None
    if model.frequencies is None or model.input_scale is None:
        raise ExtractionError(
            f"ONNX model {args.model} holds no signal-task settings (frequencies, input scale): it was exported from a "
            f"model of another task; extract needs a model of the signal task (ignite-lstm export of its run)."
        )
    if model.config["output_size"] != 1:
        raise ExtractionError(f"ONNX model {args.model} has output_size {model.config['output_size']}; expected 1.")
    scale = model.input_scale
    if args.input_scale is not None and not math.isclose(args.input_scale, scale):
        logger.warning("--input-scale %g overrides the ONNX model's input_scale %g.", args.input_scale, scale)
        scale = args.input_scale
    if args.frequencies is not None:
        logger.warning("--frequencies is ignored: the ONNX model's metadata lists %s.", model.frequencies)
    if not math.isfinite(scale):
        raise ExtractionError(f"--input-scale should be a finite number, got {scale}.")
    return model, model.frequencies, scale


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm extract") -> int:
    """The ``ignite-lstm extract`` command: one frequency's sine from a mixture file, step by step.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 2 bad input (frequency, file, shape, checkpoint, ONNX model, device; on stderr).

    Example:
        >>> main(["--checkpoint", "runs/x/model.pt", "--input", "s.npy", "--frequency", "3", "--output", "y.npy"])
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Extract one frequency's clean sine from a noisy mixture, one sample at a time (model.step).",
        epilog="Example: ignite-lstm extract --checkpoint runs/base-x/model.pt --input s.npy "
        "--frequency 3 --output sine3.npy",
    )
    parser.add_argument("--checkpoint", help="model.pt or checkpoint file written by a run (--backend torch)")
    parser.add_argument("--input", required=True, help="mixture: .npy, .csv (one column) or .h5")
    parser.add_argument("--frequency", required=True, type=float, help="frequency to extract, Hz (e.g. 3)")
    parser.add_argument("--output", required=True, help="extracted sine: .npy or .csv")
    parser.add_argument("--dataset", default="mixture", help=".h5 input: dataset path (default: mixture)")
    parser.add_argument("--row", type=int, default=0, help=".h5 input: row of a 2-D (M, T) dataset (default 0)")
    parser.add_argument(
        "--input-scale",
        type=float,
        help="factor of the mixture in the model input (default: the checkpoint's data.input_scale)",
    )
    parser.add_argument(
        "--frequencies", help="the model's frequencies, e.g. 1,3,5,7 (only for a checkpoint without config)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu | cuda | cuda:N (default cpu: one sample per call is faster on a CPU)"
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="torch: model.step of --checkpoint (default); onnxruntime: the ONNX step model --model",
    )
    parser.add_argument("--model", help="ONNX step model written by ignite-lstm export (--backend onnxruntime)")
    args = parser.parse_args(argv)
    if args.backend == "torch" and args.checkpoint is None:
        parser.error("the following arguments are required: --checkpoint (or --backend onnxruntime --model FILE)")
    if args.backend == "torch" and args.model is not None:
        parser.error("argument --model: only with --backend onnxruntime (--backend torch reads --checkpoint)")
    if args.backend == "onnxruntime" and (args.model is None or args.checkpoint is not None):
        parser.error(
            "argument --backend onnxruntime: needs --model FILE.onnx, and no --checkpoint "
            "(the ONNX file's metadata configures it)"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if Path(args.output).suffix.lower() not in OUTPUT_FORMATS:  # refuse before any work
            raise ExtractionError(
                f"Output {args.output} has an unknown extension "
                f"{Path(args.output).suffix!r}; allowed: {OUTPUT_FORMATS}."
            )
        bad_device = device_problem(args.device) if args.backend == "torch" else None  # onnxruntime: CPU only
        if bad_device:
            raise ExtractionError(f"--device {args.device!r} {bad_device}.")
        model, frequencies, scale = _onnx_settings(args) if args.backend == "onnxruntime" else _settings(args)
        index = _match_frequency(args.frequency, frequencies)
        mixture = read_mixture(args.input, dataset=args.dataset, row=args.row)
        device = resolve_device(args.device)
        torch.set_num_threads(1)  # one sample per call: more threads only add synchronisation
        start = time.perf_counter()
        signal = stream_extract(
            model.to(device),
            mixture,
            frequency_index=index,
            num_frequencies=len(frequencies),
            input_scale=scale,
            device=device,
        )
        seconds = time.perf_counter() - start
        write_signal(args.output, signal)
    except (OSError, ValueError, ConfigError) as exc:  # ExtractionError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Extracted {args.frequency:g} Hz from {args.input} ({len(signal)} samples) -> {args.output}; "
        f"{seconds:.2f} s, {1e6 * seconds / len(signal):.1f} µs per sample."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
