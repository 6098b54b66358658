"""The hosted schema: defaults, bounds and combinations give clear validation errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ltxserve.engine.schema import SPEC, ImageToVideoInput

BASE = {"prompt": "p", "image_url": "https://example.com/a.png"}


def test_hosted_defaults():
    inp = ImageToVideoInput(**BASE)
    assert (inp.resolution, inp.aspect_ratio, inp.num_frames, inp.frame_rate, inp.constant_rate_factor) == \
        ("720p", "auto", 121, 30, 35)
    assert (inp.first_pass_num_inference_steps, inp.first_pass_skip_final_steps,
            inp.second_pass_num_inference_steps, inp.second_pass_skip_initial_steps) == (30, 3, 30, 17)
    assert inp.negative_prompt == "worst quality, inconsistent motion, blurry, jittery, distorted"
    assert inp.enable_safety_checker is True and inp.expand_prompt is False and inp.loras == []
    assert SPEC.endpoint_id == "fal-ai/ltx-video-13b-dev/image-to-video"


@pytest.mark.parametrize("extra, message", [
    ({"first_pass_skip_final_steps": 30}, "first_pass_skip_final_steps"),
    ({"second_pass_num_inference_steps": 10, "second_pass_skip_initial_steps": 10}, "second_pass_skip_initial"),
    ({"num_frames": 5}, "greater than or equal"),
    ({"resolution": "1080p"}, "480p"),
    ({"image_url": "ftp://x/y.png"}, "http"),
    ({"width": 96}, "width and height"),
    ({"unknown_field": 1}, "Extra inputs"),
])
def test_bad_combinations(extra, message):
    with pytest.raises(ValidationError, match=message):
        ImageToVideoInput(**{**BASE, **extra})
