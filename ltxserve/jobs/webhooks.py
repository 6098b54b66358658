"""Webhook signing (as fal signs them) and delivery from the store (so a restart resumes pending deliveries).

fal's scheme: Ed25519 over f"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}", hex signature, with the
X-Fal-Webhook-* headers; receivers fetch the public key from a JWKS URL. ltxserve keeps one server key under the
data directory and publishes it at /.well-known/jwks.json, so a receiver written for fal verifies ours by changing
the JWKS URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ltxserve import address_policy
from ltxserve.address_policy import AddressRefused
from ltxserve.config import Settings
from ltxserve.jobs.store import Job, JobStore, WebhookDelivery

log = logging.getLogger("ltxserve.webhooks")

KEY_FILE = "webhook_ed25519.pem"


def webhook_body(job: Job) -> bytes:
    """fal's webhook payload for a completed job (a store enqueues it in the transaction that completes the job)."""
    payload: dict[str, Any] = {
        "request_id": job.request_id,
        "gateway_request_id": job.request_id,
        "status": "ERROR" if job.error is not None else "OK",
    }
    if job.error is not None:
        payload["error"] = job.error if job.status_code == 200 else f"Invalid status code: {job.status_code}"
        payload["payload"] = job.error_body
    else:
        payload["payload"] = job.result
    try:
        return json.dumps(payload, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:  # pragma: no cover - results are JSON already
        payload["payload"] = None
        payload["payload_error"] = str(exc)
        return json.dumps(payload, separators=(",", ":")).encode()


def load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Create with 0600 atomically; a concurrent creator loses the race and reads the winner's key.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create_key(data_dir)
    os.unlink(tmp)
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def jwks(key: Ed25519PrivateKey) -> dict:
    public = key.public_key()
    return {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": _b64url(_raw_public(public)), "kid": key_id(public),
             "use": "sig", "alg": "EdDSA"}
        ]
    }


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def sign_headers(key: Ed25519PrivateKey, request_id: str, user_id: str, body: bytes, now: float | None = None) -> dict:
    timestamp = str(int(time.time() if now is None else now))
    signature = key.sign(signed_message(request_id, user_id, timestamp, body)).hex()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": timestamp,
        "X-Fal-Webhook-Signature": signature,
    }


def verify(jwks_doc: dict, headers: dict, body: bytes, *, max_skew_seconds: float = 300.0) -> bool:
    """What a receiver does: check the timestamp window and the signature against any key in the JWKS."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = h["x-fal-webhook-timestamp"]
        if abs(time.time() - int(timestamp)) > max_skew_seconds:
            return False
        message = signed_message(h["x-fal-webhook-request-id"], h["x-fal-webhook-user-id"], timestamp, body)
        signature = bytes.fromhex(h["x-fal-webhook-signature"])
    except (KeyError, ValueError):
        return False
    for jwk in jwks_doc.get("keys", []):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


class WebhookDeliverer:
    """Delivers due webhooks with exponential backoff; every attempt is recorded in the store.

    Deliveries run concurrently on a small thread pool, at most `per_receiver` at a time to one receiver (scheme,
    host, port), so one slow or dead receiver holds only its own slots and never delays everyone else's webhooks.
    Each attempt goes through the outbound address policy again (the URL was checked at submit, but DNS may have
    changed since): a refused address is given up at once.
    """

    def __init__(self, store: JobStore, settings: Settings, key: Ed25519PrivateKey | None = None, *,
                 max_in_flight: int = 16, per_receiver: int = 2):
        self.store = store
        self.settings = settings
        self.key = key or load_or_create_key(settings.data_dir)
        self.per_receiver = per_receiver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._receivers: Counter[str] = Counter()

    def backoff(self, attempts_so_far: int) -> float:
        delay = self.settings.webhook_initial_backoff_seconds * (2 ** attempts_so_far)
        return min(delay, self.settings.webhook_max_backoff_seconds)

    def run_once(self, now: float | None = None, *, wait: bool = True) -> int:
        """Start every due delivery whose receiver has a free slot; returns how many were started.

        `wait` (the default for direct calls) waits for those attempts to finish; the background loop does not."""
        started: list[Future] = []
        for d in self.store.due_webhooks(now, limit=1000):
            receiver = _receiver(d.url)
            with self._lock:
                if d.request_id in self._in_flight or self._receivers[receiver] >= self.per_receiver:
                    continue
                self._in_flight.add(d.request_id)
                self._receivers[receiver] += 1
            started.append(self._pool.submit(self._deliver, d, receiver))
        if wait:
            futures_wait(started)
        return len(started)

    def _deliver(self, d: WebhookDelivery, receiver: str) -> None:
        try:
            self._attempt(d)
        except Exception:  # keep delivering whatever one bad row does
            log.exception("webhook delivery for %s failed", d.request_id)
        finally:
            with self._lock:
                self._in_flight.discard(d.request_id)
                self._receivers[receiver] -= 1
                if self._receivers[receiver] <= 0:
                    del self._receivers[receiver]

    def _attempt(self, d: WebhookDelivery) -> None:
        attempts = d.attempts + 1
        try:
            target = address_policy.check_url(d.url, allow_private=self.settings.fetch_allow_private_networks)
        except AddressRefused as exc:
            log.warning("webhook for %s refused: %s", d.request_id, exc)
            self.store.record_webhook_attempt(d.request_id, ok=False, error=f"refused: {exc}", next_attempt_at=None)
            return
        headers = {"Content-Type": "application/json", "User-Agent": "ltxserve-webhook"}
        headers.update(sign_headers(self.key, d.request_id, self.settings.webhook_user_id, d.body))
        kwargs = target.httpx_kwargs()
        kwargs["headers"].update(headers)
        error: str | None = None
        try:
            response = self._client.post(target.url, content=d.body, **kwargs)
            ok = 200 <= response.status_code < 300
            if not ok:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if ok:
            self.store.record_webhook_attempt(d.request_id, ok=True, error=None, next_attempt_at=None)
        elif attempts >= self.settings.webhook_max_attempts:
            log.warning("webhook for %s to %s gave up after %d attempts: %s", d.request_id, d.url, attempts, error)
            self.store.record_webhook_attempt(d.request_id, ok=False, error=error, next_attempt_at=None)
        else:
            self.store.record_webhook_attempt(
                d.request_id, ok=False, error=error, next_attempt_at=time.time() + self.backoff(d.attempts)
            )

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(wait=False)
            except Exception:  # keep delivering whatever one bad row does
                log.exception("webhook delivery loop error")
            self._stop.wait(interval)

    def start(self, interval: float = 0.5) -> None:
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        # Attempts in flight finish or time out on their own; none is lost (the store still holds them as due).
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _receiver(url: str) -> str:
    """Who receives a delivery, for the per-receiver bound: scheme://host:port."""
    try:
        scheme, host, port = address_policy.parse_http_url(url)
    except AddressRefused:
        return url
    return f"{scheme}://{host.lower()}:{port}"
