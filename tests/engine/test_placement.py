"""Memory placement: exact sizes of the real 13B components, and the decision for stated card sizes."""

from __future__ import annotations

import pytest

from ltxserve.engine.placement import (
    GiB,
    PlacementError,
    RequestSize,
    card_free_bytes,
    count_model_sizes,
    pass_sizes,
    plan_placement,
    stage_activations,
    weight_bytes,
)
from ltxserve.engine.placement import _ladder

P720 = RequestSize(1280, 720, 121)  # the endpoint's default: 720p, 121 frames
P480 = RequestSize(848, 480, 121)


@pytest.fixture(scope="module")
def sizes():
    return count_model_sizes()


def test_parameter_counts_match_the_published_files(sizes):
    # Independent figures: the 13B transformer's 6 bf16 diffusers shards total 26.09 GB; the 0.9.7 VAE is 1.247 B
    # parameters; the upscaler file is 505 MB of fp32; PixArt's fp32 T5-XXL encoder shards are 9.99 + 9.06 GB.
    assert sizes.transformer_params * 2 == pytest.approx(26.09e9, rel=0.005)
    assert sizes.vae_params == pytest.approx(1.247e9, rel=0.005)
    assert sizes.upsampler_params * 4 == pytest.approx(505e6, rel=0.01)
    assert sizes.text_encoder_params * 4 == pytest.approx(9.99e9 + 9.06e9, rel=0.005)
    # The single-file checkpoint is the bf16 transformer plus the bf16 VAE: 28.6 GB.
    assert (sizes.transformer_params + sizes.vae_params) * 2 == pytest.approx(28.6e9, rel=0.01)
    assert 0.98 < sizes.transformer_linear_weight_params / sizes.transformer_params < 1.0
    assert sizes.transformer_block_params * 48 < sizes.transformer_params


def test_pass_sizes_follow_the_multiscale_recipe():
    ps = pass_sizes(P720)
    assert (ps.padded_width, ps.padded_height, ps.padded_frames) == (1280, 736, 121)
    assert (ps.pass1_width, ps.pass1_height) == (832, 480)  # floor32(int(1280 * 0.6666666)), floor32(int(736 * ...))
    assert (ps.pass2_width, ps.pass2_height) == (1664, 960)
    assert pass_sizes(RequestSize(848, 480, 100)).padded_frames == 105


T_U_V = ("transformer", "latent_upsampler", "vae")
U = ("latent_upsampler",)


@pytest.mark.parametrize(
    "card_gb, request_size, memory, dtype, resident, decode",
    [
        (80, P720, "gpu", "bf16", ("text_encoder", *T_U_V), "full"),  # everything resident
        (48, P720, "gpu", "bf16", ("text_encoder", *T_U_V), "tiled"),  # ... if the VAE decodes in tiles
        (40, P720, "offload", "bf16", T_U_V, "tiled"),  # only T5 visits
        (48, P480, "gpu", "bf16", ("text_encoder", *T_U_V), "full"),
        (32, P480, "offload", "bf16", ("latent_upsampler", "vae"), "full"),  # bf16 with the transformer visiting
        (32, P720, "offload", "fp8", T_U_V, "tiled"),  # fp8 transformer weights: only T5 visits
        (24, P480, "offload", "fp8", ("transformer", "latent_upsampler"), "tiled"),  # the VAE visits too
        (24, P720, "offload", "fp8", ("transformer", "latent_upsampler"), "tiled"),  # fp8 keeps the transformer
        (16, P720, "sequential", "bf16", U, "tiled"),  # last resort: streamed, the upsampler resident
        (12, P720, "sequential", "bf16", U, "tiled"),
        (12, P480, "sequential", "bf16", U, "full"),
    ],
)
def test_plan_for_stated_cards(sizes, card_gb, request_size, memory, dtype, resident, decode):
    free = card_free_bytes(card_gb)
    plan = plan_placement(free, sizes, request_size)
    assert (plan.memory, plan.dtype, plan.resident, plan.vae_decode) == (memory, dtype, resident, decode)
    assert plan.peak_bytes <= free
    assert plan.peak_bytes == max(plan.stage_bytes.values())


def test_estimate_counts_the_weights_that_are_resident(sizes):
    w = weight_bytes(sizes, "bf16")
    gpu = plan_placement(card_free_bytes(80), sizes, P720)
    assert min(gpu.stage_bytes.values()) > w.total  # every stage holds every weight
    assert gpu.host_bytes == 0

    offload = plan_placement(card_free_bytes(40), sizes, P720)
    assert offload.resident == T_U_V
    resident = w.transformer + w.vae + w.upsampler
    assert offload.stage_bytes["decode"] > resident  # the transformer stays while the VAE decodes
    # ... and the text encoder is on the GPU only while it encodes.
    assert offload.stage_bytes["encode_prompt"] > resident + w.text_encoder
    assert offload.stage_bytes["denoise_pass2"] <= gpu.stage_bytes["denoise_pass2"] - w.text_encoder
    assert offload.host_bytes == w.text_encoder  # the visitor's weights wait in host memory

    fewer = plan_placement(card_free_bytes(32), sizes, P480)
    assert fewer.resident == ("latent_upsampler", "vae") and fewer.host_bytes == w.transformer + w.text_encoder
    assert fewer.stage_bytes["denoise_pass2"] < w.transformer + w.text_encoder  # one visitor at a time

    fp8 = plan_placement(card_free_bytes(32), sizes, P720)
    assert fp8.weights.transformer == pytest.approx(sizes.transformer_params, rel=0.02)  # ~1 byte per parameter


def test_sequential_holds_a_couple_of_blocks(sizes):
    plan = plan_placement(card_free_bytes(16), sizes, P720)
    assert plan.memory == "sequential"
    act = stage_activations(sizes, P720, plan.decode)
    weights_on_gpu = plan.stage_bytes["denoise_pass2"] - act["denoise_pass2"]
    assert 2 * 2 * sizes.transformer_block_params < weights_on_gpu < 4 * GiB


def test_activations_grow_with_the_request(sizes):
    small = stage_activations(sizes, P480)
    large = stage_activations(sizes, P720)
    longer = stage_activations(sizes, RequestSize(1280, 720, 257))
    assert small["denoise_pass2"] < large["denoise_pass2"] < longer["denoise_pass2"]
    assert small["decode"] < large["decode"] < longer["decode"]
    # Pass 2 has 4x the tokens of pass 1 (twice the size each way) at batch 2 instead of 3.
    assert large["denoise_pass2"] / large["denoise_pass1"] == pytest.approx(4 * 2 / 3, rel=0.05)


def test_too_small_card_names_the_smallest_that_works(sizes):
    with pytest.raises(PlacementError) as info:
        plan_placement(card_free_bytes(8), sizes, P720)
    message = str(info.value)
    assert "12 GB" in message and "1280x720" in message
    plan_placement(card_free_bytes(12), sizes, P720)  # and that card does work


def test_more_memory_never_gives_a_worse_placement(sizes):
    rank = {rung: i for i, rung in enumerate(_ladder("auto", "auto"))}
    previous = len(rank)
    for gb in (12, 16, 20, 24, 32, 40, 48, 64, 80, 141):
        plan = plan_placement(card_free_bytes(gb), sizes, P720)
        r = rank[(plan.memory, plan.dtype, plan.resident)]
        assert r <= previous
        previous = r


def test_explicit_choices_are_honoured(sizes):
    plan = plan_placement(card_free_bytes(80), sizes, P720, memory="sequential")
    assert plan.memory == "sequential"
    plan = plan_placement(card_free_bytes(80), sizes, P720, dtype="fp8")
    assert (plan.memory, plan.dtype) == ("gpu", "fp8")
    with pytest.raises(PlacementError, match="--memory gpu"):
        plan_placement(card_free_bytes(24), sizes, P720, memory="gpu")
    with pytest.raises(ValueError, match="memory must be one of"):
        plan_placement(card_free_bytes(80), sizes, P720, memory="cpu")


def test_weight_bytes_per_dtype(sizes):
    bf16, fp8, fp32 = (weight_bytes(sizes, d) for d in ("bf16", "fp8", "fp32"))
    assert fp32.total - fp32.upsampler == 2 * (bf16.total - bf16.upsampler)
    assert fp8.vae == bf16.vae and fp8.text_encoder == bf16.text_encoder
    assert bf16.transformer / 2 < fp8.transformer < 0.51 * bf16.transformer
    # fp8: 1 byte per Linear weight in the blocks, an fp32 scale per output row, the rest bf16.
    rest = sizes.transformer_params - sizes.transformer_linear_weight_params
    assert fp8.transformer == sizes.transformer_linear_weight_params + 4 * sizes.transformer_rows_fp8 + 2 * rest
    assert bf16.upsampler == fp32.upsampler == 4 * sizes.upsampler_params  # kept in fp32, as the reference


def test_describe_reports_the_plan(sizes):
    text = plan_placement(card_free_bytes(40), sizes, P720).describe()
    assert "offload" in text and "GiB" in text and "denoise_pass2" in text and "visiting the GPU" in text
    assert f"{card_free_bytes(40) / GiB:.1f} GiB free" in text
