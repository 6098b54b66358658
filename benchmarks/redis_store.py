"""The Redis job store under load, against a bare FastAPI route and the SQLite store, in one run.

    python benchmarks/redis_store.py [--pollers 200] [--seconds 8] [--submits 1000] [--claims 1000]

Starts a redis-server (AOF on, as deployed) on a loopback port, `ltxserve serve` on the Redis store and on the
SQLite store (one worker each, test endpoints) and a bare FastAPI app under the same uvicorn settings. Prints:

- status p50/p99 with N concurrent pollers on a queued job (the worker is kept busy), Redis node vs bare route (and
  the SQLite node), alternating phases so machine noise hits all of them; wrk drives the load when installed;
- submit throughput (requests/s at a fixed concurrency, wrk POSTing when installed) on each node and POST /bare;
- claim latency: claim_next on a warm store (N queued jobs), Redis vs SQLite, in this process.
Loopback only; bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.queue_latency import (  # noqa: E402
    BARE_APP, _summarise, free_port, kill_process_groups, pct, poll_phase, submit_phase, wait_http, wrk_phase,
)
from tests.jobs.redis_server import RedisServer  # noqa: E402

STEPS = "tests.endpoints_for_tests:STEPS"


def start_node(port: int, data: Path, store: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if store:
        env["LTXSERVE_STORE"] = store
    return subprocess.Popen([sys.executable, "-m", "ltxserve.cli", "serve", "--port", str(port), "--data-dir",
                             str(data), "--endpoint", STEPS], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def queued_status_url(base: str, busy_seconds: float) -> str:
    """Keep the node's worker busy, and return the status URL of a job queued behind it."""
    httpx.post(f"{base}/queue/test/steps", json={"steps": int(busy_seconds / 0.05), "seconds_per_step": 0.05})
    queued = httpx.post(f"{base}/queue/test/steps", json={"steps": 1}).json()
    return queued["status_url"] + "?logs=0"


def throughput(url: str, body: dict, count: int, concurrency: int, use_wrk: bool, seconds: float,
               folder: Path) -> tuple[float, float, float]:
    """Submits per second, p50 and p99 (seconds): wrk POSTing for `seconds`, else `count` httpx submits."""
    if use_wrk:
        script = folder / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = '{json.dumps(body)}'\n")
        out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency", "-s", str(script),
                              url], capture_output=True, text=True, check=True).stdout
        rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
        assert "Non-2xx" not in out, out
        dist = wrk_latencies(out)
        return rate, dist["50%"], dist["99%"]
    t0 = time.perf_counter()
    lat = asyncio.run(submit_phase(url, body, count, concurrency))
    return count / (time.perf_counter() - t0), pct(lat, 50), pct(lat, 99)


def wrk_latencies(out: str) -> dict[str, float]:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    result = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            unit = next(u for u in ("us", "ms", "s") if parts[1].endswith(u))
            result[parts[0]] = float(parts[1][: -len(unit)]) * units[unit]
    return result


def claim_latency(store, count: int) -> list[float]:
    from ltxserve.jobs.store import Job

    for _ in range(count + 50):
        store.submit(Job(request_id=uuid.uuid4().hex, endpoint_id="bench/claim", owner="bench", app="claim",
                         input={"steps": 1}))
    for _ in range(50):  # warm up connections and caches
        store.claim_next("bench-worker", ["bench/claim"])
    lat = []
    for _ in range(count):
        t0 = time.perf_counter()
        job = store.claim_next("bench-worker", ["bench/claim"])
        lat.append(time.perf_counter() - t0)
        assert job is not None
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0, help="per polling phase (2 phases per target)")
    ap.add_argument("--submits", type=int, default=1000, help="without wrk: submits per target")
    ap.add_argument("--submit-concurrency", type=int, default=20)
    ap.add_argument("--claims", type=int, default=1000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ltxbench-redis-"))
    redis_server = RedisServer(tmp / "redis").start()
    ports = {"redis": free_port(), "sqlite": free_port(), "bare": free_port()}
    procs = [
        start_node(ports["redis"], tmp / "redis-node", redis_server.url),
        start_node(ports["sqlite"], tmp / "sqlite-node", None),
        subprocess.Popen([sys.executable, "-c", BARE_APP, str(ports["bare"])], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    use_wrk = shutil.which("wrk") is not None
    try:
        wait_http(base["redis"] + "/readyz")
        wait_http(base["sqlite"] + "/readyz")
        wait_http(base["bare"] + "/bare")
        busy = 6 * args.seconds + 60
        urls = {"redis": queued_status_url(base["redis"], busy), "sqlite": queued_status_url(base["sqlite"], busy),
                "bare": base["bare"] + "/bare"}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        if not use_wrk:
            print("wrk not found (apt-get install wrk): a Python load generator, which saturates first on small "
                  "machines")
        for _ in range(2):  # alternate, so noise hits every target
            for name, url in urls.items():
                runs[name].append(wrk_phase(url, args.pollers, args.seconds) if use_wrk
                                  else _summarise(asyncio.run(poll_phase(url, args.pollers, args.seconds))))
        submit_body = {"steps": 1, "seconds_per_step": 0}
        submit_urls = {"redis": f"{base['redis']}/queue/test/steps", "sqlite": f"{base['sqlite']}/queue/test/steps",
                       "bare": base["bare"] + "/bare"}
        rates = {name: throughput(url, submit_body, args.submits, args.submit_concurrency, use_wrk, args.seconds,
                                  tmp) for name, url in submit_urls.items()}
    finally:
        kill_process_groups(procs)

    # Claim latency, in this process, on warm stores (the Redis node's jobs are gone with a fresh prefix).
    from ltxserve.jobs.redis_store import RedisJobStore
    from ltxserve.jobs.sqlite import SqliteJobStore

    redis_store = RedisJobStore(redis_server.url, prefix="bench:")
    sqlite_store = SqliteJobStore(tmp / "claims.sqlite3")
    claims = {"redis": claim_latency(redis_store, args.claims), "sqlite": claim_latency(sqlite_store, args.claims)}
    redis_store.close()
    sqlite_store.close()
    redis_server.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.pollers} concurrent pollers on a queued job, 2 x {args.seconds:.0f} s per target "
          f"({'wrk' if use_wrk else 'httpx'}), worker busy")
    p99 = {}
    for name, label in (("redis", "GET status (Redis store)"), ("sqlite", "GET status (SQLite store)"),
                        ("bare", "GET /bare (bare FastAPI)")):
        r = runs[name]
        p50 = statistics.median(x["50%"] for x in r) * 1000
        p99[name] = statistics.median(x["99%"] for x in r) * 1000
        n = sum(x["requests"] for x in r)
        print(f"  {label:<28} p50 {p50:7.2f} ms  p99 {p99[name]:7.2f} ms  ({n / (len(r) * args.seconds):.0f} req/s)")
    print(f"  status p99 ratio vs bare: Redis {p99['redis'] / p99['bare']:.2f}x (goal <= 1.5x), "
          f"SQLite {p99['sqlite'] / p99['bare']:.2f}x")
    print(f"submits at concurrency {args.submit_concurrency} "
          f"({f'wrk, {args.seconds:.0f} s each' if use_wrk else f'httpx, {args.submits} each'})")
    for name, label in (("redis", "POST submit (Redis store)"), ("sqlite", "POST submit (SQLite store)"),
                        ("bare", "POST /bare (bare FastAPI)")):
        rate, p50, p99 = rates[name]
        print(f"  {label:<28} {rate:7.0f} req/s  p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms")
    print(f"  submit throughput ratio: Redis/bare {rates['redis'][0] / rates['bare'][0]:.2f}, "
          f"Redis/SQLite {rates['redis'][0] / rates['sqlite'][0]:.2f}")
    print(f"claim_next on a warm store ({args.claims} claims, {args.claims + 50} queued at the start)")
    for name in ("redis", "sqlite"):
        lat = claims[name]
        print(f"  {name:<7} p50 {pct(lat, 50) * 1e3:6.3f} ms  p99 {pct(lat, 99) * 1e3:6.3f} ms")


if __name__ == "__main__":
    main()
