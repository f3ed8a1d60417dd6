"""``ApiError``: a request refused, with the HTTP status, the message and what goes with them."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """A request refused: HTTP status, message, extra JSON fields and headers for the answer."""

    def __init__(self, status: int, message: str, *, headers: dict | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra
