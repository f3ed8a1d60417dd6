"""From a validated config to data, model, optimizer and loss (the ``setup_*`` functions)."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import ignite.distributed as idist
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ignite_lstm.data import SignalDataset, ensure_split
from ignite_lstm.losses import setup_loss
from ignite_lstm.models import StatefulLSTM

__all__ = ["setup_data", "setup_model", "setup_optimizer", "setup_loss", "split_params", "ShardSampler"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


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


def split_params(data_cfg: Any, split: str) -> dict[str, Any]:
    """Generation parameters of one split (the HDF5 file is keyed by them)."""
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


def setup_data(cfg: Any) -> dict[str, Any]:
    """Generate or reuse the split files and build datasets and loaders.

    Returns:
        ``{"datasets": {split: SignalDataset}, "files": {split: Path},
        "train_loader": DataLoader, "eval_loaders": {split: DataLoader}}``. The train
        loader shuffles with ``DistributedSampler(seed=cfg.seed)`` (a permutation that
        depends on the seed and the epoch only, so a resumed run sees the same
        batches) and takes ``batch_size / world_size`` sequences per rank. Each
        evaluation loader holds this rank's ``ShardSampler`` shard (every sequence on
        exactly one rank; a rank without any gets one empty batch).
    """
    rank, world = idist.get_rank(), idist.get_world_size()
    datasets, files = {}, {}
    for split in SPLITS:
        path, data = ensure_split(cfg.data.dir, split, split_params(cfg.data, split))
        datasets[split] = SignalDataset(data.mixture, data.target, input_scale=cfg.data.input_scale)
        files[split] = path
    batch = cfg.train.batch_size
    if batch % world:
        raise ValueError(f"train.batch_size ({batch}) must be divisible by the number of processes ({world}).")
    train_sampler = DistributedSampler(datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(datasets["train"], batch_size=batch // world, sampler=train_sampler)
    eval_loaders = {split: _eval_loader(ds, cfg.eval.batch_size, rank, world) for split, ds in datasets.items()}
    return {"datasets": datasets, "files": files, "train_loader": train_loader, "eval_loaders": eval_loaders}


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


def setup_model(cfg: Any) -> StatefulLSTM:
    """The ``StatefulLSTM`` for the task: input [S, one-hot of F], one output."""
    n_freq = len(cfg.data.frequencies)
    return StatefulLSTM(
        input_size=1 + n_freq,
        hidden_size=cfg.model.hidden_size,
        num_layers=cfg.model.num_layers,
        dropout=cfg.model.dropout,
        output_size=1,
    )


def setup_optimizer(name: str, params, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """One of adam, adamw, sgd, rmsprop (momentum applies to sgd and rmsprop)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Argument name should be one of {tuple(OPTIMIZERS)}, got {name!r}.")
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name in ("sgd", "rmsprop"):
        kwargs["momentum"] = momentum
    return OPTIMIZERS[name](params, **kwargs)
