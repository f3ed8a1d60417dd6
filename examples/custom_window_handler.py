"""A custom handler that fires every N truncated-BPTT windows, added through the config.

``WindowRecorder`` listens to ``TimeEvents.WINDOW_COMPLETED(every=N)`` and records the
window number and its loss (``engine.state.window``, ``engine.state.window_loss``).
Like Ignite's own stateful handlers it has ``state_dict``/``load_state_dict``.

``attach(trainer, evaluator, config)`` is the entry point for the config key
``handlers.extra``: the training run imports every ``"package.module:function"``
listed there and calls it with the trainer, the validation evaluator and the
validated config, so behaviour is added without editing the package::

    # my.yaml
    handlers:
      extra: ["custom_window_handler:attach"]

    PYTHONPATH=examples python run.py my.yaml

Running this file does exactly that with a tiny config in a temporary folder
(``examples/`` is on ``sys.path`` when a script in it runs), through the same
``main`` as ``run.py``, and the recorder logs what it saw.

Run: ``python examples/custom_window_handler.py``
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from ignite_lstm import TimeEvents
from ignite_lstm.app.cli import main as run_cli  # what run.py and the ignite-lstm command call

logger = logging.getLogger("custom_window_handler")

EVERY = 3  # windows between records


class WindowRecorder:
    """Records ``(window, loss)`` each time it is called; attach it to a filtered window event."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float]] = []

    def __call__(self, engine: Engine) -> None:
        self.records.append((engine.state.window, float(engine.state.window_loss)))

    def state_dict(self) -> dict[str, Any]:
        return {"records": [list(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [tuple(r) for r in state["records"]]


def attach(trainer: Engine, evaluator: Engine, config: Any) -> WindowRecorder:
    """Attach a ``WindowRecorder`` every ``EVERY`` windows (the ``handlers.extra`` entry point).

    Args:
        trainer: the trainer from ``create_trainer``.
        evaluator: the validation evaluator; its MSE is logged next to the recent window losses.
        config: the validated config (read-only ``DictConfig``).

    Returns:
        The recorder.
    """
    recorder = WindowRecorder()
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED(every=EVERY), recorder)
    seen = {"n": 0}

    @evaluator.on(Events.COMPLETED)
    def log_validation(engine: Engine) -> None:
        recent = [loss for _, loss in recorder.records[seen["n"] :]]
        seen["n"] = len(recorder.records)
        mean = sum(recent) / len(recent) if recent else float("nan")
        logger.info(
            "epoch %d: recorded window loss %.4f (mean of %d), val mse %.4f",
            trainer.state.epoch,
            mean,
            len(recent),
            engine.state.metrics["mse"],
        )

    @trainer.on(Events.COMPLETED)
    def log_summary(engine: Engine) -> None:
        logger.info(
            "WindowRecorder: every %d windows (window length %d): windows %s",
            EVERY,
            config.train.tbptt_steps,
            [w for w, _ in recorder.records],
        )

    return recorder


CONFIG = """\
# 4 training sequences of 200 steps in one batch, 50-step windows: 4 windows per epoch, 12 in all,
# so the recorder fires at windows 3, 6, 9 and 12.
output_dir: {tmp}/runs
name: window-demo
data:
  dir: {tmp}/data
  duration: 0.2
  train: {{seed: 1, mixtures: 1}}
model: {{hidden_size: 8}}
train: {{epochs: 3, batch_size: 4, tbptt_steps: 50}}
eval: {{batch_size: 4}}
handlers:
  progress_bar: false
  tensorboard: {{enabled: false}}
  extra: ["custom_window_handler:attach"]
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "window_demo.yaml"
        config.write_text(CONFIG.format(tmp=tmp))
        return run_cli([str(config)])


if __name__ == "__main__":
    sys.exit(main())
