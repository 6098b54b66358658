"""Which endpoint the official-client tests drive, and what a correct output looks like.

The target is the real image-to-video endpoint, served on the tiny random-weight model (the real architectures,
loaded through the same code as the 13B), with a small request. The test endpoints cover the queue mechanics that a
real generation can't stage cheaply (long jobs to cancel, failures).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import httpx

from tests.api.helpers import png_data_uri
from tests.endpoints_for_tests import ALL as TEST_ENDPOINTS
from tests.endpoints_for_tests import FAIL, STEPS  # noqa: F401  (re-exported for the tests)


@dataclass(frozen=True)
class Target:
    endpoint_id: str
    server_endpoints: list[str]
    server_args: list[str]


TARGET = Target("fal-ai/ltx-video-13b-dev/image-to-video", ["ltxserve.engine.schema:SPEC", *TEST_ENDPOINTS],
                ["--model", "tiny"])
TARGET_INPUT = {
    "prompt": "a red ball rolls across the table",
    "image_url": png_data_uri(120, 80, (200, 40, 40)),
    "seed": 7,
    "num_frames": 9,
    "width": 96,
    "height": 64,
    "first_pass_num_inference_steps": 6,
    "first_pass_skip_final_steps": 1,
    "second_pass_num_inference_steps": 6,
    "second_pass_skip_initial_steps": 3,
    "frame_rate": 24,
}


def check_target_output(output: dict, server) -> None:
    assert output["prompt"] == TARGET_INPUT["prompt"] and output["seed"] == TARGET_INPUT["seed"]
    video = output["video"]
    assert video["content_type"] == "video/mp4" and video["file_name"].endswith(".mp4")
    r = httpx.get(video["url"], verify=server.verify())
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert len(r.content) == video["file_size"]
    with av.open(io.BytesIO(r.content)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert (stream.width, stream.height) == (96, 64)
        assert len(frames) == TARGET_INPUT["num_frames"]
        assert stream.codec_context.name == "h264"
