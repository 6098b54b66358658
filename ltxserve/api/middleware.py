"""Pure-ASGI middleware: x-fal-request-id on every response, body-size limits, the @fal-ai/client proxy contract.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses (SSE, file ranges) pass through untouched and the
status hot path pays no extra task per request.
"""

from __future__ import annotations

import json
import logging
import uuid
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ltxserve.protocol import REQUEST_ID_HEADER, TARGET_URL_HEADER

log = logging.getLogger("ltxserve.api")


async def send_json(send: Send, status: int, body: dict, request_id: str | None = None,
                    extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body, ensure_ascii=True).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if request_id:
        headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
    headers.extend(extra_headers or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class RequestIdMiddleware:
    """Sets x-fal-request-id: the job's id where a handler put one in scope["state"], else a fresh one."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
                rid = state.get("fal_request_id") or uuid.uuid4().hex
                headers.append((REQUEST_ID_HEADER.encode(), str(rid).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class CatchAllMiddleware:
    """A bug in a handler answers 500 in fal's shape and the connection stays usable.

    Starlette's own last-resort handler answers and then re-raises, and the server resets the keep-alive connection
    without a `Connection: close`; here the error is logged and answered, and nothing is re-raised. Errors raised
    after the response started cannot be answered any more: the connection is closed then, as it must be.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await send_json(send, 500, {"detail": "Internal server error", "error_type": "internal_error"},
                            extra_headers=[(b"x-fal-error-type", b"internal_error"), (b"x-fal-retryable", b"true")])


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Rejects bodies over the limit before they are read whole: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes

    def _limit(self, path: str) -> int:
        if path.startswith("/storage/upload/") or path.startswith("/files/upload"):
            return self.max_upload
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)  # no body to limit: the polling path pays nothing here
        limit = self._limit(scope["path"])
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > limit:
                        return await send_json(send, 413, _too_large(limit), extra_headers=_TOO_LARGE_HEADERS)
                except ValueError:
                    return await send_json(send, 400, {"detail": "Invalid Content-Length", "error_type": "bad_request"},
                                           extra_headers=[(b"connection", b"close"),
                                                          (b"x-fal-error-type", b"bad_request")])
        received = 0
        started = False
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now: frameworks turn errors raised while reading the body into their own 400.
                    if not started and not answered:
                        answered = True
                        await send_json(send, 413, _too_large(limit), extra_headers=_TOO_LARGE_HEADERS)
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 413 already went out; drop whatever the app says after it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started and not answered:
                await send_json(send, 413, _too_large(limit), extra_headers=_TOO_LARGE_HEADERS)


# The body was not read: the connection cannot carry another request, so say so.
_TOO_LARGE_HEADERS = [(b"connection", b"close"), (b"x-fal-error-type", b"request_too_large")]


def _too_large(limit: int) -> dict:
    return {"detail": f"Request body too large (limit {limit} bytes)", "error_type": "request_too_large"}


# Which fal host maps to which local prefix, for the proxy contract (fal-protocol.md §3.2).
_PROXY_HOSTS = {
    "queue.fal.run": "/queue",
    "fal.run": "/run",
    "rest.fal.ai": "",
    "rest.alpha.fal.ai": "",
    "v3.fal.media": "",
}


class FalProxyMiddleware:
    """`ANY /api/fal/proxy` with `x-fal-target-url: https://queue.fal.run/...`: served by this app's own routes.

    The @fal-ai/client `proxyUrl` option sends every request there with the original URL in the header; we rewrite
    the path and query in place and dispatch inward, so streams and uploads work exactly as on the direct routes.
    """

    def __init__(self, app: ASGIApp, path: str = "/api/fal/proxy"):
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS":  # CORS preflight is answered by the CORS middleware outside us
            return await self.app(scope, receive, send)
        target = None
        for k, v in scope.get("headers", []):
            if k == TARGET_URL_HEADER.encode():
                target = v.decode("latin-1")
        if not target:
            return await send_json(send, 400, {"detail": f"Missing the {TARGET_URL_HEADER} header",
                                               "error_type": "bad_request"})
        try:
            parts = urlsplit(target)
            prefix = _PROXY_HOSTS.get((parts.hostname or "").lower())
        except ValueError:
            parts, prefix = None, None
        if parts is None or parts.scheme not in ("http", "https") or prefix is None:
            return await send_json(send, 400, {"detail": f"Not a fal URL: {target[:64]}", "error_type": "bad_request"})
        path = prefix + (parts.path or "/")
        inner = dict(scope)
        inner["path"] = path
        inner["raw_path"] = path.encode()
        inner["query_string"] = parts.query.encode()
        await self.app(inner, receive, send)
