"""The HTTP and WebSocket API (Starlette) over a ``StreamService``.

Routes (the protocol in full: docs/serving.md)::

    GET    /healthz                     200 {"status": "ok"} once the model is loaded
    GET    /metrics                     Prometheus text
    GET    /v1/model                    the model's task, frequencies, sizes
    POST   /v1/streams                  {"frequency": f} -> 201 {"stream": id}
    GET    /v1/streams                  every stream and its next seq (after a restart: what continues)
    GET    /v1/streams/{id}             {"stream", "frequency", "next_seq", "evicted"}
    POST   /v1/streams/{id}/frames      {"seq": k, "x": [...]} -> 200 {"seq": k, "y": [...]}
    DELETE /v1/streams/{id}             204
    WS     /v1/streams/{id}/ws          text messages {"seq", "x"} -> {"seq", "y"} in order

Errors are JSON ``{"error": message, ...}`` with 400, 401, 404, 409 (with ``next_seq``), 413
or 429 (with ``Retry-After``); on the WebSocket the same as a message ``{"seq", "status",
"error"}`` in the place of the answer, the connection kept open.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ignite_lstm.app.serve.errors import ApiError
from ignite_lstm.app.serve.metrics import CONTENT_TYPE_LATEST
from ignite_lstm.app.serve.service import StreamService
from ignite_lstm.app.serve.ws import websocket_handler

try:  # about ten times faster than json for the frames; json reads what it refuses (NaN: a clear 400)
    import orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None

__all__ = ["create_app", "parse_frame"]

_JSON = "application/json"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = {int, float}  # what json.loads makes of JSON numbers
_WS_PATH = re.compile(r"^/v1/streams/([^/]+)/ws$")
_FRAMES_PATH = re.compile(r"^/v1/streams/([^/]+)/frames$")


def _loads(data: bytes | str):
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, 1e400: json reads them, the finiteness check names them
    return json.loads(data)


def _error(exc: ApiError, service: StreamService) -> JSONResponse:
    service.metrics.rejected.labels(str(exc.status)).inc()
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=exc.headers)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_frame(data: bytes | str, service: StreamService) -> tuple[int, np.ndarray]:
    """Check a frame ``{"seq": k, "x": [...]}``; returns ``(seq, samples float32)`` or raises ApiError 400/413."""
    try:
        obj = _loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The frame is not valid JSON: {exc}.") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f'A frame should be a JSON object {{"seq": k, "x": [...]}}, got {type(obj).__name__}.')
    unknown = sorted(set(obj) - {"seq", "x"})
    if unknown or "seq" not in obj or "x" not in obj:
        raise ApiError(400, f"A frame has exactly the fields 'seq' and 'x'; got {sorted(obj)}.")
    seq, x = obj["seq"], obj["x"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ApiError(400, f"Field 'seq' should be an integer >= 0, got {seq!r}.")
    model, limit = service.model, service.limits.max_frame_samples
    if not isinstance(x, list) or not x:
        raise ApiError(
            400,
            f"Field 'x' should be a non-empty list of samples, got {type(x).__name__} "
            f"{'(empty)' if x == [] else ''}".rstrip()
            + ".",
        )
    if len(x) > limit:
        raise ApiError(413, f"Frame seq {seq} has {len(x)} samples; the limit is {limit} (--max-frame-samples).")
    if model.is_signal:
        if not set(map(type, x)) <= _NUMBER_TYPES:  # one pass in C; bool is not int here
            bad = next(i for i, v in enumerate(x) if not _is_number(v))
            raise ApiError(400, f"Field 'x' should hold numbers (raw mixture samples); x[{bad}] is {x[bad]!r}.")
        values = np.asarray(x, dtype=np.float64)  # the JSON numbers as they came
    else:
        F = model.input_size
        ok = all(isinstance(r, list) and len(r) == F and all(map(_is_number, r)) for r in x)
        if not ok:
            raise ApiError(400, f"Field 'x' should be a list of feature vectors of {F} numbers each.")
        values = np.asarray(x, dtype=np.float64).reshape(len(x), F)
    usable = np.abs(values) <= _FLOAT32_MAX  # False for NaN, infinities, and what float32 cannot hold
    if not usable.all():
        bad = np.flatnonzero(~usable.reshape(len(x), -1).all(axis=1))[:5].tolist()
        raise ApiError(400, f"Field 'x' has non-finite samples (NaN, infinite, or beyond float32) at index {bad}.")
    samples = values.astype(np.float32)  # one rounding, as extract's float32 conversion of a file's values
    return seq, samples


def create_app(service: StreamService, *, token: str | None = None) -> Starlette:
    """The Starlette application.

    Args:
        service: the streams.
        token: with a token, every route but ``/healthz`` needs ``Authorization: Bearer <token>``.

    Returns:
        The ASGI application.
    """
    expected = None if token is None else f"Bearer {token}".encode()
    max_body = service.limits.max_frame_samples * 64 + 1024  # generous: 64 bytes per sample

    def authorized(headers) -> bool:
        if expected is None:
            return True
        return hmac.compare_digest(headers.get("authorization", "").encode(), expected)

    def guard(handler):
        async def wrapped(request: Request):
            if not authorized(request.headers):
                return _error(
                    ApiError(
                        401,
                        "Missing or wrong 'Authorization: Bearer <token>' header.",
                        headers={"WWW-Authenticate": "Bearer"},
                    ),
                    service,
                )
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc, service)

        return wrapped

    async def healthz(request: Request):
        return JSONResponse({"status": "ok", "streams": len(service.streams) + len(service.evicted)})

    async def metrics(request: Request):
        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def model_info(request: Request):
        return JSONResponse(service.model.describe())

    async def create_stream(request: Request):
        body = await _read_body(request, 4096)
        try:
            obj = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The body is not valid JSON: {exc}.") from None
        if not isinstance(obj, dict) or set(obj) - {"frequency"}:
            raise ApiError(400, 'The body should be {"frequency": f} (a signal filter) or {} (a feature model).')
        freq = obj.get("frequency")
        if freq is not None and (not _is_number(freq) or not math.isfinite(freq)):
            raise ApiError(400, f"Field 'frequency' should be a number (Hz), got {freq!r}.")
        stream = service.create(freq)
        return JSONResponse({"stream": stream.id}, status_code=201)

    async def list_streams(request: Request):
        rows = [
            {"stream": s.id, "frequency": s.frequency, "next_seq": s.accepted, "evicted": False}
            for s in service.streams.values()
        ]
        rows += [service.info(sid) for sid in sorted(service.evicted)]
        return JSONResponse({"streams": rows, "recovered": service.recovery})

    async def stream_info(request: Request):
        return JSONResponse(service.info(request.path_params["id"]))

    async def delete_stream(request: Request):
        service.delete(request.path_params["id"])
        return Response(status_code=204)

    async def post_frame(scope, receive, send, sid: str) -> None:
        """POST /v1/streams/{id}/frames on ASGI messages directly (no middleware, no Request per frame)."""
        extra = []
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not authorized(headers):
                raise ApiError(
                    401,
                    "Missing or wrong 'Authorization: Bearer <token>' header.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            service.require(sid)  # 404 before reading the body
            body = await _receive_body(receive, headers.get("content-length"), max_body)
            if body is None:
                return  # the client left
            seq, samples = parse_frame(body, service)
            # shielded: a client that leaves does not cancel its frame, which is stepped and kept (for a retry)
            status, body = 200, await asyncio.shield(service.submit(sid, seq, samples))
        except ApiError as exc:
            service.metrics.rejected.labels(str(exc.status)).inc()
            status, body = exc.status, json.dumps({"error": exc.message, **exc.extra}, separators=(",", ":")).encode()
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", guard(metrics), methods=["GET"]),
        Route("/v1/model", guard(model_info), methods=["GET"]),
        Route("/v1/streams", guard(create_stream), methods=["POST"]),
        Route("/v1/streams", guard(list_streams), methods=["GET"]),
        Route("/v1/streams/{id}", guard(stream_info), methods=["GET"]),
        Route("/v1/streams/{id}", guard(delete_stream), methods=["DELETE"]),
    ]
    http = Starlette(routes=routes)
    frames_ws = websocket_handler(service, authorized, parse_frame)

    async def app(scope, receive, send):
        """The frame paths straight on ASGI (no middleware per frame), the rest through Starlette."""
        if scope["type"] == "websocket":
            match = _WS_PATH.match(scope["path"])
            if match:
                return await frames_ws(scope, receive, send, match.group(1))
        elif scope["type"] == "http" and scope["method"] == "POST":
            match = _FRAMES_PATH.match(scope["path"])
            if match:
                return await post_frame(scope, receive, send, match.group(1))
        await http(scope, receive, send)

    return app


async def _receive_body(receive, length: str | None, limit: int) -> bytes | None:
    """An ASGI request's body (None if the client left), refused with 413 past ``limit`` bytes."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"The body has {length} bytes; the limit is {limit} (from --max-frame-samples).")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The body is over {limit} bytes (from --max-frame-samples).")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (by Content-Length, or while reading a chunked one)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"The body has {length} bytes; the limit is {limit} (from --max-frame-samples).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The body is over {limit} bytes (from --max-frame-samples).")
        chunks.append(chunk)
    return b"".join(chunks)
