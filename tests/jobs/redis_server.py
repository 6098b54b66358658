"""A real `redis-server` for the tests: a free loopback port, its own folder, AOF on (so a restart keeps what it
acknowledged), RDB snapshots off. CI installs Debian's redis-server (.ci/run); a machine without it fails these tests
rather than skipping them, so a green run always means the Redis store was tested."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """redis-server, or the server REDIS_SERVER names (e.g. /usr/bin/valkey-server: the suite runs on Valkey too)."""
    path = (os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
            or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None))
    if path is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    return path


@dataclass
class RedisServer:
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        if not self.port:
            self.port = _free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes",
             "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.time() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    # Ready once the AOF is loaded (PING answers LOADING errors until then).
                    if client.ping() and client.info("persistence").get("loading") == 0:
                        return self
                except redis.exceptions.RedisError:
                    pass
                if time.time() > deadline:
                    raise TimeoutError(f"redis-server not ready after {timeout}s:\n{self.log()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits; SIGKILL: whatever the last fsync had."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> "RedisServer":
        """Stop (SIGTERM) and start again on the same folder and port: the AOF brings the data back."""
        self.stop()
        return self.start()

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


# --- fixtures (registered as a plugin in tests/conftest.py) -------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One redis-server for the session; tests that need a clean one flush it (see `redis_url`)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test (and started again if a test stopped it)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url
