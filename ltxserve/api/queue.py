"""fal's queue API: submit, status, status stream, result, cancel.

Submit routes are registered per endpoint with the endpoint's own input model, so FastAPI validates the body (422 in
fal's shape) and the OpenAPI document carries each schema. Status/result/cancel are keyed by owner/app + request id,
as the official clients build them (the endpoint's sub-path is never part of those URLs).
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any, AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from ltxserve import address_policy
from ltxserve.address_policy import AddressRefused
from ltxserve.api.urls import Urls
from ltxserve.config import Settings
from ltxserve.engine.contract import EndpointSpec
from ltxserve.jobs.changes import change_feed
from ltxserve.jobs.store import Job, JobStore
from ltxserve.protocol import (
    LIFECYCLE_HEADER,
    PRIORITY_HEADER,
    REQUEST_TIMEOUT_HEADER,
    RETRYABLE_HEADER,
    CancelResponse,
    CompletedStatus,
    InProgressStatus,
    Priority,
    QueuedStatus,
    QueueState,
    SubmitResponse,
    model_error,
    retryable,
)

_REQUEST_ID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def _echo(text: str) -> str:
    """What of a client's path an error repeats: a short prefix."""
    return text if len(text) <= 64 else text[:64] + "..."


def parse_logs_flag(value: str | None) -> bool:
    """JS sends logs=1|0, Python (httpx) logs=true|false."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def parse_priority(value: str | None) -> Priority:
    if value is None or value == "":
        return Priority.NORMAL
    try:
        return Priority(value.strip().lower())
    except ValueError:
        raise HTTPException(422, detail=[model_error(("header", PRIORITY_HEADER), "must be 'normal' or 'low'",
                                                     "one_of", {"expected": "'normal', 'low'"})])


def parse_start_timeout(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise HTTPException(422, detail=[model_error(("header", REQUEST_TIMEOUT_HEADER),
                                                     "must be a positive number of seconds", "value_error")])
    return seconds


def parse_lifecycle(value: str | None, default_seconds: int) -> int | None:
    """X-Fal-Object-Lifecycle-Preference may only shorten retention."""
    if not value:
        return None
    seconds = lifecycle_seconds(value)
    if seconds is None:
        raise HTTPException(422, detail=[model_error(("header", LIFECYCLE_HEADER),
                                                     "expected JSON {\"expiration_duration_seconds\": N}, N a positive"
                                                     " whole number of seconds", "value_error")])
    return max(1, min(seconds, default_seconds))


def lifecycle_seconds(value: str) -> int | None:
    """N of '{"expiration_duration_seconds": N}' (a positive integer), else None: never an exception (1e999, NaN)."""
    try:
        doc = json.loads(value)
        seconds = doc["expiration_duration_seconds"] if isinstance(doc, dict) else None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    if seconds != int(seconds) or seconds <= 0:
        return None
    return int(min(seconds, 2**31))


class QueueService:
    """What the queue and run routes share: the store, the endpoint specs, and the status documents."""

    def __init__(self, settings: Settings, store: JobStore, specs: list[EndpointSpec]):
        self.settings = settings
        self.store = store
        self.specs = specs
        self.apps = {(s.owner, s.app) for s in specs}
        self.urls = Urls(settings)

    def new_job(self, spec: EndpointSpec, inp: BaseModel, request: Request, *, sync: bool) -> Job:
        h = request.headers
        timeout = parse_start_timeout(h.get(REQUEST_TIMEOUT_HEADER))
        webhook = (request.query_params.get("fal_webhook") or None) if not sync else None
        if webhook is not None:
            # The outbound address policy, now (422) and again at each delivery (DNS may change in between).
            try:
                address_policy.check_url(webhook, allow_private=self.settings.fetch_allow_private_networks)
            except AddressRefused as exc:
                raise HTTPException(422, detail=[model_error(("query", "fal_webhook"), f"fal_webhook: {exc}",
                                                             "value_error")])
        now = time.time()
        return Job(
            request_id=str(uuid.uuid4()), endpoint_id=spec.endpoint_id, owner=spec.owner, app=spec.app,
            input=inp.model_dump(mode="json", exclude_unset=True), priority=parse_priority(h.get(PRIORITY_HEADER)),
            created_at=now, start_deadline=(now + timeout) if timeout else None, webhook_url=webhook,
            retention_seconds=parse_lifecycle(h.get(LIFECYCLE_HEADER), self.settings.result_retention_seconds),
            sync=sync,
        )

    def find(self, owner: str, app: str, request_id: str, *, view: bool = False) -> Job:
        """The job, or fal's 404. `view` reads only what a status answer needs (the polling hot path)."""
        if (owner, app) not in self.apps:
            raise HTTPException(404, detail=f"Application '{_echo(owner)}/{_echo(app)}' not found")
        if not _REQUEST_ID.match(request_id):
            raise HTTPException(404, detail=f"Request '{_echo(request_id)}' not found")
        job = self.store.status_view(request_id) if view else self.store.get(request_id)
        if job is None or job.owner != owner or job.app != app:
            raise HTTPException(404, detail=f"Request '{_echo(request_id)}' not found")
        return job

    def status_document(self, job: Job, with_logs: bool) -> tuple[int, dict[str, Any]]:
        """The status body (QueuedStatus / InProgressStatus / CompletedStatus, built as plain dicts: hot path)."""
        request_url = self.urls.request(job.owner, job.app, job.request_id)
        doc: dict[str, Any] = {"status": job.state.value, "request_id": job.request_id}
        logs = [e.model_dump(mode="json") for e in self.store.logs(job.request_id)] if with_logs else None
        code = 202
        if job.state == QueueState.IN_QUEUE:
            position = (job.progress or {}).get("queue_position")
            doc["queue_position"] = position if position is not None else self.store.queue_position(job.request_id)
        elif job.state == QueueState.COMPLETED:
            code = 200
            doc["metrics"] = {"inference_time": job.inference_time}
            doc["error"] = job.error
            doc["error_type"] = job.error_type
        doc["logs"] = logs
        doc["response_url"] = request_url
        doc["status_url"] = request_url + "/status"
        doc["cancel_url"] = request_url + "/cancel"
        return code, doc

    @staticmethod
    def result_response(job: Job) -> JSONResponse:
        if job.error is not None:
            body = job.error_body or {"detail": job.error, "error_type": job.error_type}
            headers = {"x-fal-error-type": job.error_type or "internal_error"}
            if isinstance(body.get("detail"), list):  # a model error: retryable when every error is transient
                headers[RETRYABLE_HEADER] = retryable(body["detail"])
            else:  # a request error: the runner's failures may pass; timeouts, cancels and bad input do not
                headers[RETRYABLE_HEADER] = "true" if (job.error_type or "").startswith(
                    ("runner_", "internal_")) else "false"
            return JSONResponse(body, status_code=job.status_code or 500, headers=headers)
        return JSONResponse(job.result)


def build_queue_router(service: QueueService) -> APIRouter:
    router = APIRouter(prefix="/queue")  # authenticated by AuthMiddleware, before the body is read

    @router.get("/{owner}/{app}/requests/{request_id}/status", tags=["queue"],
                response_model=QueuedStatus | InProgressStatus | CompletedStatus,
                responses={202: {"description": "IN_QUEUE or IN_PROGRESS"}})
    @router.get("/{owner}/{app}/requests/{request_id}/status/", include_in_schema=False)
    def status(owner: str, app: str, request_id: str, request: Request, logs: str | None = Query(None)):
        # The hot path (~10 requests/s per waiting Python client): one indexed query, a dict, no pydantic.
        job = service.find(owner, app, request_id, view=True)
        request.state.fal_request_id = job.request_id
        code, doc = service.status_document(job, parse_logs_flag(logs))
        return JSONResponse(doc, status_code=code)

    @router.get("/{owner}/{app}/requests/{request_id}/status/stream", tags=["queue"])
    async def status_stream(owner: str, app: str, request_id: str, request: Request, logs: str | None = Query(None)):
        job = await to_thread.run_sync(service.find, owner, app, request_id)
        request.state.fal_request_id = job.request_id
        with_logs = parse_logs_flag(logs)

        async def events() -> AsyncIterator[bytes]:
            # Re-read when the store says the job changed (Redis: pub/sub), or every 0.2 s where it cannot (SQLite).
            keepalive = service.settings.sse_keepalive_seconds
            async with change_feed(service.store, request_id) as changes:
                last = None
                last_sent = time.monotonic()
                while True:
                    current = await to_thread.run_sync(service.store.status_view, request_id)
                    if current is None:
                        return
                    _, doc = await to_thread.run_sync(service.status_document, current, with_logs)
                    encoded = json.dumps(doc)
                    if encoded != last:
                        yield f"data: {encoded}\n\n".encode()
                        last, last_sent = encoded, time.monotonic()
                        if current.state == QueueState.COMPLETED:
                            return
                    while True:  # until a change; meanwhile keepalives, and the client's leaving checked each second
                        if time.monotonic() - last_sent >= keepalive:
                            yield b": keepalive\n\n"
                            last_sent = time.monotonic()
                        if await request.is_disconnected():
                            return
                        if await changes.wait(max(0.01, min(1.0, keepalive - (time.monotonic() - last_sent)))):
                            break

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @router.get("/{owner}/{app}/requests/{request_id}", tags=["queue"])
    def result(owner: str, app: str, request_id: str, request: Request):
        job = service.find(owner, app, request_id)
        request.state.fal_request_id = job.request_id
        if job.state != QueueState.COMPLETED:
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        return service.result_response(job)

    @router.put("/{owner}/{app}/requests/{request_id}/cancel", tags=["queue"], response_model=CancelResponse,
                status_code=202)
    def cancel(owner: str, app: str, request_id: str, request: Request):
        job = service.find(owner, app, request_id)
        request.state.fal_request_id = job.request_id
        outcome = service.store.request_cancel(request_id)
        code = {"CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 400, "NOT_FOUND": 404}[outcome]
        return JSONResponse({"status": outcome}, status_code=code)

    for spec in service.specs:
        _add_submit_route(router, service, spec)
    add_unknown_app_routes(router)
    return router


def add_unknown_app_routes(router: APIRouter) -> None:
    """After the endpoints' own routes: any other POST is fal's 404 for an unknown application."""

    @router.post("/{owner}/{app}", include_in_schema=False)
    @router.post("/{owner}/{app}/{path:path}", include_in_schema=False)
    def unknown_app(owner: str, app: str, path: str = ""):
        full = "/".join(p for p in (owner, app, path) if p)
        raise HTTPException(404, detail=f"Application '{_echo(full)}' not found")


def _add_submit_route(router: APIRouter, service: QueueService, spec: EndpointSpec) -> None:
    input_model = spec.input_model

    def submit(request: Request, inp: input_model = Body(...)) -> SubmitResponse:  # type: ignore[valid-type]
        job = service.new_job(spec, inp, request, sync=False)
        service.store.submit(job)
        request.state.fal_request_id = job.request_id
        return SubmitResponse(
            request_id=job.request_id, gateway_request_id=job.request_id,
            response_url=service.urls.request(spec.owner, spec.app, job.request_id),
            status_url=service.urls.status(spec.owner, spec.app, job.request_id),
            cancel_url=service.urls.cancel(spec.owner, spec.app, job.request_id),
            queue_position=service.store.queue_position(job.request_id),
        )

    submit.__annotations__["inp"] = input_model  # a real class, not the postponed string
    router.add_api_route(
        f"/{spec.endpoint_id}", submit, methods=["POST"], response_model=SubmitResponse, tags=["queue"],
        summary=f"Submit to {spec.endpoint_id}", description=spec.summary or None,
        operation_id=f"submit_{spec.endpoint_id.replace('/', '_').replace('-', '_')}",
    )
