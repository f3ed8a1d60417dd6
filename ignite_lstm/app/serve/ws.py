"""The WebSocket path ``/v1/streams/{id}/ws``, written on ASGI messages directly.

Each text (or binary) message is a frame ``{"seq": k, "x": [...]}``; each answer goes back as a
text message in the order the frames came: ``{"seq": k, "y": [...]}``, or in its place an
error ``{"seq": k, "status": 409, "error": "...", ...}`` (the connection stays open). Frames
are handed to the service as they arrive (pipelined); a sender task sends each answer once it
and all before it are ready. A refused handshake (401, 404) is answered with that HTTP status
where the server supports ASGI's ``websocket.http.response``, else closed with 1008.

Written without Starlette's ``WebSocket``: at thousands of frames per second its middleware
layers around every message were a measurable share of the server's CPU.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from ignite_lstm.app.serve.errors import ApiError
from ignite_lstm.app.serve.service import StreamService

__all__ = ["websocket_handler"]


def websocket_handler(service: StreamService, authorized: Callable, parse_frame: Callable):
    """The ASGI handler of one WebSocket connection: ``await handler(scope, receive, send, stream_id)``.

    Args:
        service: the streams.
        authorized: ``authorized(headers) -> bool`` (headers: a dict with lower-case names).
        parse_frame: ``parse_frame(data, service) -> (seq, samples)``, raising ``ApiError``.

    Returns:
        The handler.
    """

    async def handler(scope, receive, send, stream_id: str) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not authorized(headers):
            return await _deny(scope, send, 401, "Missing or wrong 'Authorization: Bearer <token>' header.")
        try:
            service.require(stream_id)
        except ApiError as exc:
            return await _deny(scope, send, exc.status, exc.message)
        await send({"type": "websocket.accept"})
        answers: asyncio.Queue = asyncio.Queue()
        sender = asyncio.create_task(_send_in_order(send, answers))
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    break  # websocket.disconnect
                seq = None
                try:
                    seq, samples = parse_frame(message.get("text") or message.get("bytes") or b"", service)
                    answers.put_nowait(service.submit(stream_id, seq, samples))
                except ApiError as exc:
                    service.metrics.rejected.labels(str(exc.status)).inc()
                    answers.put_nowait(_error(seq, exc))
                if sender.done():  # the client is gone
                    break
        finally:
            answers.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)

    return handler


def _error(seq, exc: ApiError) -> bytes:
    text = {"seq": seq, "status": exc.status, "error": exc.message, **exc.extra}
    if "Retry-After" in exc.headers:
        text["retry_after"] = int(exc.headers["Retry-After"])
    return json.dumps(text).encode()


async def _send_in_order(send, answers: asyncio.Queue) -> None:
    """Send each answer when it is ready, in the order the frames came."""
    while True:
        item = await answers.get()
        if item is None:
            return
        if not isinstance(item, bytes):
            try:
                item = await item
            except ApiError as exc:
                item = _error(None, exc)
        await send({"type": "websocket.send", "text": item.decode()})


async def _deny(scope, send, status: int, message: str) -> None:
    """Refuse the handshake with an HTTP status where the server can, else close with 1008."""
    body = json.dumps({"error": message}).encode()
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": f"{status} {message}"[:120]})
