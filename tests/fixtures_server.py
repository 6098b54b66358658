"""Live-server fixtures: `ltxserve serve` as a real subprocess on a free loopback port, with its own data dir."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.endpoints_for_tests import ALL as TEST_ENDPOINTS

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    data_dir: Path
    port: int
    endpoints: list[str]
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    tls_dir: Path | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_dir else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this server: the local CA when it serves TLS."""
        return ssl.create_default_context(cafile=str(self.tls_dir / "ca.pem")) if self.tls_dir else True

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, verify=self.verify(), **kw)

    def start(self, wait_ready: bool = True) -> "LiveServer":
        cmd = [sys.executable, "-m", "ltxserve.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir)]
        for e in self.endpoints:
            cmd += ["--endpoint", e]
        if self.tls_dir:
            cmd += ["--tls-cert", str(self.tls_dir / "server.pem"), "--tls-key", str(self.tls_dir / "server.key")]
        cmd += self.extra_args
        env = {**os.environ, "PYTHONPATH": str(REPO), "LTXSERVE_WORKER_HEARTBEAT_SECONDS": "0.5", **self.env}
        self.log_path = self.data_dir.parent / f"server-{self.port}-{int(time.time() * 1000)}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
                                        start_new_session=True)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        with self.client() as c:
            while time.time() < deadline:
                if self.process and self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the whole server process group (API process; workers follow via their parent watch)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Any worker left behind in the group goes too.
        if self.process:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def worker_pids(self) -> list[int]:
        """Pids of live workers, from their heartbeats in the store."""
        from ltxserve.jobs.sqlite import SqliteJobStore

        store = SqliteJobStore(self.data_dir / "jobs.sqlite3")
        try:
            return [w["info"]["pid"] for w in store.live_workers(5.0) if w.get("info") and "pid" in w["info"]]
        finally:
            store.close()


@pytest.fixture
def live_server_factory(tmp_path):
    servers: list[LiveServer] = []

    def make(endpoints: list[str] | None = None, extra_args: list[str] | None = None, tls: bool = False,
             env: dict[str, str] | None = None, start: bool = True) -> LiveServer:
        tls_dir = None
        if tls:
            from ltxserve.tls import init_tls

            tls_dir = tmp_path / "tls"
            init_tls(tls_dir)
        server = LiveServer(data_dir=tmp_path / f"data{len(servers)}", port=free_port(),
                            endpoints=endpoints or TEST_ENDPOINTS, extra_args=extra_args or [], env=env or {},
                            tls_dir=tls_dir)
        servers.append(server)
        return server.start() if start else server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def live_server(live_server_factory) -> LiveServer:
    return live_server_factory()


@pytest.fixture
def tls_live_server(live_server_factory) -> LiveServer:
    return live_server_factory(tls=True)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server with all test endpoints for a whole test module (tests that don't restart or kill it)."""
    server = LiveServer(data_dir=tmp_path_factory.mktemp("shared") / "data", port=free_port(),
                        endpoints=TEST_ENDPOINTS)
    server.start()
    yield server
    server.stop()


LTX_ENDPOINT_SPEC = "ltxserve.engine.schema:SPEC"


@contextmanager
def tiny_ltx_server(data_parent: Path) -> Iterator[LiveServer]:
    """`ltxserve serve` with the real image-to-video endpoint on the tiny random-weight model."""
    server = LiveServer(data_dir=data_parent / "data", port=free_port(), endpoints=[LTX_ENDPOINT_SPEC],
                        extra_args=["--model", "tiny"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ltx_server(tmp_path_factory):
    """One tiny-model LTX server per test module."""
    with tiny_ltx_server(tmp_path_factory.mktemp("ltx")) as server:
        yield server
