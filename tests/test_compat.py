"""What ignite_lstm._compat relies on still holds in the installed torch and Ignite."""

import logging

import torch
from ignite.handlers import TerminateOnNan

from ignite_lstm._compat import quiet_handler_logger, tensor_version


def test_in_place_ops_and_optimizer_steps_bump_the_version_counter():
    w = torch.nn.Parameter(torch.ones(3))
    before = tensor_version(w)
    w.grad = torch.ones(3)
    torch.optim.SGD([w], lr=0.1).step()
    after_step = tensor_version(w)
    with torch.no_grad():
        w.copy_(torch.zeros(3))
    assert before < after_step < tensor_version(w)
    clone = w.detach().clone()
    assert tensor_version(clone) == 0  # a new tensor starts a new count


def test_terminate_on_nan_logs_through_its_own_handler_and_quieting_removes_it():
    handler = TerminateOnNan()
    assert isinstance(handler.logger, logging.Logger)
    assert any(isinstance(h, logging.StreamHandler) for h in handler.logger.handlers)  # what we undo
    quiet_handler_logger(handler)
    assert handler.logger.handlers == []
