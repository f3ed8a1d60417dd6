"""HDF5 storage of one data split, with validation on read.

Schema (format_version 1), one file per split:

===================  ==========  =========  =============================================
Name                 Kind        Type       Meaning
===================  ==========  =========  =============================================
``/mixture``         dataset     float32    ``(M, T)`` noisy mixtures ``S_m(n)``
``/target``          dataset     float32    ``(F, T)`` clean sines ``sin(2*pi*f_k*t_n)``
``/t``               dataset     float64    ``(T,)`` sample times ``n / fs`` in seconds
``format_version``   root attr   int        ``1`` (`FORMAT_VERSION`)
``split``            root attr   str        split name, e.g. ``"train"``
``frequencies``      root attr   float64[]  the ``F`` frequencies in Hz
``fs``               root attr   float      sampling rate in Hz
``duration``         root attr   float      length in seconds; ``T = round(fs * duration)``
``amplitude_low``    root attr   float      lower bound of the amplitude draw
``amplitude_high``   root attr   float      upper bound of the amplitude draw
``phase_scale``      root attr   float      scale ``s`` of the phase noise ``s * U(0, 2*pi)``
``noise_sigma``      root attr   float      std of the additive Gaussian noise
``n_mixtures``       root attr   int        number ``M`` of mixtures
``seed``             root attr   int        seed of ``np.random.default_rng``
===================  ==========  =========  =============================================

Files are named by `split_filename` after a hash of their generation
parameters, are written atomically (temporary file + ``os.replace``), and are
refused on read with a `DataFileError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ignite_lstm._internal.atomic import atomic_write
from ignite_lstm.app.task.generator import SplitData, canonical_params
from ignite_lstm.data.errors import DataFileError

__all__ = ["FORMAT_VERSION", "DataFileError", "read_split", "split_filename", "write_split"]

FORMAT_VERSION = 1

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_FLOAT_ATTRS = ("fs", "duration", "amplitude_low", "amplitude_high", "phase_scale", "noise_sigma")
_INT_ATTRS = ("n_mixtures", "seed")
_REQUIRED_ATTRS = ("format_version", "split", "frequencies") + _FLOAT_ATTRS + _INT_ATTRS
_DTYPES = {"mixture": np.float32, "target": np.float32, "t": np.float64}


def _check_split_name(split: Any) -> str:
    if not isinstance(split, str):
        raise TypeError(f"Argument split should be a string, got {type(split).__name__}.")
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"Argument split should match [A-Za-z0-9_-]+, got {split!r}.")
    return split


def split_filename(split: str, params: Mapping[str, Any]) -> str:
    """File name of a split, keyed by its generation parameters.

    Args:
        split: split name (letters, digits, ``_`` or ``-``), e.g. ``"train"``.
        params: generation parameters (the keyword arguments of `generate_split`).

    Returns:
        ``"<split>-<h>.h5"`` where ``h`` is the first 10 hex characters of the
        SHA-256 of the canonical JSON of the parameters (sorted keys, floats as
        floats), so ``fs=1000`` and ``fs=1000.0`` give the same name.
    """
    split = _check_split_name(split)
    canonical = json.dumps(canonical_params(params), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]
    return f"{split}-{digest}.h5"


def _shape_problems(arrays: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    n_steps = round(params["fs"] * params["duration"])
    expected = {
        "mixture": (params["n_mixtures"], n_steps),
        "target": (len(params["frequencies"]), n_steps),
        "t": (n_steps,),
    }
    problems = []
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            problems.append(f"dataset /{name} has shape {tuple(arrays[name].shape)}, expected {shape}")
        elif arrays[name].dtype != _DTYPES[name]:
            problems.append(f"dataset /{name} has dtype {arrays[name].dtype}, expected {np.dtype(_DTYPES[name])}")
    return problems


def write_split(path: str | os.PathLike, data: SplitData, split: str) -> Path:
    """Write one split atomically; parent folders are created.

    Args:
        path: destination file.
        data: the split; its arrays must match its ``params`` (shapes and dtypes).
        split: split name stored in the ``split`` attribute.

    Returns:
        The destination path. A reader never sees a half-written file: the data
        goes to a temporary file in the same folder, then ``os.replace``.

    Example:
        >>> path = write_split("data/train.h5", split, "train")  # split from generate_split
    """
    split = _check_split_name(split)
    params = canonical_params(data.params)
    arrays = {"mixture": data.mixture, "target": data.target, "t": data.t}
    problems = _shape_problems(arrays, params)
    if problems:
        raise ValueError(f"Argument data does not match its params: {'; '.join(problems)}.")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp_name: str) -> None:
        with h5py.File(tmp_name, "w") as f:
            for name, array in arrays.items():
                f.create_dataset(name, data=array)
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["split"] = split
            f.attrs["frequencies"] = np.asarray(params["frequencies"], dtype=np.float64)
            f.attrs["amplitude_low"], f.attrs["amplitude_high"] = params["amplitude_range"]
            for name in ("fs", "duration", "phase_scale", "noise_sigma"):
                f.attrs[name] = np.float64(params[name])
            for name in _INT_ATTRS:
                f.attrs[name] = np.int64(params[name])

    atomic_write(path, write, by_name=True)
    return path


def _show(value: Any) -> str:
    # Plain repr of an attribute value: 2 rather than np.int64(2).
    return repr(value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value)


def _params_from_attrs(path: Path, attrs: Mapping[str, Any]) -> dict:
    missing = [name for name in _REQUIRED_ATTRS if name not in attrs]
    if missing:
        raise DataFileError(f"Data file {path} is missing attribute(s) {missing}.")
    try:
        freqs = np.asarray(attrs["frequencies"], dtype=np.float64).reshape(-1)
        floats = {name: float(attrs[name]) for name in _FLOAT_ATTRS}
        ints = {}
        for name in _INT_ATTRS:
            value = attrs[name]
            if not np.issubdtype(np.asarray(value).dtype, np.integer):
                raise TypeError(f"attribute {name} should be an integer, got {_show(value)}")
            ints[name] = int(value)
    except (TypeError, ValueError) as err:
        raise DataFileError(f"Data file {path} has a malformed attribute: {err}.") from err
    params = {
        "frequencies": [float(f) for f in freqs],
        "fs": floats["fs"],
        "duration": floats["duration"],
        "amplitude_range": [floats["amplitude_low"], floats["amplitude_high"]],
        "phase_scale": floats["phase_scale"],
        "noise_sigma": floats["noise_sigma"],
        **ints,
    }
    try:
        return canonical_params(params)
    except (TypeError, ValueError) as err:
        raise DataFileError(f"Data file {path} has invalid generation parameters: {err}") from err


def _param_differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    differences = []
    for name in expected:
        a, b = found[name], expected[name]
        if isinstance(b, int):
            same = a == b
        else:
            a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            same = a_arr.shape == b_arr.shape and bool(np.allclose(a_arr, b_arr, rtol=1e-12, atol=0.0))
        if not same:
            differences.append(f"{name}: file {a!r} vs expected {b!r}")
    return differences


def read_split(
    path: str | os.PathLike,
    expected_params: Mapping[str, Any] | None = None,
    *,
    expected_split: str | None = None,
) -> SplitData:
    """Read and validate one split.

    Args:
        path: the HDF5 file.
        expected_params: if given, the generation parameters the file must have
            (floats compared with relative tolerance 1e-12).
        expected_split: if given, the split name the file must have.

    Returns:
        `SplitData` with ``t`` (T,) float64, ``mixture`` (M, T) float32,
        ``target`` (F, T) float32 and the file's canonical ``params``.

    Raises:
        DataFileError: the file does not exist, is not a readable HDF5 file,
            lacks a dataset or attribute, has another format_version, a wrong
            shape or dtype, NaN/inf values, or parameters other than expected.

    Example:
        >>> data = read_split("data/train.h5", expected_params=split.params, expected_split="train")
        >>> data.mixture.shape  # (M, T)
        (2, 500)
    """
    path = Path(path)
    if expected_params is not None:
        expected_params = canonical_params(expected_params)
    if not path.exists():
        raise DataFileError(f"Data file {path} does not exist.")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise DataFileError(f"Data file {path} is not an HDF5 file.")
    try:
        with h5py.File(path, "r") as f:
            return _read_open_file(path, f, expected_params, expected_split)
    except OSError as err:  # truncated or corrupt: h5py fails to open or read
        raise DataFileError(f"Data file {path} is not a readable HDF5 file ({err}).") from err


def _read_open_file(
    path: Path, f: h5py.File, expected_params: Mapping[str, Any] | None, expected_split: str | None
) -> SplitData:
    if "format_version" not in f.attrs:
        raise DataFileError(f"Data file {path} is missing attribute(s) ['format_version'].")
    version = f.attrs["format_version"]
    if not np.issubdtype(np.asarray(version).dtype, np.integer) or int(version) != FORMAT_VERSION:
        raise DataFileError(
            f"Data file {path} has unsupported format_version {_show(version)}; supported: {FORMAT_VERSION}."
        )
    missing = [name for name in _DTYPES if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        raise DataFileError(f"Data file {path} is missing dataset(s) {['/' + name for name in missing]}.")
    params = _params_from_attrs(path, f.attrs)

    split = f.attrs["split"]
    split = split.decode() if isinstance(split, bytes) else str(split)
    if expected_split is not None and split != expected_split:
        raise DataFileError(f"Data file {path} holds split {split!r}, expected {expected_split!r}.")

    problems = _shape_problems({name: f[name] for name in _DTYPES}, params)
    if problems:
        raise DataFileError(f"Data file {path}: {'; '.join(problems)}.")
    arrays = {name: f[name][()] for name in _DTYPES}
    bad = [f"/{name}" for name, array in arrays.items() if not np.isfinite(array).all()]
    if bad:
        raise DataFileError(f"Data file {path} has NaN or infinite values in {', '.join(bad)}.")

    if expected_params is not None:
        differences = _param_differences(params, expected_params)
        if differences:
            raise DataFileError(f"Data file {path} was generated with other parameters: {'; '.join(differences)}.")
    return SplitData(t=arrays["t"], mixture=arrays["mixture"], target=arrays["target"], params=params)
