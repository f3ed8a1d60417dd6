"""Where the series of a stream come from: arrays in memory, or datasets in an HDF5 file read lazily.

A series is what ``StreamLoader`` reads chunk by chunk: ``len(series)`` steps,
inputs x (T, F) and targets y (T, O). In memory it is an ``(x, y)`` pair of
numpy arrays or torch tensors; on disk, an `H5Series` (from `h5_series`) reads
only the rows of the current chunk (``dataset[start:stop]``), so a series longer
than memory streams from its file. `forecast_pair` makes the common forecasting
series (the target is the value ``horizon`` steps later) from one array.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ignite_lstm.data.errors import DataFileError

__all__ = ["H5Series", "h5_series", "forecast_pair", "as_series"]


def _as_tensor(name: str, value: Any, dims: tuple[int, ...] = (2,)) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)  # no copy: a chunk is copied into the batch when it is read
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"Argument {name} should be a numpy array or a torch tensor, got {type(value).__name__}.")
    if value.ndim not in dims:
        raise ValueError(
            f"Argument {name} should be (steps, features), 2-D, got shape {tuple(value.shape)}"
            + ("; a univariate series x of shape (T,) is x[:, None]." if value.ndim == 1 else ".")
        )
    return value.detach().cpu()


class _MemorySeries:
    """An ``(x, y)`` pair held in memory: x (T, F), y (T, O) tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.features, self.outputs = x.shape[1], y.shape[1]
        self.dtypes = (x.dtype, y.dtype)

    def __len__(self) -> int:
        return self.x.shape[0]

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps ``start:stop``: x (n, F), y (n, O)."""
        return self.x[start:stop], self.y[start:stop]


class _H5File:
    """One read-only HDF5 file, opened on first read and again in a forked or unpickled process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid = -1

    def get(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_pid": -1}


class H5Series:
    """A series read from datasets of an HDF5 file, the rows of one chunk at a time (see `h5_series`).

    Step t has inputs ``file[x][t]`` and targets ``file[y][t + horizon]``; a 1-D
    dataset (T,) reads as (T, 1). Attributes: ``path``, ``x``, ``y``, ``horizon``,
    ``features``, ``outputs``, ``dtypes`` (of the batch tensors x and y).
    """

    def __init__(self, file: _H5File, x: str, y: str, horizon: int) -> None:
        self._file, self.path, self.x, self.y, self.horizon = file, file.path, x, y, horizon
        self._open: tuple[h5py.File, h5py.Dataset, h5py.Dataset] | None = None  # this process's handles
        f = file.get()
        xd, yd = (_dataset(f, file.path, arg, key) for arg, key in (("x", x), ("y", y)))
        if xd.shape[0] != yd.shape[0]:
            raise DataFileError(
                f"Datasets {x!r} ({xd.shape[0]} steps) and {y!r} ({yd.shape[0]} steps) of "
                f"{file.path} should have the same number of steps."
            )
        self._length = xd.shape[0] - horizon
        if self._length < 1:
            raise DataFileError(
                f"Dataset {x!r} of {file.path} has {xd.shape[0]} steps, too few for "
                f"horizon={horizon}: a series needs at least one step."
            )
        self.features, self.outputs = _width(xd), _width(yd)
        self.dtypes = (_torch_dtype(xd), _torch_dtype(yd))

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"H5Series({str(self.path)!r}, x={self.x!r}, y={self.y!r}, horizon={self.horizon}, steps={len(self)})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": None}

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps ``start:stop`` read from the file: x (n, F), y (n, O)."""
        f, h = self._file.get(), self.horizon
        if self._open is None or self._open[0] is not f:  # a name lookup costs more than a chunk's read
            self._open = (f, f[self.x], f[self.y])
        x, y = self._open[1][start:stop], self._open[2][start + h : stop + h]
        return torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(y.reshape(len(y), -1))


def _dataset(f: h5py.File, path: Path, arg: str, key: str) -> h5py.Dataset:
    node = f.get(key)
    if not isinstance(node, h5py.Dataset):
        names: list[str] = []
        f.visititems(
            lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and len(names) < 10 else None
        )
        what = "a group, not a dataset" if node is not None else "missing"
        raise DataFileError(
            f"Argument {arg} names dataset {key!r} of {path}, which is {what}; the file's "
            f"datasets include: {', '.join(names) or 'none'}."
        )
    if node.ndim not in (1, 2):
        raise DataFileError(
            f"Dataset {key!r} of {path} should be (steps,) or (steps, features), got shape {node.shape}."
        )
    return node


def _width(dataset: h5py.Dataset) -> int:
    return 1 if dataset.ndim == 1 else dataset.shape[1]


def _torch_dtype(dataset: h5py.Dataset) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dataset.dtype)).dtype


def _open(path: str | os.PathLike) -> _H5File:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"Argument path should be an HDF5 file, got {path}, which does not exist.")
    opened = _H5File(path)
    try:
        opened.get()
    except OSError as err:  # not HDF5, truncated or unreadable
        raise DataFileError(
            f"Argument path should be an HDF5 file, got {path}, which is not a readable one ({err})."
        ) from err
    return opened


def _names(arg: str, value: Any) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"Argument {arg} should be a dataset name or a non-empty list of them, got {value!r}.")
    return list(names)


def h5_series(
    path: str | os.PathLike,
    x: str | Sequence[str] = "x",
    y: str | Sequence[str] = "y",
    *,
    group: str | None = None,
    horizon: int = 0,
) -> list[H5Series]:
    """The series stored in an HDF5 file, read lazily: each chunk reads only its own rows.

    Args:
        path: the HDF5 file (opened read-only on first read, once per process).
        x: the inputs' dataset, (T, F) or (T,) read as (T, 1); a list of names for several series.
            With ``group``, the name of the inputs' dataset inside each member.
        y: the targets' dataset(s), (T, O) or (T,), paired with ``x`` one by one.
        group: a group whose every member that is a group holding datasets ``x`` and ``y`` is
            one series, in h5py's order (by name); other members are skipped.
        horizon: steps from an input to its target: step t is ``(x[t], y[t + horizon])``, so
            ``x="load", y="load", horizon=1`` forecasts the next value; T = len - horizon.

    Returns:
        A list of `H5Series`, for ``StreamLoader``.

    Raises:
        DataFileError: the file is missing or not HDF5, a name is missing or not a dataset (the
            message names the file and the key), or x and y differ in length.

    Example:
        >>> series = h5_series("recordings.h5", group="train")        # /train/<name>/x, /train/<name>/y
        >>> series = h5_series("co2.h5", x="co2", y="co2", horizon=1)  # one series: the next value
    """
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 0:
        raise ValueError(f"Argument horizon should be a non-negative integer, got {horizon!r}.")
    file = _open(path)
    xs, ys = _names("x", x), _names("y", y)
    if group is not None:
        root = file.get().get(group)
        if not isinstance(root, h5py.Group):
            raise DataFileError(f"Argument group names {group!r} of {file.path}, which is not a group.")
        members = [
            node.name for node in root.values() if isinstance(node, h5py.Group) and xs[0] in node and ys[0] in node
        ]
        if not members:
            raise DataFileError(
                f"Group {group!r} of {file.path} has no member holding datasets {xs[0]!r} and {ys[0]!r}."
            )
        xs, ys = [f"{m}/{xs[0]}" for m in members], [f"{m}/{ys[0]}" for m in members]
    if len(xs) != len(ys):
        raise ValueError(f"Arguments x and y should name as many datasets, got {len(xs)} and {len(ys)}.")
    return [H5Series(file, a, b, horizon) for a, b in zip(xs, ys)]


def forecast_pair(values: Any, horizon: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One series whose target is the value ``horizon`` steps later: ``(values[:-h], values[h:])``.

    Args:
        values: (T, F) or (T,) numpy array or tensor (1-D reads as (T, 1)).
        horizon: steps ahead, at least 1 and less than T.

    Returns:
        ``(x, y)``: x (T - h, F) and y (T - h, F), views of ``values``.

    Example:
        >>> x, y = forecast_pair(np.sin(np.arange(100.0)))   # x (99, 1), y (99, 1): y[t] = x[t + 1]
        >>> loader = StreamLoader([(x, y)], lanes=1, chunk_steps=20)
    """
    values = _as_tensor("values", values, dims=(1, 2))
    values = values[:, None] if values.ndim == 1 else values
    if not isinstance(horizon, int) or isinstance(horizon, bool) or not 1 <= horizon < len(values):
        raise ValueError(
            f"Argument horizon should be an integer from 1 to {len(values) - 1} (the series has "
            f"{len(values)} steps), got {horizon!r}."
        )
    return values[:-horizon], values[horizon:]


def as_series(items: Any) -> list[Any]:
    """Check a list of series and return each as an object with ``len()`` and ``read(start, stop)``.

    Args:
        items: a non-empty list of ``(x, y)`` pairs or ``{"x": x, "y": y}`` mappings (x (T_i, F),
            y (T_i, O) arrays or tensors, T_i >= 1) and `H5Series`, all with the same F, O and dtypes.

    Returns:
        The series, in the same order.

    Raises:
        TypeError, ValueError: naming the first bad item.

    Example:
        >>> as_series([(np.zeros((5, 2)), np.zeros((5, 1)))])[0].read(0, 3)[0].shape
        torch.Size([3, 2])
    """
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise TypeError(f"Argument series should be a list of (x, y) pairs or H5Series, got {type(items).__name__}.")
    if not items:
        raise ValueError("Argument series should hold at least one series, got an empty list.")
    out = [_one_series(i, item) for i, item in enumerate(items)]
    first = out[0]
    for i, s in enumerate(out):
        if (s.features, s.outputs) != (first.features, first.outputs):
            raise ValueError(
                f"Argument series[{i}] should have F = {first.features} inputs and O = {first.outputs} "
                f"targets like series[0], got F = {s.features}, O = {s.outputs}."
            )
        if s.dtypes != first.dtypes:
            raise ValueError(
                f"Argument series[{i}] should have the dtypes of series[0] (x {first.dtypes[0]}, "
                f"y {first.dtypes[1]}), got x {s.dtypes[0]}, y {s.dtypes[1]}."
            )
    return out


def _one_series(i: int, item: Any) -> Any:
    if isinstance(item, H5Series):
        return item
    if isinstance(item, Mapping) and set(item) == {"x", "y"}:
        x, y = item["x"], item["y"]
    elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 2:
        x, y = item
    else:
        raise TypeError(
            f"Argument series[{i}] should be an (x, y) pair, a mapping with keys 'x' and 'y', or an "
            f"H5Series, got {type(item).__name__}."
        )
    x, y = _as_tensor(f"series[{i}] x", x), _as_tensor(f"series[{i}] y", y)
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(
            f"Argument series[{i}] should hold x (T, F) and y (T, O) with the same T >= 1, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    return _MemorySeries(x, y)
