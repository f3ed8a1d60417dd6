"""The extraction of chosen frequencies over a late window of the test sequence (docs/figures).

Where an oscillator generated from the state would drift, its error shows at the end of
the sequence, not in the report's first second. Usage::

    python experiments/last_second.py RUN_DIR OUT.png [--start 9.0] [--span 1.0] [--freqs 1 7]
"""

from __future__ import annotations

import argparse

import numpy as np

from ignite_lstm.app.run.evaluate import figure_predictions, load_run
from ignite_lstm.app.task.dataset import SignalDataset, ensure_split, split_params
from ignite_lstm.app.task.figures import plot_extraction_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--start", type=float, default=9.0, help="seconds (default 9: the last second of 10)")
    parser.add_argument("--span", type=float, default=1.0)
    parser.add_argument("--freqs", type=float, nargs="+", default=[1.0, 7.0])
    args = parser.parse_args()
    run = load_run(args.run_dir)
    cfg = run.config
    _, split = ensure_split(cfg.data.dir, "test", split_params(cfg.data, "test"))
    dataset = SignalDataset(split.mixture, split.target, input_scale=cfg.data.input_scale)
    predictions = figure_predictions(run.model, dataset)  # (F, T), mixture 0
    rows = [list(cfg.data.frequencies).index(f) for f in args.freqs]
    path = plot_extraction_grid(
        args.out,
        mixture=split.mixture[0],
        targets=split.target[rows],
        predictions=np.asarray(predictions)[rows],
        frequencies=args.freqs,
        fs=cfg.data.fs,
        span_s=args.span,
        start_s=args.start,
    )
    print(path)


if __name__ == "__main__":
    main()
