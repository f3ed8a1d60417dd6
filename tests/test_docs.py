"""Every ```python block of README.md and of every page under docs/ runs, and what it promises to print it prints.

**Blocks.** A block is a test case named after its file, the heading above it and its index there
(``test_doc_block[howto/engines:metrics-1]``, ``test_doc_block[README:the-library-in-one-block-1]``). It
runs in this process, in a fresh empty working folder that holds the repository's ``configs/``; a
block that names ``runs/example`` finds there a finished tiny run (``model.pt``, ``config.yaml``,
``checkpoints/``, its data files named in the config), trained once per session by the command line's
``main``. Blocks depend on nothing else, not on each other either, so a fragment that needs names
from elsewhere fails here. Shell, YAML and output blocks are not run.

**Promised output: one convention.** A ```text block that follows a ```python block, with nothing but
blank lines between them, is that block's output: the test captures what the block writes to
``sys.stdout`` and compares it with the text block. And a block that prints must show what it
prints: a ```python block that writes to stdout without an output block after it fails (so no
output is promised in a comment and left unchecked). A block that triggers a deprecation warning
of the package (an old module path, an old argument name) fails too, and so does one that imports
a module path that is no file of the package (an old path, whose warning fires only at its first
import in a process). The comparison:

- whitespace runs are equal to any whitespace run; leading and trailing whitespace is ignored;
- ``...`` in the output block stands for any text (as doctest's ELLIPSIS), for what is not the
  same from run to run or machine to machine (a time, a path, a loss after training);
- an integer (no decimal point, no exponent) must be printed exactly;
- a decimal number ``0.2499`` or ``1.5e-07`` matches a printed number within one unit of its
  last digit (within 1e-4 of 0.2499, 1e-8 of 1.5e-07), so float32 results that differ in their
  last bits between processors (another BLAS code path) pass, and a printed value that is off
  by more than the digits the page shows fails. Blocks print rounded numbers where they can.

``test_the_output_comparison_*`` show that the comparison fails on a wrong digit, a wrong
integer and a missing line. ``test_the_site_builds_with_warnings_as_errors`` builds the site as
``.ci/run`` would (``python -m mkdocs build --strict``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from handler_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
EXAMPLE_RUN = "runs/example"  # the convention docs/howto/index.md states
# The tiny config of the suite (QUICK_YAML): 200 steps per sequence, one mixture per split, two epochs.
EXAMPLE_OVERRIDES = [
    "data.duration=0.2",
    "data.train.mixtures=1",
    "data.val.mixtures=1",
    "data.test.mixtures=1",
    "model.hidden_size=8",
    "train.epochs=2",
    "train.batch_size=4",
    "train.tbptt_steps=50",
    "eval.batch_size=4",
    "eval.report=false",
    "handlers.progress_bar=false",
    "threads=1",
]

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)[^`]*$")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """One ```python block: its test id, code, first line and the output it promises (None: none)."""

    id: str
    code: str
    line: int
    output: str | None


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def doc_blocks(text: str, page: str = "t") -> list[Block]:
    """The ```python blocks of a Markdown text, each with the ```text block that follows it, if any."""
    fences: list[tuple[str, str, int, int, list[str]]] = []  # (language, heading, first, last, lines)
    heading, fence, language, start, code = "top", None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, language, start, code = match.group(1), match.group(2).lower(), number + 1, []
            elif line.strip():  # prose or a heading: what follows a block is then not its output
                fences.append(("prose", heading, number, number, []))
                if found := _HEADING.match(line):  # a heading outside a fence ("# comment" in bash is not one)
                    heading = _slug(found.group(1))
        elif match and match.group(1) == fence and not match.group(2) and line.strip() == fence:
            fences.append((language, heading, start, number, code))
            fence = None
        else:
            code.append(line)
    assert fence is None, f"{page}: the block opened at line {start - 1} is never closed"
    blocks: list[Block] = []
    counts: dict[str, int] = {}
    for i, (language, heading, first, _, lines) in enumerate(fences):
        if language != "python":
            continue
        following = fences[i + 1] if i + 1 < len(fences) else None
        output = "\n".join(following[4]) if following and following[0] == "text" else None
        counts[heading] = counts.get(heading, 0) + 1
        blocks.append(Block(f"{page}:{heading}-{counts[heading]}", "\n".join(lines) + "\n", first, output))
    return blocks


_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_EXPECTED_TOKEN = re.compile(rf"(?P<ellipsis>\.\.\.)|(?P<number>(?<![\w.]){_NUMBER}(?!\w))|(?P<space>\s+)")


def _tolerance(number: str) -> float | None:
    """None for an integer (printed exactly); else one unit of the number's last printed digit."""
    mantissa, _, exponent = number.lower().partition("e")
    if "." not in mantissa and not exponent:
        return None
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def output_mismatch(expected: str, actual: str) -> str | None:
    """Why ``actual`` is not the output ``expected`` promises (the module docstring's rules); None if it is."""
    pattern, numbers, position = [], [], 0
    expected = expected.strip()
    for token in _EXPECTED_TOKEN.finditer(expected):
        pattern.append(re.escape(expected[position : token.start()]))
        if token.group("ellipsis"):
            pattern.append(r".*?")
        elif token.group("space"):
            pattern.append(r"\s+")
        else:
            numbers.append(token.group("number"))
            pattern.append(rf"({_NUMBER}|[-+]?nan|[-+]?inf)")
        position = token.end()
    pattern.append(re.escape(expected[position:]))
    found = re.fullmatch("".join(pattern), actual.strip(), flags=re.DOTALL)
    if found is None:
        return "the printed text differs from the output block"
    for promised, printed in zip(numbers, found.groups()):
        tolerance = _tolerance(promised)
        if tolerance is None:
            if printed != promised:
                return f"printed {printed} where the output block has the integer {promised}"
        elif not math.isclose(float(printed), float(promised), rel_tol=0.0, abs_tol=tolerance * (1 + 1e-9)):
            return f"printed {printed} where the output block has {promised} (to within {tolerance:g})"
    return None


BLOCKS = [
    block
    for page in PAGES
    for block in doc_blocks(
        page.read_text(encoding="utf-8"), str(page.relative_to(REPO).with_suffix("")).removeprefix("docs/")
    )
]


def missing_modules(code: str) -> list[str]:
    """The ``ignite_lstm`` modules a block imports that are no file of the package: old paths (deprecated aliases).

    Their warning fires once per process, so a block that imports one after another test did would
    not warn: this check does not depend on the order the tests run in.
    """
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    missing = []
    for name in names:
        if name == "ignite_lstm" or not name.startswith("ignite_lstm."):
            continue
        path = REPO.joinpath(*name.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
            missing.append(name)
    return missing


@pytest.fixture(scope="session")
def example_run(tmp_path_factory) -> Path:
    """A finished tiny run (once per session): its folder, its data beside it."""
    root = tmp_path_factory.mktemp("docs-example")
    args = [
        str(REPO / "configs" / "quick.yaml"),
        *EXAMPLE_OVERRIDES,
        f"data.dir={root / 'data'}",
        f"output_dir={root / 'runs'}",
        "name=example",
    ]
    assert run_cli(args) == 0
    return root / "runs" / "example"


def test_the_extractor_finds_blocks_and_their_outputs():
    text = (
        "# T\n```python\na = 1\n```\n```bash\n# not a heading\nls\n```\n## Sub part\n```python\nprint(2)\n```\n\n"
        "```text\n2\n```\n```python\nb = 3\n```\nprose between\n```text\nnot its output\n```\n"
    )
    assert doc_blocks(text) == [
        Block("t:t-1", "a = 1\n", 3, None),
        Block("t:sub-part-1", "print(2)\n", 11, "2"),
        Block("t:sub-part-2", "b = 3\n", 18, None),
    ]
    ids = [block.id for block in BLOCKS]
    assert len(ids) == len(set(ids)) and len(ids) >= 20, ids
    assert {str(page.relative_to(REPO)) for page in PAGES} >= {"README.md", "docs/index.md", "docs/howto/engines.md"}


def test_the_output_comparison_takes_rounding_whitespace_and_ellipsis():
    assert output_mismatch("mse 0.2499\n[1, 2, 16]", "mse   0.24987\n[1, 2, 16]\n") is None
    assert output_mismatch("1.5e-07 fused", "1.47e-07 fused") is None
    assert output_mismatch("epoch 1 done ...\nloss ...", "epoch 1 done at 12:00\nloss 0.3\n(2 lines)") is None
    assert output_mismatch("{'input_size': 5, 'dropout': 0.0}", "{'input_size': 5, 'dropout': 0.0}") is None
    assert output_mismatch("test/mse_f3 0.01", "test/mse_f3 0.0149") is None


def test_old_module_paths_are_found_without_importing_them():
    code = (
        "import ignite_lstm.engines\nfrom ignite_lstm.tune_config import load_study\nfrom ignite_lstm import native\n"
    )
    code += "from ignite_lstm.engine import create_trainer\nfrom ignite_lstm.models import native\nimport torch.nn\n"
    assert missing_modules(code) == ["ignite_lstm.engines", "ignite_lstm.tune_config"]


def test_the_output_comparison_fails_on_a_wrong_digit_a_wrong_integer_or_text():
    assert "0.2499" in output_mismatch("mse 0.2499", "mse 0.2512")
    assert "integer 16" in output_mismatch("torch.Size([1, 2, 16])", "torch.Size([1, 2, 17])")
    assert "integer 16" in output_mismatch("16", "16.0")
    assert output_mismatch("fused", "stepwise") == "the printed text differs from the output block"
    assert output_mismatch("a\nb", "a") == "the printed text differs from the output block"
    assert output_mismatch("0.5", "nan") is not None


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_block(block, tmp_path, monkeypatch, request):
    page = block.id.partition(":")[0]
    assert not missing_modules(block.code), (
        f"{page}.md line {block.line}: old module paths {missing_modules(block.code)}"
    )
    (tmp_path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    if EXAMPLE_RUN in block.code:
        shutil.copytree(request.getfixturevalue("example_run"), tmp_path / EXAMPLE_RUN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a block may put its folder on the path
    # a block may declare a metric's direction (register_metric_direction): the process's registry is
    # restored after it, so no later test in this worker sees the page's names
    from ignite_lstm.metrics import directions

    monkeypatch.setattr(directions, "_DIRECTIONS", dict(directions._DIRECTIONS))
    modules, printed = set(sys.modules), io.StringIO()
    try:  # the file name makes a traceback point at the page's line
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(block.code, f"{page}.md (block at line {block.line})", "exec"), {"__name__": "__docs__"})
    finally:  # and forget the modules it wrote there
        for name in set(sys.modules) - modules:
            if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
                del sys.modules[name]
    deprecated = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
        and ("ignite_lstm" in str(w.message) or str(w.filename).startswith(f"{page}.md"))
    ]
    assert not deprecated, f"{page}.md line {block.line}: the block uses what the package deprecates: {deprecated}"
    if block.output is None:
        assert not printed.getvalue(), (
            f"{page}.md line {block.line}: the block prints; show its output in a "
            f"```text block after it:\n{printed.getvalue()}"
        )
    else:
        why = output_mismatch(block.output, printed.getvalue())
        assert why is None, (
            f"{page}.md line {block.line}: {why}\n--- the output block:\n{block.output}\n"
            f"--- printed:\n{printed.getvalue()}"
        )


def test_the_readme_is_a_front_page_whose_links_lead_somewhere():
    """At most 300 lines, and every relative link or image of it names a file of the repository (with its anchor)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 20, local
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.is_file(), f"README.md links to {link}, which is not a file"
        if anchor:
            headings = {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", target.read_text(), flags=re.MULTILINE)}
            assert anchor in headings, f"README.md links to {link}: no such heading in {path}"


_REPO_FILE = re.compile(
    r"(?<![\w/.-])((?:tests|examples|benchmarks|experiments|configs|ignite_lstm|docs)/[\w./-]*\w\.(?:py|yaml|md|cpp|png|jsonl))"
)
# docs/experiments.md quotes the commands and files of its runs as they were (it says so at its top).
_HISTORICAL = {"docs/experiments.md"}


def test_the_files_the_pages_name_exist():
    """A test, example, script, config or module that a page names is in the repository (docs rot when files move)."""
    missing = [
        f"{page.relative_to(REPO)}: {match.group(1)}"
        for page in PAGES
        if str(page.relative_to(REPO)) not in _HISTORICAL
        for match in _REPO_FILE.finditer(page.read_text(encoding="utf-8"))
        if not (REPO / match.group(1)).exists()
    ]
    assert not missing, missing


def migration_tables() -> list[str]:
    """The tables of docs/reference/migration.md, from the package's own record of what moved where."""
    import ignite_lstm
    from ignite_lstm._internal.deprecated import COMMANDS, OLD_MODULES

    names = ["| old name | new home |", "|---|---|"]
    names += [f"| `ignite_lstm.{name}` | `{home}.{name}` |" for name, home in sorted(ignite_lstm._MOVED.items())]
    commands = ["| old command | new command |", "|---|---|"]
    commands += [f"| `python -m ignite_lstm.{old}` | `ignite-lstm {old}` |" for old in sorted(COMMANDS)]
    lines = ["| old module | new home | names that went elsewhere |", "|---|---|---|"]
    for old, (main, homes) in sorted(OLD_MODULES.items()):
        if old.startswith("_"):  # internals: nobody's code imports them
            continue
        elsewhere = "; ".join(
            f"`ignite_lstm.{home}`: "
            + ", ".join(f"`{name}`" for name in sorted(names.split()) if not name.startswith("_"))
            for home, names in sorted(homes.items())
            if home != main and any(not name.startswith("_") for name in names.split())
        )
        lines.append(f"| `ignite_lstm.{old}` | `ignite_lstm.{main}` | {elsewhere} |")
    return ["\n".join(table) + "\n" for table in (names, commands, lines)]


def test_the_migration_page_lists_every_old_path():
    text = (REPO / "docs" / "reference" / "migration.md").read_text(encoding="utf-8")
    for expected in migration_tables():
        assert expected in text, f"update this table of docs/reference/migration.md to:\n{expected}"


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing page or a docstring mkdocstrings cannot render fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "api" / "engines" / "index.html").is_file()
