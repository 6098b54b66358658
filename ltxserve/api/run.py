"""fal's synchronous API: `POST /run/{endpoint id}` answers the output itself.

The request goes through the same queue and workers as a queued one (so the GPU runs one job at a time and a
synchronous caller cannot starve the queue); the handler waits for completion and cancels the job if the caller
disconnects.
"""

from __future__ import annotations

import asyncio

from anyio import to_thread
from fastapi import APIRouter, Body, Request

from ltxserve.api.queue import QueueService, add_unknown_app_routes
from ltxserve.engine.contract import EndpointSpec
from ltxserve.protocol import QueueState


def build_run_router(service: QueueService) -> APIRouter:
    router = APIRouter(prefix="/run")  # authenticated by AuthMiddleware, before the body is read
    for spec in service.specs:
        _add_run_route(router, service, spec)
    add_unknown_app_routes(router)
    return router


def _add_run_route(router: APIRouter, service: QueueService, spec: EndpointSpec) -> None:
    input_model = spec.input_model

    async def run(request: Request, inp: input_model = Body(...)):  # type: ignore[valid-type]
        job = service.new_job(spec, inp, request, sync=True)
        await to_thread.run_sync(service.store.submit, job)
        request.state.fal_request_id = job.request_id
        delay = 0.02
        while True:
            current = await to_thread.run_sync(service.store.get, job.request_id)
            if current is not None and current.state == QueueState.COMPLETED:
                return service.result_response(current)
            if await request.is_disconnected():
                await to_thread.run_sync(service.store.request_cancel, job.request_id)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    run.__annotations__["inp"] = input_model  # a real class, not the postponed string
    router.add_api_route(
        f"/{spec.endpoint_id}", run, methods=["POST"], response_model=spec.output_model, tags=["run"],
        summary=f"Run {spec.endpoint_id} and wait for the output",
        operation_id=f"run_{spec.endpoint_id.replace('/', '_').replace('-', '_')}",
    )
