"""A recipe's spread over seeds, thread counts and instruction sets: ``ignite-lstm matrix CONFIG ...``.

A run's final test MSE depends on the last bits of float sums, which change with the
thread split and the instruction set (and so with the processor); optimisation amplifies
them. ``matrix`` trains every combination seed x threads x isa of one config as its own
child process, equivalent to::

    python run.py CONFIG key=value... seed=S threads=T name=<stem>-sS-tT[-avx2] output_dir=<out>/runs

(plus ``resume=auto``, so that an interrupted run continues), ``--jobs`` of them at a time,
each child's console output in ``<out>/runs/<name>.log`` beside its run folder. The avx2
combinations run with ``IGNITE_LSTM_ISA=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2``: the native kernel
built without AVX-512 and MKL limited to AVX2, the stand-in for an AVX2-only processor.

It is resumable: a combination whose run folder holds a finished run (``metrics.json``
with test metrics, ``history.json``) of the same config is not trained again, so after a
Ctrl-C the same command continues. A child that fails is reported in its row (with its
log) and the others go on. The table (one row per run, then the worst and the mean row,
under a header naming the processor, torch and ignite versions, the command and the date)
is printed and written to ``<out>/matrix.md`` and ``<out>/matrix.json``.

Exit status: 0 every run finished (and, with ``--max-mean``/``--max-freq``, every row
passed); 1 a run failed or a row did not pass; 2 bad input (config, overrides, options);
130 interrupted (Ctrl-C or SIGTERM: the runs save a checkpoint; the same command continues).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ignite_lstm._internal.trees import flatten
from ignite_lstm.app.config.schema import ConfigError, load_config
from ignite_lstm.models.native.build import ISA_FLAGS

__all__ = [
    "Combination",
    "RunResult",
    "MatrixError",
    "combinations",
    "run_matrix",
    "matrix_table",
    "machine_header",
    "write_matrix",
    "main",
]

# Keys that matrix sets for each child; an override of one of them is refused.
RESERVED_KEYS = ("seed", "threads", "name", "output_dir", "resume")
# The child's environment per instruction set: "native" clears what a shell may have exported.
ISA_ENV: dict[str, dict[str, str | None]] = {
    "native": {"IGNITE_LSTM_ISA": "native", "MKL_ENABLE_INSTRUCTIONS": None},
    "avx2": {"IGNITE_LSTM_ISA": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
assert set(ISA_ENV) == set(ISA_FLAGS), "an instruction set of the native build without its matrix environment"


class MatrixError(ValueError):
    """Bad input to ``matrix`` or ``check`` (the CLI exits 2): the message says what to change."""


@dataclass(frozen=True)
class Combination:
    """One cell of the matrix: a seed, a torch thread count, an instruction set."""

    seed: int
    threads: int
    isa: str = "native"

    def name(self, stem: str) -> str:
        """The run folder's name: ``<stem>-s{seed}-t{threads}``, with ``-avx2`` for that instruction set."""
        return f"{stem}-s{self.seed}-t{self.threads}" + ("" if self.isa == "native" else f"-{self.isa}")

    def overrides(self, out: Path, stem: str) -> list[str]:
        """The ``key=value`` overrides that make the child's run this combination's."""
        return [
            f"seed={self.seed}",
            f"threads={self.threads}",
            f"name={self.name(stem)}",
            f"output_dir={out / 'runs'}",
            "resume=auto",
        ]


@dataclass
class RunResult:
    """How one combination's run ended, and its numbers once done.

    ``status``: ``"done"`` (trained now or earlier) or ``"failed"`` (``message`` says why,
    ``log`` holds the child's output). ``test_mse_f`` maps a frequency (as metrics.json
    spells it, ``"3"``) to the test MSE at it.
    """

    combination: Combination
    run_dir: Path
    log: Path
    status: str = "failed"
    message: str = ""
    exit_code: int | None = None
    trained: bool = False
    test_mse: float = math.nan
    test_mse_f: dict[str, float] = field(default_factory=dict)
    val_mse: float = math.nan
    epochs: int = 0
    train_minutes: float = math.nan


def combinations(seeds: Sequence[int], threads: Sequence[int], isas: Sequence[str]) -> list[Combination]:
    """Every combination seed x threads x isa, in that order, each once.

    Example:
        >>> " ".join(c.name("quick") for c in combinations([0, 1], [1], ["native", "avx2"]))
        'quick-s0-t1 quick-s0-t1-avx2 quick-s1-t1 quick-s1-t1-avx2'
    """
    unique = lambda values: list(dict.fromkeys(values))  # noqa: E731
    return [Combination(s, t, i) for s in unique(seeds) for t in unique(threads) for i in unique(isas)]


# Where a run is, not what it computes: a matrix folder that was moved still holds its runs.
_PLACE_KEYS = ("resume", "output_dir", "name")


def _config_differences(run_dir: Path, expected: Any) -> list[str] | None:
    """The keys in which the run's config.yaml differs from ``expected`` (``_PLACE_KEYS`` aside); None: unreadable."""
    try:
        stored = load_config(run_dir / "config.yaml")
    except ConfigError:
        return None
    have, want = (flatten(OmegaConf.to_container(c, resolve=True)) for c in (stored, expected))
    return sorted(k for k in have.keys() | want.keys() if k not in _PLACE_KEYS and have.get(k) != want.get(k))


def _read_results(result: RunResult) -> None:
    """Fill ``result`` with the run's numbers (metrics.json, history.json); ``status`` becomes done."""
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    history = json.loads((result.run_dir / "history.json").read_text())
    result.test_mse = float(metrics["test/mse"])
    freqs = sorted((k.removeprefix("test/mse_f") for k in metrics if k.startswith("test/mse_f")), key=float)
    result.test_mse_f = {f: float(metrics[f"test/mse_f{f}"]) for f in freqs}
    result.val_mse = float(metrics.get("val/mse", math.nan))
    result.epochs = len(history["epochs"])
    result.train_minutes = sum(e.get("time/epoch_seconds", 0.0) for e in history["epochs"]) / 60
    result.status, result.message = "done", ""


def _finished(result: RunResult) -> bool:
    """Whether the run folder holds a finished run: metrics.json with the test metrics and history.json."""
    try:
        metrics = json.loads((result.run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return "test/mse" in metrics and (result.run_dir / "history.json").is_file()


def _child_env(isa: str) -> dict[str, str]:
    """This environment with the instruction set's variables, and this package first on the import path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the children run the code this process runs
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for key, value in ISA_ENV[isa].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the matrix runs (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_matrix(
    config: str | Path,
    overrides: Sequence[str],
    combos: Sequence[Combination],
    out: str | Path,
    *,
    jobs: int = 1,
    echo: Callable[[str], None] = print,
) -> list[RunResult]:
    """Train the combinations not finished yet, ``jobs`` child processes at a time.

    Args:
        config: the YAML config.
        overrides: ``key=value`` overrides shared by every run (none of ``RESERVED_KEYS``).
        combos: the combinations (``combinations``).
        out: the matrix folder; the runs go to ``out/runs/<name>``, each log to ``out/runs/<name>.log``.
        jobs: children at a time. They share the cores: their training times are upper bounds.
        echo: where the progress lines go.

    Returns:
        One ``RunResult`` per combination, in their order.

    Raises:
        MatrixError: a bad config, a reserved override, ``jobs`` < 1.
        KeyboardInterrupt: Ctrl-C or SIGTERM: sent on once to the running children, which save
            a checkpoint and stop (a second one kills them); the same call continues them.
    """
    if jobs < 1:
        raise MatrixError(f"--jobs should be a positive number of processes, got {jobs}.")
    reserved = [o for o in overrides if o.split("=", 1)[0].strip() in RESERVED_KEYS]
    if reserved:
        raise MatrixError(f"{', '.join(reserved)}: set by matrix for each run ({', '.join(RESERVED_KEYS)}).")
    try:
        load_config(config, overrides)  # a bad shared config is refused before any child starts
    except ConfigError as exc:
        raise MatrixError(str(exc)) from exc
    out, stem = Path(out), Path(config).stem
    runs = out / "runs"
    results = [RunResult(c, runs / c.name(stem), runs / f"{c.name(stem)}.log") for c in combos]
    waiting: list[RunResult] = []
    for result in results:
        stored = result.run_dir / "config.yaml"
        if stored.is_file() and stored.stat().st_size > 0:
            try:
                expected = load_config(config, [*overrides, *result.combination.overrides(out, stem)])
            except ConfigError:  # a bad value for this combination: its child says so in its log
                waiting.append(result)
                continue
            changed = _config_differences(result.run_dir, expected)
            if changed:
                result.message = (
                    f"not trained: {result.run_dir} holds a run of another config (differs in {', '.join(changed[:5])}); "
                    f"remove it or choose another --out"
                )
                continue
            if changed is None:
                result.message = f"not trained: {result.run_dir}/config.yaml is not a readable config; remove it"
                continue
            if _finished(result):
                _read_results(result)
                continue
        waiting.append(result)
    if waiting:
        runs.mkdir(parents=True, exist_ok=True)
    done = len(results) - len(waiting)
    if done:
        echo(f"{done} of {len(results)} runs already finished in {runs}")
    running: list[tuple[RunResult, subprocess.Popen, float]] = []
    started = 0
    with _sigterm_as_interrupt():
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    result = waiting.pop(0)
                    command = [
                        sys.executable,
                        "-m",
                        "ignite_lstm.app",
                        str(config),
                        *overrides,
                        *result.combination.overrides(out, stem),
                    ]
                    with open(result.log, "a") as log:
                        log.write(f"=== {_now()} {shlex.join(command)}\n")
                        log.flush()
                        # its own session: a terminal's Ctrl-C reaches this process alone, which sends it on once
                        proc = subprocess.Popen(
                            command,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=_child_env(result.combination.isa),
                            start_new_session=True,
                        )
                    started += 1
                    echo(f"[{started}/{len(results) - done}] training {result.run_dir.name} (log {result.log})")
                    running.append((result, proc, time.monotonic()))
                for item in running[:]:
                    result, proc, t0 = item
                    code = proc.poll()
                    if code is None:
                        continue
                    running.remove(item)
                    _collect(result, code)
                    took = f"{time.monotonic() - t0:.0f} s"
                    echo(f"{result.run_dir.name}: {result.status} in {took}" + (f": {result.message}" * bool(code)))
                time.sleep(0.05)
        except KeyboardInterrupt:
            _stop(running, echo)
            raise
    return results


def _collect(result: RunResult, code: int) -> None:
    """The child ended with ``code``: read its results, or say where its log is."""
    result.exit_code, result.trained = code, True
    if code == 0 and _finished(result):
        _read_results(result)
        return
    why = f"exit {code}" if code >= 0 else f"killed by signal {-code}"
    if code == 0:
        why = "no metrics.json"
    result.status, result.message = "failed", f"failed ({why}), log {result.log}"


def _stop(running: list[tuple[RunResult, subprocess.Popen, float]], echo: Callable[[str], None]) -> None:
    """Send SIGINT once to each running child and wait (a second Ctrl-C kills them)."""
    for _, proc, _ in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    echo(f"interrupted: waiting for {len(running)} run(s) to save a checkpoint (Ctrl-C again to kill them)")
    try:
        for _, proc, _ in running:
            proc.wait()
    except KeyboardInterrupt:
        for _, proc, _ in running:
            proc.kill()
            proc.wait()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_header(command: str) -> dict[str, str]:
    """What the numbers depend on: the processor (and whether it has AVX-512F), versions, command, date.

    Args:
        command: the command line that made the table.

    Returns:
        ``{"processor": ..., "avx512f": "yes"|"no"|"unknown", "torch": ..., "ignite": ..., "python": ...,
        "command": ..., "date": ...}``.
    """
    import ignite
    import torch

    model, flags = "", None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"}).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and not model:
                model = value.strip()
            elif key.strip() == "Flags":
                flags = value.split()
    if flags is None or not model:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = value.split()
    return {
        "processor": model or platform.processor() or platform.machine(),
        "avx512f": "unknown" if flags is None else ("yes" if "avx512f" in flags else "no"),
        "torch": torch.__version__,
        "ignite": ignite.__version__,
        "python": platform.python_version(),
        "command": command,
        "date": _now(),
    }


def _passes(values: dict[str, Any], max_mean: float | None, max_freq: float | None) -> bool:
    """Whether a row's mean test MSE is at most ``max_mean`` and every frequency's at most ``max_freq``."""
    if not math.isfinite(values["test_mse"]):
        return False
    ok = max_mean is None or values["test_mse"] <= max_mean
    return ok and (max_freq is None or all(v <= max_freq for v in values["test_mse_f"].values()))


def _row(result: RunResult) -> dict[str, Any]:
    return {
        "seed": result.combination.seed,
        "threads": result.combination.threads,
        "isa": result.combination.isa,
        "name": result.run_dir.name,
        "run_dir": str(result.run_dir),
        "log": str(result.log),
        "status": result.status,
        "message": result.message,
        "test_mse": result.test_mse,
        "test_mse_f": dict(result.test_mse_f),
        "val_mse": result.val_mse,
        "epochs": result.epochs,
        "train_minutes": result.train_minutes,
    }


def _reduce(rows: list[dict[str, Any]], freqs: list[str], how: Callable[[list[float]], float]) -> dict[str, Any]:
    """The worst (``max``) or mean row of the finished runs' numbers."""
    column = lambda key: [float(r[key]) for r in rows]  # noqa: E731
    if not rows:
        return {"test_mse": math.nan, "test_mse_f": {f: math.nan for f in freqs}, "val_mse": math.nan}
    return {
        "test_mse": how(column("test_mse")),
        "test_mse_f": {f: how([r["test_mse_f"].get(f, math.nan) for r in rows]) for f in freqs},
        "val_mse": how(column("val_mse")),
        "epochs": how(column("epochs")),
        "train_minutes": how(column("train_minutes")),
    }


def matrix_table(
    results: Sequence[RunResult],
    header: dict[str, str],
    *,
    max_mean: float | None = None,
    max_freq: float | None = None,
) -> dict[str, Any]:
    """The matrix as data: the header, one row per run, the worst and the mean row, pass/fail.

    The worst row is the largest value of each column over the finished runs, the mean row
    their mean; failed runs count in neither. With ``max_mean`` or ``max_freq`` each row
    gets ``passed`` and the table ``all_passed`` (a failed run does not pass).

    Returns:
        ``{"header", "frequencies", "rows", "worst", "mean", "thresholds", "failed", "all_passed"}``
        (``all_passed`` None without thresholds): what ``write_matrix`` saves as matrix.json.
    """
    rows = [_row(r) for r in results]
    freqs = sorted({f for r in rows for f in r["test_mse_f"]}, key=float)
    finished = [r for r in rows if r["status"] == "done"]
    table: dict[str, Any] = {
        "header": header,
        "frequencies": freqs,
        "rows": rows,
        "worst": _reduce(finished, freqs, max),
        "mean": _reduce(finished, freqs, lambda v: math.fsum(v) / len(v)),
        "thresholds": {"max_mean": max_mean, "max_freq": max_freq},
        "failed": sum(r["status"] != "done" for r in rows),
        "all_passed": None,
    }
    if max_mean is not None or max_freq is not None:
        for row in [*rows, table["worst"], table["mean"]]:
            row["passed"] = _passes(row, max_mean, max_freq)
        table["all_passed"] = all(r["passed"] for r in rows)
    return table


def _cell(value: float, digits: str = ".6g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{digits}}"


def format_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: the header lines, then the rows, the **worst** and the **mean** row.

    Numbers are printed to 6 significant digits (training minutes to 2 decimals); matrix.json holds them all.
    """
    h, freqs = table["header"], table["frequencies"]
    thresholds = table["thresholds"]
    judged = table["all_passed"] is not None
    lines = [
        f"- processor: {h['processor']} (avx512f: {h['avx512f']})",
        f"- torch {h['torch']}, pytorch-ignite {h['ignite']}, python {h['python']}",
        f"- command: `{h['command']}`",
        f"- date: {h['date']}",
    ]
    if judged:
        limits = [] if thresholds["max_mean"] is None else [f"mean test MSE <= {thresholds['max_mean']:g}"]
        limits += [] if thresholds["max_freq"] is None else [f"every frequency <= {thresholds['max_freq']:g}"]
        lines.append(f"- pass: {' and '.join(limits)}")
    head = ["seed", "threads", "isa", "test MSE", *[f"test {f} Hz" for f in freqs], "val MSE", "epochs", "train min"]
    head += ["pass"] * judged + ["status"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def numbers(values: dict[str, Any]) -> list[str]:
        return [
            _cell(values["test_mse"]),
            *[_cell(values["test_mse_f"].get(f, math.nan)) for f in freqs],
            _cell(values["val_mse"]),
            _cell(values.get("epochs", math.nan), "g"),
            _cell(values.get("train_minutes", math.nan), ".2f"),
        ]

    def verdict(values: dict[str, Any]) -> list[str]:
        return [("pass" if values["passed"] else "fail")] if judged else []

    for row in table["rows"]:
        done = row["status"] == "done"
        cells = [str(row["seed"]), str(row["threads"]), row["isa"]]
        cells += numbers(row) if done else ["-"] * (len(freqs) + 4)
        lines.append("| " + " | ".join(cells + verdict(row) + [row["status"] if done else row["message"]]) + " |")
    n = len(table["rows"]) - table["failed"]
    for label in ("worst", "mean"):
        values = table[label]
        cells = [f"**{label}**", "", "", *numbers(values), *verdict(values), f"{n} of {len(table['rows'])} runs"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _no_nan(tree: Any) -> Any:
    """``tree`` with every NaN (a failed run's numbers) as None: matrix.json is strict JSON."""
    if isinstance(tree, dict):
        return {k: _no_nan(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_no_nan(v) for v in tree]
    return None if isinstance(tree, float) and math.isnan(tree) else tree


def write_matrix(table: dict[str, Any], out: str | Path, title: str) -> str:
    """Write ``out/matrix.md`` (titled ``title``) and ``out/matrix.json`` (a failed run's numbers null).

    Returns:
        The Markdown.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{format_markdown(table)}\n"
    (out / "matrix.md").write_text(text)
    (out / "matrix.json").write_text(json.dumps(_no_nan(table), indent=2) + "\n")
    return text


def exit_status(table: dict[str, Any]) -> int:
    """0: every run finished (and every row passed, if judged); 1 otherwise."""
    return 1 if table["failed"] or table["all_passed"] is False else 0


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The options ``matrix`` and ``check`` share: config, overrides, --isa, --jobs, --out, thresholds."""
    parser.add_argument("config", help="YAML config file, e.g. configs/base.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides shared by every run")
    parser.add_argument(
        "--isa",
        nargs="+",
        default=["native"],
        choices=sorted(ISA_ENV),
        help="instruction sets: native (all the processor has) and/or avx2 (the native kernel built without "
        "AVX-512 and MKL_ENABLE_INSTRUCTIONS=AVX2: an AVX2-only processor's rounding); default native",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time (default 1). Parallel runs share the cores: their training times are upper bounds",
    )
    parser.add_argument("--max-mean", type=float, help="a row passes if its test MSE is at most this ...")
    parser.add_argument("--max-freq", type=float, help="... and its test MSE at every frequency at most this")


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm matrix") -> int:
    """The ``ignite-lstm matrix`` command.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the command's name in the usage message.

    Returns:
        The exit status: 0 every run finished (and passed), 1 a run failed or a row did not
        pass, 2 bad input, 130 interrupted.

    Example:
        >>> main(["configs/base.yaml", "--seeds", "0", "1", "2", "--threads", "1", "2"])
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a config for every seed x threads x isa, each as its own process, and tabulate "
        "the test MSE of each run, the worst and the mean: the recipe's spread on this machine. "
        "Runs that finished already are not trained again (Ctrl-C, then the same command, continues).",
        epilog=f"Example: {prog} configs/base.yaml --seeds 0 1 2 --threads 1 2 --out runs/matrix-base",
    )
    add_common_options(parser)
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds, e.g. 0 1 2")
    parser.add_argument("--threads", type=int, nargs="+", required=True, help="torch thread counts, e.g. 1 2")
    parser.add_argument("--out", help="the matrix folder (default runs/matrix-<config stem>)")
    args = parser.parse_args(argv)
    stem = Path(args.config).stem
    out = Path(args.out or Path("runs") / f"matrix-{stem}")
    combos = combinations(args.seeds, args.threads, args.isa)
    command = shlex.join([*prog.split(), *(sys.argv[1:] if argv is None else argv)])
    try:
        results = run_matrix(args.config, args.overrides, combos, out, jobs=args.jobs)
    except MatrixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; run the same command to continue ({out})", file=sys.stderr)
        return 130
    table = matrix_table(results, machine_header(command), max_mean=args.max_mean, max_freq=args.max_freq)
    print(write_matrix(table, out, f"Matrix of {args.config}"), end="")
    print(f"Written to {out / 'matrix.md'} and {out / 'matrix.json'}")
    return exit_status(table)


if __name__ == "__main__":
    sys.exit(main())
