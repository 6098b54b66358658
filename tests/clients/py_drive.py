"""Drives the unmodified `fal_client` (Python) against a live ltxserve over TLS.

Run as a subprocess, because fal_client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST at import:
    python -m tests.clients.py_drive <scenario>    with FAL_ENDPOINT, FAL_INPUT (JSON), FAL_* and SSL_CERT_FILE set.
Prints one JSON document.
"""

from __future__ import annotations

import json
import os
import sys
import time

import fal_client

ENDPOINT = os.environ["FAL_ENDPOINT"]
INPUT = json.loads(os.environ.get("FAL_INPUT", "{}"))


def _update(u) -> dict:
    d = {"type": type(u).__name__}
    if isinstance(u, fal_client.Queued):
        d["position"] = u.position
    if isinstance(u, (fal_client.InProgress, fal_client.Completed)):
        d["logs"] = u.logs
    if isinstance(u, fal_client.Completed):
        d["metrics"] = u.metrics
    return d


def subscribe() -> dict:
    updates, enqueued = [], []
    result = fal_client.subscribe(ENDPOINT, arguments=INPUT, with_logs=True, on_enqueue=enqueued.append,
                                  on_queue_update=lambda u: updates.append(_update(u)))
    return {"enqueued": enqueued, "result": result, "updates": updates}


def submit_status_get() -> dict:
    handle = fal_client.submit(ENDPOINT, arguments=INPUT)
    first = _update(handle.status(with_logs=True))
    events = [_update(e) for e in handle.iter_events(with_logs=True)]
    result = handle.get()
    by_id = _update(fal_client.status(ENDPOINT, handle.request_id, with_logs=True))
    again = fal_client.result(ENDPOINT, handle.request_id)
    return {"request_id": handle.request_id, "first": first, "events": events, "result": result,
            "status_by_id": by_id, "result_by_id_equal": again == result}


def cancel() -> dict:
    running = fal_client.submit(ENDPOINT, arguments=INPUT)
    for _ in range(400):
        if isinstance(running.status(), fal_client.InProgress):
            break
        time.sleep(0.05)
    queued = fal_client.submit(ENDPOINT, arguments=INPUT)
    queued.cancel()
    running.cancel()
    out = {}
    for name, handle in (("queued", queued), ("running", running)):
        try:
            handle.get()
            out[name] = {"raised": False}
        except fal_client.client.FalClientHTTPError as exc:
            out[name] = {"raised": True, "status": exc.status_code, "message": exc.message}
    return out


def run() -> dict:
    return {"result": fal_client.run(ENDPOINT, arguments=INPUT)}


def failure() -> dict:
    try:
        fal_client.subscribe(ENDPOINT, arguments=INPUT)
        return {"raised": False}
    except fal_client.client.FalClientHTTPError as exc:
        return {"raised": True, "status": exc.status_code, "message": str(exc.message)}


def failure_detail() -> dict:
    """A refused request as the client sees it: the status, the fal error body's detail and X-Fal-Retryable."""
    try:
        fal_client.subscribe(ENDPOINT, arguments=INPUT)
        return {"raised": False}
    except fal_client.client.FalClientHTTPError as exc:
        return {"raised": True, "status": exc.status_code, "detail": exc.response.json().get("detail"),
                "retryable": exc.response_headers.get("x-fal-retryable")}


def webhook() -> dict:
    handle = fal_client.submit(ENDPOINT, arguments=INPUT, webhook_url=os.environ["WEBHOOK_URL"])
    return {"request_id": handle.request_id, "result": handle.get()}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
