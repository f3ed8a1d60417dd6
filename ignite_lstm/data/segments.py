"""One long series (or each of several) cut into consecutive segments, one per lane of a stream.

A forecaster trained in stream mode on one long record wants every lane busy: the record
cut into B consecutive segments, segment i in lane i, each continuing its lane's state
chunk after chunk. ``StreamLoader(..., consecutive=True)`` does it with `consecutive_segments`:
series s of S (B divisible by S) is cut into B / S segments of whole chunks, as even as
possible (the later segments one chunk longer where they cannot be equal, so that the last
one, which ends with the series, is in the stream's last batch: the state at the series' end
is there), so only each series' last chunk is padded. Segment k of the list is
lane k of the stream, and ``sources[k]`` the series it was cut from.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Segment", "consecutive_segments"]


class Segment:
    """Steps ``start:stop`` of a series (anything ``as_series`` returns), read lazily through it.

    Attributes: ``series`` (the whole one), ``start``, ``stop``, ``features``, ``outputs``, ``dtypes``.
    """

    def __init__(self, series: Any, start: int, stop: int) -> None:
        self.series, self.start, self.stop = series, start, stop
        self.features, self.outputs, self.dtypes = series.features, series.outputs, series.dtypes

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps ``start:stop`` of the segment: x (n, F), y (n, O)."""
        return self.series.read(self.start + start, self.start + min(stop, len(self)))


def consecutive_segments(series: list[Any], lanes: int, chunk_steps: int) -> tuple[list[Segment], list[int]]:
    """Cut each series into ``lanes / len(series)`` consecutive segments of whole chunks.

    Args:
        series: what ``as_series`` returns (each with ``len()`` and ``read``).
        lanes: B, divisible by the number of series.
        chunk_steps: C: every segment but a series' last is a whole number of chunks.

    Returns:
        ``(segments, sources)``: the B segments in lane order, series by series, and for each
        the index of the series it was cut from.

    Raises:
        ValueError: B not divisible by the number of series, or a series shorter than its segments' chunks.

    Example:
        >>> segments, sources = consecutive_segments(as_series([(x, y)]), lanes=4, chunk_steps=52)
        >>> [(s.start, s.stop) for s in segments]  # x of 2,000 steps: 39 chunks, 9 + 10 + 10 + 10
        [(0, 468), (468, 988), (988, 1508), (1508, 2000)]
    """
    if lanes % len(series):
        raise ValueError(
            f"Argument lanes should be divisible by the number of series ({len(series)}) with "
            f"consecutive=True (each series is cut into lanes / series segments), got {lanes}."
        )
    per = lanes // len(series)
    segments: list[Segment] = []
    sources: list[int] = []
    for i, s in enumerate(series):
        chunks = -(-len(s) // chunk_steps)
        if chunks < per:
            raise ValueError(
                f"Argument series[{i}] has {len(s)} steps, {chunks} chunks of {chunk_steps}: too short "
                f"for {per} consecutive segments of at least one chunk each; use fewer lanes or shorter chunks."
            )
        start = 0
        for k in range(per):
            stop = min(len(s), start + (chunks // per + (k >= per - chunks % per)) * chunk_steps)
            segments.append(Segment(s, start, stop))
            sources.append(i)
            start = stop
    return segments, sources
