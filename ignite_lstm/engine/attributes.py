"""The attributes the library adds to Ignite's ``engine.state``, declared for the type checker.

Ignite's ``State`` is an open attribute bag: the library keeps its per-run values there (so that
handlers see them and ``state_dict_user_keys`` can checkpoint them), but the type checker knows
only the fields ``State`` declares. Code that reads or writes one of the values below goes through
``run_state(engine)``, which returns ``engine.state`` itself, typed as ``RunState``: nothing is
copied, checked or created at run time. A new attribute is declared here, with its owner.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from ignite.engine import Engine, State

__all__ = ["RunState", "run_state"]


class RunState(State):
    """``State`` with the library's attributes: a typing view of ``engine.state``, never instantiated.

    Each attribute exists once its owner has set it (see the comments); reading it earlier
    raises ``AttributeError`` as before.
    """

    # engine.events.count_windows and the batch update (TimeEvents)
    window: int  # windows computed since the start of training
    window_loss: torch.Tensor | None  # WINDOW_COMPLETED: the window's loss, 0-dim, no graph
    window_losses: torch.Tensor | None  # CHUNK_COMPLETED: the losses of the last windows, (n,), no graph
    # engine.factories.create_trainer / set_tbptt_steps
    execution: str  # the execution path that runs
    tbptt_steps: int  # the window length K
    scaler: torch.amp.GradScaler | None  # float16 autocast's gradient scaler
    # engine.carry.CarryingEngine
    carried_state: Any  # this process's lanes' recurrent state after the last batch (None: fresh)
    # handlers.interrupts
    interrupt_requested: bool  # a signal asked the run to stop and save
    # handlers.curriculum.Curriculum
    curriculum_length: int  # the sequence length L of the current stage


def run_state(engine: Engine) -> RunState:
    """``engine.state``, typed with the library's attributes (the same object; no run-time effect).

    Args:
        engine: any Ignite ``Engine``.

    Returns:
        ``engine.state``.
    """
    return cast(RunState, engine.state)
