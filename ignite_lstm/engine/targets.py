"""What a target is: one per time step (``targets="step"``) or one per sequence (``targets="last"``).

``targets="step"`` (the default): y (B, T, O) floats, or (B, T) integers (class indices),
compared with the model's output at every counted step. ``targets="last"``: y (B, O) floats
or (B,) class indices, one per sequence, compared with the model's output at the sequence's
last counted step (the last True of its mask row; step T - 1 without a mask). The engines
turn a per-sequence batch into a per-step one whose loss mask counts only those last steps
(``to_steps``); the target is broadcast over time as a view, so every execution path, window
length, process count and precision is the per-step machinery unchanged.

With ``carry_state`` a batch is a chunk of each lane's stream: the target of lane i counts at
its last counted step *in this batch*; a lane without a counted step in the batch has no
target there. To count a series' label once, at its end, leave its lane's mask False in the
chunks before the one where the series ends.

Padding never matters: an uncounted step may hold anything in x and y, NaN or infinity
included; the engines put zeros where an uncounted value of x is not finite
(``clean_inputs``), so that a 0 x NaN in the backward cannot reach a gradient, and the
uncounted targets are never read.

``collate_sequences`` (in ``ignite_lstm.engine.batches``) builds per-step batches;
``collate_last`` builds per-sequence ones from ``(x_i, label_i)`` pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "TARGETS",
    "check_targets",
    "check_target_shape",
    "prepare_targets",
    "to_steps",
    "clean_inputs",
    "collate_last",
    "TruncationCheck",
]

TARGETS = ("step", "last")


def check_targets(targets: Any) -> None:
    """Refuse a ``targets`` argument other than ``"step"`` or ``"last"``."""
    if not isinstance(targets, str):
        raise TypeError(f"Argument targets should be a string, got {type(targets).__name__}.")
    if targets not in TARGETS:
        raise ValueError(f"Argument targets should be one of {TARGETS}, got {targets!r}.")


def _is_classes(y: torch.Tensor) -> bool:
    return not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


def check_target_shape(targets: str, x: torch.Tensor, y: Any) -> None:
    """Refuse a y whose shape does not fit ``targets`` and x (B, T, F), naming what would.

    Args:
        targets: ``"step"`` or ``"last"``.
        x: the batch's inputs (B, T, F).
        y: the batch's targets.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"Argument batch should hold y as a tensor, got {type(y).__name__}.")
    B, T = x.shape[:2]
    lead = (B, T) if targets == "step" else (B,)
    classes = _is_classes(y)
    want = len(lead) if classes else len(lead) + 1
    if tuple(y.shape[: len(lead)]) == lead and y.dim() == want:
        return
    if targets == "step":
        expected = f"(B, T) = {lead} class indices or (B, T, O) = {(*lead, 'O')} floats"
        hint = " (one target per sequence: targets='last')" if tuple(y.shape[:1]) == (B,) and y.dim() < want else ""
    else:
        expected = f"(B,) = {lead} class indices or (B, O) = {(B, 'O')} floats"
        hint = " (a target per step: targets='step')" if tuple(y.shape[:2]) == (B, T) and y.dim() > want else ""
    raise ValueError(
        f"Argument batch should hold y of shape {expected} with targets={targets!r}, got a {y.dtype} tensor of "
        f"shape {tuple(y.shape)}{hint}."
    )


def to_steps(y: torch.Tensor, mask: torch.Tensor | None, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sequence batch as a per-step one: y broadcast over time, the loss mask at each last counted step.

    Args:
        y: (B,) class indices or (B, O) floats.
        mask: (B, T) bool, the steps that count, or None (all of them).
        steps: T.

    Returns:
        ``(y_steps, last)``: y_steps (B, T) or (B, T, O), a view of y; last (B, T) bool, True at the
        last counted step of each row that has one.
    """
    B = y.shape[0]
    y_steps = y.unsqueeze(1).expand(B, steps, *y.shape[1:])
    if mask is None:
        last = torch.zeros(B, steps, dtype=torch.bool, device=y.device)
        last[:, -1] = True
        return y_steps, last
    ranks = torch.arange(1, steps + 1, device=mask.device) * mask  # 0 where uncounted
    index = ranks.argmax(dim=1, keepdim=True)  # the last counted step (0 for a row without one)
    last = torch.zeros_like(mask).scatter_(1, index, True) & mask.any(dim=1, keepdim=True)
    return y_steps, last


def clean_inputs(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x with zeros where a step is uncounted and the value is not finite (x itself when nothing changes).

    Args:
        x: (B, T, F).
        mask: (B, T) bool or None.

    Returns:
        x, or a copy with those values replaced by 0.
    """
    if mask is None or not x.is_floating_point():
        return x
    bad = ~torch.isfinite(x) & ~mask.unsqueeze(-1)
    return x.masked_fill(bad, 0.0)


def prepare_targets(
    targets: str, x: torch.Tensor, y: Any, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A checked batch as the engines compute it: ``(x, y per step, loss mask)``, padding cleaned.

    Args:
        targets: ``"step"`` or ``"last"``.
        x: (B, T, F).
        y: the batch's targets (see ``check_target_shape``).
        mask: (B, T) bool, the steps that count, or None.

    Returns:
        ``(x, y, mask)``: x with zeros for its non-finite uncounted values, y (B, T, ...) and the
        mask of the positions the loss and the metrics count.
    """
    check_target_shape(targets, x, y)
    x = clean_inputs(x, mask)
    if targets == "last":
        y, mask = to_steps(y, mask, x.shape[1])
    return x, y, mask


class TruncationCheck:
    """One warning, with the cure, when counted steps lie beyond the first window of their sequence.

    With ``targets="last"``, or a mask that counts only late steps, a window of K steps shorter
    than the sequences lets the gradient reach back at most K - 1 steps from a counted step:
    the earlier inputs reach the loss only through a detached state (the default ``tbptt_steps=1``
    gives no gradient through time at all). Called on each batch until it has warned.
    """

    def __init__(self, targets: str) -> None:
        self.targets, self.warned = targets, False

    def __call__(self, mask: torch.Tensor | None, window: int) -> None:
        if self.warned or mask is None or mask.shape[1] <= window:
            return
        ranks = torch.arange(mask.shape[1], 0, -1, device=mask.device) * mask  # largest at the first counted step
        first = ranks.argmax(dim=1)
        late = mask.any(dim=1) & (first >= window)
        if not bool(late.any()):
            return
        self.warned = True
        what = "targets='last'" if self.targets == "last" else "a mask that counts only late steps"
        steps = mask.shape[1]
        warnings.warn(
            f"{what} with windows of tbptt_steps={window}: {int(late.sum())} sequence(s) of this batch of "
            f"{steps} steps count nothing in their first window, so the gradient reaches back at most "
            f"{window - 1} step(s) from a counted step and the earlier inputs reach the loss only through a "
            f"detached state. To train through whole sequences pass tbptt_steps >= {steps} (the longest "
            f"sequence); if the truncation is meant, filter this warning.",
            UserWarning,
            stacklevel=2,
        )


def collate_last(items: Sequence[Any], padding_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad sequences with one target each into a batch for ``targets="last"`` (a ``DataLoader`` ``collate_fn``).

    Args:
        items: ``(x_i, y_i)`` pairs (or mappings with keys ``x``, ``y``): x_i (T_i, F) with
            T_i >= 1, y_i a class index (an int or a 0-d integer tensor) or O floats ((O,) tensor,
            array or list; a Python float is (1,)).
        padding_value: the value of x at the padded steps (uncounted: any value works).

    Returns:
        ``(x, y, mask)``: x (B, T, F) with T = max T_i, y (B,) int64 or (B, O), mask (B, T) bool,
        True at the first T_i steps of sequence i.

    Example:
        >>> loader = DataLoader(list(zip(xs, labels)), batch_size=32, shuffle=True, collate_fn=collate_last)
        >>> trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), targets="last", tbptt_steps=64)
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError("Argument items should be a non-empty sequence of (x, y) pairs.")
    xs, ys = [], []
    for i, item in enumerate(items):
        x, y = (item["x"], item["y"]) if isinstance(item, dict) else item
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"Argument items[{i}] should hold x of shape (T, F) with T >= 1, got {tuple(x.shape)}.")
        y = torch.as_tensor(y)
        if y.dim() == 0 and y.is_floating_point():
            y = y.reshape(1)
        if y.dim() > 1 or (y.dim() == 1 and not y.is_floating_point()):
            raise ValueError(
                f"Argument items[{i}] should hold y as one class index or a vector of O floats, got a {y.dtype} "
                f"of shape {tuple(y.shape)}."
            )
        xs.append(x)
        ys.append(y)
    if len({(y.dtype, tuple(y.shape)) for y in ys}) > 1:
        raise ValueError("Argument items should hold targets of one dtype and shape.")
    lengths = torch.tensor([x.shape[0] for x in xs])
    x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True, padding_value=padding_value)
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return x, torch.stack(ys), mask
