"""Evaluate an existing model: ``python -m ignite_lstm.evaluate RUN_OR_CHECKPOINT [--split test] [--output DIR]``.

Further options: ``--device``, ``--span SECONDS`` (time shown in the figures), ``--no-figures``.

RUN_OR_CHECKPOINT is a run folder (its ``model.pt``) or a model/checkpoint file. The data
settings come from the file's own config (``model.pt``, training checkpoints) or else
from the run folder's ``config.yaml`` (``best_*`` checkpoints hold the weights only).
The report (see ``ignite_lstm.report``) goes to ``<run>/report`` for a run folder or its
``model.pt``, to ``report-<file stem>`` beside any other file, or to ``--output``.

Exit status: 0 done, 2 bad input (missing or foreign model file, bad config, bad data file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from omegaconf import DictConfig

from ignite_lstm.config import ConfigError, load_config, validate_config
from ignite_lstm.data import SignalDataset, ensure_split, split_params
from ignite_lstm.models import StatefulLSTM, load_model
from ignite_lstm.preflight import device_problem
from ignite_lstm.report import metrics_table, write_report

__all__ = ["RunFiles", "load_run", "main"]

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
        raise ConfigError([f"{model_file}: holds no config and no config.yaml was found beside it "
                           f"or in its parent folder"])
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; try auto, cpu or cuda.") from None


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m ignite_lstm.evaluate`` command.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 2 bad input (the message is on stderr).

    Example:
        >>> main(["runs/base-20260101-120000", "--split", "test"])
    """
    parser = argparse.ArgumentParser(
        prog="python -m ignite_lstm.evaluate",
        description="Evaluate a trained model: metrics (JSON, Markdown) and figures.",
        epilog="Example: python -m ignite_lstm.evaluate runs/base-20260101-120000 --split test",
    )
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run folder or .pt model/checkpoint file")
    parser.add_argument("--split", action="append", choices=SPLITS,
                        help="split to evaluate (repeatable); default: train, val and test")
    parser.add_argument("--output", metavar="DIR", help="report folder (default: <run>/report)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument("--span", type=float, default=1.0, metavar="SECONDS",
                        help="seconds shown in the time-domain figures (default 1)")
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
    try:
        files = load_run(args.run)
        cfg: Any = files.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = _device(args.device)
        datasets = {}
        for split in splits:
            _, data = ensure_split(cfg.data.dir, split, split_params(cfg.data, split))
            datasets[split] = SignalDataset(data.mixture, data.target, input_scale=cfg.data.input_scale)
        output = Path(args.output) if args.output else _default_output(files)
        metrics = write_report(files.run_dir, files.model.to(device), datasets,
                               frequencies=list(cfg.data.frequencies), fs=cfg.data.fs, output_dir=output,
                               device=device, batch_size=cfg.eval.batch_size, span_s=args.span,
                               figures=not args.no_figures)
    except (OSError, ValueError, ConfigError) as exc:  # DataFileError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Model: {files.model_file}\nReport: {output}\n")
    print(metrics_table(metrics, frequencies=list(cfg.data.frequencies), splits=splits).split("\n\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
