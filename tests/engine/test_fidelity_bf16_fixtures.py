"""The bf16 golden data itself is sound (independent of ltxserve).

tests/fixtures/reference/bf16/ holds Lightricks' reference run with `precision: bfloat16` on the same tiny checkpoint,
images and cases as the fp32 fixtures one folder up (scripts/make_reference_fixtures.py --precision bfloat16), plus the
reference's own bf16-vs-fp32 distance per case. These checks guard that data: the same cases as fp32, informative
frames, and a recorded distance that is what the committed frames give and is plausible for bf16 rounding (well below
identical, well above a different video). Comparing ltxserve's bf16 output with these frames is a separate test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine.frame_metrics import psnr

FP32_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "reference"
BF16_DIR = FP32_DIR / "bf16"

if not (BF16_DIR / "cases.json").exists():  # only a missing fixture folder skips
    pytest.skip(f"bf16 reference fixtures not present ({BF16_DIR})", allow_module_level=True)

BF16: dict[str, Any] = json.loads((BF16_DIR / "cases.json").read_text())
FP32: dict[str, Any] = json.loads((FP32_DIR / "cases.json").read_text())
FP32_CASES = {c["name"]: c for c in FP32["cases"]}
CASES: list[dict[str, Any]] = BF16["cases"]
IDS = [c["name"] for c in CASES]

# bf16 rounding of a random-weight model lands around 48-51 dB from fp32; below 35 dB the two runs no longer compute
# the same video (e.g. a different seed or noise draw), above 70 dB the "bf16" run was effectively fp32.
MIN_BF16_VS_FP32_PSNR = 35.0
MAX_BF16_VS_FP32_PSNR = 70.0


def _frames(directory: Path, name: str) -> np.ndarray:
    frames = np.load(directory / name)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    return frames


def _bf16_frames(case: dict[str, Any]) -> np.ndarray:
    frames = _frames(BF16_DIR, case["frames"])
    assert frames.shape == tuple(case["frames_shape"])
    return frames


# ----------------------------------------------------------------------------------------------------------------
# the psnr helper
# ----------------------------------------------------------------------------------------------------------------


def test_psnr_helper():
    zeros = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(zeros, zeros) == math.inf
    assert psnr(zeros, zeros + 1) == pytest.approx(20 * math.log10(255))  # mse 1
    assert psnr(zeros, zeros + 255) == pytest.approx(0.0)  # no uint8 wrap-around
    half = zeros.copy()
    half[0] = 2  # mse = 4 over half the values = 2
    assert psnr(half, zeros) == pytest.approx(10 * math.log10(255**2 / 2))
    with pytest.raises(TypeError):
        psnr(zeros.astype(np.float32), zeros)
    with pytest.raises(ValueError):
        psnr(zeros, zeros[:1])


# ----------------------------------------------------------------------------------------------------------------
# the bf16 fixtures mirror the fp32 ones
# ----------------------------------------------------------------------------------------------------------------


def test_bf16_document_describes_a_bf16_reference_run_on_the_shared_checkpoint():
    assert BF16["precision"] == "bfloat16"
    assert (BF16_DIR / BF16["checkpoint"]).resolve() == (FP32_DIR / FP32["checkpoint"]).resolve()
    assert (BF16_DIR / BF16["checkpoint"] / "ltxv-13b-0.9.7-dev.safetensors").is_file()
    assert BF16["reference_versions"]["ltx-video"] == FP32["reference_versions"]["ltx-video"]
    assert not any("made no-ops" in patch for patch in BF16["reference_patches"]), "bf16 must not keep VAE/T5 fp32"


def test_bf16_cases_are_the_fp32_cases():
    assert [c["name"] for c in CASES] == [c["name"] for c in FP32["cases"]]
    for case in CASES:
        fp32 = FP32_CASES[case["name"]]
        assert case["request"] == fp32["request"]
        assert case["guidance_overrides"] == fp32["guidance_overrides"]
        assert case["frames_shape"] == fp32["frames_shape"]
        assert (BF16_DIR / case["image"]).resolve() == (FP32_DIR / fp32["image"]).resolve()
        assert case["pipeline_config"]["precision"] == "bfloat16"
        assert {**case["pipeline_config"], "precision": None} == {**fp32["pipeline_config"], "precision": None}


def test_cases_cover_the_required_variations():
    from tests.engine.test_fidelity import assert_cases_cover_the_required_variations

    assert_cases_cover_the_required_variations(CASES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conditioning_is_the_fp32_runs_conditioning(case):
    """The conditioning tensor is built before any cast to bf16, so both runs started from the same input."""
    fp32_file = FP32_DIR / FP32_CASES[case["name"]]["conditioning"]
    with np.load(BF16_DIR / case["conditioning"]) as bf16, np.load(fp32_file) as fp32:
        assert bf16["conditioning"].shape == tuple(case["conditioning_shape"])
        np.testing.assert_array_equal(bf16["conditioning"], fp32["conditioning"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_frames_are_informative(case):
    """Frames that were constant, saturated or static would let a broken engine pass."""
    frames = _bf16_frames(case).astype(np.float64)
    assert frames.std() > 10, "nearly constant frames"
    assert ((frames == 0) | (frames == 255)).mean() < 0.05, "mostly saturated frames"
    assert np.abs(np.diff(frames, axis=0)).mean() > 2, "frames do not change over time"


# ----------------------------------------------------------------------------------------------------------------
# the reference's own bf16-vs-fp32 distance
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_recorded_bf16_vs_fp32_distance_is_plausible_and_reproducible(case):
    recorded = case["reference_bf16_vs_fp32"]
    fp32_frames_file = FP32_CASES[case["name"]]["frames"]
    assert (BF16_DIR / recorded["fp32_frames"]).resolve() == (FP32_DIR / fp32_frames_file).resolve()
    assert MIN_BF16_VS_FP32_PSNR <= recorded["psnr_db"] <= MAX_BF16_VS_FP32_PSNR, recorded

    bf16 = _bf16_frames(case)
    fp32 = _frames(FP32_DIR, fp32_frames_file)
    diff = np.abs(bf16.astype(np.int16) - fp32.astype(np.int16))
    assert psnr(bf16, fp32) == pytest.approx(recorded["psnr_db"], rel=1e-9)
    assert float(diff.mean()) == pytest.approx(recorded["mean_abs"], rel=1e-9)
    assert int(diff.max()) == recorded["max_abs"]
