"""Every ```python block of README.md runs as written: each on its own, in this process.

A block is a test case named after the heading above it and its index there
(``test_readme_block[engines-2]``). It runs in a fresh empty working folder that holds the
repository's ``configs/``; a block that names ``runs/example`` finds there a finished tiny
run (``model.pt``, ``config.yaml``, ``checkpoints/``, its data files named in the config),
trained once per session by the command line's ``main``. Blocks depend on nothing else, not
on each other either, so a fragment that needs names from elsewhere fails here. Output
blocks (```text, untagged) and shell blocks are not run.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from handler_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLE_RUN = "runs/example"  # the convention the README's library section states
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

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$")


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def readme_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(id, code, line)`` of every ```python block: id ``<heading slug>-<index under it>``, line its first."""
    blocks: list[tuple[str, str, int]] = []
    counts: dict[str, int] = {}
    heading, fence, language, start, code = "top", None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, language, start, code = match.group(1), match.group(2).lower(), number + 1, []
            elif found := _HEADING.match(line):  # a heading outside a fence ("# comment" in bash is not one)
                heading = _slug(found.group(1))
        elif match and match.group(1) == fence and not match.group(2):
            if language == "python":
                counts[heading] = counts.get(heading, 0) + 1
                blocks.append((f"{heading}-{counts[heading]}", "\n".join(code) + "\n", start))
            fence = None
        else:
            code.append(line)
    assert fence is None, f"README.md: the block opened at line {start - 1} is never closed"
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def example_run(tmp_path_factory) -> Path:
    """A finished tiny run (once per session): its folder, its data beside it."""
    root = tmp_path_factory.mktemp("readme-example")
    args = [
        str(REPO / "configs" / "quick.yaml"),
        *EXAMPLE_OVERRIDES,
        f"data.dir={root / 'data'}",
        f"output_dir={root / 'runs'}",
        "name=example",
    ]
    assert run_cli(args) == 0
    return root / "runs" / "example"


def test_the_readme_has_python_blocks_and_the_extractor_finds_them():
    text = "# T\n```python\na = 1\n```\n```bash\n# not a heading\nls\n```\n## Sub part\n```python\nb = 2\n```\n"
    assert readme_blocks(text) == [("t-1", "a = 1\n", 3), ("sub-part-1", "b = 2\n", 11)]
    ids = [block_id for block_id, _, _ in BLOCKS]
    assert len(ids) == len(set(ids)) and len(ids) >= 10, ids


@pytest.mark.parametrize(
    ("code", "line"), [(code, line) for _, code, line in BLOCKS], ids=[block_id for block_id, _, _ in BLOCKS]
)
def test_readme_block(code, line, tmp_path, monkeypatch, request):
    (tmp_path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    if EXAMPLE_RUN in code:
        shutil.copytree(request.getfixturevalue("example_run"), tmp_path / EXAMPLE_RUN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a block may put its folder on the path
    modules = set(sys.modules)
    try:  # the file name makes a traceback point at the README line
        exec(compile(code, f"README.md (block at line {line})", "exec"), {"__name__": "__readme__"})
    finally:  # and forget the modules it wrote there
        for name in set(sys.modules) - modules:
            if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
                del sys.modules[name]
