"""The code of each how-to page (docs/howto/*.md) runs as written, on a small stand-in for its data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

HOWTO = Path(__file__).resolve().parents[1] / "docs" / "howto"


def _code(page: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (HOWTO / page).read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, f"{page}: one python block"
    return blocks[0]


def _sequences(n: int, features: int, seed: int, tags: bool):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(int(torch.randint(3, 12, (1,), generator=gen)), features, generator=gen)
        if tags:
            y = torch.randint(0, 3, (len(x),), generator=gen)
            y[0] = -100
        else:
            y = int(torch.randint(0, 9, (1,), generator=gen))
        out.append((x, y))
    return out


@pytest.mark.parametrize(
    "page, features, tags",
    [("sequence_classification.md", 12, False), ("sequence_tagging.md", 3, True)],
)
def test_the_page_code_runs(page, features, tags):
    code = _code(page).replace("max_epochs=20", "max_epochs=2").replace("max_epochs=12", "max_epochs=2")
    namespace = {"train": _sequences(24, features, 0, tags), "test": _sequences(10, features, 1, tags)}
    exec(compile(code, page, "exec"), namespace)
    assert 0.0 <= namespace["accuracy"] <= 1.0
    assert namespace["trainer"].state.epoch == 2


def test_each_page_names_its_example_and_a_measured_result():
    for page, script in (
        ("sequence_classification.md", "sequence_classification"),
        ("sequence_tagging.md", "sequence_tagging"),
    ):
        text = (HOWTO / page).read_text()
        assert f"examples/{script}.py" in text and "## Measured" in text and "training time" in text
