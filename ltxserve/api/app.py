"""The FastAPI application: fal's queue, run, storage and proxy routes over the job store. Never imports torch."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ltxserve import __version__
from ltxserve.api.auth import make_auth_dependency
from ltxserve.api.health import build_health_router
from ltxserve.api.middleware import BodyLimitMiddleware, FalProxyMiddleware, RequestIdMiddleware
from ltxserve.api.queue import QueueService, build_queue_router
from ltxserve.api.run import build_run_router
from ltxserve.api.storage import build_storage_router
from ltxserve.config import Settings
from ltxserve.engine.contract import EndpointSpec, load_specs
from ltxserve.jobs.store import JobStore
from ltxserve.jobs.webhooks import jwks, load_or_create_key
from ltxserve.web import add_playground

log = logging.getLogger("ltxserve.api")

_CORS_HEADERS = [
    "authorization", "content-type", "accept", "x-fal-queue-priority", "x-fal-runner-hint", "x-fal-request-timeout",
    "x-fal-object-lifecycle-preference", "x-fal-object-lifecycle", "x-fal-target-url", "x-fal-file-name",
    "x-fal-store-io", "x-fal-no-retry", "range",
]


def _validation_detail(exc: RequestValidationError) -> list[dict]:
    detail = []
    for e in exc.errors():
        item = {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "value_error")}
        if "ctx" in e:
            item["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
        if "input" in e and e.get("type") != "json_invalid":
            try:
                import json

                json.dumps(e["input"])
                item["input"] = e["input"]
            except (TypeError, ValueError):
                pass
        detail.append(item)
    return detail


def create_app(settings: Settings, store: JobStore, specs: list[EndpointSpec] | None = None) -> FastAPI:
    specs = specs if specs is not None else load_specs(settings.endpoints)
    app = FastAPI(
        title="ltxserve",
        version=__version__,
        description="LTX-Video 0.9.7 13B image-to-video behind fal.ai's queue protocol.",
    )
    auth = make_auth_dependency(settings)
    service = QueueService(settings, store, specs)
    key = load_or_create_key(settings.data_dir)

    app.include_router(build_health_router(settings, store, jwks(key)))
    app.include_router(build_queue_router(service, auth))
    app.include_router(build_run_router(service, auth))
    app.include_router(build_storage_router(settings, store, auth))
    add_playground(app)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.setdefault("www-authenticate", "Key")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"detail": "Internal server error", "error_type": "internal_error"}, status_code=500)

    # Outermost first on the way in: CORS, then request id, body limit, proxy rewrite.
    app.add_middleware(FalProxyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "PUT", "OPTIONS"],
                       allow_headers=_CORS_HEADERS, expose_headers=["x-fal-request-id"])
    app.state.queue = service
    return app
