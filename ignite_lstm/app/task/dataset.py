"""Torch side of the data: the per-frequency sequence dataset, the cached splits, the loaders.

One mixture ``S_m`` of a split yields ``F`` sequences, one per wanted
frequency ``k``: the input at step ``n`` is ``[input_scale * S_m(n), one_hot(k)]``
and the target is the clean sine ``sin(2*pi*f_k*t_n)``.

`ensure_split` keeps each split in an HDF5 file named after its generation
parameters (see `ignite_lstm.app.task.h5io`), generating it on rank 0 the first time and
reading it on every rank. `setup_data` builds the three splits of a config and their
loaders: the training batches shared out over the processes, and every evaluation
sequence on exactly one process (`ShardSampler`); or, with ``data.layout: streams``,
the sequences of each split laid out in lanes and cut into chunks (`StreamLoader`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.task.generator import SplitData, canonical_params, generate_split
from ignite_lstm.app.task.h5io import DataFileError, read_split, split_filename, write_split
from ignite_lstm.data.streams import StreamLoader

__all__ = ["SignalDataset", "ensure_split", "setup_data", "split_params", "batch_problem", "ShardSampler", "SPLITS"]

SPLITS = ("train", "val", "test")

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


def ensure_split(directory: str | os.PathLike, split: str, params: Mapping[str, Any]) -> tuple[Path, SplitData]:
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
                split,
                data.mixture.shape[0],
                data.mixture.shape[1],
                params["seed"],
                path,
            )
    if idist.get_world_size() > 1:
        idist.barrier()
    try:
        data = read_split(path, expected_params=params, expected_split=split)
    except DataFileError as err:
        raise DataFileError(f"{err} Delete {path} to have it generated again.") from err
    return path, data


def split_params(data_cfg: Any, split: str) -> dict[str, Any]:
    """Generation parameters of one split (the HDF5 file is keyed by them).

    Args:
        data_cfg: the ``data`` section of a validated config.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        The keyword arguments of `generate_split` (and `ensure_split`'s ``params``).
    """
    part = data_cfg[split]
    return {
        "frequencies": [float(f) for f in data_cfg.frequencies],
        "fs": float(data_cfg.fs),
        "duration": float(data_cfg.duration),
        "amplitude_range": [float(a) for a in data_cfg.amplitude],
        "phase_scale": float(data_cfg.phase_scale),
        "noise_sigma": float(data_cfg.noise_sigma),
        "n_mixtures": int(part.mixtures),
        "seed": int(part.seed),
    }


def batch_problem(batch_size: int, world_size: int) -> str | None:
    """Why ``train.batch_size`` cannot be shared out over ``world_size`` processes, or None when it can.

    The one owner of the rule: the command line reports it before anything is written,
    `setup_data` raises it for a library caller.

    Args:
        batch_size: the global batch (``train.batch_size``).
        world_size: the number of processes.

    Returns:
        The problem, worded like the schema's (``"train.batch_size: ..."``), or None.

    Example:
        >>> batch_problem(40, 3)
        'train.batch_size: 40 is not divisible by the 3 processes (...); use a multiple of 3'
    """
    if batch_size % world_size:
        return (
            f"train.batch_size: {batch_size} is not divisible by the {world_size} processes (each trains on an "
            f"equal share of the global batch); use a multiple of {world_size}"
        )
    return None


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every item on exactly one rank, no padding.

    Evaluation must count every sequence once; ``DistributedSampler`` pads the
    last shard with repeats, which would count them twice in the metrics.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def setup_data(cfg: Any) -> dict[str, Any]:
    """Generate or reuse the split files and build datasets and loaders.

    Args:
        cfg: the validated config (``data``, ``train.batch_size``, ``eval.batch_size``, ``seed``).

    Returns:
        ``{"datasets": {split: SignalDataset}, "files": {split: Path},
        "train_loader": DataLoader, "eval_loaders": {split: DataLoader}}``. The train
        loader shuffles with ``DistributedSampler(seed=cfg.seed)`` (a permutation that
        depends on the seed and the epoch only, so a resumed run sees the same
        batches) and takes ``batch_size / world_size`` sequences per rank. Each
        evaluation loader holds this rank's ``ShardSampler`` shard (every sequence on
        exactly one rank; a rank without any gets one empty batch).

        With ``data.layout: streams`` every loader is a ``StreamLoader`` over the split's
        sequences, each a series: chunks of ``data.stream.chunk_steps`` steps (null:
        ``train.tbptt_steps``) with ``mask`` and ``reset``, for engines with
        ``carry_state=True``. Training: ``train.batch_size`` lanes (global), shuffled per
        epoch if ``data.stream.shuffle`` (by ``seed``); evaluation: ``eval.batch_size``
        lanes per process (fewer for a smaller split), in order.

    Raises:
        ConfigError: ``train.batch_size`` is not a multiple of the number of processes.
    """
    rank, world = idist.get_rank(), idist.get_world_size()
    batch = cfg.train.batch_size
    problem = batch_problem(batch, world)
    if problem:
        raise ConfigError([problem])
    datasets, files = {}, {}
    for split in SPLITS:
        path, data = ensure_split(cfg.data.dir, split, split_params(cfg.data, split))
        datasets[split] = SignalDataset(data.mixture, data.target, input_scale=cfg.data.input_scale)
        files[split] = path
    if cfg.data.layout == "streams":
        train_loader, eval_loaders = _stream_loaders(cfg, datasets, world)
    else:
        train_sampler = DistributedSampler(
            datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
        )
        train_loader = DataLoader(datasets["train"], batch_size=batch // world, sampler=train_sampler)
        eval_loaders = {split: _eval_loader(ds, cfg.eval.batch_size, rank, world) for split, ds in datasets.items()}
    return {"datasets": datasets, "files": files, "train_loader": train_loader, "eval_loaders": eval_loaders}


def _stream_loaders(
    cfg: Any, datasets: dict[str, SignalDataset], world: int
) -> tuple[StreamLoader, dict[str, StreamLoader]]:
    """The streams layout: every split's sequences (each a series) in lanes, cut into chunks.

    Training: ``train.batch_size`` lanes (global; each rank yields its own), shuffled per epoch by
    ``seed``. Evaluation: ``eval.batch_size`` lanes per process, fewer when the split has fewer
    sequences (no lane left empty by that), never shuffled; every sequence on exactly one rank.
    """
    chunk = cfg.data.stream.chunk_steps or cfg.train.tbptt_steps

    def series(dataset: SignalDataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [dataset[i] for i in range(len(dataset))]  # views: x (T, 1 + F), y (T, 1)

    train = StreamLoader(
        series(datasets["train"]),
        lanes=cfg.train.batch_size,
        chunk_steps=chunk,
        shuffle=cfg.data.stream.shuffle,
        seed=cfg.seed,
    )
    evals = {
        split: StreamLoader(series(ds), lanes=world * min(cfg.eval.batch_size, -(-len(ds) // world)), chunk_steps=chunk)
        for split, ds in datasets.items()
    }
    return train, evals


def _eval_loader(dataset: SignalDataset, batch_size: int, rank: int, world: int) -> Any:
    """This rank's shard of ``dataset`` in batches; one empty batch for a rank without sequences.

    Every rank must run the evaluator, whose metrics all-reduce their sums when computed;
    Ignite refuses to run on no data, and an empty batch adds nothing to a sum.
    """
    sampler = ShardSampler(len(dataset), rank, world)
    if len(sampler):
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    x, y = dataset[0]  # (T, F), (T, O)
    return [(x.new_empty((0, *x.shape)), y.new_empty((0, *y.shape)))]
