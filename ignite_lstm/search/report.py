"""A study's report: its trials as rows, Optuna's figures, and ``summary.json``/``summary.md`` in a folder.

``write_report`` serves a search over any model (``ignite_lstm.search.search``); the tune
command's outputs (``ignite_lstm.app.tune.report``) add the best trial's config to the same
rows and figures. Figures are Optuna's matplotlib plots: the optimisation history, the
parameter importances (PED-ANOVA, numpy only) and the metric against the two most important
parameters.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ignite_lstm._internal.atomic import atomic_write

__all__ = ["trial_rows", "best_trial", "draw_figures", "draw_repeats", "repeat_cells", "repeat_labels", "write_report"]

logger = logging.getLogger("ignite_lstm.search")


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, value, params, epochs, seconds, run_dir, fail_reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": _number(t.value),
                "params": dict(t.params),
                "epochs": t.user_attrs.get("epochs", steps[-1] if steps else None),
                "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
                "run_dir": t.user_attrs.get("run_dir"),
                "fail_reason": t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason"),
                "worker": t.user_attrs.get("worker"),
                "repeats": [
                    {"variant": r["variant"], "value": _number(r.get("value")), "trial": r.get("trial", t.number)}
                    for r in t.user_attrs.get("repeats", [])
                    if isinstance(r, dict)
                ],
            }
        )
    return rows


def repeat_labels(rows: list[dict[str, Any]]) -> list[str]:
    """The repeats' variants of a study's rows, in their first order; none when every trial ran one alike."""
    labels = list(dict.fromkeys(r["variant"] for row in rows for r in row.get("repeats", [])))
    return labels if len(labels) > 1 else []


def repeat_cells(row: dict[str, Any], labels: list[str]) -> list[float | None]:
    """A row's value of each repeat variant (None: not trained, e.g. after the trial was pruned)."""
    values = {r["variant"]: r["value"] for r in row.get("repeats", [])}
    return [values.get(label) for label in labels]


def draw_repeats(study: Any, folder: Path, target: str) -> Path | None:
    """``repeats.png``: each repeat's value (small markers, one colour per variant) and each trial's aggregate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = trial_rows(study)
    labels = repeat_labels(rows)
    if not labels:
        return None
    folder.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for i, label in enumerate(labels):
        points = [(row["number"], v) for row in rows for v in repeat_cells(row, [label]) if v is not None]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=12, color=f"C{i % 10}", alpha=0.8, label=label, zorder=2)
    agg = [(row["number"], row["value"]) for row in rows if row["state"] == "complete" and row["value"] is not None]
    if agg:
        xs, ys = zip(*agg)
        ax.scatter(xs, ys, s=60, marker="_", linewidths=2.0, color="black", label="the trial's value", zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel(target)
    ax.set_title(f"{target} of each repeat and of the trial")
    ax.legend(fontsize="small", loc="best")
    path = atomic_write(folder / "repeats.png", lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def best_trial(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def draw_figures(study: Any, folder: Path, target: str) -> list[Path]:
    """History, importances, metric against the two most important parameters (those that can be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import NullFormatter
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    folder.mkdir(exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = sorted({k for t in complete for k in t.params if len({repr(u.params.get(k)) for u in complete}) > 1})
    top: list[str] = varied[:2]
    plots: list[tuple[str, Callable[[], Any]]] = [
        ("optimization_history.png", lambda: vis.plot_optimization_history(study, target_name=target))
    ]
    if len(complete) >= 2 and varied:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ranked = optuna.importance.get_param_importances(
                    study, evaluator=PedAnovaImportanceEvaluator(), params=varied
                )
            top = [k for k in ranked][:2] or top
            plots.append(
                (
                    "param_importances.png",
                    lambda: vis.plot_param_importances(
                        study, evaluator=PedAnovaImportanceEvaluator(), params=varied, target_name=target
                    ),
                )
            )
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            logger.info("No parameter importances yet: %s", exc)
    if complete and top:
        plots.append(("top_params.png", lambda: vis.plot_slice(study, params=top, target_name=target)))
    written = []
    for name, draw in plots:
        if not complete:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
        except (ValueError, RuntimeError) as exc:
            logger.info("Figure %s not drawn: %s", name, exc)
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(4.0 * len(top) + 1.5 if name == "top_params.png" else 7.0, 4.8)
        for a in fig.axes:
            if a.get_xscale() == "log":
                a.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-3, 3x10^-3, ... would overlap
        if name == "top_params.png":
            fig.suptitle(f"{target} against the {'two most important parameters' if len(top) > 1 else 'parameter'}")
        written.append(
            atomic_write(folder / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        )
        plt.close(fig)
    repeats = draw_repeats(study, folder, target)
    return written if repeats is None else [*written, repeats]


def write_report(study: Any, folder: str | Path, *, label: str, storage: str, target: int) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.md`` and the figures of a study into ``folder``.

    Args:
        study: the Optuna study.
        folder: where (created if needed).
        label: the metric's name in the report (``"val/mse"``).
        storage: the storage URL as shown (``shown_url``: password hidden).
        target: the finished trials the study wanted.

    Returns:
        ``{"summary": path, "summary (JSON)": path, "figure <name>": path, ...}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, best = trial_rows(study), best_trial(study)
    figures = draw_figures(study, folder / "figures", label)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = {
        "study": study.study_name,
        "storage": storage,
        "metric": label,
        "direction": study.direction.name.lower(),
        "trials_target": target,
        "counts": counts,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": dict(best.params)},
        "trials": rows,
        "figures": [str(f) for f in figures],
    }
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    lines = [
        f"# Study {study.study_name}",
        "",
        f"Metric: `{label}` ({summary['direction']}); storage: `{storage}`; target: {target} finished trials; "
        f"trials: {', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'}.",
        "",
    ]
    if best is not None:
        lines += [f"Best: trial {best.number}, `{label}` = {best.value:.6g}, params {dict(best.params)}.", ""]
    labels = repeat_labels(rows)
    head = ["trial", "state", label, *labels, "epochs", "seconds", *keys, "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["number"], r["state"], r["value"], *repeat_cells(r, labels), r["epochs"], r["seconds"]]
        cells += [r["params"].get(k) for k in keys]
        text = ["-" if c is None else (f"{c:.4g}" if isinstance(c, float) else str(c)) for c in cells]
        lines.append("| " + " | ".join([*text, (r["fail_reason"] or "").replace("|", "/")]) + " |")
    lines += ["", *(f"![{f.stem}](figures/{f.name})" for f in figures)]
    files = {
        "summary": atomic_write(folder / "summary.md", lambda f: f.write(("\n".join(lines) + "\n").encode())),
        "summary (JSON)": atomic_write(
            folder / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode())
        ),
    }
    files.update({f"figure {f.stem}": f for f in figures})
    return files
