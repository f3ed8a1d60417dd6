"""The engines: trainer and evaluator factories, the batch update, execution paths, carried state.

``create_trainer``/``create_evaluator`` return Ignite ``Engine``s whose process function steps the
model one time step per call; the rest of this package is what they are made of.
"""

from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.carry import reset_state, set_state
from ignite_lstm.engine.events import TimeEvents
from ignite_lstm.engine.execution import select_execution
from ignite_lstm.engine.factories import create_evaluator, create_trainer, set_tbptt_steps
from ignite_lstm.engine.targets import collate_last

__all__ = [
    "create_trainer",
    "create_evaluator",
    "select_execution",
    "TimeEvents",
    "collate_sequences",
    "collate_last",
    "reset_state",
    "set_state",
    "set_tbptt_steps",
]
