"""What ignite_lstm._internal.compat relies on still holds in the installed torch and Ignite."""

import logging
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from ignite.handlers import TerminateOnNan
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.metrics import Metric
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

import ignite_lstm
from ignite_lstm._internal.compat import (
    ONNX_REGISTRATION_LOGGER,
    attached_metric_names,
    close_event_file,
    engine_logger_name,
    event_handler_count,
    metric_placement,
    quiet_handler_logger,
    replay_loader_epoch,
    tensor_version,
    wrap_event_file,
)
from ignite_lstm.handlers.tensorboard import _KeepWriterError, attach_tensorboard


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


class _Recorder:
    """A wrapper for ``wrap_event_file`` that records each call and passes it on."""

    def __init__(self, events, path):
        self.events, self.path, self.calls = events, path, []

    def write_event(self, event):
        self.calls.append(("write_event", event))
        self.events.write_event(event)

    def flush(self):
        self.calls.append(("flush",))
        self.events.flush()

    def close(self):
        self.calls.append(("close",))
        self.events.close()


def test_tensorboardx_writes_its_event_file_through_one_events_writer_that_the_wrapper_replaces(tmp_path):
    tb = TensorboardLogger(log_dir=str(tmp_path))  # Ignite's logger, as attach_tensorboard makes it
    event_writer = tb.writer.file_writer.event_writer  # public attributes of tensorboardX's writers
    events = event_writer._ev_writer
    assert isinstance(events, EventsWriter)
    assert event_writer._worker._record_writer is events  # the writer thread writes through the same object
    assert Path(events._file_name).parent == tmp_path and Path(events._file_name).is_file()
    wrapper = wrap_event_file(tb.writer, _Recorder)
    assert wrapper.events is events and wrapper.path == events._file_name
    assert event_writer._ev_writer is wrapper and event_writer._worker._record_writer is wrapper
    tb.writer.add_scalar("x", 1.5, 3)
    tb.close()  # the thread empties its queue before it ends
    written = [call[1] for call in wrapper.calls if call[0] == "write_event"]
    assert [(e.step, e.summary.value[0].simple_value) for e in written if e.summary.value] == [(3, 1.5)]
    assert wrapper.calls[-1] == ("close",)
    assert wrap_event_file(object(), _Recorder) is None  # not tensorboardX's writer: nothing to wrap


def test_close_event_file_closes_the_file_under_the_events_writer(tmp_path):
    events = EventsWriter(str(tmp_path / "events"))
    assert callable(events._py_recordio_writer.close)
    close_event_file(events)
    with pytest.raises(ValueError, match="closed file"):
        events.write_event(event_pb2.Event())


def test_attach_tensorboard_installs_the_guard_on_the_event_file(tmp_path):
    trainer = Engine(lambda e, b: {"loss": 0.0, "grad_norm": 0.0})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    tb = attach_tensorboard(trainer, Engine(lambda e, b: None), optimizer, tmp_path)
    event_writer = tb.writer.file_writer.event_writer
    assert isinstance(event_writer._ev_writer, _KeepWriterError)
    assert event_writer._worker._record_writer is event_writer._ev_writer
    tb.close()


class _Count(Metric):
    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        return 0


def test_an_ignite_metric_keeps_its_device_and_a_float64_type_for_its_sums():
    assert metric_placement(_Count()) == (torch.device("cpu"), torch.float64)
    assert metric_placement(_Count(device="meta")) == (torch.device("meta"), torch.float64)


def test_every_engine_logs_through_the_logger_of_that_name(caplog):
    engine = Engine(lambda e, b: 1 / 0)
    assert engine.logger is logging.getLogger(engine_logger_name())
    with caplog.at_level(logging.ERROR, logger=engine_logger_name()), pytest.raises(ZeroDivisionError):
        engine.run([0])
    # what the launcher's filter leaves out when a signal ends the run
    assert [r.name for r in caplog.records if "Engine run is terminating due to exception" in r.getMessage()] == [
        engine_logger_name()
    ]


def test_the_onnx_exporter_module_that_warns_about_optional_libraries_logs_under_its_module_name():
    module = Path(torch.onnx.__file__).parent.joinpath(*ONNX_REGISTRATION_LOGGER.split(".")[2:]).with_suffix(".py")
    source = module.read_text()  # not imported: it needs the [export] extra
    assert "logger = logging.getLogger(__name__)" in source
    assert "torchvision is not installed" in source


PRIVATE = (
    "_event_handlers",
    "_flat_weights",
    "_version",
    "_ev_writer",
    "_worker",
    "_record_writer",
    "_file_name",
    "_py_recordio_writer",
    "_double_dtype",
    "_device",
    "logger",
)


def test_no_module_but_compat_touches_these_private_attributes():
    """Each name is an attribute torch, Ignite or tensorboardX keep for themselves (or, ``logger``, a
    handler's): only ``_compat`` reads it, so an upgrade that moves it breaks there, under these tests."""
    pattern = re.compile(r"\.(" + "|".join(PRIVATE) + r")\b")
    package = Path(ignite_lstm.__file__).parent
    found = [
        f"{p.name}:{n}: {line.strip()}"
        for p in sorted(package.glob("*.py"))
        if p.name != "_compat.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_handlers_of_an_event_are_counted_filtered_ones_included():
    from ignite.engine import EventEnum, Events

    class Ev(EventEnum):
        A = "compat_a"

    engine = Engine(lambda e, b: None)
    engine.register_events(*Ev)
    assert event_handler_count(engine, Ev.A) == 0
    engine.add_event_handler(Ev.A, lambda e: None)
    engine.add_event_handler(Ev.A(every=5), lambda e: None)
    assert event_handler_count(engine, Ev.A) == 2 and event_handler_count(engine, Events.STARTED) == 0


def test_the_names_of_attached_metrics_are_found():
    from ignite.metrics import Accuracy, MeanSquaredError

    engine = Engine(lambda e, b: None)
    assert attached_metric_names(engine) == []
    Accuracy().attach(engine, "accuracy")
    MeanSquaredError().attach(engine, "mse")
    assert attached_metric_names(engine) == ["accuracy", "mse"]


@pytest.mark.parametrize("kind", ["loader", "sampler", "sequential"])
def test_replaying_a_loader_epoch_draws_what_an_epoch_of_it_draws(kind):
    from torch.utils.data import DataLoader, RandomSampler

    def make():
        data = list(range(10))
        if kind == "loader":
            return DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))
        if kind == "sequential":
            return DataLoader(data, batch_size=3, generator=torch.Generator().manual_seed(0))
        sampler = RandomSampler(data, replacement=True, num_samples=40, generator=torch.Generator().manual_seed(0))
        return DataLoader(data, batch_size=4, sampler=sampler)

    def generator(loader):
        return loader.generator if loader.generator is not None else loader.sampler.generator

    real, replayed = make(), make()
    list(real)  # one whole epoch: the iterator made, every batch taken, the sampler exhausted
    global_before = torch.get_rng_state()
    replay_loader_epoch(replayed)
    assert torch.equal(generator(real).get_state(), generator(replayed).get_state())
    assert torch.equal(torch.get_rng_state(), global_before)  # never the global generator
    assert [b.tolist() for b in real] == [b.tolist() for b in replayed]  # so the next epochs draw the same orders
