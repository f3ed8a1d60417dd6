"""Gate-bias initialisations for recurrent cells: memory of the length the task needs from the start.

torch's default draws every bias from U(-1/sqrt(H), 1/sqrt(H)): forget gates near 0.5, a memory
of a few steps. A task whose signal lives hundreds of steps back (a 1 Hz sine sampled at 1 kHz)
must first learn to open them; the chrono initialisation (Tallec and Ollivier, "Can recurrent
neural networks warp time?", ICLR 2018) starts each unit with its own time constant instead,
spread between 1 and ``t_max`` steps.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["chrono_init"]


@torch.no_grad()
def chrono_init(
    model: nn.Module, t_max: float, generator: torch.Generator | None = None, fraction: float = 1.0
) -> nn.Module:
    """Set the gate biases of every ``nn.LSTM`` and ``nn.GRU`` in ``model`` to the chrono initialisation.

    For each unit a time constant ``u ~ U(1, t_max - 1)`` is drawn; an LSTM's forget-gate bias
    becomes ``log(u)`` and its input-gate bias ``-log(u)`` (a gate that keeps ``u/(1+u)`` of the
    cell forgets over about ``u`` steps); a GRU's update-gate bias becomes ``log(u)``. The biases
    of the hidden-to-hidden products of those gates become 0 (the two add up). Weights are
    left as they are.

    Args:
        model: a module holding ``nn.LSTM``/``nn.GRU`` modules (``StatefulLSTM``, ``StatefulGRU``, ...).
        t_max: the longest time constant, in steps (> 2): about the longest dependency of the task.
        generator: the random generator of the draws; None: torch's global one.
        fraction: the share of each layer's units that get the chrono biases: the first
            ``round(fraction * H)`` (at least one); the others keep theirs (torch's default:
            memories of a few steps). A task with both slow and fast components (1 Hz and
            7 Hz at 1 kHz) needs both kinds of unit.

    Returns:
        ``model``, changed in place.

    Raises:
        ValueError: ``t_max`` not above 2, ``fraction`` outside (0, 1], or no LSTM/GRU with biases in ``model``.

    Example:
        >>> model = chrono_init(StatefulLSTM(input_size=5, hidden_size=32), t_max=1000)
    """
    if not t_max > 2:
        raise ValueError(f"Argument t_max should be above 2 (steps), got {t_max}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"Argument fraction should be in (0, 1], got {fraction}.")
    found = 0
    for module in model.modules():
        if not isinstance(module, (nn.LSTM, nn.GRU)) or not module.bias:
            continue
        h = module.hidden_size
        for layer in range(module.num_layers):
            for suffix in ("", "_reverse") if module.bidirectional else ("",):
                b_ih = getattr(module, f"bias_ih_l{layer}{suffix}")
                b_hh = getattr(module, f"bias_hh_l{layer}{suffix}")
                k = max(1, round(fraction * h))  # units 0..k-1
                u = torch.rand(k, generator=generator, dtype=torch.float64) * (t_max - 2) + 1
                log_u = torch.log(u).to(b_ih.dtype)
                if isinstance(module, nn.LSTM):  # gates (input, forget, cell, output)
                    b_ih[h : h + k], b_ih[:k] = log_u, -log_u
                    b_hh[:k], b_hh[h : h + k] = 0, 0
                else:  # nn.GRU gates (reset, update, new): h' = (1 - z) n + z h
                    b_ih[h : h + k] = log_u
                    b_hh[h : h + k] = 0
                found += 1
    if not found:
        raise ValueError("chrono_init found no nn.LSTM or nn.GRU with biases in the model.")
    return model
