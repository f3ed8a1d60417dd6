"""docs/serving.md's Python clients, run as written against a real server: their outputs equal extract."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from serve_helpers import REPO, mixture, offline, server_in_thread, split_frames, train_tiny_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("serve-model"))


def test_the_documented_clients_work(model_file):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "serving.md").read_text(), re.S)
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)
    signal = mixture(100, seed=1)
    frames = split_frames(signal, [13, 7])
    reference = offline(model_file, signal, 3.0)
    with server_in_thread(model_file) as (url, _):
        http = [v for y in namespace["extract_live"](url, frames, 3.0) for v in y]
        ws = asyncio.run(namespace["extract_ws"](url, frames, 3.0))
    np.testing.assert_allclose(np.asarray(http, np.float32), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ws, np.float32), reference, rtol=0, atol=1e-6)
