"""Does a recipe hold on this machine? ``ignite-lstm check CONFIG [key=value ...]``.

The one command for a new machine: it trains the config with its own seed under two
roundings, 1 and 2 torch threads (and, with ``--isa native avx2``, each also as an
AVX2-only processor would), through ``ignite_lstm.app.matrix``, and prints the results
side by side: the test MSE and each frequency's, the validation MSE, the epochs and the
training minutes, with the spread (largest minus smallest) of each, then the worst
frequency. A spread much smaller than the recipe's margin says the recipe holds here.

The runs and the full table (``matrix.md``, ``matrix.json``) go to ``runs/check-<config
stem>`` (``--out``); a run finished there is not trained again. Exit status as ``matrix``:
0 both runs finished (and passed ``--max-mean``/``--max-freq``), 1 not, 2 bad input,
130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite_lstm.app.config.schema import ConfigError, load_config
from ignite_lstm.app.matrix import (
    RESERVED_KEYS,
    MatrixError,
    add_common_options,
    combinations,
    exit_status,
    machine_header,
    matrix_table,
    run_matrix,
    write_matrix,
)

__all__ = ["main", "side_by_side"]

THREADS = (1, 2)


def _label(row: dict[str, Any]) -> str:
    threads = row["threads"]
    return f"{threads} thread{'s' * (threads > 1)}" + ("" if row["isa"] == "native" else f" {row['isa']}")


def side_by_side(table: dict[str, Any]) -> str:
    """The runs of a ``matrix_table`` as columns: one line per number, the spread last, then the worst frequency.

    Returns:
        The text ``check`` prints (numbers to 6 significant digits).
    """
    rows, freqs = table["rows"], table["frequencies"]
    labels = [_label(r) for r in rows]
    width = max(12, *(len(x) + 2 for x in labels))
    metrics: list[tuple[str, Any]] = [("test MSE", lambda r: r["test_mse"])]
    metrics += [(f"test {f} Hz", lambda r, f=f: r["test_mse_f"].get(f, math.nan)) for f in freqs]
    metrics += [
        ("val MSE", lambda r: r["val_mse"]),
        ("epochs", lambda r: r["epochs"]),
        ("train min", lambda r: r["train_minutes"]),
    ]
    lines = [f"{'':<12}" + "".join(f"{x:>{width}}" for x in labels) + f"{'max-min':>{width}}"]
    for name, get in metrics:
        values = [float(get(r)) if r["status"] == "done" else math.nan for r in rows]
        digits = ".2f" if name == "train min" else ".6g"
        cells = ["-" if math.isnan(v) else f"{v:{digits}}" for v in values]
        finite = [v for v in values if not math.isnan(v)]
        spread = f"{max(finite) - min(finite):{digits}}" if len(finite) == len(values) and finite else "-"
        lines.append(f"{name:<12}" + "".join(f"{c:>{width}}" for c in cells) + f"{spread:>{width}}")
    worst = max(  # the first run's on a tie
        ((v, f, _label(r)) for r in rows if r["status"] == "done" for f, v in r["test_mse_f"].items()),
        key=lambda item: item[0],
        default=None,
    )
    if worst is not None:
        lines.append(f"Worst frequency: {worst[1]} Hz, test MSE {worst[0]:.6g} ({worst[2]})")
    for row in rows:
        if row["status"] != "done":
            lines.append(f"{_label(row)}: {row['message']}")
    if table["all_passed"] is not None:
        verdicts = ", ".join(f"{_label(r)} {'pass' if r.get('passed') else 'fail'}" for r in rows)
        lines.append(f"Thresholds: {verdicts}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm check") -> int:
    """The ``ignite-lstm check`` command.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the command's name in the usage message.

    Returns:
        The exit status: 0 both runs finished (and passed), 1 not, 2 bad input, 130 interrupted.

    Example:
        >>> main(["configs/base.yaml"])
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a config with its seed on 1 and 2 threads (two roundings of the same sums) and "
        "print both results side by side with their spread: does the recipe hold on this machine?",
        epilog=f"Example: {prog} configs/base.yaml --isa native avx2",
    )
    add_common_options(parser)
    parser.add_argument("--out", help="the folder of the runs and the table (default runs/check-<config stem>)")
    args = parser.parse_args(argv)
    stem = Path(args.config).stem
    out = Path(args.out or Path("runs") / f"check-{stem}")
    command = shlex.join([*prog.split(), *(sys.argv[1:] if argv is None else argv)])
    try:
        if any(o.split("=", 1)[0].strip() in RESERVED_KEYS for o in args.overrides):
            raise MatrixError(f"{', '.join(RESERVED_KEYS)} are set by check for each run.")
        seed = load_config(args.config, args.overrides).seed
        combos = combinations([seed], THREADS, args.isa)
        results = run_matrix(args.config, args.overrides, combos, out, jobs=args.jobs)
    except (MatrixError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; run the same command to continue ({out})", file=sys.stderr)
        return 130
    header = machine_header(command)
    table = matrix_table(results, header, max_mean=args.max_mean, max_freq=args.max_freq)
    write_matrix(table, out, f"Check of {args.config}")
    print(
        f"{args.config}, seed {seed}, on {header['processor']} (avx512f: {header['avx512f']}), torch {header['torch']}"
    )
    print(side_by_side(table))
    print(f"Table: {out / 'matrix.md'}")
    return exit_status(table)


if __name__ == "__main__":
    sys.exit(main())
