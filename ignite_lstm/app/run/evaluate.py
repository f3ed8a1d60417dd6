"""Evaluate an existing model: ``ignite-lstm evaluate RUN_OR_CHECKPOINT [--split test] [--output DIR]``.

Further options: ``--device``, ``--span SECONDS`` (time shown in the figures), ``--no-figures``.

RUN_OR_CHECKPOINT is a run folder (its ``model.pt``) or a model/checkpoint file. The data
settings come from the file's own config (``model.pt``, training checkpoints) or else
from the run folder's ``config.yaml`` (``best_*`` checkpoints hold the weights only).
The report (see ``ignite_lstm.app.task.report``) goes to ``<run>/report`` for a run folder or its
``model.pt``, to ``report-<file stem>`` beside any other file, or to ``--output``.

Exit status: 0 done, 2 bad input (missing or foreign model file, bad config, bad data file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from ignite.engine import Engine
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ignite_lstm.app.config.schema import ConfigError, load_config, validate_config
from ignite_lstm.app.run.preflight import device_problem, resolve_device
from ignite_lstm.app.run.setup import setup_evaluators
from ignite_lstm.app.task.dataset import SignalDataset, ensure_split, split_params
from ignite_lstm.models.lstm import StatefulLSTM, load_model

__all__ = ["RunFiles", "load_run", "evaluate_splits", "figure_predictions", "main"]

logger = logging.getLogger("ignite_lstm")

SPLITS = ("train", "val", "test")


class RunFiles(NamedTuple):
    """What ``load_run`` found: the model (eval mode), its config (or None), run folder and model file."""

    model: StatefulLSTM
    config: DictConfig | None
    run_dir: Path
    model_file: Path


def _load_model_file(path: Path) -> tuple[StatefulLSTM, dict]:
    try:
        return load_model(path)
    except (TypeError, RuntimeError, KeyError) as exc:  # foreign model_args or state dict
        raise ValueError(f"Model file {path} is not a StatefulLSTM file of this package: {exc}") from exc


def load_run(path: str | Path, *, require_config: bool = True) -> RunFiles:
    """Load a model and the config it was trained with.

    Args:
        path: a run folder (its ``model.pt`` is used) or a ``.pt`` file written by a run.
        require_config: raise when no config is found (else ``config`` is None).

    Returns:
        ``RunFiles(model, config, run_dir, model_file)``; ``run_dir`` is the folder
        holding the run's config.yaml (the file's folder when there is none).

    Raises:
        FileNotFoundError: the path, or a run folder's model.pt, does not exist.
        ValueError: not a StatefulLSTM file; a model that does not fit the config's frequencies.
        ConfigError: the config is invalid, or absent with ``require_config``.

    Example:
        >>> files = load_run("runs/base-20260101-120000")
        >>> files.model, files.config.data.input_scale
    """
    path = Path(path)
    if path.is_dir():
        model_file = path / "model.pt"
        if not model_file.is_file():
            found = sorted(p.name for p in (path / "checkpoints").glob("*.pt"))
            hint = f"; pass one of its checkpoints instead: {', '.join(found)}" if found else ""
            raise FileNotFoundError(f"Run folder {path} has no model.pt (training not finished?){hint}.")
    elif path.is_file():
        model_file = path
    else:
        raise FileNotFoundError(f"Model file or run folder {path} does not exist.")
    model, rest = _load_model_file(model_file)

    config, run_dir = None, model_file.parent
    if isinstance(rest.get("config"), dict):
        config = validate_config(rest["config"], source=f"config stored in {model_file}")
        if model_file.parent.name == "checkpoints":
            run_dir = model_file.parent.parent
    else:
        for folder in (model_file.parent, model_file.parent.parent):
            if (folder / "config.yaml").is_file():
                config, run_dir = load_config(folder / "config.yaml"), folder
                break
    if config is None and require_config:
        raise ConfigError(
            [f"{model_file}: holds no config and no config.yaml was found beside it or in its parent folder"]
        )
    if config is not None:
        n_freq = len(config.data.frequencies)
        if model.input_size != 1 + n_freq or model.output_size != 1:
            raise ValueError(
                f"Model file {model_file} has input_size {model.input_size} and output_size {model.output_size}; "
                f"its config lists {n_freq} frequencies, which need input_size {1 + n_freq} and output_size 1."
            )
    return RunFiles(model, config, run_dir, model_file)


def _default_output(files: RunFiles) -> Path:
    if files.model_file.name == "model.pt" and files.model_file.parent == files.run_dir:
        return files.run_dir / "report"
    return files.model_file.parent / f"report-{files.model_file.stem}"


def evaluate_splits(evaluator: Engine, loaders: Mapping[str, Iterable]) -> dict[str, float]:
    """Run ``evaluator`` over each split's loader: the final evaluation of a run.

    On several processes every rank calls it with its shard of each split; the metrics
    all-reduce their sums, so every rank gets the values of the whole split.

    Args:
        evaluator: from ``create_evaluator`` (``trainers.setup_evaluators(...)["final"]``).
        loaders: split name -> loader, in table order.

    Returns:
        ``{"<split>/<metric>": value}`` for every metric attached to ``evaluator``
        (``test/mse``, ``test/mse_f3``, ...).

    Example:
        >>> metrics = evaluate_splits(evaluator, {"val": val_loader, "test": test_loader})
    """
    metrics: dict[str, float] = {}
    for split, loader in loaders.items():
        metrics.update({f"{split}/{name}": float(value) for name, value in evaluator.run(loader).metrics.items()})
    return metrics


def figure_predictions(
    model: torch.nn.Module, dataset: SignalDataset, device: str | torch.device = "cpu", mixture: int = 0
) -> np.ndarray:
    """The model's outputs for the F sequences of one mixture (one per frequency): what the report draws.

    Args:
        model: the trained model (not DDP-wrapped).
        dataset: the split; item ``mixture * F + k`` is frequency k of that mixture.
        device: where the model is.
        mixture: which mixture.

    Returns:
        float32 (F, T).
    """
    F = dataset.n_frequencies
    x = torch.stack([dataset[mixture * F + k][0] for k in range(F)]).to(device)  # (F, T, 1 + F)
    training = model.training
    model.eval()
    with torch.no_grad():
        y, _ = model(x)
    model.train(training)
    return y[..., 0].cpu().numpy().astype(np.float32)


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm evaluate") -> int:
    """The ``ignite-lstm evaluate`` command: a run's model evaluated into its report.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 2 bad input (a missing or foreign model file, a bad config or
        data file, a ``--device`` this torch cannot use); the message is on stderr.

    Example:
        >>> main(["runs/base-20260101-120000", "--split", "test"])
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a trained model: metrics (JSON, Markdown) and figures.",
        epilog="Example: ignite-lstm evaluate runs/base-20260101-120000 --split test",
    )
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run folder or .pt model/checkpoint file")
    parser.add_argument(
        "--split", action="append", choices=SPLITS, help="split to evaluate (repeatable); default: train, val and test"
    )
    parser.add_argument("--output", metavar="DIR", help="report folder (default: <run>/report)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument(
        "--span",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds shown in the time-domain figures (default 1)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write the metrics only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    splits = list(dict.fromkeys(args.split or SPLITS))
    if not args.span > 0:
        print(f"error: --span should be a positive number of seconds, got {args.span}.", file=sys.stderr)
        return 2
    bad_device = device_problem(args.device)  # before any model, data or report is loaded or written
    if bad_device:
        print(f"error: --device {args.device!r} {bad_device}.", file=sys.stderr)
        return 2
    from ignite_lstm.app.task.report import metrics_table, write_report  # matplotlib: only for this command

    try:
        files = load_run(args.run)
        cfg: Any = files.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(args.device)
        datasets = {}
        for split in splits:
            _, data = ensure_split(cfg.data.dir, split, split_params(cfg.data, split))
            datasets[split] = SignalDataset(data.mixture, data.target, input_scale=cfg.data.input_scale)
        output = Path(args.output) if args.output else _default_output(files)
        model = files.model.to(device)
        evaluator = setup_evaluators(cfg, model, device, carry_state=False)["final"]  # whole sequences, any layout
        loaders = {split: DataLoader(ds, batch_size=cfg.eval.batch_size) for split, ds in datasets.items()}
        metrics = evaluate_splits(evaluator, loaders)
        figure_split = "test" if "test" in datasets else splits[-1]
        predictions = None if args.no_figures else figure_predictions(model, datasets[figure_split], device)
        write_report(
            files.run_dir,
            metrics,
            dataset=datasets[figure_split],
            predictions=predictions,
            frequencies=list(cfg.data.frequencies),
            fs=cfg.data.fs,
            splits=splits,
            output_dir=output,
            figure_split=figure_split,
            span_s=args.span,
        )
    except (OSError, ValueError, ConfigError) as exc:  # DataFileError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Model: {files.model_file}\nReport: {output}\n")
    print(metrics_table(metrics, frequencies=list(cfg.data.frequencies), splits=splits).split("\n\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
