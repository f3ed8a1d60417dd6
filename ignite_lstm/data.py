"""Torch side of the data: the per-frequency sequence dataset and the cached splits.

One mixture ``S_m`` of a split yields ``F`` sequences, one per wanted
frequency ``k``: the input at step ``n`` is ``[input_scale * S_m(n), one_hot(k)]``
and the target is the clean sine ``sin(2*pi*f_k*t_n)``.

`ensure_split` keeps each split in an HDF5 file named after its generation
parameters (see `ignite_lstm.h5io`), generating it on rank 0 the first time and
reading it on every rank.
"""

from __future__ import annotations

import logging
import math
import os
from numbers import Real
from pathlib import Path
from typing import Any, Mapping

import ignite.distributed as idist
import numpy as np
import torch
from torch.utils.data import Dataset

from .h5io import DataFileError, read_split, split_filename, write_split
from .signal import SplitData, canonical_params, generate_split

__all__ = ["SignalDataset", "ensure_split"]

logger = logging.getLogger(__name__)


def _as_float_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(device="cpu", dtype=torch.float32)
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.asarray(value, dtype=np.float32))
    else:
        raise TypeError(f"Argument {name} should be a numpy array or a torch tensor, got {type(value).__name__}.")
    if tensor.ndim != 2:
        raise ValueError(f"Argument {name} should be 2-D, got shape {tuple(tensor.shape)}.")
    return tensor


class SignalDataset(Dataset):
    """Sequences of one split, one per (mixture, frequency) pair.

    Item ``i`` is mixture ``m = i // F`` with frequency ``k = i % F``, so the
    ``F`` sequences of a mixture are consecutive.

    Args:
        mixture: noisy mixtures, shape ``(M, T)``, numpy array or tensor.
        target: clean sines, shape ``(F, T)``, numpy array or tensor.
        input_scale: factor applied to the mixture in the input (finite number).

    Attributes:
        n_mixtures, n_frequencies, n_steps: ``M``, ``F`` and ``T``.
        frequency_index: long tensor ``(M * F,)``, the frequency ``k`` of every item.

    All inputs are built once, as a float32 tensor ``(M, F, T, 1 + F)``, so
    ``__getitem__`` only returns views.
    """

    def __init__(self, mixture: Any, target: Any, input_scale: float = 1.0) -> None:
        if not isinstance(input_scale, Real) or isinstance(input_scale, bool):
            raise TypeError(f"Argument input_scale should be a real number, got {type(input_scale).__name__}.")
        if not math.isfinite(input_scale):
            raise ValueError(f"Argument input_scale should be finite, got {input_scale}.")
        mixture = _as_float_tensor("mixture", mixture)  # (M, T)
        target = _as_float_tensor("target", target)  # (F, T)
        if mixture.shape[1] != target.shape[1]:
            raise ValueError(
                f"Arguments mixture and target should have the same number of steps, "
                f"got {mixture.shape[1]} and {target.shape[1]}."
            )
        n_mixtures, n_steps = mixture.shape
        n_freq = target.shape[0]
        self.n_mixtures, self.n_frequencies, self.n_steps = n_mixtures, n_freq, n_steps
        self.input_scale = float(input_scale)

        x = torch.empty(n_mixtures, n_freq, n_steps, 1 + n_freq)  # (M, F, T, 1+F)
        x[..., 0] = (self.input_scale * mixture)[:, None, :]
        x[..., 1:] = torch.eye(n_freq)[None, :, None, :]
        self._x = x
        self._y = target.clone().unsqueeze(-1)  # (F, T, 1)
        self.frequency_index = torch.arange(n_freq).repeat(n_mixtures)  # (M*F,)

    def __len__(self) -> int:
        return self.n_mixtures * self.n_frequencies

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"Index {index} is out of range for a dataset of length {n}.")
        return index % n

    def frequency_of(self, index: int) -> int:
        """Return the frequency index ``k = index % F`` of item ``index``."""
        return self._check_index(index) % self.n_frequencies

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)``: x float32 ``(T, 1 + F)``, y float32 ``(T, 1)``."""
        index = self._check_index(index)
        m, k = divmod(index, self.n_frequencies)
        return self._x[m, k], self._y[k]


def ensure_split(
    directory: str | os.PathLike, split: str, params: Mapping[str, Any]
) -> tuple[Path, SplitData]:
    """Return the split generated with ``params``, generating and caching it if needed.

    The file is ``directory / split_filename(split, params)``. Rank 0 generates
    and writes it when absent; an existing file is never overwritten. After a
    barrier (when several processes run) every rank reads and validates it.

    Args:
        directory: folder of the cached splits (created if needed).
        split: split name, e.g. ``"train"``.
        params: the keyword arguments of `generate_split`.

    Returns:
        ``(path, data)``: the file and its `SplitData` (mixture (M, T), target (F, T), t (T,)).

    Raises:
        DataFileError: the file exists but is corrupt or holds other parameters;
            the message names the file and suggests deleting it.

    Example:
        >>> params = dict(frequencies=[1.0, 3.0], fs=1000.0, duration=0.5, amplitude_range=[0.8, 1.2],
        ...               phase_scale=0.01, noise_sigma=0.0, n_mixtures=2, seed=1)
        >>> path, split = ensure_split("data", "train", params)  # generated once, then read back
        >>> path.name, split.mixture.shape
        ('train-788045f614.h5', (2, 500))
    """
    params = canonical_params(params)
    path = Path(directory) / split_filename(split, params)
    if idist.get_rank() == 0:
        if path.exists():
            logger.info("Reusing %s split from %s", split, path)
        else:
            data = generate_split(**params)
            write_split(path, data, split)
            logger.info(
                "Generated %s split (%d mixtures x %d steps, seed %d) in %s",
                split, data.mixture.shape[0], data.mixture.shape[1], params["seed"], path,
            )
    if idist.get_world_size() > 1:
        idist.barrier()
    try:
        data = read_split(path, expected_params=params, expected_split=split)
    except DataFileError as err:
        raise DataFileError(f"{err} Delete {path} to have it generated again.") from err
    return path, data
