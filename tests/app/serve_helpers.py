"""Helpers for the serving tests: a tiny trained model, a real server in a thread or a subprocess, references.

The model is a real ``StatefulLSTM`` (two layers, so that the batched state has more than
one layer to slice), trained for a few Adam steps on the task's data and written as a run
writes ``model.pt`` (with its config): the server loads it as it loads any run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
FREQS = [1.0, 3.0, 5.0, 7.0]
SCALE = 4.0


def train_tiny_model(path: Path) -> Path:
    """Train a 2-layer, 8-unit filter for 30 Adam steps (about a second) and write it as ``model.pt``."""
    from ignite_lstm.app.config.schema import validate_config
    from ignite_lstm.app.task.generator import generate_split
    from ignite_lstm.models.lstm import StatefulLSTM

    split = generate_split(
        frequencies=FREQS,
        fs=1000.0,
        duration=0.2,
        amplitude_range=[0.8, 1.2],
        phase_scale=0.01,
        noise_sigma=0.0,
        n_mixtures=1,
        seed=1,
    )
    x = torch.zeros(len(FREQS), split.mixture.shape[1], 1 + len(FREQS))
    x[:, :, 0] = SCALE * torch.as_tensor(split.mixture[0])
    for k in range(len(FREQS)):
        x[k, :, 1 + k] = 1.0
    target = torch.as_tensor(split.target)[:, :, None]
    torch.manual_seed(0)
    model = StatefulLSTM(input_size=1 + len(FREQS), hidden_size=8, num_layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x)[0], target)
        loss.backward()
        opt.step()
    cfg = validate_config({"data": {"input_scale": SCALE}, "model": {"hidden_size": 8, "num_layers": 2}})
    path.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": model.state_dict(), "model_args": model.config, "config": OmegaConf.to_container(cfg)},
        path / "model.pt",
    )
    return path / "model.pt"


def mixture(n: int, seed: int) -> np.ndarray:
    """A test mixture of ``n`` samples (seed 2: the test split's noise), float32."""
    from ignite_lstm.app.task.generator import generate_split

    split = generate_split(
        frequencies=FREQS,
        fs=1000.0,
        duration=n / 1000.0,
        amplitude_range=[0.8, 1.2],
        phase_scale=0.01,
        noise_sigma=0.0,
        n_mixtures=seed,
        seed=2,
    )
    return split.mixture[seed - 1]


def offline(model_file: Path, samples: np.ndarray, frequency: float) -> np.ndarray:
    """``extract``'s output for the samples: ``stream_extract`` with the model and settings ``load_run`` reads."""
    from ignite_lstm.app.run.evaluate import load_run
    from ignite_lstm.app.run.extract import stream_extract

    files = load_run(model_file)
    k = FREQS.index(frequency)
    return stream_extract(
        files.model,
        np.asarray(samples, np.float32),
        frequency_index=k,
        num_frequencies=len(FREQS),
        input_scale=float(files.config.data.input_scale),
    )


def split_frames(samples: np.ndarray, sizes: list[int]) -> list[list[float]]:
    """Cut ``samples`` into frames of the given sizes, cycling through them."""
    out, start, i = [], 0, 0
    while start < len(samples):
        n = sizes[i % len(sizes)]
        out.append(samples[start : start + n].astype(float).tolist())
        start, i = start + n, i + 1
    return out


@contextmanager
def server_in_thread(model_file: Path, *, state_dir: Path | None = None, token: str | None = None, **limits):
    """A real server (uvicorn, Starlette) on 127.0.0.1, a free port, in a thread; yields ``(url, service)``.

    Leaving the block stops it as a signal does: requests finished, frames answered, streams written.
    """
    import uvicorn

    from ignite_lstm.app.serve.api import create_app
    from ignite_lstm.app.serve.cli import _Server
    from ignite_lstm.app.serve.model import load_served_model
    from ignite_lstm.app.serve.service import Limits, StreamService
    from ignite_lstm.app.serve.streams import StateDir

    model = load_served_model(model_file)
    service = StreamService(
        model, Limits(**limits), None if state_dir is None else StateDir(state_dir, model.fingerprint)
    )
    service.load()
    config = uvicorn.Config(
        create_app(service, token=token),
        host="127.0.0.1",
        port=0,
        lifespan="off",
        ws="websockets-sansio",
        access_log=False,
        log_level="warning",
    )
    server = _Server(config, service)

    async def run():
        await service.start()
        try:
            await server.serve()
        finally:
            await service.stop()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.should_exit = True
        thread.join(30)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (no server left behind by a killed test run)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class ServerProcess:
    """``python -m ignite_lstm.app.serve MODEL --port 0 ...`` as a real subprocess; ``url`` once it listens."""

    def __init__(self, args: list[str], log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        self.log = log
        self.out = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ignite_lstm.app.serve", *map(str, args), "--port", "0", "--log-level", "warning"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 60
        while True:
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
            if match:
                self.url = match.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop_now()
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self.out.close()
        return code

    def stop_now(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
