"""The package's architecture as rules: layers (import-linter), no import cycles, a light library import,
no module named after a standard-library one."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ignite_lstm"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
HEAVY = ("h5py", "omegaconf", "yaml", "matplotlib", "tensorboardX", "optuna", "onnx", "onnxruntime", "scipy", "pandas")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_the_contract_fails_when_a_library_module_imports_the_application(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "ignite_lstm", ignore=shutil.ignore_patterns("__pycache__"))
    state = tmp_path / "ignite_lstm" / "engine" / "state.py"
    state.write_text(state.read_text() + "\nfrom ignite_lstm.app.task import generator  # noqa: E402,F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout.upper() and "ignite_lstm.engine.state" in result.stdout


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every package module ``name`` imports, at module or function level (``TYPE_CHECKING`` blocks aside)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in modules else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def _package_graph() -> dict[str, set[str]]:
    modules = _modules()
    # a package's __init__ re-exporting its own modules is no dependency of those modules on it
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    for name in graph:
        graph[name] = {
            m
            for m in graph[name]
            if not (name.startswith(m + ".") and m in modules and modules[m].name == "__init__.py")
        }
    return graph


def test_no_import_cycle_between_the_package_modules():
    assert _cycles(_package_graph()) == []


def test_the_cycle_check_sees_a_function_level_cycle():
    graph = _package_graph()
    graph["ignite_lstm.engine.state"] = graph["ignite_lstm.engine.state"] | {"ignite_lstm.engine.carry"}
    assert ["ignite_lstm.engine.carry", "ignite_lstm.engine.state"] in _cycles(graph)


def test_no_module_is_named_after_a_standard_library_module():
    clashes = [name for name in _modules() if name.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert clashes == []


def test_the_library_import_loads_none_of_the_applications_dependencies():
    code = (
        "import sys\nfrom ignite_lstm import create_trainer, create_evaluator, StatefulLSTM\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('ignite_lstm.app'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded, app = result.stdout.splitlines()[0].split(), result.stdout.splitlines()[1:]
    assert {"torch", "ignite", "numpy"} <= set(loaded)
    assert sorted(set(HEAVY) & set(loaded)) == []
    assert app in ([], [""])


@pytest.mark.parametrize("name", ["load_config", "SignalDataset", "build_metrics", "generate_split"])
def test_application_names_left_the_top_level(name):
    import ignite_lstm

    assert name not in ignite_lstm.__all__
    with pytest.warns(DeprecationWarning, match=rf"ignite_lstm\.{name} is deprecated.*ignite_lstm\.app\."):
        getattr(ignite_lstm, name)
