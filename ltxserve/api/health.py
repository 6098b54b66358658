"""Liveness, readiness, Prometheus metrics and the webhook signing key (JWKS)."""

from __future__ import annotations

import threading

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ltxserve.config import Settings
from ltxserve.jobs.store import JobStore

class _StoreCollector:
    """Computed at scrape time from the store, so the figures are the same whichever API process is scraped."""

    def __init__(self, store: JobStore):
        self.store = store
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            counts = self.store.counts()
            histogram = self.store.generation_histogram()
        depth = GaugeMetricFamily("ltxserve_queue_depth", "Jobs waiting in the queue")
        depth.add_metric([], counts.in_queue)
        yield depth
        jobs = GaugeMetricFamily("ltxserve_jobs", "Jobs in the store by state", labels=["state"])
        jobs.add_metric(["IN_QUEUE"], counts.in_queue)
        jobs.add_metric(["IN_PROGRESS"], counts.in_progress)
        jobs.add_metric(["COMPLETED_OK"], counts.completed_ok)
        jobs.add_metric(["COMPLETED_ERROR"], counts.completed_error)
        yield jobs
        buckets = [(str(float(bound)), n) for bound, n in histogram.buckets] + [("+Inf", histogram.count)]
        hist = HistogramMetricFamily("ltxserve_generation_seconds",
                                     "Seconds a worker spent on each job, observed when the job completed")
        hist.add_metric([], buckets, histogram.total_seconds)
        yield hist


def not_ready_reason(live: list[dict], failing: list[dict]) -> str:
    """Why no worker serves, in words an operator can act on (a start failure names the file or path)."""
    if failing:
        parts = []
        for w in sorted(failing, key=lambda w: w["info"].get("slot", 0)):
            info = w["info"]
            state = ("gave up after" if info.get("gave_up") else "failed") + \
                f" {info.get('failed_starts')} of {info.get('max_failed_starts')} starts"
            parts.append(f"worker {info.get('slot', '?')} cannot load its model ({state}): {info['startup_error']}")
        return "; ".join(parts)
    if live:
        return f"{len(live)} worker(s) starting: loading the model"
    return "no worker is running"


def build_health_router(settings: Settings, store: JobStore, jwks_doc: dict) -> APIRouter:
    router = APIRouter(tags=["health"])
    registry = CollectorRegistry()
    registry.register(_StoreCollector(store))
    workers_ready = Gauge("ltxserve_workers_ready", "Workers with their model loaded", registry=registry)
    max_age = max(3 * settings.worker_heartbeat_seconds, 10.0)

    @router.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz():
        rows = store.live_workers(max_age)
        failing = [w for w in rows if (w["info"] or {}).get("startup_error")]
        live = [w for w in rows if w not in failing]
        ready = [w["worker_id"] for w in live if w["ready"]]
        body = {"ready": bool(ready), "workers": len(live), "workers_ready": len(ready)}
        if not ready:
            body["reason"] = not_ready_reason(live, failing)
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    def metrics():
        workers_ready.set(sum(1 for w in store.live_workers(max_age) if w["ready"]))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/.well-known/jwks.json")
    def jwks():
        return jwks_doc

    return router
