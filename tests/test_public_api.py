"""The public API: what ``ignite_lstm`` exports, its docstrings, the version and the console entry."""

from __future__ import annotations

import configparser
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ignite_lstm

REPO = Path(__file__).resolve().parents[1]

# Named in the issue: a user needs at least these.
REQUIRED = {
    "StatefulLSTM",
    "create_trainer",
    "create_evaluator",
    "TimeEvents",
    "SignalToNoiseRatio",
    "load_extra_handlers",
    "attach_checkpoints",
    "StreamLoader",
    "collate_sequences",
    "load_model",
}

# Public functions whose docstrings still lack a section (reported to the modules' owners, not edited here):
# their test is an expected failure while the section is missing. Remove an entry once its docstring is complete.
DOC_GAPS: dict[str, str] = {}  # name -> reported gap; empty: every public function is documented


def test_all_lists_the_required_names_once_and_each_imports():
    names = ignite_lstm.__all__
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED, f"missing: {REQUIRED - set(names)}"
    namespace: dict = {}
    exec("from ignite_lstm import *", namespace)
    for name in names:
        obj = getattr(ignite_lstm, name)
        assert namespace[name] is obj
        assert not name.startswith("_")
        home = importlib.import_module(obj.__module__)
        assert name in home.__all__, f"{name} is re-exported but not public in {obj.__module__}"


def test_nothing_public_leaks_besides_all():
    modules = {n for n, v in vars(ignite_lstm).items() if inspect.ismodule(v)}  # submodules, set by import
    public = {n for n in vars(ignite_lstm) if not n.startswith("_")} - modules
    assert public <= set(ignite_lstm.__all__)  # the heavier names load on first use (lazily)
    assert set(ignite_lstm.__all__) - public <= set(ignite_lstm._LAZY)


def _sections(doc: str) -> set[str]:
    return set(re.findall(r"^\s*(Args|Returns|Example|Raises):\s*$", doc, flags=re.MULTILINE))


@pytest.mark.parametrize("name", ignite_lstm.__all__)
def test_docstring(name):
    obj = getattr(ignite_lstm, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc.split()) >= 5, f"{name} needs a docstring"
    if not inspect.isfunction(obj):
        return
    missing = {"Args", "Returns", "Example"} - _sections(doc)
    if missing and name in DOC_GAPS:
        pytest.xfail(f"reported docstring gap: {DOC_GAPS[name]}")
    assert not missing, f"{name}'s docstring lacks {sorted(missing)}"


def test_doc_gaps_name_public_functions():
    assert set(DOC_GAPS) <= set(ignite_lstm.__all__)


def test_docs_mention_every_public_name_and_example():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    missing = [name for name in ignite_lstm.__all__ if f"`{name}`" not in text and f"{name}(" not in text]
    assert not missing, f"neither README.md nor docs/ mention {missing}"
    for script in sorted((REPO / "examples").glob("*.py")):
        assert f"examples/{script.name}" in text


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_version_has_one_source():
    assert _setup_cfg()["metadata"]["version"].strip() == "attr: ignite_lstm.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", ignite_lstm.__version__)
    # setuptools reads the attribute statically: it must be a plain string literal in __init__.py
    init = (REPO / "ignite_lstm" / "__init__.py").read_text()
    assert re.findall(r"^__version__ = \"([^\"]+)\"$", init, flags=re.MULTILINE) == [ignite_lstm.__version__]
    others = [
        p.name
        for p in (REPO / "ignite_lstm").glob("*.py")
        if p.name != "__init__.py" and re.search(r"^\s*__version__\s*=", p.read_text(), flags=re.MULTILINE)
    ]
    assert not others, f"version also set in {others}"


def test_console_entry_point_is_the_cli_main(capsys):
    scripts = _setup_cfg()["options.entry_points"]["console_scripts"]
    entries = dict(line.split("=", 1) for line in scripts.strip().splitlines())
    entries = {k.strip(): v.strip() for k, v in entries.items()}
    module_name, _, attr = entries["ignite-lstm"].partition(":")
    entry = getattr(importlib.import_module(module_name), attr)
    assert callable(entry)
    cli = importlib.import_module("ignite_lstm.app.cli")
    assert entry is cli.main_exit
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ignite-lstm")
    assert "from ignite_lstm.app.cli import main" in (REPO / "run.py").read_text()  # same code as run.py


@pytest.mark.slow
def test_pip_install_gives_a_working_ignite_lstm_command(tmp_path):
    """``pip install .`` into a fresh venv (dependencies borrowed from this one), then ``ignite-lstm --help``."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "ignite_lstm", src / "ignite_lstm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    Path(site, "_borrowed_deps.pth").write_text("\n".join(deps) + "\n")  # torch etc. without reinstalling
    env = dict(os.environ, PYTHONPATH="", PIP_NO_INDEX="1")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(src)],
        check=True,
        cwd=tmp_path,
        env=env,
    )
    command = venv / "bin" / "ignite-lstm"
    result = subprocess.run(
        [str(command), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ignite-lstm")
    where = subprocess.run(
        [str(python), "-c", "import ignite_lstm; print(ignite_lstm.__file__, ignite_lstm.__version__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    ).stdout.split()
    assert where[0].startswith(site) and where[1] == ignite_lstm.__version__
