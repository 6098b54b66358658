"""Hole 2: one outbound address policy for image, LoRA and webhook URLs.

No test here sends a packet to a non-loopback address: the resolver is stubbed, and a guard on httpx makes any
attempt to send to something other than 127.0.0.1 fail the test.
"""

from __future__ import annotations

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ltxserve import address_policy
from ltxserve.address_policy import AddressRefused, check_url
from ltxserve.config import Settings
from ltxserve.engine.net import FetchError, fetch_bytes
from ltxserve.jobs import webhooks
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job
from tests.security.conftest import png_bytes


@pytest.fixture
def resolver(monkeypatch):
    """Stub DNS: host -> list of answers (one per call; the last repeats). Records every lookup."""
    answers: dict[str, list[list[str]]] = {}
    calls: list[str] = []

    def resolve(host, port):
        calls.append(host)
        queue = answers.get(host)
        if not queue:
            raise AddressRefused(f"cannot resolve {host}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr(address_policy, "resolve_host", resolve)
    return answers, calls


@pytest.fixture
def loopback_only(monkeypatch):
    """Any HTTP request to something other than 127.0.0.1 fails the test (and is never sent)."""
    real_send = httpx.Client.send
    sent = []

    def guarded(self, request, **kw):
        host = request.url.host
        assert host == "127.0.0.1", f"a request to {host} would have left this machine"
        sent.append(request)
        return real_send(self, request, **kw)

    monkeypatch.setattr(httpx.Client, "send", guarded)
    return sent


REFUSED = ["127.0.0.1", "127.5.5.5", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1",
           "0.0.0.0", "::1", "fe80::1", "fc00::7", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::", "224.0.0.1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(resolver, address):
    answers, _ = resolver
    answers["victim.test"] = [[address]]
    with pytest.raises(AddressRefused, match="non-public"):
        check_url("http://victim.test/x", allow_private=False)


def test_one_bad_answer_among_good_ones_is_refused(resolver):
    answers, _ = resolver
    answers["mixed.test"] = [["93.184.216.34", "10.0.0.1"]]
    with pytest.raises(AddressRefused):
        check_url("https://mixed.test/x", allow_private=False)


def test_allow_private_admits_private_but_never_unspecified(resolver):
    answers, _ = resolver
    answers["lan.test"] = [["10.0.0.7"]]
    answers["zero.test"] = [["0.0.0.0"]]
    assert check_url("http://lan.test:8080/x", allow_private=True).address == "10.0.0.7"
    with pytest.raises(AddressRefused):
        check_url("http://zero.test/x", allow_private=True)


def test_target_names_the_checked_address_and_keeps_the_host(resolver):
    answers, calls = resolver
    answers["cdn.test"] = [["93.184.216.34"]]
    target = check_url("https://cdn.test/a/b.png?x=1", allow_private=False)
    assert target.url == "https://93.184.216.34/a/b.png?x=1"
    assert target.host == "cdn.test" and target.server_name == "cdn.test"
    assert calls == ["cdn.test"]


@pytest.mark.parametrize("url", ["http://", "http:///x", "ftp://a.test/x", "http://a.test:99999/x",
                                 "http://user:pw@a.test/x", "http://a b.test/x", "file:///etc/passwd",
                                 "http://[::1/x", "http://" + "a" * 3000 + ".test/"])
def test_malformed_urls_are_refused_without_a_lookup(resolver, url):
    _, calls = resolver
    with pytest.raises(AddressRefused):
        check_url(url, allow_private=True)
    assert calls == []


class _ImageHandler(BaseHTTPRequestHandler):
    hosts: list = []

    def do_GET(self):
        type(self).hosts.append(self.headers.get("Host"))
        body = png_bytes(4, 4)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def image_server():
    _ImageHandler.hosts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_fetch_connects_to_the_address_it_checked(resolver, loopback_only, image_server):
    """DNS rebinding: the second answer would be a metadata address; the fetch resolves once and connects to the
    checked 127.0.0.1 (allowed here), with the original host in the Host header."""
    answers, calls = resolver
    answers["rebind.test"] = [["127.0.0.1"], ["169.254.169.254"]]
    data = fetch_bytes(f"http://rebind.test:{image_server}/img.png", Settings(fetch_allow_private_networks=True))
    assert data == png_bytes(4, 4)
    assert calls == ["rebind.test"]
    assert _ImageHandler.hosts == [f"rebind.test:{image_server}"]


def test_image_url_to_a_metadata_address_is_refused_without_a_packet(resolver, loopback_only):
    answers, _ = resolver
    answers["metadata.test"] = [["169.254.169.254"]]
    with pytest.raises(FetchError, match="non-public") as exc:
        fetch_bytes("http://metadata.test/latest/meta-data/", Settings())
    assert exc.value.kind == "file_download_error"
    with pytest.raises(FetchError, match="non-public"):
        fetch_bytes("http://169.254.169.254/latest/meta-data/", Settings())
    assert loopback_only == []


# --- webhooks -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["http://169.254.169.254/hook", "http://127.0.0.1:9/hook", "http://[::1]/x",
                                  "http://", "https://:80/x", "http://metadata.test/hook", "gopher://a.test/",
                                  "http://a.test:99999/"])
def test_webhook_refused_at_submit(api_server, resolver, loopback_only, hook):
    answers, _ = resolver
    answers["metadata.test"] = [["10.0.0.5"]]
    with api_server.client() as c:
        r = c.post("/queue/test/steps", params={"fal_webhook": hook}, json={"steps": 1})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    assert api_server.store.counts().in_queue == 0


def test_public_webhook_accepted_at_submit(api_server, resolver, loopback_only):
    answers, _ = resolver
    answers["hooks.test"] = [["93.184.216.34"]]
    with api_server.client() as c:
        r = c.post("/queue/test/steps", params={"fal_webhook": "https://hooks.test/h"}, json={"steps": 1})
        assert r.status_code == 200, r.text


def _job_with_hook(store: SqliteJobStore, url: str) -> str:
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id="t/a", owner="t", app="a", input={}, webhook_url=url))
    store.complete(rid, Outcome.ok({"ok": True}))
    return rid


def test_webhook_checked_again_at_delivery(tmp_path, resolver, loopback_only):
    """Accepted when it resolved to a public address; by delivery time it resolves to a private one: given up."""
    answers, _ = resolver
    answers["hooks.test"] = [["10.0.0.9"]]
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    rid = _job_with_hook(store, "http://hooks.test/h")
    deliverer = webhooks.WebhookDeliverer(store, Settings(data_dir=tmp_path))
    try:
        assert deliverer.run_once() == 1
    finally:
        deliverer.stop()
    w = store.webhook(rid)
    assert w.gave_up and w.delivered_at is None and "non-public" in w.last_error
    assert loopback_only == []


class _Receivers:
    """Two loopback receivers: `slow` holds every request until released; `fast` answers at once."""

    def __init__(self):
        self.release = threading.Event()
        self.fast_got = threading.Event()
        self.lock = threading.Lock()
        self.slow_now = 0
        self.slow_max = 0
        self.slow_done = 0
        outer = self

        class Slow(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.slow_now += 1
                    outer.slow_max = max(outer.slow_max, outer.slow_now)
                outer.release.wait(20)
                with outer.lock:
                    outer.slow_now -= 1
                    outer.slow_done += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        class Fast(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.fast_got.set()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (Slow, Fast)]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.slow_url = f"http://127.0.0.1:{self.servers[0].server_address[1]}/hook"
        self.fast_url = f"http://127.0.0.1:{self.servers[1].server_address[1]}/hook"

    def close(self):
        self.release.set()
        for s in self.servers:
            s.shutdown()
            s.server_close()


def test_slow_receiver_does_not_delay_others_and_is_bounded(tmp_path, loopback_only):
    receivers = _Receivers()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    settings = Settings(data_dir=tmp_path, fetch_allow_private_networks=True, webhook_timeout_seconds=30)
    slow_ids = [_job_with_hook(store, receivers.slow_url) for _ in range(5)]
    fast_id = _job_with_hook(store, receivers.fast_url)
    deliverer = webhooks.WebhookDeliverer(store, settings, per_receiver=2)
    try:
        deliverer.start(interval=0.05)
        # The fast receiver is served while the slow one holds its deliveries.
        assert receivers.fast_got.wait(10), "a slow receiver delayed another receiver's webhook"
        deadline = time.time() + 10
        while store.webhook(fast_id).delivered_at is None and time.time() < deadline:
            time.sleep(0.02)
        assert store.webhook(fast_id).delivered_at is not None
        assert receivers.slow_done == 0
        deadline = time.time() + 10
        while receivers.slow_now < 2 and time.time() < deadline:
            time.sleep(0.02)
        assert receivers.slow_now == 2  # two held at once on the slow receiver: its bound, reached
        receivers.release.set()
        deadline = time.time() + 20
        while any(store.webhook(r).delivered_at is None for r in slow_ids) and time.time() < deadline:
            time.sleep(0.05)
        assert all(store.webhook(r).delivered_at is not None for r in slow_ids)
        # Several ran at once on the slow receiver (concurrent), never more than its bound.
        assert receivers.slow_max == 2
    finally:
        deliverer.stop()
        receivers.close()
