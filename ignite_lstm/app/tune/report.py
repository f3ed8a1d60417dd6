"""A study's outputs: ``summary.json``, ``summary.md``, ``best.yaml`` and figures in its folder.

``best.yaml`` is the best trial's config (its run folder's ``config.yaml``) with
``output_dir`` back to the study's and ``name: null``: ``python run.py <study>/best.yaml``
trains it again and reproduces the trial's validation metric on the same machine with
the same thread count. Figures are Optuna's matplotlib plots: the optimisation history,
the parameter importances (PED-ANOVA, numpy only) and the metric against the two most
important parameters.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ignite_lstm.app.config.schema import validate_config
from ignite_lstm.app.tune.settings import target_trials

__all__ = ["write_outputs", "trial_rows"]

logger = logging.getLogger("ignite_lstm.app.tune.study")


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


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
            }
        )
    return rows


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _best_config(best: Any, path: Path, output_dir: str, metric: str) -> Path | None:
    source = Path(best.user_attrs.get("run_dir", "")) / "config.yaml"
    if not source.is_file():
        logger.warning("The best trial's config %s is missing: no best.yaml written", source)
        return None
    values = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    values.update(output_dir=output_dir, name=None, resume=None)
    cfg = validate_config(values)
    header = f"# The best trial ({best.number}, val/{metric} = {best.value:.6g}) of this study: python run.py {path}\n"
    return _text(path, header + OmegaConf.to_yaml(cfg))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _markdown(summary: dict[str, Any], rows: list[dict[str, Any]], keys: list[str]) -> str:
    m, best = summary["metric"], summary["best"]
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
    lines = [
        f"# Study {summary['study']}",
        "",
        f"Metric: `{m}` ({summary['direction']}); storage: `{summary['storage']}`; "
        f"target: {summary['trials_target']} finished trials; trials: {counts or 'none'}.",
        "",
    ]
    if best:
        lines += [
            f"Best: trial {best['number']}, `{m}` = {best['value']:.6g}, "
            f"{', '.join(f'`{k}` = {_cell(v)}' for k, v in best['params'].items())}.",
            "",
            f"Its config: `{best['config']}` (train it again: `python run.py {best['config']}`).",
            "",
        ]
    lines += [
        "| trial | state | "
        + m
        + " | epochs | seconds | "
        + " | ".join(f"`{k}`" for k in keys)
        + " | run folder | note |",
        "|" + "---|" * (7 + len(keys)),
    ]
    for r in rows:
        cells = [
            r["number"],
            r["state"],
            _cell(r["value"]),
            _cell(r["epochs"]),
            _cell(r["seconds"]),
            *(_cell(r["params"].get(k)) for k in keys),
            r["run_dir"] or "-",
            r["fail_reason"] or "",
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    if summary["figures"]:
        lines += ["", *(f"![{Path(f).stem}](figures/{Path(f).name})" for f in summary["figures"])]
    return "\n".join(lines) + "\n"


def _figures(study: Any, folder: Path, metric: str) -> list[Path]:
    """History, importances, metric against the two most important parameters (those that can be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import NullFormatter
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    folder.mkdir(exist_ok=True)
    target = f"val/{metric}"
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
            _atomic(folder / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        )
        plt.close(fig)
    return written


def write_outputs(study: Any, settings: Any, study_dir: Path, output_dir: str, storage: str) -> dict[str, Path]:
    """Write the study's summary (JSON, Markdown), best config and figures into ``study_dir``.

    Args:
        study: the Optuna study.
        settings: its ``TuneSettings``.
        study_dir: the study folder (created if needed).
        output_dir: the ``output_dir`` that ``best.yaml`` gets (the study's own).
        storage: the storage URL as shown (password hidden).

    Returns:
        ``{"summary": path, "best config": path, ...}``: what was written.
    """
    study_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    keys = list(dict.fromkeys([d.key for d in settings.space] + [k for r in rows for k in r["params"]]))
    best = _best(study)
    files: dict[str, Path] = {}
    best_yaml = _best_config(best, study_dir / "best.yaml", output_dir, settings.metric) if best else None
    if best_yaml is not None:
        files["best config"] = best_yaml
    figures = _figures(study, study_dir / "figures", settings.metric)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = {
        "study": settings.study_name,
        "storage": storage,
        "metric": f"val/{settings.metric}",
        "direction": settings.direction,
        "trials_target": target_trials(settings),
        "counts": counts,
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": dict(best.params),
            "run_dir": best.user_attrs.get("run_dir"),
            "config": str(best_yaml) if best_yaml else None,
        },
        "trials": rows,
        "figures": [str(f) for f in figures],
    }
    files["summary"] = _text(study_dir / "summary.md", _markdown(summary, rows, keys))
    files["summary (JSON)"] = _text(study_dir / "summary.json", json.dumps(summary, indent=2))
    for f in figures:
        files[f"figure {f.stem}"] = f
    return files
