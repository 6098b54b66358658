"""Which endpoint the official-client tests drive, and what a correct output looks like.

The target is the real image-to-video endpoint on the tiny random-weight model once the engine is served; the
test endpoints cover the queue mechanics (long jobs to cancel, failures) that a real generation can't stage cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from tests.api.helpers import png_data_uri
from tests.endpoints_for_tests import ALL as TEST_ENDPOINTS
from tests.endpoints_for_tests import FAIL, STEPS  # noqa: F401  (re-exported for the tests)


@dataclass(frozen=True)
class Target:
    endpoint_id: str
    server_endpoints: list[str]


TARGET = Target("test/echo-image", TEST_ENDPOINTS)
TARGET_INPUT = {"image_url": png_data_uri(8, 6, (10, 200, 30)), "text": "hello"}


def check_target_output(output: dict, server) -> None:
    assert output["text"] == "hello" and (output["width"], output["height"]) == (8, 6)
    verify = str(server.tls_dir / "ca.pem") if server.tls_dir else True
    r = httpx.get(output["image"]["url"], verify=verify)
    assert r.status_code == 200 and r.headers["content-type"] == output["image"]["content_type"]
    assert len(r.content) == output["image"]["file_size"]
