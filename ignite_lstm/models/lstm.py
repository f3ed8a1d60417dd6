"""The stateful LSTM and the model contract the engines rely on.

Contract (any model may follow it, see ``create_trainer``)::

    y, state = model(x, state=None)     # x (B, T, F) -> y (B, T, O)
    y_t, state = model.step(x_t, state) # x_t (B, F) -> y_t (B, O), optional

``state=None`` means "start of a sequence" (zeros). ``step`` is the L = 1 call;
a model without ``step`` is stepped as ``model(x_t[:, None], state)``.

Optional capability: a model whose class sets ``supports_detach_every_step = True``
accepts ``forward(x, state, detach_every_step=True)`` and returns outputs whose
gradient equals that of the per-step loop detaching the state after every step;
``create_trainer`` then runs the literal L = 1 setting in chunks (``fused-detached``).

Optional, for ``carry_state=True`` (``ignite_lstm.engine.carry``): ``state_batch_dim``, an
integer class attribute, the batch dimension of every tensor of the state (1 for
``StatefulLSTM``'s (h, c), each (layers, B, H), as for ``nn.LSTM``/``nn.GRU``).

Optional: ``computes_in_float32_under_autocast = True`` declares that the model turns
autocast off inside (as ``StatefulLSTM`` does, below); an engine given ``amp_dtype`` then
says once in the log that the setting leaves the model in float32.

``StatefulLSTM`` owns its backends: the native CPU kernel (``ignite_lstm.models.native``)
where it runs, else PyTorch (``nn.LSTM`` for whole windows, ``torch.lstm_cell`` for
one step, ``ignite_lstm.models.detached`` for the detached form).

Mixed precision: under ``torch.autocast`` (the engines' ``amp_dtype``) ``StatefulLSTM``
computes in its parameters' dtype (float32) on every backend, the same numbers as
without autocast: the native kernel has float32/float64 code only, autocast would
run ``nn.LSTM`` in low precision but leave ``torch.lstm_cell`` in float32 (so the
execution paths would stop agreeing), and on the CPU the recurrence is bound by the
latency of its small per-step products, not by arithmetic. The loss, and a model
of the user's, follow autocast.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ignite_lstm.checkpoint.files import UnreadableFile, load_torch_file
from ignite_lstm.models import native
from ignite_lstm.models.detached import detached_steps_forward
from ignite_lstm.models.stacked import StackedRNN

__all__ = ["StatefulLSTM", "LSTMState", "load_model"]

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, B, H)


class _LSTMLayer(Protocol):
    """A one-layer ``nn.LSTM``'s parameters, which it registers by name at run time (untyped in torch)."""

    weight_ih_l0: torch.Tensor
    weight_hh_l0: torch.Tensor
    bias_ih_l0: torch.Tensor
    bias_hh_l0: torch.Tensor


class StatefulLSTM(StackedRNN):
    """A stack of single-layer LSTMs with a linear read-out, stepped one sample at a time.

    Each layer is its own ``nn.LSTM`` so that every layer's hidden sequence is
    reachable (the exact fused L = 1 trainer needs it); dropout sits between layers
    as in ``nn.LSTM(dropout=...)``.

    Args:
        input_size: features per time step F.
        hidden_size: hidden units H per layer.
        num_layers: stacked LSTM layers.
        dropout: dropout probability on the output of every layer but the last.
        output_size: outputs per time step O.

    Example:
        >>> model = StatefulLSTM(input_size=5, hidden_size=32)
        >>> y, state = model(torch.zeros(2, 100, 5))         # (2, 100, 1)
        >>> y_t, state = model.step(torch.zeros(2, 5), state)  # (2, 1)
    """

    supports_detach_every_step = True  # see the module docstring
    state_batch_dim = 1  # (h, c), each (num_layers, B, H): the lanes that carry_state=True carries
    cell = nn.LSTM
    computes_in_float32_under_autocast = True  # see the module docstring: amp_dtype changes only the loss
    native_chunk_steps = 512  # steps per native call without gradients: memory does not grow with T

    def init_state(self, batch_size: int, device=None, dtype=None) -> LSTMState:
        """Zero state (h, c), each (num_layers, B, H)."""
        p = self.head.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        h = torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)
        return h, torch.zeros_like(h)

    def forward(
        self, x: torch.Tensor, state: LSTMState | None = None, detach_every_step: bool = False
    ) -> tuple[torch.Tensor, LSTMState]:
        """Run T steps at once (fused). x: (B, T, F) -> y: (B, T, O), state (h, c).

        With ``detach_every_step=True`` the outputs carry the gradient of the per-step
        loop that detaches the state after every step (the literal L = 1 setting),
        computed in the exact fused form of ``ignite_lstm.models.detached``.
        """
        if torch.is_autocast_enabled(x.device.type):  # float32 on every backend, see the module docstring
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.to(self.head.weight.dtype), state, detach_every_step)
        h0, c0 = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        if native.available(x):
            grad = torch.is_grad_enabled() and (
                x.requires_grad
                or h0.requires_grad
                or c0.requires_grad
                or any(p.requires_grad for p in self.parameters())
            )
            if not grad:
                return self._native_inference(x, h0, c0)
            return self._native_forward(x, h0, c0, detach_every_step)
        if detach_every_step:
            masks = self._dropout_masks(x.shape[1], x.shape[0], x)
            return detached_steps_forward(self.layers, self.head, x, h0, c0, masks)
        hs, cs = [], []
        out = x
        for i, lstm in enumerate(self.layers):
            if i > 0 and self.dropout > 0.0:
                out = F.dropout(out, self.dropout, self.training)
            out, (h, c) = lstm(out, (h0[i : i + 1], c0[i : i + 1]))  # (B, T, H)
            hs.append(h)
            cs.append(c)
        return self.head(out), (torch.cat(hs), torch.cat(cs))

    def step(self, x_t: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """One time step (the L = 1 call). x_t: (B, F) -> y_t: (B, O), state (h, c)."""
        if x_t.dim() != 2:
            raise ValueError(
                f"Argument x_t should be a (batch, features) tensor, got shape {tuple(x_t.shape)}; "
                f"for one sequence use x_t[None] (batch of 1)."
            )
        if torch.is_autocast_enabled(x_t.device.type):  # float32 on every backend, see the module docstring
            with torch.autocast(x_t.device.type, enabled=False):
                return self.step(x_t.to(self.head.weight.dtype), state)
        if state is None:
            state = self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        if not torch.is_grad_enabled() and native.available(x_t):
            return self._native_step(x_t, state)  # with gradients: the literal torch cell (the reference)
        h0, c0 = state
        hs, cs = [], []
        out = x_t
        for i, lstm in enumerate(cast("Iterable[_LSTMLayer]", self.layers)):
            if i > 0 and self.dropout > 0.0:
                out = F.dropout(out, self.dropout, self.training)
            # One fused kernel per layer: far cheaper per call than nn.LSTM on a length-1 sequence.
            h, c = torch.lstm_cell(
                out, (h0[i], c0[i]), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
            )
            hs.append(h)
            cs.append(c)
            out = h
        return self.head(out), (torch.stack(hs), torch.stack(cs))

    # ------------------------------------------------------------ backends

    def _dropout_masks(self, T: int, B: int, like: torch.Tensor) -> list[torch.Tensor | None]:
        """One inverted-dropout mask (T, B, H) per layer input after the first (None: no dropout).

        The detached paths draw them up front, so that the same masks serve both of
        their passes (and a test can replay them in the per-step loop).
        """
        masks: list[torch.Tensor | None] = [None] * self.num_layers
        if self.training and self.dropout > 0.0:
            keep = 1.0 - self.dropout
            for i in range(1, self.num_layers):
                shape = (T, B, self.hidden_size)
                masks[i] = torch.bernoulli(torch.full(shape, keep, device=like.device, dtype=like.dtype)) / keep
        return masks

    def _weights(self) -> list[list[nn.Parameter]]:
        """``[w_ih, w_hh, b_ih, b_hh]`` per layer (``nn.LSTM.all_weights``, current after ``.to()``)."""
        return [cast(nn.LSTM, lstm).all_weights[0] for lstm in self.layers]

    def _native_forward(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, detach_every_step: bool
    ) -> tuple[torch.Tensor, LSTMState]:
        """With gradients: one ``native.lstm_layer`` call per layer over all T steps."""
        if detach_every_step:
            h0, c0 = h0.detach(), c0.detach()
        masks = self._dropout_masks(x.shape[1], x.shape[0], x)
        if detach_every_step and all(m is None for m in masks):  # the whole stack and read-out in one node
            head = (self.head.weight, self.head.bias)
            y, h, c = native.detached_stack(self, x, h0, c0, self._weights(), head)
            return y, (h, c)
        inp = x.transpose(0, 1)  # (T, B, F): the kernel walks time-major rows
        hs, cs = [], []
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._weights()):
            if (mask := masks[i]) is not None:
                inp = inp * mask
            inp, h, c = native.lstm_layer(
                inp.contiguous(), h0[i], c0[i], w_ih, w_hh, b_ih, b_hh, recurrent=not detach_every_step
            )
            hs.append(h)
            cs.append(c)
        state = (torch.stack(hs), torch.stack(cs))
        if detach_every_step:
            state = (state[0].detach(), state[1].detach())
        return self.head(inp).transpose(0, 1), state

    def _native_inference(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, LSTMState]:
        """Without gradients, in chunks of ``native_chunk_steps``: the whole stack in one call per chunk."""
        B, T, _ = x.shape
        h, c = (s.detach().contiguous() for s in (h0, c0))
        y = x.new_empty(T, B, self.output_size)
        dropout = self.training and self.dropout > 0.0
        runner = (
            None if dropout else native.stack_runner(self, self._weights(), (self.head.weight, self.head.bias), x.dtype)
        )
        for start in range(0, T, self.native_chunk_steps):
            stop = min(T, start + self.native_chunk_steps)
            inp = x[:, start:stop].transpose(0, 1).contiguous()  # (C, B, F)
            if runner is not None:
                _, y[start:stop], h, c = runner.run(inp, h, c)
                continue
            masks = self._dropout_masks(stop - start, B, x)  # layer by layer, to put the masks between them
            h, c = h.clone(), c.clone()
            for i, params in enumerate(self._weights()):
                if (mask := masks[i]) is not None:
                    inp = inp * mask
                inp, h[i], c[i] = native.lstm_layer_inference(inp, h[i], c[i], *params)
            torch.addmm(
                self.head.bias,
                inp.view(-1, inp.shape[-1]),
                self.head.weight.t(),
                out=y[start:stop].view(-1, self.output_size),
            )
        return y.transpose(0, 1), (h, c)

    def _native_step(self, x_t: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        if self.training and self.dropout > 0.0:
            y, state = self._native_inference(x_t[:, None], *state)
            return y[:, 0], state
        runner = native.stack_runner(self, self._weights(), (self.head.weight, self.head.bias), x_t.dtype)
        _, y, h, c = runner.run(x_t.contiguous()[None], state[0].contiguous(), state[1].contiguous())
        return y[0], (h, c)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[StatefulLSTM, dict]:
    """Rebuild a ``StatefulLSTM`` from a checkpoint or model file written by this package.

    The file must hold ``model_args`` (the constructor arguments) and ``model`` (the
    state dict); everything else in it is returned as the second value.

    Args:
        path: a ``.pt`` file written by ``run.py`` (final model or training checkpoint).
        map_location: where to load the tensors.

    Returns:
        (model in eval mode, the file's other entries).

    Example:
        >>> model, rest = load_model("runs/base-20261129-120000/model.pt")
        >>> y_t, state = model.step(torch.zeros(1, 5))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    try:
        obj = load_torch_file(path, map_location)
    except UnreadableFile as exc:  # the reason, without torch's advice to load the file unsafely
        what = "is not a checkpoint written by ignite_lstm" if exc.foreign else "could not be read as a torch file"
        raise ValueError(f"Model file {path} {what}: {str(exc).rstrip('.')}.") from exc
    if not isinstance(obj, dict) or "model_args" not in obj or "model" not in obj:
        raise ValueError(
            f"Model file {path} is not a StatefulLSTM file of this package: it needs 'model_args' and 'model'."
        )
    model = StatefulLSTM(**obj["model_args"])
    model.load_state_dict(obj["model"])
    model.eval()
    rest = {k: v for k, v in obj.items() if k not in ("model", "model_args")}
    return model, rest
