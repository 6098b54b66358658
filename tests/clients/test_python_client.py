"""The unmodified `fal-client` (PyPI) against a live ltxserve, configured only by environment variables."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.clients.conftest_helpers import run_py
from tests.clients.endpoints import FAIL, STEPS, TARGET, TARGET_INPUT, check_target_output


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.fixtures_server import LiveServer, free_port
    from ltxserve.tls import init_tls

    root = tmp_path_factory.mktemp("pyclient")
    init_tls(root / "tls")
    s = LiveServer(data_dir=root / "data", port=free_port(), endpoints=TARGET.server_endpoints, tls_dir=root / "tls",
                   extra_args=TARGET.server_args,
                   env={"LTXSERVE_FETCH_ALLOW_PRIVATE_NETWORKS": "true"})  # its webhook receiver is on loopback
    s.start()
    yield s
    s.stop()


def test_subscribe_with_logs_and_queue_updates(server):
    out = run_py("subscribe", server, TARGET.endpoint_id, TARGET_INPUT)
    kinds = [u["type"] for u in out["updates"]]
    assert out["enqueued"] and kinds[-1] == "Completed"
    assert "InProgress" in kinds or "Queued" in kinds
    completed = out["updates"][-1]
    assert isinstance(completed["logs"], list) and completed["logs"], completed
    assert completed["metrics"]["inference_time"] > 0
    check_target_output(out["result"], server)


def test_submit_status_get_and_by_id_helpers(server):
    out = run_py("submit_status_get", server, TARGET.endpoint_id, TARGET_INPUT)
    assert out["first"]["type"] in ("Queued", "InProgress", "Completed")
    assert out["events"][-1]["type"] == "Completed"
    assert out["status_by_id"]["type"] == "Completed"  # fal_client.status(app, id): owner/app URL built by the client
    assert out["result_by_id_equal"] is True
    check_target_output(out["result"], server)


def test_cancel_queued_and_running(server):
    out = run_py("cancel", server, STEPS.endpoint_id, {"steps": 400, "seconds_per_step": 0.05})
    for name in ("queued", "running"):
        assert out[name]["raised"] is True and out[name]["status"] == 400, out
        assert "cancelled" in out[name]["message"].lower()


def test_sync_run(server):
    out = run_py("run", server, TARGET.endpoint_id, TARGET_INPUT)
    check_target_output(out["result"], server)


def test_failure_raises_with_detail(server):
    out = run_py("failure", server, FAIL.endpoint_id, {"kind": "endpoint"})
    assert out == {"raised": True, "status": 500, "message": "the generator gave up"}


class _Hook(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        type(self).got.append((dict(self.headers), self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def _verify_like_a_fal_receiver(jwks: dict, headers: dict, body: bytes) -> bool:
    """Written from fal's documented scheme, independently of ltxserve's own helper."""
    h = {k.lower(): v for k, v in headers.items()}
    ts = h["x-fal-webhook-timestamp"]
    if abs(time.time() - int(ts)) > 300:
        return False
    message = "\n".join([h["x-fal-webhook-request-id"], h["x-fal-webhook-user-id"], ts,
                         hashlib.sha256(body).hexdigest()]).encode()
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(h["x-fal-webhook-signature"]), message)
            return True
        except Exception:
            continue
    return False


def test_webhook_received_and_signature_verifies(server):
    _Hook.got = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        out = run_py("webhook", server, TARGET.endpoint_id, TARGET_INPUT,
                     extra_env={"WEBHOOK_URL": f"http://127.0.0.1:{hook.server_address[1]}/fal"})
        deadline = time.time() + 20
        while not _Hook.got and time.time() < deadline:
            time.sleep(0.1)
        headers, body = _Hook.got[0]
        payload = json.loads(body)
        assert payload["request_id"] == out["request_id"] and payload["status"] == "OK"
        assert payload["payload"] == out["result"]
        with httpx.Client(verify=server.verify()) as c:
            jwks = c.get(server.base_url + "/.well-known/jwks.json").json()
        assert _verify_like_a_fal_receiver(jwks, headers, body)
        tampered = body.replace(b'"OK"', b'"ERROR"')
        assert not _verify_like_a_fal_receiver(jwks, headers, tampered)
    finally:
        hook.shutdown()
