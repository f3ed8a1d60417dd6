"""The served model: one step over a batch of lanes, the inputs built from raw samples as ``extract`` builds them.

A *lane* is one stream's row in a batched ``step``. ``ServedModel.step`` takes numpy
arrays, x_t (B, F), h and c (L, B, H), and returns y_t (B, O) and the next state; it
drives ``StatefulLSTM.step`` (the native kernel where it runs, in inference mode) or an
ONNX step graph on onnxruntime (``OnnxStep``; a graph of fixed batch b is run in chunks of
b lanes, the last one padded with zero rows).

Signal filters (a model with frequencies: a run's config, the ONNX metadata, or
``--frequencies``/``--input-scale``) take raw mixture samples and a frequency; the input row
of sample S is ``[input_scale * S, one_hot(k)]``, computed with the same float32 operations
as ``ignite_lstm.extract.stream_extract``. Any other model takes feature vectors (F values
per sample) as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ignite_lstm.app.run.evaluate import load_run
from ignite_lstm.app.run.extract import ExtractionError, _match_frequency
from ignite_lstm.models.lstm import StatefulLSTM

__all__ = ["ServedModel", "load_served_model"]


class ServedModel:
    """A loaded model, its task (signal filter or features) and a batched numpy ``step``.

    Args:
        stepper: ``StatefulLSTM`` (has ``step``) or ``OnnxStep``.
        frequencies: the signal filter's frequencies (Hz), or None for a feature model.
        input_scale: the factor of the mixture in the input (signal filters).
        fingerprint: a digest of the weights; a state folder written for other weights is refused.
        source: the file the model came from (for messages).
    """

    def __init__(
        self, stepper, *, frequencies: Sequence[float] | None, input_scale: float, fingerprint: str, source: Path
    ) -> None:
        self.stepper = stepper
        self.frequencies = None if frequencies is None else [float(f) for f in frequencies]
        self.input_scale = float(input_scale)
        self.fingerprint = fingerprint
        self.source = source
        cfg = stepper.config
        self.input_size, self.output_size = cfg["input_size"], cfg["output_size"]
        self.num_layers, self.hidden_size = cfg["num_layers"], cfg["hidden_size"]
        self.onnx_batch = getattr(stepper, "batch_size", None) if not isinstance(stepper, torch.nn.Module) else None
        if self.frequencies is not None and self.input_size != 1 + len(self.frequencies):
            raise ValueError(
                f"Model {source} has input_size {self.input_size}; {len(self.frequencies)} "
                f"frequencies need input_size {1 + len(self.frequencies)}."
            )

    @property
    def is_signal(self) -> bool:
        """True for a signal filter (raw samples + frequency), False for a feature model."""
        return self.frequencies is not None

    def frequency_index(self, value: float) -> int:
        """The position of ``value`` (Hz) in the model's frequencies; ValueError naming the allowed ones."""
        return _match_frequency(value, self.frequencies)

    def zero_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(h, c), each float32 (L, 1, H) zeros: the start of a stream."""
        shape = (self.num_layers, 1, self.hidden_size)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def batch_inputs(self, lanes: list[np.ndarray], freq_indices: list[int | None]) -> np.ndarray:
        """The model inputs of several lanes, time-major, zero past each lane's end.

        Args:
            lanes: per lane, signal filter: (n_i,) float32 raw mixture; feature model: (n_i, F) float32.
            freq_indices: per lane, the one-hot position (signal filters) or None.

        Returns:
            float32 (T, B, F), T the longest lane.
        """
        T, B = max(len(v) for v in lanes), len(lanes)
        if not self.is_signal:
            x = np.zeros((T, B, self.input_size), np.float32)
            for j, v in enumerate(lanes):
                x[: len(v), j] = v
            return x
        s = np.zeros((T, B), np.float32)
        for j, v in enumerate(lanes):
            s[: len(v), j] = v
        x = torch.zeros(T, B, self.input_size)
        x[:, :, 0] = self.input_scale * torch.from_numpy(s)  # elementwise: the float32 product extract computes
        x[:, torch.arange(B), 1 + torch.tensor(freq_indices)] = 1.0
        return x.numpy()

    def steps(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """T steps of B lanes: x (T, B, F), h and c (L, B, H) -> y (T, B, O), h, c after the last step.

        A ``StatefulLSTM`` runs them as one call of its sequence form (the native kernel's loop
        over the T steps: the numbers of T ``step`` calls, bit for bit, with one release and one
        re-acquisition of the GIL instead of T); any other model as T ``step`` calls.
        """
        if self.onnx_batch is None and isinstance(self.stepper, StatefulLSTM):
            with torch.inference_mode():
                y, (h2, c2) = self.stepper(
                    torch.from_numpy(x).transpose(0, 1), (torch.from_numpy(h), torch.from_numpy(c))
                )
            return y.transpose(0, 1).numpy(), h2.numpy(), c2.numpy()
        ys = []
        for x_t in x:
            y_t, h, c = self.step(x_t, h, c)
            ys.append(y_t)
        return np.stack(ys), h, c

    def step(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of B lanes: x (B, F), h and c (L, B, H) -> y (B, O), h_next, c_next (float32)."""
        if self.onnx_batch is None:
            with torch.inference_mode():  # no gradients: the native kernel's inference path
                y, (h2, c2) = self.stepper.step(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
            return y.numpy(), h2.numpy(), c2.numpy()
        b, B = self.onnx_batch, x.shape[0]
        ys, hs, cs = [], [], []
        for start in range(0, B, b):  # the graph's batch is fixed: chunks of b rows, the last one padded
            n = min(b, B - start)
            xc, hc, cc = x[start : start + n], h[:, start : start + n], c[:, start : start + n]
            if n < b:
                xc = np.concatenate([xc, np.zeros((b - n, x.shape[1]), np.float32)])
                pad = np.zeros((h.shape[0], b - n, h.shape[2]), np.float32)
                hc, cc = np.concatenate([hc, pad], 1), np.concatenate([cc, pad], 1)
            y, h2, c2 = self.stepper.run(np.ascontiguousarray(xc), np.ascontiguousarray(hc), np.ascontiguousarray(cc))
            ys.append(y[:n])
            hs.append(h2[:, :n])
            cs.append(c2[:, :n])
        return np.concatenate(ys), np.concatenate(hs, 1), np.concatenate(cs, 1)

    def describe(self) -> dict:
        """What ``GET /v1/model`` answers."""
        return {
            "task": "signal" if self.is_signal else "features",
            "frequencies": self.frequencies,
            "input_scale": self.input_scale if self.is_signal else None,
            "input_size": self.input_size,
            "output_size": self.output_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "backend": "torch" if self.onnx_batch is None else "onnxruntime",
            "fingerprint": self.fingerprint,
        }


def _torch_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256(json.dumps(model.config, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_served_model(
    path: str | Path, *, frequencies: Sequence[float] | None = None, input_scale: float | None = None
) -> ServedModel:
    """Load what ``serve MODEL`` names: a run folder, a ``model.pt`` or checkpoint, or an ONNX step file.

    Args:
        path: the model.
        frequencies: for a checkpoint without config: the signal filter's frequencies (else it
            is served as a feature model).
        input_scale: with ``frequencies``: the factor of the mixture in the input.

    Returns:
        The ``ServedModel``.

    Raises:
        FileNotFoundError, ValueError (incl. ``ExtractionError``, ``OnnxModelError``), ConfigError,
        ModuleNotFoundError (onnxruntime missing): each message names the file and the problem.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from ignite_lstm.deploy.onnx_step import OnnxStep

        step = OnnxStep(path)
        if step.config["output_size"] != 1:
            raise ExtractionError(f"ONNX model {path} has output_size {step.config['output_size']}; expected 1.")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return ServedModel(
            step, frequencies=step.frequencies, input_scale=step.input_scale, fingerprint=digest, source=path
        )
    files = load_run(path, require_config=False)
    model = files.model.eval()
    if files.config is not None:
        freqs, scale = [float(f) for f in files.config.data.frequencies], float(files.config.data.input_scale)
    elif frequencies is not None:
        if input_scale is None or not math.isfinite(input_scale):
            raise ExtractionError(
                f"Checkpoint {files.model_file} holds no config: --frequencies needs "
                f"--input-scale (a finite number, the training data.input_scale)."
            )
        freqs, scale = list(frequencies), input_scale
    else:
        freqs, scale = None, 1.0  # a model of another task: feature vectors in, outputs out
    return ServedModel(
        model, frequencies=freqs, input_scale=scale, fingerprint=_torch_fingerprint(model), source=files.model_file
    )
