"""Holes 5 and 6: images of any size are a typed 422 or work, with bounded memory; never a 500 or a dead worker."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.media import fetch_image
from tests.security.conftest import data_uri, png_bytes, repo_path


@pytest.mark.parametrize("size", [(1, 1), (1, 1000), (1000, 1), (7, 500)])
def test_too_small_images_are_image_too_small(size):
    with pytest.raises(InputError) as exc:
        fetch_image(data_uri(png_bytes(*size)), Settings())
    (item,) = exc.value.body()["detail"]
    assert item["type"] == "image_too_small" and item["loc"] == ["body", "image_url"]
    assert item["ctx"] == {"min_width": 8, "min_height": 8}
    assert item["url"] == "https://docs.fal.ai/errors#image_too_small"


def test_beyond_the_pixel_limit_is_image_too_large_before_decoding():
    settings = Settings(max_image_pixels=1_000_000)
    with pytest.raises(InputError) as exc:
        fetch_image(data_uri(png_bytes(2000, 1000)), settings)
    (item,) = exc.value.body()["detail"]
    assert item["type"] == "image_too_large"
    assert item["ctx"] == {"max_pixels": 1_000_000, "max_width": 1000, "max_height": 1000}
    assert fetch_image(data_uri(png_bytes(1000, 1000)), settings).size == (1000, 1000)


def test_unreadable_and_unreachable_images_are_typed():
    with pytest.raises(InputError) as exc:
        fetch_image("data:image/png;base64,bm90IGFuIGltYWdl", Settings())
    assert exc.value.type == "image_load_error" and "not a readable image" in exc.value.message
    truncated = png_bytes(64, 64)[:60]
    with pytest.raises(InputError) as exc:
        fetch_image(data_uri(truncated), Settings())
    assert exc.value.type == "image_load_error"
    with pytest.raises(InputError) as exc:
        fetch_image("http://127.0.0.1:9/x.png", Settings())  # refused by the address policy: no packet
    assert exc.value.type == "file_download_error"


def test_ordinary_images_are_never_reduced():
    from ltxserve.engine.media import reduction_factor

    # below 3x the output in either dimension: untouched (bit-identical conditioning)
    assert reduction_factor(1920, 1080, 1280, 720) == 1
    assert reduction_factor(3839, 2159, 1280, 720) == 1
    assert reduction_factor(96 * 10, 64, 96, 64) == 1
    # far larger: reduced, never below 1.5x the output
    assert reduction_factor(7360, 4140, 1280, 720) == 3
    assert reduction_factor(8000, 4500, 1280, 720) == 4


_PROBE = """
import base64, io, json, resource, sys
from PIL import Image
import torch
from ltxserve.config import Settings
from ltxserve.engine import media
width, height, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
buf = io.BytesIO()
Image.radial_gradient("L").resize((width, height)).convert("RGB").save(buf, format=kind)
uri = f"data:image/{kind.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = media.fetch_image(uri, Settings(fetch_max_bytes=300_000_000))
tensor = media.prepare_conditioning_image(image, 1280, 720, (0, 0, 0, 0), 35)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"shape": list(tensor.shape), "extra_mib": (after - before) // 1024}))
"""


@pytest.mark.parametrize("width, height, kind, max_mib", [
    (4000, 4000, "PNG", 800),    # 16 Mpx: 1.4 GB before
    (7360, 4912, "JPEG", 900),   # a 36-megapixel photo
])
def test_large_images_work_with_bounded_memory(width, height, kind, max_mib):
    out = subprocess.run([sys.executable, "-c", _PROBE, str(width), str(height), kind], capture_output=True,
                         text=True, timeout=300, cwd=repo_path(), env={"PYTHONPATH": str(repo_path()),
                                                                       "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{width}x{height} {kind}: conditioning {result['shape']}, +{result['extra_mib']} MiB peak")
    assert result["extra_mib"] < max_mib
    assert result["shape"][-1] >= 1.5 * 1280 - 2 and result["shape"][-2] >= 1.5 * 720 - 2
