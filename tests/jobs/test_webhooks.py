"""Webhook signing as fal does it, and delivery from the store with retries, give-up and restart."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ltxserve.config import Settings
from ltxserve.jobs import webhooks
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job


def test_key_created_once_with_0600(tmp_path):
    key = webhooks.load_or_create_key(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / webhooks.KEY_FILE).st_mode)
    assert mode == 0o600
    again = webhooks.load_or_create_key(tmp_path)
    assert webhooks.jwks(key) == webhooks.jwks(again)


def test_signature_verifies_with_jwks_public_key(tmp_path):
    key = webhooks.load_or_create_key(tmp_path)
    doc = webhooks.jwks(key)
    [jwk] = doc["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert "=" not in jwk["x"]
    body = b'{"request_id":"r1","status":"OK"}'
    headers = webhooks.sign_headers(key, "r1", "user-7", body)
    # Verify by hand, as a fal receiver does, with nothing from ltxserve but the JWKS document.
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    message = "\n".join(["r1", "user-7", headers["X-Fal-Webhook-Timestamp"], hashlib.sha256(body).hexdigest()])
    public.verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message.encode())  # raises if wrong
    assert webhooks.verify(doc, headers, body)
    assert not webhooks.verify(doc, headers, body + b" ")
    assert not webhooks.verify(doc, {**headers, "X-Fal-Webhook-Request-Id": "r2"}, body)
    stale = webhooks.sign_headers(key, "r1", "user-7", body, now=time.time() - 3600)
    assert not webhooks.verify(doc, stale, body)


class _Receiver:
    """A local HTTP server that fails the first `failures` requests, then accepts."""

    def __init__(self, failures: int):
        self.failures = failures
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                code = 500 if len(receiver.received) <= receiver.failures else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, webhook_initial_backoff_seconds=0.05, webhook_max_backoff_seconds=0.1,
                    webhook_max_attempts=3, webhook_timeout_seconds=5, webhook_user_id="me",
                    fetch_allow_private_networks=True)  # the receivers listen on loopback


def _completed_job(store: SqliteJobStore, url: str) -> str:
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id="t/a", owner="t", app="a", input={}, webhook_url=url))
    store.complete(rid, Outcome.ok({"answer": 42}))
    return rid


def _drive(deliverer, store, rid, attempts: int) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        deliverer.run_once()
        w = store.webhook(rid)
        if w.delivered_at or w.gave_up or w.attempts >= attempts:
            return
        time.sleep(0.03)


def test_delivered_after_retries_and_signed(settings, tmp_path):
    receiver = _Receiver(failures=2)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    rid = _completed_job(store, receiver.url)
    deliverer = webhooks.WebhookDeliverer(store, settings)
    try:
        _drive(deliverer, store, rid, attempts=3)
    finally:
        deliverer.stop()
        receiver.close()
    w = store.webhook(rid)
    assert w.delivered_at is not None and w.attempts == 3 and len(receiver.received) == 3
    headers, body = receiver.received[-1]
    assert json.loads(body)["payload"] == {"answer": 42}
    assert headers["X-Fal-Webhook-User-Id"] == "me"
    assert webhooks.verify(webhooks.jwks(deliverer.key), headers, body)


def test_gives_up_after_max_attempts(settings, tmp_path):
    receiver = _Receiver(failures=100)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    rid = _completed_job(store, receiver.url)
    deliverer = webhooks.WebhookDeliverer(store, settings)
    try:
        _drive(deliverer, store, rid, attempts=99)
        deliverer.run_once(now=time.time() + 100)  # nothing left to try
    finally:
        deliverer.stop()
        receiver.close()
    w = store.webhook(rid)
    assert w.gave_up and w.delivered_at is None and w.attempts == settings.webhook_max_attempts
    assert len(receiver.received) == settings.webhook_max_attempts


def test_pending_delivery_survives_restart(settings, tmp_path):
    receiver = _Receiver(failures=1)
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    rid = _completed_job(store, receiver.url)
    first = webhooks.WebhookDeliverer(store, settings)
    first.run_once()
    first.stop()
    store.close()
    assert len(receiver.received) == 1
    # A new process: new store instance, new deliverer, same data directory.
    store2 = SqliteJobStore(path)
    second = webhooks.WebhookDeliverer(store2, settings)
    try:
        second.start(interval=0.05)
        deadline = time.time() + 10
        while store2.webhook(rid).delivered_at is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        second.stop()
        receiver.close()
    assert store2.webhook(rid).delivered_at is not None and len(receiver.received) == 2
