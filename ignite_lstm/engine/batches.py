"""What a batch is: ``(x, y)``, ``(x, y, mask)``, ``(x, y, mask, reset)`` or a mapping, and padding.

A batch holds B sequences (lanes): x (B, T, F), y (B, T, O), optionally a mask
(B, T) bool, True at the steps that count, and optionally ``reset`` (B,) bool. The
model steps through every step; a step whose mask is False counts nowhere (loss,
gradients, window losses, metrics). ``reset`` matters to engines that carry the
state across batches (``carry_state=True``, ``ignite_lstm.engine.carry``): lane i starts
from a fresh state where it is True and continues lane i of the previous batch where
it is False; every other engine starts every lane of every batch fresh, so it
checks ``reset`` and has nothing more to do. ``collate_sequences`` pads a list of
sequences of different lengths to the longest and builds the mask; it is the
``collate_fn`` for a ``DataLoader`` over them.

``segment_counts`` says, for the parts of a batch computed one at a time (windows,
chunks), how many positions count in each, on this process and on all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import ignite.distributed as idist
import torch
from ignite.utils import convert_tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = [
    "collate_sequences",
    "parse_batch",
    "prepare_batch",
    "check_prepared",
    "check_mask",
    "check_reset",
    "SegmentCounts",
    "segment_counts",
    "pad_to_length",
    "window_bounds",
    "global_steps",
    "global_max",
]

_KEYS = ("x", "y", "mask", "reset")


def _refuse_packed(*values: Any) -> None:
    if any(isinstance(v, PackedSequence) for v in values):
        raise TypeError(
            "Argument batch should hold padded tensors, got a PackedSequence; for sequences of "
            "different lengths use DataLoader(..., collate_fn=ignite_lstm.collate_sequences), which "
            "pads them and adds the mask."
        )


def parse_batch(batch: Any) -> tuple[Any, Any, Any, Any]:
    """Split a batch into ``(x, y, mask, reset)``; mask and reset are None when the batch has none.

    Args:
        batch: ``(x, y)``, ``(x, y, mask)``, ``(x, y, mask, reset)``, or a mapping with keys
            ``x``, ``y`` and optionally ``mask`` and ``reset``.

    Returns:
        ``(x, y, mask, reset)`` as given (not moved, not checked beyond their number).

    Example:
        >>> x, y, mask, reset = parse_batch((torch.zeros(2, 5, 3), torch.zeros(2, 5, 1)))
        >>> mask is None and reset is None
        True
    """
    if isinstance(batch, PackedSequence):
        _refuse_packed(batch)
    if isinstance(batch, Mapping):
        unknown = sorted(set(batch) - set(_KEYS))
        if unknown or "x" not in batch or "y" not in batch:
            raise ValueError(
                f"Argument batch should be a mapping with keys 'x', 'y' and optionally 'mask' and "
                f"'reset', got keys {sorted(batch)}."
            )
        parts = (batch["x"], batch["y"], batch.get("mask"), batch.get("reset"))
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) in (2, 3, 4):
        parts = (*batch, *(None,) * (4 - len(batch)))
    else:
        size = len(batch) if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) else None
        raise TypeError(
            f"Argument batch should be (x, y), (x, y, mask), (x, y, mask, reset) or a mapping with keys "
            f"'x', 'y', 'mask', 'reset', got {type(batch).__name__}"
            + (f" of length {size}." if size is not None else ".")
        )
    _refuse_packed(*parts[:3])
    return parts


def check_mask(mask: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Check that ``mask`` is None or a (B, T) bool tensor matching x (B, T, F); return it.

    Args:
        mask: the batch's mask, or None.
        x: the batch's inputs.

    Returns:
        The mask (on x's device), or None.

    Example:
        >>> check_mask(torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 5, 3)).shape
        torch.Size([2, 5])
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(
            f"Argument mask should be a (batch, steps) bool tensor, True at the steps that count, got "
            f"{kind}; lengths become a mask with torch.arange(T) < lengths[:, None], or use "
            f"ignite_lstm.collate_sequences."
        )
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"Argument mask should have the shape (batch, steps) = {tuple(x.shape[:2])} of x, got {tuple(mask.shape)}."
        )
    return mask.to(x.device)


def check_reset(reset: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Check that ``reset`` is None or a (B,) bool tensor matching x (B, T, F); return it.

    Args:
        reset: the batch's reset flags (True: the lane starts from a fresh state), or None.
        x: the batch's inputs.

    Returns:
        The flags (on x's device), or None.

    Example:
        >>> check_reset(torch.tensor([True, False]), torch.zeros(2, 5, 3))
        tensor([ True, False])
    """
    if reset is None:
        return None
    if not isinstance(reset, torch.Tensor) or reset.dtype != torch.bool:
        kind = f"a {reset.dtype} tensor" if isinstance(reset, torch.Tensor) else type(reset).__name__
        raise TypeError(
            f"Argument reset should be a (batch,) bool tensor, True for the lanes that start from a "
            f"fresh state, got {kind}."
        )
    if tuple(reset.shape) != tuple(x.shape[:1]):
        raise ValueError(
            f"Argument reset should have the shape (batch,) = {tuple(x.shape[:1])} of x, got {tuple(reset.shape)}."
        )
    return reset.to(x.device)


def prepare_batch(
    batch: Any, device: str | torch.device | None = None, non_blocking: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The engines' default ``prepare_batch``: parse the batch and move it to ``device``.

    A ``prepare_batch`` of your own may return ``(x, y)``, ``(x, y, mask)`` or
    ``(x, y, mask, reset)`` (mask or reset None when there is none); the engines check
    the mask and the reset flags.

    Args:
        batch: see ``parse_batch``.
        device: where the tensors go (None: where they are).
        non_blocking: passed to the transfer.

    Returns:
        ``(x, y, mask, reset)``, mask and reset None when the batch has none.

    Example:
        >>> x, y, mask, reset = prepare_batch(batch, "cpu")
    """
    x, y, mask, reset = parse_batch(batch)
    x, y = (cast(torch.Tensor, convert_tensor(v, device, non_blocking)) for v in (x, y))  # the batch's tensors
    mask, reset = (convert_tensor(v, device, non_blocking) if v is not None else None for v in (mask, reset))
    return x, y, check_mask(mask, x), check_reset(reset, x)


def check_prepared(out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A ``prepare_batch`` result, ``(x, y)``, ``(x, y, mask)`` or ``(x, y, mask, reset)``, checked.

    Args:
        out: what the engines' ``prepare_batch`` returned.

    Returns:
        ``(x, y, mask, reset)``, mask and reset None where there is none.
    """
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3, 4):
        raise TypeError("Argument prepare_batch should return (x, y), (x, y, mask) or (x, y, mask, reset).")
    parts: tuple[Any, ...] = (*out, *(None,) * (4 - len(out)))
    x, y, mask, reset = parts
    return x, y, check_mask(mask, x), check_reset(reset, x)


def collate_sequences(
    items: Sequence[Any], padding_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad sequences of different lengths into one batch with its mask (a ``DataLoader`` ``collate_fn``).

    Args:
        items: ``(x_i, y_i)`` pairs (or mappings with keys ``x``, ``y``), x_i (T_i, F) and
            y_i (T_i, O) floats or (T_i,) class indices (tensors or arrays), T_i >= 1 steps each.
            For one target per sequence, see ``ignite_lstm.engine.targets.collate_last``.
        padding_value: the value of x and y at the padded steps (uncounted: any value works,
            NaN included; the engines give the numbers of zeros there).

    Returns:
        ``(x, y, mask)``: x (B, T, F) and y (B, T, O) or (B, T) with T = max T_i, mask (B, T) bool,
        True at the first T_i steps of sequence i.

    Example:
        >>> loader = DataLoader(sequences, batch_size=8, collate_fn=collate_sequences)
        >>> x, y, mask = next(iter(loader))
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError("Argument items should be a non-empty sequence of (x, y) sequences.")
    pairs = []
    for i, item in enumerate(items):
        x, y, mask, reset = parse_batch(item)
        if mask is not None or reset is not None:
            raise ValueError(f"Argument items[{i}] should be an (x, y) pair: the mask is built from the lengths.")
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        y_dims = (2,) if y.is_floating_point() else (1, 2)
        if x.dim() != 2 or y.dim() not in y_dims or x.shape[0] != y.shape[0] or x.shape[0] < 1:
            raise ValueError(
                f"Argument items[{i}] should hold x (T, F) and y (T, O) floats or (T,) class indices with the "
                f"same T >= 1 (one target per sequence: collate_last), got "
                f"shapes {tuple(x.shape)} and {tuple(y.shape)}."
            )
        pairs.append((x, y))
    lengths = torch.tensor([x.shape[0] for x, _ in pairs])
    x = torch.nn.utils.rnn.pad_sequence([x for x, _ in pairs], batch_first=True, padding_value=padding_value)
    ys = [y for _, y in pairs]
    y_padding = padding_value if ys[0].is_floating_point() else 0  # class indices: a valid one, never read
    y = torch.nn.utils.rnn.pad_sequence(ys, batch_first=True, padding_value=y_padding)
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return x, y, mask


def pad_to_length(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, steps: int):
    """x, y and mask padded with uncounted steps (zeros, mask False) to ``steps`` steps."""
    B, T = x.shape[:2]
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
    extra = steps - T
    x = torch.cat([x, x.new_zeros(B, extra, *x.shape[2:])], dim=1)
    y = torch.cat([y, y.new_zeros(B, extra, *y.shape[2:])], dim=1)
    return x, y, torch.cat([mask, mask.new_zeros(B, extra)], dim=1)


class SegmentCounts:
    """Counted positions per segment (a window or a chunk) of one batch, here and on all processes.

    Attributes:
        bounds: ``[(start, stop), ...]`` of the segments.
        local: the weight of each segment's counted positions on this process (their number, or
            with position weights their sum, see ``ignite_lstm.engine.losses.loss_positions``).
        total: the same summed over all processes.
        counted: the number of counted positions of each segment on this process.
        last: index of the last segment with a counted position anywhere (-1: none).
    """

    def __init__(
        self, bounds: list[tuple[int, int]], local: list, total: list, counted: list[int] | None = None
    ) -> None:
        self.bounds, self.local, self.total = bounds, local, total
        self.counted = local if counted is None else counted
        self.last = max((i for i, n in enumerate(total) if n), default=-1)


def _per_segment(per_step: torch.Tensor, bounds: list[tuple[int, int]]) -> list:
    ends = torch.tensor([stop for _, stop in bounds], device=per_step.device) - 1
    cumulative = per_step.cumsum(0)[ends]
    return torch.diff(cumulative, prepend=cumulative.new_zeros(1)).tolist()


def segment_counts(
    mask: torch.Tensor | None,
    batch_size: int,
    bounds: list[tuple[int, int]],
    weights: torch.Tensor | None = None,
) -> SegmentCounts:
    """Count the positions that count in each segment, all-reduced over processes.

    Args:
        mask: (B, T) bool or None (every position counts).
        batch_size: B.
        bounds: the segments' ``(start, stop)`` steps, consecutive from 0 to T.
        weights: (B, T) float64 position weights, or None (each counted position weighs 1).

    Returns:
        A ``SegmentCounts``.
    """
    if mask is None:
        counted = [batch_size * (stop - start) for start, stop in bounds]
    else:
        counted = _per_segment(mask.sum(0), bounds)
    local = counted
    if weights is not None:
        kept = weights if mask is None else torch.where(mask, weights, 0.0)
        local = _per_segment(kept.sum(0), bounds)
    total = local
    if idist.get_world_size() > 1:
        summed = cast(
            torch.Tensor, idist.all_reduce(torch.tensor(local, dtype=torch.float64, device=idist.device()))
        ).tolist()
        total = summed if weights is not None else [int(n) for n in summed]
    return SegmentCounts(bounds, local, total, counted)


def window_bounds(steps: int, length: int) -> list[tuple[int, int]]:
    """``[(0, length), (length, 2 * length), ..., (.., steps)]``: consecutive segments of ``length`` steps."""
    return [(start, min(steps, start + length)) for start in range(0, steps, length)]


def global_steps(steps: int) -> int:
    """The longest batch length over all processes (this one's without several processes): ``global_max``."""
    return global_max(steps)


def global_max(value: int) -> int:
    """The largest of ``value`` over all processes (``value`` itself without several processes).

    Args:
        value: this process's number (a batch size).

    Returns:
        The maximum over the processes.
    """
    if idist.get_world_size() == 1:
        return value
    return int(cast(torch.Tensor, idist.all_reduce(torch.tensor(float(value), device=idist.device()), op="MAX")).item())
