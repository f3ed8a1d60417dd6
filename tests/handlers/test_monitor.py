"""A monitor name the evaluator will not produce is refused: when attached, or at the first validation."""

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy

from ignite_lstm.handlers.common import attach_early_stopping, check_monitor, score_function


def _evaluator(with_metric=True):
    evaluator = Engine(lambda e, b: (torch.tensor([[0.1, 0.9]]), torch.tensor([1])))
    if with_metric:
        Accuracy().attach(evaluator, "accuracy")
    return evaluator


def test_a_misspelled_monitor_is_refused_when_attached():
    trainer = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match=r"got 'acuracy'; attached: \['accuracy'\]"):
        attach_early_stopping(trainer, _evaluator(), monitor="acuracy", patience=2, mode="max")
    attach_early_stopping(trainer, _evaluator(), monitor="accuracy", patience=2)  # known direction: max
    with pytest.raises(TypeError, match="Argument monitor should be a string, got int."):
        check_monitor(_evaluator(), 3)


def test_a_monitor_unknown_at_the_first_validation_lists_the_names_that_exist():
    trainer = Engine(lambda e, b: None)
    evaluator = _evaluator(with_metric=False)
    attach_early_stopping(trainer, evaluator, monitor="acuracy", patience=2, mode="max")  # nothing attached yet
    Accuracy().attach(evaluator, "accuracy")
    with pytest.raises(
        ValueError, match=r"the metric 'acuracy', which the evaluator did not produce; its metrics are \['accuracy'\]"
    ):
        evaluator.run([0])
    score = score_function("acuracy", "max")
    evaluator = _evaluator()
    evaluator.add_event_handler(Events.COMPLETED, lambda e: score(e))
    with pytest.raises(ValueError, match="its metrics are"):
        evaluator.run([0])
