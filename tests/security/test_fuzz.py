"""Fuzzing the live server from its own OpenAPI document (hypothesis), on the tiny model: no 5xx, no dead worker, no
lost job. Bounded in time (about a minute and a half on two CPU cores); prints its figures.

Phase A throws schema-derived and mutated inputs (wrong types, NaN/Infinity tokens, lone surrogates, huge numbers,
unknown keys, missing keys, raw garbage, odd headers and path parameters) at every operation of the document except
the ones that wait for a generation (/run, status streams). A long job holds the only worker meanwhile, and every
accepted submission carries a start timeout, so nothing heavy runs; at the end every accepted job must be accounted
for (completed, as timed out or cancelled), none lost.

Phase B runs small generations on the worker with fuzzed image URLs (degenerate, corrupt, huge-declared, refused
addresses, this server's file URLs with traversal), LoRA paths, prompts and seeds: every job completes, with a
result or a 4xx error, and the worker is the same process at the end.

No request leaves this machine: URLs the fuzzer makes are data: URIs, IP literals (refused by the address policy
before any packet) or this server's own file URLs.

Run alone: PYTHONPATH=. python -m pytest -q -s tests/security/test_fuzz.py   (LTXSERVE_FUZZ_EXAMPLES=N to vary)
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import uuid
from collections import Counter
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.api.helpers import wait_completed, wait_state

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("LTXSERVE_FUZZ_EXAMPLES", "2500"))
GENERATIONS = int(os.environ.get("LTXSERVE_FUZZ_GENERATIONS", "16"))
LTX = "fal-ai/ltx-video-13b-dev/image-to-video"
FIGURES: Counter = Counter()
ACCEPTED: list[str] = []  # status URLs of accepted submissions (phase A)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from tests.fixtures_server import LiveServer, free_port

    s = LiveServer(data_dir=tmp_path_factory.mktemp("fuzz") / "data", port=free_port(),
                   endpoints=["ltxserve.engine.schema:SPEC", "tests.endpoints_for_tests:STEPS",
                              "tests.endpoints_for_tests:ECHO", "tests.endpoints_for_tests:FAIL"],
                   extra_args=["--model", "tiny"])
    s.start()
    yield s
    s.stop()


# --- values ---------------------------------------------------------------------------------------------------------

NASTY_STRINGS = ["", " ", "\t\n", "\x00", "\ud800", "\udfff x", "a" * 20_000, "../../etc/passwd", "%2Fetc%2Fpasswd",
                 "NaN", "1e999", "true", "null", "{}", "\u202e\u0301", "😀" * 100, "' OR 1=1 --", "${jndi:x}"]
NASTY_NUMBERS = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 2**64, -(2**63) - 1, 2**63, -1, 0, 0.5,
                 1e-320, True, False]
IP_URLS = ["http://127.0.0.1:1/x.png", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.png",
           "http://[::1]:1/x", "http://0.0.0.0:80/", "https://192.168.0.1:99999/x", "http://", "http:///x",
           "ftp://1.2.3.4/x", "http://[::1/x", "javascript:alert(1)", "file:///etc/passwd"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=30), st.sampled_from(NASTY_STRINGS), st.sampled_from(NASTY_NUMBERS))
any_json = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                        max_leaves=12)


def _resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].split("/")[-1]]
    return schema


def valid_value(schema: dict, components: dict, depth: int = 0) -> st.SearchStrategy:
    """Values the schema accepts (as far as JSON Schema says; model validators may still refuse some)."""
    schema = _resolve(schema, components)
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([valid_value(s, components, depth) for s in schema.get("anyOf", schema.get("oneOf"))])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2**31)), max_value=min(schema.get("maximum", 2**31),
                                                                                      2**63 - 1))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum", -1e6), max_value=schema.get("maximum", 1e6),
                         allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        lo = schema.get("minLength", 0)
        return st.text(min_size=lo, max_size=max(lo, min(schema.get("maxLength", 40), 40)))
    if kind == "array":
        if depth > 2:
            return st.just([])
        return st.lists(valid_value(schema.get("items", {}), components, depth + 1),
                        max_size=min(schema.get("maxItems", 3), 3))
    if kind == "object":
        return fuzzed_object(schema, components, depth + 1, mutate=False)
    return any_json


def fuzzed_value(schema: dict, components: dict, depth: int) -> st.SearchStrategy:
    return st.one_of(valid_value(schema, components, depth), valid_value(schema, components, depth),
                     json_leaf, any_json, st.sampled_from(IP_URLS))


@st.composite
def fuzzed_object(draw, schema: dict, components: dict, depth: int = 0, mutate: bool = True) -> dict:
    schema = _resolve(schema, components)
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = {}
    for name, sub in props.items():
        present = name in required or draw(st.booleans())
        if mutate and draw(st.integers(0, 9)) == 0:
            present = not present  # drop a required key or add an optional one
        if present:
            out[name] = draw(fuzzed_value(sub, components, depth) if mutate else valid_value(sub, components, depth))
    if mutate and draw(st.integers(0, 5)) == 0:
        out.update(draw(st.dictionaries(st.text(max_size=12), any_json, min_size=1, max_size=2)))
    return out


def body_bytes(value) -> bytes:
    # allow_nan writes NaN/Infinity tokens; ensure_ascii writes lone surrogates as \ud800 escapes: both reach the
    # server as a client could send them.
    return json.dumps(value, allow_nan=True).encode()


RAW_BODIES = st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"{", b"[", b"null", b"\xff\xfe", b'{"a":1}' * 3,
                                                                 b"[" * 3000 + b"]" * 3000, b'{"prompt": NaN}']))
HEADER_VALUES = st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
                          .map(str.strip),  # what HTTP can carry: no surrounding blanks
                          st.sampled_from(["1e999", "NaN", "-1", "0", "inf", '{"expiration_duration_seconds": 1e999}',
                                           '{"expiration_duration_seconds": -5}', "low", "normal"]))
FAL_HEADERS = ["X-Fal-Queue-Priority", "X-Fal-Object-Lifecycle-Preference", "X-Fal-Runner-Hint",
               "X-Fal-Store-IO", "X-Fal-No-Retry", "Content-Type"]


def _operations(doc: dict) -> list[tuple[str, str, dict]]:
    ops = []
    for path, methods in doc["paths"].items():
        if path.startswith("/run/") or path.endswith("/stream"):
            continue  # these wait for a generation to finish
        for method, op in methods.items():
            ops.append((method.upper(), path, op))
    return ops


def _fill_path(draw, path: str) -> str:
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        value = draw(st.one_of(st.text(min_size=1, max_size=40), st.just(str(uuid.uuid4())),
                               st.just(uuid.uuid4().hex), st.sampled_from(["..", ".", "%2F", "fal-ai", "test"])))
        path = path[:start] + quote(value, safe="") + path[end + 1:]
    return path


def _send(client: httpx.Client, method: str, url: str, **kw) -> httpx.Response:
    r = client.request(method, url, **kw)
    FIGURES["cases"] += 1
    FIGURES[f"{r.status_code // 100}xx"] += 1
    if r.status_code >= 500:
        FIGURES["5xx_examples"] += 1
        print("5xx:", method, url[:120], r.status_code, r.text[:300])
    return r


def test_fuzz_every_operation_gives_no_5xx(fuzz_server):
    with fuzz_server.client() as c:
        doc = c.get("/openapi.json").json()
        components = doc.get("components", {}).get("schemas", {})
        ops = _operations(doc)
        pids = fuzz_server.worker_pids()
        # Hold the only worker with a long job: fuzzed submissions queue behind it and never run.
        blocker = c.post("/queue/test/steps", json={"steps": 5000, "seconds_per_step": 0.05}).json()
        wait_state(c, blocker["status_url"], "IN_PROGRESS")
        started = time.monotonic()

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def one_case(data):
            method, path, op = data.draw(st.sampled_from(ops))
            url = _fill_path(data.draw, path)
            headers = {h: data.draw(HEADER_VALUES) for h in data.draw(st.lists(st.sampled_from(FAL_HEADERS),
                                                                               max_size=2, unique=True))}
            params = {}
            if data.draw(st.integers(0, 4)) == 0:
                params["fal_webhook"] = data.draw(st.one_of(st.sampled_from(IP_URLS), st.text(max_size=30)))
            content = None
            body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                           .get("schema"))
            if method in ("POST", "PUT"):
                if body_schema and data.draw(st.integers(0, 5)) != 0:
                    content = body_bytes(data.draw(fuzzed_object(body_schema, components)))
                else:
                    content = data.draw(RAW_BODIES)
                headers.setdefault("Content-Type", "application/json")
                # anything accepted must not run: a start timeout far shorter than the blocker
                headers["X-Fal-Request-Timeout"] = "0.5"
            r = _send(c, method, url, content=content, headers=headers, params=params)
            assert r.status_code < 500, (method, url[:200], r.status_code, r.text[:500])
            if method == "POST" and path.startswith("/queue/") and r.status_code == 200:
                ACCEPTED.append(r.json()["status_url"])
                FIGURES["accepted"] += 1

        try:
            one_case()
        finally:  # also when a case fails: the next test must not find the worker busy with this one's jobs
            # Every accepted job is accounted for: cancel what still waits, then each must reach COMPLETED.
            for status_url in ACCEPTED:
                c.put(status_url.rsplit("/status", 1)[0] + "/cancel")
            c.put(blocker["cancel_url"])
        seconds = time.monotonic() - started
        lost = 0
        for status_url in ACCEPTED:
            try:
                wait_completed(c, status_url, timeout=30)
            except (TimeoutError, AssertionError, KeyError):
                lost += 1
        FIGURES["jobs_lost"] = lost
        wait_completed(c, blocker["status_url"], timeout=30)
        assert c.get("/readyz").status_code == 200
        same_worker = fuzz_server.worker_pids() == pids
    print(f"\nFUZZ phase A: {FIGURES['cases']} cases in {seconds:.0f} s over {len(ops)} operations: "
          f"2xx {FIGURES['2xx']}, 4xx {FIGURES['4xx']}, 5xx {FIGURES['5xx']}; accepted {FIGURES['accepted']}, "
          f"lost {lost}; worker unchanged: {same_worker}")
    assert FIGURES["5xx"] == 0 and lost == 0 and same_worker


# --- phase B: generations with fuzzed inputs --------------------------------------------------------------------


def _png_uri(w: int, h: int, mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _declared_huge_png() -> str:
    """A valid PNG header claiming 100000x100000 pixels (a decompression bomb's shape), with no real data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _image_urls(base: str) -> st.SearchStrategy:
    return st.one_of(
        st.builds(_png_uri, st.integers(1, 40), st.integers(1, 40), st.sampled_from(["RGB", "L", "RGBA", "I;16", "P"])),
        st.sampled_from([
            _declared_huge_png(), "data:image/png;base64,bm90IGFuIGltYWdl", "data:,", "data:image/png;base64,@@@",
            "data:text/plain,hello", f"{base}/files/x/%2Fetc%2Fpasswd", f"{base}/files/{'0' * 32}/a.png",
            f"{base}/files/..%2F..%2Fjobs.sqlite3/x", *IP_URLS,
        ]),
    )


LORA_PATHS = st.sampled_from(["/etc/passwd", "../../etc/passwd", "file:///etc/passwd", "lora.safetensors",
                              "http://127.0.0.1:1/x.safetensors", "http://169.254.169.254/x.safetensors",
                              "C:\\x.safetensors"])


def test_fuzz_generations_complete_with_results_or_4xx(fuzz_server):
    figures = Counter()
    with fuzz_server.client() as c:
        pids = fuzz_server.worker_pids()

        @settings(max_examples=GENERATIONS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(image_url=_image_urls(fuzz_server.base_url),
               prompt=st.one_of(st.text(min_size=1, max_size=200), st.sampled_from(NASTY_STRINGS[2:])),
               seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
               loras=st.lists(st.fixed_dictionaries({"path": LORA_PATHS}), max_size=1),
               frame_rate=st.integers(1, 120), aspect=st.sampled_from(["9:16", "1:1", "16:9", "auto"]))
        def one_generation(image_url, prompt, seed, loras, frame_rate, aspect):
            body = {"prompt": prompt, "image_url": image_url, "seed": seed, "loras": loras, "frame_rate": frame_rate,
                    "aspect_ratio": aspect, "resolution": "480p", "num_frames": 9, "width": 96, "height": 64,
                    "first_pass_num_inference_steps": 3, "first_pass_skip_final_steps": 1,
                    "second_pass_num_inference_steps": 3, "second_pass_skip_initial_steps": 1}
            r = c.post(f"/queue/{LTX}", content=body_bytes(body), headers={"Content-Type": "application/json"})
            figures["cases"] += 1
            figures[f"submit_{r.status_code}"] += 1
            assert r.status_code in (200, 422), r.text[:500]
            if r.status_code != 200:
                return
            done = wait_completed(c, r.json()["status_url"], timeout=120)
            result = c.get(r.json()["response_url"])
            figures[f"result_{result.status_code}"] += 1
            assert result.status_code in (200, 422), (done, result.text[:500])
            if result.status_code == 200:
                assert done["error"] is None
            else:
                assert all("url" in d and "type" in d for d in result.json()["detail"])

        one_generation()
        same_worker = fuzz_server.worker_pids() == pids
    print(f"\nFUZZ phase B: {figures['cases']} generations: {dict(sorted(figures.items()))}; "
          f"worker unchanged: {same_worker}")
    assert same_worker
