"""A study's outputs: ``summary.json``, ``summary.md``, ``best.yaml`` and figures in its folder.

``best.yaml`` is the best trial's config (its run folder's ``config.yaml``) with
``output_dir`` back to the study's and ``name: null``: ``python run.py <study>/best.yaml``
trains it again and reproduces the trial's validation metric on the same machine with
the same thread count; with ``tune.repeats``, the config of the best trial's first repeat (its
seed and threads). The rows and figures are the library's (``ignite_lstm.search.report``): with
several repeats, a column per repeat variant and ``figures/repeats.png``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ignite_lstm.app.config.schema import validate_config
from ignite_lstm.app.tune.settings import target_trials
from ignite_lstm.search.report import best_trial as _best
from ignite_lstm.search.report import draw_figures, repeat_cells, repeat_labels, trial_rows

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
    labels = repeat_labels(rows)
    if labels:
        lines += [
            f"Each trial trains {len(labels)} repeats (seed, torch threads, instruction set); its value is the "
            f"{summary['aggregate']} of theirs. A repeat not trained (the trial was pruned first) is `-`.",
            "",
        ]
    head = ["trial", "state", m, *labels, "epochs", "seconds", *(f"`{k}`" for k in keys), "run folder", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["number"],
            r["state"],
            _cell(r["value"]),
            *(_cell(v) for v in repeat_cells(r, labels)),
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
    figures = draw_figures(study, study_dir / "figures", f"val/{settings.metric}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = {
        "study": settings.study_name,
        "storage": storage,
        "metric": f"val/{settings.metric}",
        "direction": settings.direction,
        "trials_target": target_trials(settings),
        "repeats": [v.label for v in settings.repeats],
        "aggregate": settings.aggregate + (f" (q={settings.q:g})" if settings.aggregate == "quantile" else ""),
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
