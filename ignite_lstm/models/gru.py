"""A stateful GRU with the same contract as ``StatefulLSTM``, on the native kernel where it runs.

``y, h = model(x, state)``, ``y_t, h = model.step(x_t, state)``; the state is one tensor
h (num_layers, B, H), batch dimension 1. ``forward(..., detach_every_step=True)`` gives the
gradient of the per-step loop that detaches the state after every step, so ``create_trainer``
runs the literal L = 1 setting on the ``fused-detached`` path. Backends: the native kernel
(``ignite_lstm.models.native.gru``) on the CPU in float32/float64; elsewhere ``nn.GRU`` (through time),
the per-step loop itself (detached; exact, not fast) and ``torch.gru_cell`` (one step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ignite_lstm.models import native
from ignite_lstm.models.lstm import _LSTMLayer
from ignite_lstm.models.native.gru import gru_layer, gru_layer_inference
from ignite_lstm.models.stacked import StackedRNN

__all__ = ["StatefulGRU"]


class StatefulGRU(StackedRNN):
    """A stack of single-layer GRUs with a linear read-out, stepped one sample at a time.

    Args:
        input_size: features per time step F.
        hidden_size: hidden units H per layer.
        num_layers: stacked GRU layers.
        dropout: dropout probability on the output of every layer but the last.
        output_size: outputs per time step O.

    Example:
        >>> model = StatefulGRU(input_size=5, hidden_size=32)
        >>> y, h = model(torch.zeros(2, 100, 5))          # (2, 100, 1), h (1, 2, 32)
        >>> y_t, h = model.step(torch.zeros(2, 5), h)      # (2, 1)
    """

    supports_detach_every_step = True
    state_batch_dim = 1  # h (num_layers, B, H)
    cell = nn.GRU
    detached_saved_per_unit = 5  # per step: h and the four saved values (r, z, n, W_hn h + b_hn)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state h (num_layers, B, H)."""
        p = self.head.weight
        return torch.zeros(
            self.num_layers, batch_size, self.hidden_size, device=device or p.device, dtype=dtype or p.dtype
        )

    def _weights(self) -> list[list[nn.Parameter]]:
        """``[w_ih, w_hh, b_ih, b_hh]`` per layer (``nn.GRU.all_weights``, current after ``.to()``)."""
        return [cast(nn.GRU, gru).all_weights[0] for gru in self.layers]

    def _drop(self, inp: torch.Tensor, i: int) -> torch.Tensor:
        return F.dropout(inp, self.dropout, self.training) if i > 0 and self.dropout > 0.0 else inp

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, detach_every_step: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run T steps at once. x: (B, T, F) -> y: (B, T, O), h (num_layers, B, H).

        With ``detach_every_step=True`` the outputs carry the gradient of the per-step loop that
        detaches the state after every step, and the returned state is detached.
        """
        if torch.is_autocast_enabled(x.device.type):  # float32 on every backend, as StatefulLSTM
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.to(self.head.weight.dtype), state, detach_every_step)
        h0 = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        if detach_every_step:
            h0 = h0.detach()
        if native.available(x, h0, *self.parameters()):
            grad = torch.is_grad_enabled() and (
                x.requires_grad or h0.requires_grad or any(p.requires_grad for p in self.parameters())
            )
            inp, hs = x.transpose(0, 1), []  # (T, B, F): the kernel walks time-major rows
            for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._weights()):
                inp = self._drop(inp, i).contiguous()
                if grad:
                    inp, h = gru_layer(inp, h0[i], w_ih, w_hh, b_ih, b_hh, recurrent=not detach_every_step)
                else:
                    inp, h = gru_layer_inference(inp, h0[i], w_ih, w_hh, b_ih, b_hh)
                hs.append(h)
            h = torch.stack(hs)
            return self.head(inp).transpose(0, 1), (h.detach() if detach_every_step else h)
        if detach_every_step:  # the per-step loop itself
            h, outputs = h0, []
            for t in range(x.shape[1]):
                y_t, h = self.step(x[:, t], h.detach())
                outputs.append(y_t)
            return torch.stack(outputs, dim=1), h.detach()
        out, hs = x, []
        for i, gru in enumerate(self.layers):
            out, h = gru(self._drop(out, i), h0[i : i + 1])
            hs.append(h)
        return self.head(out), torch.cat(hs)

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step (the L = 1 call). x_t: (B, F) -> y_t: (B, O), h (num_layers, B, H)."""
        if x_t.dim() != 2:
            raise ValueError(f"Argument x_t should be a (batch, features) tensor, got shape {tuple(x_t.shape)}.")
        if torch.is_autocast_enabled(x_t.device.type):
            with torch.autocast(x_t.device.type, enabled=False):
                return self.step(x_t.to(self.head.weight.dtype), state)
        h0 = state if state is not None else self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        if not torch.is_grad_enabled() and native.available(x_t, h0, *self.parameters()):
            y, h = self.forward(x_t[:, None], h0)
            return y[:, 0], h
        hs, out = [], x_t
        for i, gru in enumerate(cast("Iterable[_LSTMLayer]", self.layers)):  # the same weight names
            h = torch.gru_cell(
                self._drop(out, i), h0[i], gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
            )
            hs.append(h)
            out = h
        return self.head(out), torch.stack(hs)
