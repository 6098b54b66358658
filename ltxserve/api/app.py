"""The FastAPI application: fal's queue, run, storage and proxy routes over the job store. Never imports torch."""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ltxserve import __version__
from ltxserve.api.auth import AuthMiddleware
from ltxserve.api.health import build_health_router
from ltxserve.api.middleware import BodyLimitMiddleware, CatchAllMiddleware, FalProxyMiddleware, RequestIdMiddleware
from ltxserve.api.queue import QueueService, build_queue_router
from ltxserve.api.run import build_run_router
from ltxserve.api.storage import build_storage_router
from ltxserve.config import Settings
from ltxserve.engine.contract import EndpointSpec, load_specs
from ltxserve.jobs.store import JobStore
from ltxserve.storage import FileStorage, storage_from_settings
from ltxserve.jobs.webhooks import jwks, load_or_create_key
from ltxserve.protocol import ERROR_INPUT_PREFIX, RETRYABLE_HEADER, model_error, retryable
from ltxserve.web import add_playground

log = logging.getLogger("ltxserve.api")

_CORS_HEADERS = [
    "authorization", "content-type", "accept", "x-fal-queue-priority", "x-fal-runner-hint", "x-fal-request-timeout",
    "x-fal-object-lifecycle-preference", "x-fal-object-lifecycle", "x-fal-target-url", "x-fal-file-name",
    "x-fal-store-io", "x-fal-no-retry", "range",
]


# pydantic's names for constraint failures, as fal names them (docs: "Model Errors"); others keep pydantic's name.
_FAL_TYPES = {"too_short": "sequence_too_short", "too_long": "sequence_too_long", "literal_error": "one_of",
              "enum": "one_of"}


def _short(value: object) -> object:
    """A piece of client input fit to repeat in an error body: short strings, finite numbers; else nothing."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= ERROR_INPUT_PREFIX else value[:ERROR_INPUT_PREFIX] + "..."
    return None


def _validation_detail(exc: RequestValidationError) -> list[dict]:
    """fal's model-error items (loc, msg, type, url, ctx): no whole inputs echoed, only JSON-safe short values."""
    detail = []
    for e in exc.errors():
        loc = [_short(p) if isinstance(p, str) else p for p in e.get("loc", ())]
        kind = _FAL_TYPES.get(e.get("type", ""), e.get("type", "value_error"))
        ctx = {k: _short(v) if isinstance(v, (int, float, str, bool)) else _short(str(v))
               for k, v in (e.get("ctx") or {}).items()}
        msg = str(e.get("msg", ""))  # the server's words, but a custom message may quote a little input
        item = model_error(loc, msg if len(msg) <= 300 else msg[:300] + "...", kind, ctx or None)
        if "input" in e and e.get("type") != "json_invalid" and not isinstance(e["input"], (dict, list)):
            short = _short(e["input"])
            if short is not None:
                item["input"] = short
        detail.append(item)
    return detail


class SafeJSONResponse(JSONResponse):
    """ASCII-escaped JSON: a lone surrogate or any odd character a client sent can never break the encoding."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def create_app(settings: Settings, store: JobStore, specs: list[EndpointSpec] | None = None,
               storage: FileStorage | None = None) -> FastAPI:
    specs = specs if specs is not None else load_specs(settings.endpoints)
    app = FastAPI(
        title="ltxserve",
        version=__version__,
        description="LTX-Video 0.9.7 13B image-to-video behind fal.ai's queue protocol.",
    )
    service = QueueService(settings, store, specs)
    key = load_or_create_key(settings.data_dir)

    app.include_router(build_health_router(settings, store, jwks(key)))
    app.include_router(build_queue_router(service))
    app.include_router(build_run_router(service))
    app.include_router(build_storage_router(settings, store, storage or storage_from_settings(settings)))
    add_playground(app)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        return SafeJSONResponse({"detail": _validation_detail(exc)}, status_code=422,
                                headers={RETRYABLE_HEADER: "false"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.setdefault("www-authenticate", "Key")
        detail = exc.detail
        if isinstance(detail, str):
            detail = detail if len(detail) <= 300 else detail[:300] + "..."
        if exc.status_code == 422 and isinstance(detail, list):
            headers.setdefault(RETRYABLE_HEADER, retryable(detail))
        body = {"detail": detail}
        if exc.status_code == 400 and isinstance(detail, str):  # e.g. a body too deeply nested to parse
            body["error_type"] = "bad_request"
            headers.setdefault("x-fal-error-type", "bad_request")
        return SafeJSONResponse(body, status_code=exc.status_code, headers=headers)

    # Outermost first on the way in: CORS, request id, body limit, proxy rewrite, authentication (on the rewritten
    # path, before any body is read), then a last-resort 500 that keeps the connection usable.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(AuthMiddleware, settings=settings)
    app.add_middleware(FalProxyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "PUT", "OPTIONS"],
                       allow_headers=_CORS_HEADERS, expose_headers=["x-fal-request-id"])
    app.state.queue = service
    return app
