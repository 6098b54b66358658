"""Nothing accepted is lost: worker deaths, server kill -9, and webhooks that must be retried."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.webhooks import verify
from tests.api.helpers import submit, wait_completed, wait_state


def _wait_log(client: httpx.Client, status_url: str, line: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = client.get(status_url, params={"logs": "1"}).json().get("logs") or []
        if any(entry["message"] == line for entry in logs):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no log line {line!r}")


def test_worker_kill9_mid_job_is_retried_and_api_keeps_answering(live_server):
    with live_server.client() as c:
        sub = submit(c, "test/steps", {"steps": 60, "seconds_per_step": 0.05, "label": "victim"})
        wait_state(c, sub["status_url"], "IN_PROGRESS")
        _wait_log(c, sub["status_url"], "victim step 3/60")  # well inside the job, not at its start
        (pid,) = live_server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        # The API never stops answering while the worker is down and restarting.
        for _ in range(10):
            assert c.get(sub["status_url"]).status_code in (200, 202)
            time.sleep(0.05)
        done = wait_completed(c, sub["status_url"], timeout=90)
        assert done["error"] is None, done
        messages = [l["message"] for l in done["logs"]]
        assert any("SIGKILL" in m and "retrying" in m for m in messages), messages
        assert c.get(sub["response_url"]).json()["steps_done"] == 60


def test_job_that_kills_its_worker_twice_fails_with_reason(live_server):
    with live_server.client() as c:
        sub = submit(c, "test/crash", {"times": 5, "token": uuid.uuid4().hex})
        done = wait_completed(c, sub["status_url"], timeout=120)
        assert done["error_type"] == "runner_disconnected"
        assert "SIGKILL" in done["error"] and "2 attempts" in done["error"]
        r = c.get(sub["response_url"])
        assert r.status_code == 503
        # and the restarted worker serves the next job
        ok = submit(c, "test/crash", {"times": 1, "token": uuid.uuid4().hex})
        assert wait_completed(c, ok["status_url"], timeout=120)["error"] is None
        assert c.get(ok["response_url"]).json()["attempts"] == 2


def test_server_kill9_with_jobs_queued_and_running_all_complete(live_server):
    with live_server.client() as c:
        running = submit(c, "test/steps", {"steps": 40, "seconds_per_step": 0.05, "label": "running"})
        wait_state(c, running["status_url"], "IN_PROGRESS")
        queued = [submit(c, "test/steps", {"steps": 2, "label": f"q{i}"}) for i in range(3)]
    live_server.kill9()
    live_server.start()
    with live_server.client() as c:
        for sub in [running, *queued]:
            done = wait_completed(c, sub["status_url"], timeout=120)
            assert done["error"] is None, done
            assert c.get(sub["response_url"]).status_code == 200


class _Receiver(BaseHTTPRequestHandler):
    fail_first = 2
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append((dict(self.headers), body))
        if len(type(self).received) <= type(self).fail_first:
            self.send_response(500)
        else:
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_retried_signed_and_verifiable(live_server_factory):
    _Receiver.received = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    server = live_server_factory(env={"LTXSERVE_WEBHOOK_INITIAL_BACKOFF_SECONDS": "0.2",
                                     "LTXSERVE_FETCH_ALLOW_PRIVATE_NETWORKS": "true"})  # a loopback receiver
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook?a=1"
    try:
        with server.client() as c:
            r = c.post("/queue/test/steps", params={"fal_webhook": hook}, json={"steps": 1})
            rid = r.json()["request_id"]
            deadline = time.time() + 30
            while len(_Receiver.received) < 3 and time.time() < deadline:
                time.sleep(0.1)
            assert len(_Receiver.received) == 3  # two failures, then delivered
            # ... and no more: the store holds it as delivered, and delivered rows are never due again.
            store = SqliteJobStore(server.data_dir / "jobs.sqlite3")
            try:
                deadline = time.time() + 10
                while store.webhook(rid).delivered_at is None and time.time() < deadline:
                    time.sleep(0.05)
                delivery = store.webhook(rid)
                assert delivery.delivered_at is not None and delivery.attempts == 3
                assert rid not in [d.request_id for d in store.due_webhooks(time.time() + 10**6)]
            finally:
                store.close()
            assert len(_Receiver.received) == 3
            headers, body = _Receiver.received[-1]
            payload = json.loads(body)
            assert payload["request_id"] == rid and payload["status"] == "OK"
            assert payload["payload"]["steps_done"] == 1
            jwks_doc = c.get("/.well-known/jwks.json").json()
            assert verify(jwks_doc, headers, body)
            assert not verify(jwks_doc, headers, body + b" ")  # any change breaks the signature
    finally:
        receiver.shutdown()
