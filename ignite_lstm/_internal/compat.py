"""The few places that rely on more than the documented API of torch or Ignite.

Each has a test in ``tests/test_compat.py`` that fails when the dependency changes
under it, so that an upgrade breaks loudly here instead of silently elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = [
    "metric_state_keys",
    "tensor_version",
    "metric_placement",
    "engine_logger_name",
    "quiet_handler_logger",
    "wrap_event_file",
    "close_event_file",
    "event_handler_count",
    "attached_metric_names",
    "replay_loader_epoch",
    "ONNX_REGISTRATION_LOGGER",
]

ONNX_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
"""The logger of torch's ONNX exporter that warns once per missing optional operator library
("torchvision is not installed"): a module of ``torch.onnx._internal``, named by ``__name__``."""

_Wrapper = TypeVar("_Wrapper")


def tensor_version(t: torch.Tensor) -> int:
    """The tensor's in-place modification counter (``Tensor._version``).

    Every in-place op (an optimizer step, ``load_state_dict``'s copy) increments it;
    the native kernel's packed copies of the weights are valid while it is unchanged.
    torch has no public equivalent.
    """
    return t._version


def metric_placement(metric: Any) -> tuple[torch.device, torch.dtype]:
    """Where an Ignite ``Metric`` keeps its running sums, and their float type: ``(device, dtype)``.

    ``Metric.__init__`` keeps its ``device=`` argument as ``_device`` (Ignite's guide to custom
    metrics uses it) and the float type for exact sums as ``_double_dtype``: float64, or float32
    on MPS, which has no float64. Ignite has no public accessor for either.
    """
    return metric._device, metric._double_dtype


def metric_state_keys(*names: str) -> Callable[[type], type]:
    """Class decorator: the attributes an Ignite ``Metric`` subclass saves in ``state_dict``.

    Ignite reads them from the private class attribute ``_state_dict_all_req_keys`` (its own metrics set
    it); there is no public way to declare them.
    """

    def declare(cls: type) -> type:
        cls._state_dict_all_req_keys = tuple(names)  # type: ignore[attr-defined]
        return cls

    return declare


def engine_logger_name() -> str:
    """The name of the logger every Ignite ``Engine`` logs through (its errors, start and end).

    ``Engine.__init__`` names it after its module and class; an engine's ``logger`` attribute
    is that logger, but code that runs before any engine exists needs the name.
    """
    from ignite.engine import Engine

    return f"{Engine.__module__}.{Engine.__name__}"


def quiet_handler_logger(handler: object) -> None:
    """Remove the stream handler that some Ignite handlers add to their own ``logger``.

    ``TerminateOnNan`` logs through ``setup_logger``, which attaches a
    ``StreamHandler`` of its own: with the root logger's handler that prints each
    warning twice. The run's logging set-up shows it once.
    """
    log: logging.Logger = handler.logger  # type: ignore[attr-defined]
    for h in list(log.handlers):
        log.removeHandler(h)


def wrap_event_file(writer: Any, wrap: Callable[[Any, str], _Wrapper]) -> _Wrapper | None:
    """Put ``wrap(events, path)`` between a tensorboardX ``SummaryWriter``'s writer thread and its event file.

    tensorboardX's ``EventFileWriter`` keeps its ``EventsWriter`` (the event file,
    ``_ev_writer``, named by ``_file_name``) and hands it to the thread that empties
    its queue (``_worker._record_writer``); both references are replaced by the
    wrapper, which must offer ``write_event``, ``flush`` and ``close``. tensorboardX has
    no public hook for this.

    Args:
        writer: a tensorboardX ``SummaryWriter`` (``TensorboardLogger.writer``).
        wrap: called with the ``EventsWriter`` and the event file's path.

    Returns:
        The wrapper, or None when ``writer`` is not tensorboardX's (nothing changed).
    """
    event_writer: Any = getattr(getattr(writer, "file_writer", None), "event_writer", None)  # EventFileWriter
    worker: Any  # tensorboardX private objects, checked below by their attributes
    events, worker = getattr(event_writer, "_ev_writer", None), getattr(event_writer, "_worker", None)
    if events is None or not hasattr(worker, "_record_writer"):
        return None
    wrapper = wrap(events, str(getattr(events, "_file_name", event_writer.get_logdir())))
    event_writer._ev_writer = worker._record_writer = wrapper
    return wrapper


def close_event_file(events: Any) -> None:
    """Close the file under a tensorboardX ``EventsWriter`` without flushing it first.

    ``EventsWriter.close`` flushes before it closes; after a failed flush (a full
    disk) the file itself (``_py_recordio_writer``) is closed directly.
    """
    getattr(events, "_py_recordio_writer", events).close()


def event_handler_count(engine: Any, event: Any) -> int:
    """How many handlers ``engine`` has for ``event``, filtered ones (``event(every=5)``) included.

    ``Engine`` keeps its handlers in ``_event_handlers``, keyed by the event as attached (a
    filtered event is a key of its own, with the event's value); Ignite's public
    ``has_event_handler`` needs the handler itself.
    """
    return sum(len(handlers) for key, handlers in engine._event_handlers.items() if key.value == event.value)


def attached_metric_names(engine: Any) -> list[str] | None:
    """The names of the Ignite metrics attached to ``engine`` (``Metric.attach(engine, name)``), or None.

    ``Metric.attach`` registers ``metric.completed`` at ``EPOCH_COMPLETED`` with the name as
    its argument (``(engine_ref, name)`` in ``_event_handlers``); Ignite keeps no public list.
    None when that form is not found (the names are then unknown, not absent).
    """
    from ignite.engine import Events
    from ignite.metrics import Metric

    names = []
    try:
        for handler, args, _ in engine._event_handlers.get(Events.EPOCH_COMPLETED, []):
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, Metric) and getattr(handler, "__name__", "") == "completed":
                names.append(args[-1])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return names


def replay_loader_epoch(loader: Any) -> None:
    """Draw from a ``DataLoader``'s own generators what one whole epoch of it draws, without loading data.

    ``DataLoader.__iter__`` draws its workers' base seed from ``loader.generator`` (one int64,
    ``_BaseDataLoaderIter.__init__``); the sampler then draws as its indices are taken, and
    ``RandomSampler`` draws once more when it is exhausted. Only the loader's own generator and a
    sampler with a ``generator`` of its own are drawn from (never the global one).
    """
    if getattr(loader, "generator", None) is not None:
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    index_sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    inner = getattr(index_sampler, "sampler", index_sampler)
    if isinstance(getattr(inner, "generator", None), torch.Generator):
        for _ in index_sampler:
            pass
