"""Submit and status latency under load, against a bare FastAPI route served the same way, in one run.

    python benchmarks/queue_latency.py [--pollers 200] [--seconds 10] [--submits 300]

Starts `ltxserve serve` (one worker, test endpoints) and a bare FastAPI app (`GET/POST /bare` answering a small
JSON) under the same uvicorn settings, each in its own process. While a long job keeps the worker busy, N concurrent
pollers hit (a) the status URL of a queued job and (b) the bare route, alternating phases so machine noise hits both;
then submits are timed against POST /bare. Prints p50/p99 and the ratios. Loopback only; bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

BARE_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/bare")
def bare_get():
    return {"status": "IN_QUEUE", "queue_position": 0}
@app.post("/bare")
def bare_post(body: dict):
    return {"status": "IN_QUEUE", "request_id": "x"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk_phase(url: str, pollers: int, seconds: float) -> dict[str, float]:
    """wrk (a C load generator) keeps `pollers` connections busy; returns p50/p99 seconds and the request count.

    A Python load generator saturates before the server does on a 2-core machine, which would measure the client.
    """
    out = subprocess.run(["wrk", "-t2", f"-c{pollers}", f"-d{seconds:.0f}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {}
    in_dist = False
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("Latency Distribution"):
            in_dist = True
            continue
        if in_dist and len(parts) == 2 and parts[0].endswith("%"):
            value = parts[1]
            unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
            result[parts[0]] = float(value[: -len(unit)]) * _UNITS[unit]
        elif "requests in" in line:
            result["requests"] = float(parts[0])
        elif "Non-2xx" in line:
            result["non2xx"] = float(parts[-1])
    return result


def kill_process_groups(procs) -> None:
    """The servers a benchmark started (each the leader of its own process group), with everything they spawned."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


async def poll_phase(url: str, pollers: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        stop_at = time.perf_counter() + seconds

        async def poller() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.get(url)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code in (200, 202), r.text

        await asyncio.gather(*(poller() for _ in range(pollers)))
    return latencies


async def submit_phase(url: str, body: dict, count: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:
        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(one() for _ in range(count)))
    return latencies


def _summarise(lat: list[float]) -> dict[str, float]:
    return {"50%": pct(lat, 50), "99%": pct(lat, 99), "requests": float(len(lat))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0, help="per polling phase (2 phases per target)")
    ap.add_argument("--submits", type=int, default=300)
    ap.add_argument("--submit-concurrency", type=int, default=20)
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="ltxbench-"))
    lt_port, bare_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "ltxserve.cli", "serve", "--port", str(lt_port), "--data-dir",
                          str(data), "--endpoint", "tests.endpoints_for_tests:STEPS"], env=env, cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    try:
        lt, bare = f"http://127.0.0.1:{lt_port}", f"http://127.0.0.1:{bare_port}"
        wait_http(lt + "/readyz")
        wait_http(bare + "/bare")
        # Keep the worker busy for the whole run, and poll a job queued behind it.
        busy_seconds = 4 * args.seconds + 60
        httpx.post(f"{lt}/queue/test/steps", json={"steps": int(busy_seconds / 0.05), "seconds_per_step": 0.05})
        queued = httpx.post(f"{lt}/queue/test/steps", json={"steps": 1}).json()
        status_url = queued["status_url"] + "?logs=0"

        status_runs, bare_runs = [], []
        if shutil.which("wrk"):
            for _ in range(2):  # alternate, so noise hits both
                status_runs.append(wrk_phase(status_url, args.pollers, args.seconds))
                bare_runs.append(wrk_phase(bare + "/bare", args.pollers, args.seconds))
        else:
            print("wrk not found (apt-get install wrk): falling back to a Python load generator, which saturates "
                  "first on small machines")
            for _ in range(2):
                status_runs.append(_summarise(asyncio.run(poll_phase(status_url, args.pollers, args.seconds))))
                bare_runs.append(_summarise(asyncio.run(poll_phase(bare + "/bare", args.pollers, args.seconds))))
        submit_lat = asyncio.run(submit_phase(f"{lt}/queue/test/steps", {"steps": 1, "seconds_per_step": 0},
                                              args.submits, args.submit_concurrency))
        bare_post_lat = asyncio.run(submit_phase(bare + "/bare", {"steps": 1}, args.submits,
                                                 args.submit_concurrency))
    finally:
        kill_process_groups(procs)

    def row(name: str, lat: list[float]) -> tuple[float, float]:
        p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
        print(f"{name:<34} n={len(lat):>6}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  mean {statistics.mean(lat)*1000:7.2f} ms")
        return p50, p99

    def wrk_row(name: str, runs: list[dict[str, float]]) -> tuple[float, float]:
        p50 = statistics.median(r["50%"] for r in runs) * 1000
        p99 = statistics.median(r["99%"] for r in runs) * 1000
        n = sum(r["requests"] for r in runs)
        bad = sum(r.get("non2xx", 0) for r in runs)
        print(f"{name:<34} n={n:>6.0f}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
              f"({n / (len(runs) * args.seconds):.0f} req/s, non-2xx {bad:.0f})")
        return p50, p99

    print(f"{args.pollers} concurrent pollers, 2 x {args.seconds:.0f} s per target, worker busy; "
          f"{args.submits} submits at concurrency {args.submit_concurrency}")
    s50, s99 = wrk_row("GET status (ltxserve)", status_runs)
    b50, b99 = wrk_row("GET /bare (bare FastAPI)", bare_runs)
    u50, u99 = row("POST submit (ltxserve)", submit_lat)
    c50, c99 = row("POST /bare (bare FastAPI)", bare_post_lat)
    print(f"status p50 ratio {s50 / b50:.2f}x, p99 ratio {s99 / b99:.2f}x   (goal: p99 within 3x)")
    print(f"submit p50 ratio {u50 / c50:.2f}x, p99 ratio {u99 / c99:.2f}x")


if __name__ == "__main__":
    main()
