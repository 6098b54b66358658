"""Planning, table-tested against the reference's published numbers (shared/reference/ltx-algorithm.md)."""

from __future__ import annotations

import numpy as np
import pytest

from ltxserve.engine.plan import (
    LTXV_13B_097_DEV,
    calculate_padding,
    guidance_schedule,
    linear_quadratic_schedule,
    output_size,
    pad_frames,
    pass_timesteps,
    plan_geometry,
    with_steps,
)

# The 30-step unshifted linear-quadratic schedule, as the reference prints it (5 decimals).
LQ30 = [1.0, .99833, .99667, .995, .99333, .99167, .99, .98833, .98667, .985, .98333, .98167, .98, .97833, .97667,
        .975, .96911, .95478, .932, .90078, .86111, .813, .75644, .69144, .618, .53611, .44578, .347, .23978, .12411]


def test_linear_quadratic_schedule_30():
    np.testing.assert_allclose(linear_quadratic_schedule(30), LQ30, atol=6e-6)


def test_skips_slice_the_schedule():
    first = pass_timesteps(LTXV_13B_097_DEV.first_pass)
    second = pass_timesteps(LTXV_13B_097_DEV.second_pass)
    assert len(first) == 27 and first[-1] == pytest.approx(0.44578, abs=1e-5)
    assert len(second) == 13 and second[0] == pytest.approx(0.95478, abs=1e-5)


@pytest.mark.parametrize("steps, cfg, stg, rescale, blocks, conds", [
    ((0, 1, 2), 1, 0, 1, (), 1),
    ((3, 4), 6, 4, 0.5, (22, 35, 39), 3),
    ((5, 6, 7, 8, 9), 8, 4, 0.5, (28,), 3),   # step 9 is the 0.985 float32 tie: CFG 8
    ((10, 11, 12, 13), 6, 4, 1, (28,), 3),
    ((14, 15, 16, 17, 18), 1, 2, 1, (28,), 2),  # .976667 < .9767
    ((19, 20, 26), 1, 1, 1, (28,), 2),          # .900778 < .9008
])
def test_first_pass_guidance_table(steps, cfg, stg, rescale, blocks, conds):
    table = guidance_schedule(LTXV_13B_097_DEV.first_pass, pass_timesteps(LTXV_13B_097_DEV.first_pass))
    for i in steps:
        g = table[i]
        assert (g.guidance_scale, g.stg_scale, g.rescaling_scale, g.num_conds) == (cfg, stg, rescale, conds), i
        if stg:
            assert g.skip_block_list == blocks


def test_second_pass_is_stg_only_on_block_27():
    table = guidance_schedule(LTXV_13B_097_DEV.second_pass, pass_timesteps(LTXV_13B_097_DEV.second_pass))
    assert {(g.guidance_scale, g.stg_scale, g.skip_block_list, g.num_conds) for g in table} == {(1, 1, (27,), 2)}


@pytest.mark.parametrize("size, padded, first, second", [
    ((1280, 720), (1280, 736), (832, 480), (1664, 960)),
    ((1216, 704), (1216, 704), (800, 448), (1600, 896)),
    ((832, 480), (832, 480), (544, 288), (1088, 576)),
    ((848, 480), (864, 480), (544, 288), (1088, 576)),
])
def test_pass_geometry(size, padded, first, second):
    g = plan_geometry(*size, 121, LTXV_13B_097_DEV.downscale_factor)
    assert (g.width_padded, g.height_padded) == padded
    assert (g.first_pass_width, g.first_pass_height) == first
    assert (g.second_pass_width, g.second_pass_height) == second


@pytest.mark.parametrize("n, padded", [(9, 9), (10, 17), (12, 17), (17, 17), (121, 121), (122, 129), (1441, 1441)])
def test_frames_pad_to_8k_plus_1(n, padded):
    assert pad_frames(n) == padded


def test_padding_split_like_the_reference():
    assert calculate_padding(720, 1280, 736, 1280) == (0, 0, 8, 8)
    assert calculate_padding(100, 150, 128, 160) == (5, 5, 14, 14)
    assert calculate_padding(101, 150, 128, 160) == (5, 5, 13, 14)


@pytest.mark.parametrize("resolution, aspect, image, expected", [
    ("720p", "16:9", (10, 10), (1280, 720)), ("720p", "9:16", (10, 10), (720, 1280)),
    ("720p", "1:1", (30, 10), (720, 720)), ("480p", "16:9", (1, 1), (848, 480)),
    ("480p", "auto", (1920, 1080), (848, 480)), ("480p", "auto", (1080, 1920), (480, 848)),
    ("720p", "auto", (1000, 1000), (720, 720)), ("720p", "auto", (1200, 1000), (720, 720)),
    ("720p", "auto", (1600, 1000), (1280, 720)), ("720p", "auto", (4000, 1000), (1280, 720)),
])
def test_output_size(resolution, aspect, image, expected):
    assert output_size(resolution, aspect, image) == expected


def test_impossible_skips_are_rejected():
    with pytest.raises(ValueError, match="skip"):
        with_steps(LTXV_13B_097_DEV, 10, 10, 30, 17)
    with pytest.raises(ValueError, match="skip"):
        with_steps(LTXV_13B_097_DEV, 30, 3, 8, 8)
    cfg = with_steps(LTXV_13B_097_DEV, 10, 2, 12, 6)
    assert len(pass_timesteps(cfg.first_pass)) == 8 and len(pass_timesteps(cfg.second_pass)) == 6
