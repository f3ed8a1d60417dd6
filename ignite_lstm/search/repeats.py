"""Repeats of a trial over seeds and numeric variants: aggregated, pruned on the aggregate, reused after a kill.

A trial may be trained several times, each time as a ``Variant``: a seed, a torch thread count
and an instruction set. Thread counts and instruction sets change the float rounding the way
another processor would, so a model selected on the worst (or a quantile) of its repeats is
one that does not owe its rank to one machine's rounding. ``isa="avx2"`` runs the repeat with
``IGNITE_LSTM_ISA=avx2`` (the native kernel built without AVX-512) and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (torch's MKL), which must be set before torch loads: such a
repeat runs in a child process started with them, which opens the trial in the study's
storage. Other repeats run in the worker's process (``torch.set_num_threads``, restored after).

``run_repeats`` trains the repeats one after the other. After each validated epoch e of repeat
r it reports to the trial, at step ``r * E + e`` (E: the repeats' maximum epochs), the
aggregate over repeats 0..r of their values at epoch e (the earlier repeats' values are
kept), so the pruner compares trials at equal steps on the same aggregate, and a trial whose
first repeat is good but whose second is bad is pruned in its second. Each finished repeat is
recorded at once in the trial's user attribute ``repeats`` (its variant, value, epochs and
validations); a trial whose worker died with finished repeats is enqueued again with its
parameters (``ignite_lstm.search.storage.retry_failed``), and its retry reuses those repeats
instead of training them again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import numpy as np
import torch

__all__ = [
    "AGGREGATES",
    "CurrentStepPruner",
    "ISAS",
    "ISA_ENV",
    "Variant",
    "aggregate",
    "check_aggregate",
    "run_repeats",
    "variant_grid",
]

logger = logging.getLogger("ignite_lstm.search")

AGGREGATES = ("worst", "mean", "quantile")
# the environment of a repeat on another instruction set: set before torch and MKL load (a child process)
ISA_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"IGNITE_LSTM_ISA": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
ISAS = tuple(ISA_ENV)
_VARIANT_KEYS = ("seed", "threads", "isa")


@dataclass(frozen=True)
class Variant:
    """One repeat of a trial: its seed, torch thread count and instruction set.

    Attributes:
        seed: torch's seed before the repeat's build (None: left as it is).
        threads: ``torch.set_num_threads`` for the repeat, restored after (None: left as it is).
        isa: ``"native"`` (this process) or ``"avx2"`` (a child process with ``ISA_ENV["avx2"]``).
    """

    seed: int | None = None
    threads: int | None = None
    isa: str = "native"

    def __post_init__(self) -> None:
        for name in ("seed", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"A repeat's {name} should be an integer or None, got {type(value).__name__}.")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"A repeat's seed should be >= 0, got {self.seed}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"A repeat's threads should be >= 1, got {self.threads}.")
        if self.isa not in ISAS:
            raise ValueError(f"A repeat's isa should be one of {ISAS}, got {self.isa!r}.")

    @property
    def label(self) -> str:
        """Its name in reports: ``"s0 t1"``, ``"s1 t2 avx2"``; ``"default"`` when it changes nothing."""
        parts = [f"s{self.seed}"] if self.seed is not None else []
        parts += [f"t{self.threads}"] if self.threads is not None else []
        parts += [self.isa] if self.isa != "native" else []
        return " ".join(parts) or "default"

    def as_dict(self) -> dict[str, Any]:
        """``{"seed": ..., "threads": ..., "isa": ...}``."""
        return asdict(self)

    @classmethod
    def of(cls, value: Variant | dict[str, Any]) -> Variant:
        """A ``Variant`` from itself or a dict with keys among ``seed``, ``threads``, ``isa``.

        Raises:
            TypeError, ValueError: another type, an unknown key or a bad value.
        """
        if isinstance(value, Variant):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"A repeat should be a dict with keys {_VARIANT_KEYS}, got {type(value).__name__}.")
        unknown = sorted(set(value) - set(_VARIANT_KEYS))
        if unknown:
            raise ValueError(f"A repeat has unknown keys {unknown}: allowed {_VARIANT_KEYS}.")
        return cls(**value)


def variant_grid(
    seeds: Sequence[int | None] = (None,), threads: Sequence[int | None] = (None,), isa: Sequence[str] = ("native",)
) -> list[Variant]:
    """The cross product of seeds, thread counts and instruction sets, seeds outermost.

    Example:
        >>> [v.label for v in variant_grid([0, 1], [1, 2])]
        ['s0 t1', 's0 t2', 's1 t1', 's1 t2']
    """
    return [Variant(s, t, i) for s, t, i in product(seeds, threads, isa)]


def check_aggregate(how: str, q: float) -> None:
    """Refuse an unknown aggregate or a quantile outside [0, 1].

    Raises:
        ValueError: naming the argument.
    """
    if how not in AGGREGATES:
        raise ValueError(f"Argument aggregate should be one of {AGGREGATES}, got {how!r}.")
    if not isinstance(q, (int, float)) or isinstance(q, bool) or not 0.0 <= q <= 1.0:
        raise ValueError(f"Argument q should be a number in [0, 1], got {q!r}.")


def aggregate(values: Sequence[float], how: str = "mean", *, direction: str = "minimize", q: float = 0.5) -> float:
    """The value of a trial from its repeats' values.

    Args:
        values: the repeats' values (one at least).
        how: ``"worst"`` (the max of a minimised metric, the min of a maximised one), ``"mean"``,
            or ``"quantile"``: the ``q`` quantile counted from the best value to the worst
            (q=1 the worst, q=0.5 the median, q=0 the best; a minimised metric's
            ``np.quantile(values, q)``, a maximised one's ``np.quantile(values, 1 - q)``).
        direction: the study's, ``"minimize"`` or ``"maximize"``.
        q: the quantile of ``"quantile"``.

    Returns:
        The aggregate; NaN when any value is NaN or infinite (a repeat diverged).

    Example:
        >>> aggregate([0.1, 0.3, 0.2], "worst", direction="minimize")
        0.3
    """
    check_aggregate(how, q)
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"Argument direction should be 'minimize' or 'maximize', got {direction!r}.")
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("No values to aggregate.")
    if not np.all(np.isfinite(v)):
        return float("nan")
    minimize = direction == "minimize"
    if how == "mean":
        return float(v.mean())
    if how == "worst":
        return float(v.max() if minimize else v.min())
    return float(np.quantile(v, q if minimize else 1.0 - q))


# train(trial, variant, report) -> the repeat's final value; report(epoch, value, max_epochs) -> prune now?
Report = Callable[[int, float, int], bool]
TrainRepeat = Callable[[Any, Variant, Report], float]


class _Reporter:
    """Reports the aggregate over the repeats so far, at step ``index * max_epochs + epoch``.

    No repeat is pruned in its first ``warmup_epochs`` epochs (they are reported all the same):
    early in a later repeat the aggregate is that repeat's untrained start, as bad for every
    trial, and a median of such values would prune at random.
    """

    def __init__(
        self,
        trial: Any,
        index: int,
        earlier: list[dict[int, float]],
        how: str,
        q: float,
        direction: str,
        warmup_epochs: int = 0,
    ):
        self.trial, self.index, self.earlier = trial, index, earlier
        self.how, self.q, self.direction = how, q, direction
        self.warmup_epochs = warmup_epochs
        self.curve: dict[int, float] = {}
        self.max_epochs = 0

    def __call__(self, epoch: int, value: float, max_epochs: int) -> bool:
        self.curve[epoch] = float(value)
        self.max_epochs = max_epochs
        values = [c[epoch] if epoch in c else c[max(c)] for c in self.earlier if c] + [float(value)]
        reported = aggregate(values, self.how, direction=self.direction, q=self.q)
        if not math.isfinite(reported):
            return False
        self.trial.report(reported, self.index * max_epochs + epoch)
        return epoch > self.warmup_epochs and bool(self.trial.should_prune())


def _record(variant: Variant, value: float, reporter: _Reporter, trial: int) -> dict[str, Any]:
    return {
        "variant": variant.label,
        **variant.as_dict(),
        "value": value if math.isfinite(value) else None,
        "epochs": max(reporter.curve) if reporter.curve else None,
        "max_epochs": reporter.max_epochs,
        "curve": [[e, v] for e, v in sorted(reporter.curve.items())],
        "trial": trial,
    }


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_here(trial: Any, variant: Variant, train: TrainRepeat, reporter: _Reporter) -> float:
    with _threads(variant.threads):
        if variant.seed is not None:
            torch.manual_seed(variant.seed)
        return float(train(trial, variant, reporter))


@contextlib.contextmanager
def _environ(variables: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _die_with_parent() -> None:
    """A repeat's child ends when its worker dies (a killed worker leaves no orphan training its trial)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="repeat-parent-watch").start()


def _child(payload: dict[str, Any], conn: Any) -> None:
    """A repeat in a child process: open the trial in the storage, train, send back how it ended."""
    _die_with_parent()
    logging.getLogger().setLevel(payload["log_level"])
    try:
        import optuna

        from ignite_lstm.search.storage import open_storage

        storage = open_storage(payload["storage"])
        study = optuna.load_study(
            study_name=payload["study"],
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=payload["pruner"],
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(payload["study"]), payload["number"]
        )
        trial = optuna.trial.Trial(study, trial_id)
        reporter = _Reporter(
            trial,
            payload["index"],
            payload["earlier"],
            payload["how"],
            payload["q"],
            payload["dir"],
            payload["warmup_epochs"],
        )
        try:
            value = _train_here(trial, payload["variant"], payload["train"], reporter)
            message: tuple[str, Any] = ("done", value)
        except optuna.TrialPruned as exc:
            message = ("pruned", str(exc))
        state = (reporter.curve, reporter.max_epochs, trial.user_attrs.get("epochs"))
        conn.send((*message, state))
    except BaseException as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        conn.send(("error", exc, None))
    finally:
        conn.close()


def _train_in_child(
    trial: Any, variant: Variant, train: TrainRepeat, reporter: _Reporter, storage: str | None
) -> float:
    import optuna

    if storage is None:
        raise ValueError(
            f"Repeat {variant.label!r} runs in a child process (isa {variant.isa!r}), which opens the trial "
            f"in the study's storage: give the storage's URL."
        )
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: torch loads with the variant's environment
    receive, send = context.Pipe(duplex=False)
    payload = {
        "train": train,
        "variant": variant,
        "storage": storage,
        "study": trial.study.study_name,
        "number": trial.number,
        "pruner": trial.study.pruner,
        "index": reporter.index,
        "earlier": reporter.earlier,
        "how": reporter.how,
        "q": reporter.q,
        "dir": reporter.direction,
        "warmup_epochs": reporter.warmup_epochs,
        "log_level": logging.getLogger().level,
    }
    proc = context.Process(target=_child, args=(payload, send), name=f"repeat-{trial.number}-{variant.label}")
    with _environ(ISA_ENV[variant.isa]):
        proc.start()
    send.close()
    try:
        try:
            kind, body, state = receive.recv()
        except EOFError:
            kind, body, state = "died", None, None
        proc.join()
    except BaseException:  # Ctrl-C while the child trains: it got the signal too
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        raise
    finally:
        receive.close()
    if kind == "died":
        raise RuntimeError(f"The child process of repeat {variant.label!r} died (exit code {proc.exitcode}).")
    if kind == "error":
        raise body
    curve, reporter.max_epochs, epochs = state
    reporter.curve.update(curve)
    if epochs is not None:
        trial.set_user_attr("epochs", epochs)  # this process's trial has not seen the child's attributes
    if kind == "pruned":
        raise optuna.TrialPruned(body)
    return float(body)


def _reusable(trial: Any) -> dict[str, dict[str, Any]]:
    """The finished repeats of the trial this one retries (``retry_of``), by variant label."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        return {}
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == retry_of:
            for name, distribution in t.distributions.items():  # its enqueued values: drawn now, not at a build
                _suggest(trial, name, distribution)
            if dict(t.params) != dict(trial.params):
                return {}
            return {r["variant"]: r for r in t.user_attrs.get("repeats", []) if r.get("value") is not None}
    return {}


def _suggest(trial: Any, name: str, d: Any) -> Any:
    """``trial.suggest_*`` of an Optuna distribution (an enqueued trial gets its fixed value)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, list(d.choices))
    raise TypeError(f"Parameter {name!r} has a distribution a retry cannot draw again: {d!r}.")


def run_repeats(
    trial: Any,
    variants: Sequence[Variant],
    train: TrainRepeat,
    *,
    how: str = "mean",
    q: float = 0.5,
    direction: str = "minimize",
    storage: str | None = None,
    warmup_epochs: int = 0,
) -> float:
    """Train ``trial`` once per variant, one after the other; return the aggregate of their final values.

    Args:
        trial: the Optuna trial.
        variants: the repeats.
        train: ``train(trial, variant, report) -> value``: one repeat, in this process (seed and
            threads already set), calling ``report(epoch, value, max_epochs)`` after each validated
            epoch and ending the run when it returns True (then raising ``optuna.TrialPruned``).
            It must be picklable when a variant runs in a child process.
        how, q: the aggregate (``aggregate``).
        direction: the study's.
        storage: the study's storage URL (a child process opens the trial there).
        warmup_epochs: epochs at the start of every repeat in which the trial is not pruned (the
            pruner's own warm-up counts steps, so it covers the first repeat only).

    Returns:
        The aggregate (NaN when a repeat's value is not finite).

    Raises:
        optuna.TrialPruned: the pruner stopped a repeat (or a reused repeat's replayed validations).
    """
    import optuna

    check_aggregate(how, q)
    if not variants:
        raise ValueError("A trial needs one repeat at least.")
    reusable = _reusable(trial)
    records: list[dict[str, Any]] = []
    curves: list[dict[int, float]] = []
    for r, variant in enumerate(variants):
        reporter = _Reporter(trial, r, list(curves), how, q, direction, warmup_epochs)
        old = reusable.get(variant.label)
        if old is not None:  # trained by the trial this one retries: its validations are reported again
            logger.info("Trial %d: repeat %s reused from trial %d", trial.number, variant.label, old["trial"])
            for epoch, value in old["curve"]:
                if reporter(int(epoch), float(value), int(old["max_epochs"])):
                    trial.set_user_attr("epochs", int(epoch))
                    raise optuna.TrialPruned(f"pruned at a reused epoch {epoch} of repeat {variant.label}")
            record = old
        else:
            if variant.isa == "native":
                value = _train_here(trial, variant, train, reporter)
            else:
                value = _train_in_child(trial, variant, train, reporter, storage)
            record = _record(variant, value, reporter, trial.number)
        records.append(record)
        curves.append({int(e): float(v) for e, v in record["curve"]})
        trial.set_user_attr("repeats", records)  # at once: a worker killed later keeps it
        if record["value"] is None:
            return float("nan")
    return aggregate([r["value"] for r in records], how, direction=direction, q=q)


class CurrentStepPruner:
    """A pruner that judges a trial on its value at its last step, not on its best step so far.

    Optuna's median pruner compares a trial's best intermediate value with the other trials' at
    the step: a trial whose first repeat reported good values would never be pruned in a bad
    second repeat. The aggregate over the repeats can worsen from step to step, so with
    repeats the trial is shown to ``base`` with its last step's value alone.
    """

    def __init__(self, base: Any) -> None:
        self.base = base

    def prune(self, study: Any, trial: Any) -> bool:
        """``base.prune`` on ``trial`` with only its last step's intermediate value."""
        step = trial.last_step
        if step is None:
            return False
        current = copy.copy(trial)
        current.intermediate_values = {step: trial.intermediate_values[step]}
        return bool(self.base.prune(study, current))
