"""The per-request memory plan: its activation model against traced peaks of the real 13B configurations (meta
device, reduced depth), the decode it chooses, the 422 it raises, and the VAE knobs it sets."""

from __future__ import annotations

import pytest
import torch

from ltxserve.engine import memory_trace as mt
from ltxserve.engine.contract import InputError
from ltxserve.engine.memory_plan import (
    GiB,
    PASS1_BATCH,
    PASS2_BATCH,
    RequestSize,
    RequestTooLarge,
    apply_request_plan,
    decode_candidates,
    decoder_activation_bytes,
    encode_image_activation_bytes,
    latent_shape,
    pass_sizes,
    plan_request,
    text_encoder_activation_bytes,
    transformer_activation_bytes,
    upsampler_activation_bytes,
)
from ltxserve.engine.placement import Placement, card_free_bytes, count_model_sizes, plan_placement

P480 = RequestSize(848, 480, 121)
P720 = RequestSize(1280, 720, 121)
LONG = RequestSize(1280, 720, 257)
GEOMETRIES = [P480, P720, LONG]
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def sizes():
    return count_model_sizes()


@pytest.fixture(scope="module")
def meta():
    return mt.build_meta_components(transformer_layers=2, text_layers=2)


def _close(estimate: int, traced: int) -> None:
    assert traced > 0
    assert abs(estimate - traced) <= TOLERANCE * traced, (
        f"estimate {estimate / GiB:.3f} GiB vs traced {traced / GiB:.3f} GiB ({estimate / traced - 1:+.1%})")


def _empty(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, device="meta", dtype=dtype)


@pytest.fixture(scope="module")
def meta_fp8():
    return mt.build_meta_components(transformer_layers=1, text_layers=1, fp8_matmul="scaled_mm")


@pytest.mark.parametrize("request_size", GEOMETRIES, ids=["480p", "720p", "720p-257f"])
@pytest.mark.parametrize("weights", ["bf16", "fp8-scaled_mm", "fp8-dequant"])
def test_transformer_estimate_matches_the_traced_forward(sizes, meta, meta_fp8, request_size, weights):
    from ltxserve.engine.fp8 import set_fp8_matmul

    model = meta.transformer if weights == "bf16" else meta_fp8.transformer
    if weights != "bf16":
        set_fp8_matmul(model, weights.split("-")[1])
    ps = pass_sizes(request_size)
    f = ps.latent_frames
    for batch, (pw, ph) in ((PASS1_BATCH, (ps.pass1_width, ps.pass1_height)),
                            (PASS2_BATCH, (ps.pass2_width, ps.pass2_height))):
        traced = mt.trace_transformer(model, batch, f, ph // 32, pw // 32).peak_bytes
        estimate = transformer_activation_bytes(sizes, batch, f * (ph // 32) * (pw // 32),
                                                fp8_matmul=None if weights == "bf16" else weights.split("-")[1])
        _close(estimate, traced)


def test_the_tracer_reproduces_the_recorded_figure_for_diffusers_forward(meta):
    # facts.md: diffusers' per-token forward at 720p pass 2 (24,960 tokens, batch 2) holds 11.05 GiB; the
    # segmented forward the pipeline runs holds about half.
    plain = mt.trace_transformer(meta.transformer, 2, 16, 30, 52, segmented=False).peak_bytes
    assert plain / GiB == pytest.approx(11.05, abs=0.01)
    assert mt.trace_transformer(meta.transformer, 2, 16, 30, 52).peak_bytes < 0.5 * plain


def _pick(candidates, mode, tile=0, frames=0):
    return next(d for d in candidates
                if d.mode == mode and (not tile or d.tile_height == tile) and (not frames or d.tile_frames == frames))


# (request, decode mode, tile px, chunk frames): every mode at 480p, the cheap-to-trace ones at the larger sizes.
DECODES = [
    (P480, "full", 0, 0), (P480, "spatial", 512, 0), (P480, "temporal", 0, 32), (P480, "spatial+temporal", 1024, 48),
    (P720, "full", 0, 0), (P720, "spatial", 1024, 0), (P720, "temporal", 0, 32),
    (LONG, "full", 0, 0), (LONG, "spatial", 1024, 0),
]


@pytest.mark.parametrize("request_size, mode, tile, frames", DECODES)
def test_decode_estimate_matches_the_traced_decode(sizes, meta, request_size, mode, tile, frames):
    f, h, w = latent_shape(sizes, request_size)
    plan = _pick(decode_candidates(sizes, f, h, w), mode, tile, frames)
    apply_request_plan(meta.vae, plan)  # the knobs the server sets, traced through diffusers' own tiling code
    traced = mt.trace(meta.vae.decode, _empty(1, 128, f, h, w), temb=_empty(1), return_dict=False)
    _close(plan.activation_bytes, traced.peak_bytes)
    if mode == "full" and request_size == P720:
        # facts.md: ~18 GiB at 960x1664x121, the largest tensor 5.76 GiB (an fp32 RMSNorm upcast).
        assert traced.peak_bytes / GiB == pytest.approx(18.0, abs=0.1)
        assert traced.largest_bytes / GiB == pytest.approx(5.76, abs=0.01)


@pytest.mark.parametrize("request_size", GEOMETRIES, ids=["480p", "720p", "720p-257f"])
def test_upsampler_and_image_encoder_estimates_match_traces(sizes, meta, request_size):
    ps = pass_sizes(request_size)
    f, h1, w1 = ps.latent_frames, ps.pass1_height // 32, ps.pass1_width // 32
    traced = mt.trace(meta.latent_upsampler, _empty(1, 128, f, h1, w1, dtype=torch.float32)).peak_bytes
    _close(upsampler_activation_bytes(sizes, f, h1, w1), traced)
    image = _empty(1, 3, 1, ps.pass2_height, ps.pass2_width)
    traced = mt.trace(lambda x: meta.vae.encode(x).latent_dist.mode(), image).peak_bytes
    _close(encode_image_activation_bytes(sizes, ps.pass2_width, ps.pass2_height), traced)


def test_text_encoder_estimate_matches_the_trace(sizes, meta):
    # The attention mask is left out on the meta device (T5's mask helper reads its values); it is 256 bytes.
    traced = mt.trace(meta.text_encoder, torch.zeros(1, 256, dtype=torch.long, device="meta")).peak_bytes
    _close(text_encoder_activation_bytes(sizes), traced)


def test_tracer_counts_views_once_and_frees_dead_storage():
    base = _empty(1024, 1024, dtype=torch.float32)  # made before tracing: not counted
    with mt.LiveBytes() as tracker:
        a = base * 2
        view = a.view(-1)
        del a
        b = view + 1
        assert tracker.live == 2 * 4 * 1024 * 1024  # the view keeps a's storage alive
        del view, b
        assert tracker.live == 0
    assert tracker.peak == 2 * 4 * 1024 * 1024


# --- the plan -----------------------------------------------------------------------------------------------------


def test_decoder_activations_grow_with_the_video(sizes):
    assert decoder_activation_bytes(sizes, 16, 15, 26) < decoder_activation_bytes(sizes, 16, 30, 52) \
        < decoder_activation_bytes(sizes, 33, 30, 52)


def test_plan_decodes_whole_when_it_fits_and_in_tiles_when_not(sizes):
    placement = plan_placement(card_free_bytes(80), sizes, P720)
    assert placement.memory == "gpu"
    plan = plan_request(sizes, placement, P720, card_free_bytes(80))
    assert plan == plan_request(sizes, placement, P720)  # by default, the memory the placement was planned with
    assert plan.decode.mode == "full"
    assert (plan.passes.pass2_width, plan.passes.pass2_height) == (1664, 960)  # decoded before the resize
    assert plan.peak_bytes == max(plan.stage_bytes.values()) <= card_free_bytes(80)
    # The 257-frame video's whole decode (~38 GiB of activations) does not fit beside all the weights: tiles do.
    long = plan_request(sizes, placement, LONG, card_free_bytes(80))
    assert long.decode.mode != "full" and long.peak_bytes <= card_free_bytes(80)
    assert long.stage_bytes["decode"] < plan_request(sizes, placement, LONG, 10**15).stage_bytes["decode"]


def test_the_cheapest_fitting_decode_is_chosen(sizes):
    placement = plan_placement(card_free_bytes(80), sizes, P720)
    free = card_free_bytes(80)
    plan = plan_request(sizes, placement, LONG, free)
    f, h, w = latent_shape(sizes, LONG)
    cheaper = [d for d in decode_candidates(sizes, f, h, w) if d.work < plan.decode.work]
    assert cheaper  # the whole decode at least
    for d in cheaper:
        from ltxserve.engine.memory_plan import stage_peaks

        assert max(stage_peaks(sizes, LONG, placement.memory, placement.dtype, placement.resident, d).values()) > free


def test_too_large_a_request_is_refused_with_what_would_fit(sizes):
    placement = plan_placement(card_free_bytes(48), sizes, P720)
    huge = RequestSize(2048, 2048, 1441)
    with pytest.raises(RequestTooLarge) as info:
        plan_request(sizes, placement, huge, card_free_bytes(48))
    err = info.value
    assert isinstance(err, InputError) and err.status_code == 422
    body = err.body()["detail"][0]
    assert body["type"] == "request_too_large" and "2048x2048, 1441-frame" in body["msg"]
    assert "denoise_pass2" in body["msg"]
    assert err.largest_fitting is not None and err.largest_fitting.num_frames == 1441
    assert err.largest_fitting.width == err.largest_fitting.height < 2048  # same aspect, smaller
    assert err.longest_fitting is not None and err.longest_fitting.num_frames < 1441
    assert f"{err.largest_fitting.width}x{err.largest_fitting.height} at 1441 frames" in body["msg"]
    # What it names does run, and a step bigger does not.
    plan_request(sizes, placement, err.largest_fitting, card_free_bytes(48))
    plan_request(sizes, placement, err.longest_fitting, card_free_bytes(48))
    bigger = RequestSize(err.largest_fitting.width + 64, err.largest_fitting.height + 64, 1441)
    with pytest.raises(RequestTooLarge):
        plan_request(sizes, placement, bigger, card_free_bytes(48))
    longer = RequestSize(2048, 2048, err.longest_fitting.num_frames + 8)
    with pytest.raises(RequestTooLarge):
        plan_request(sizes, placement, longer, card_free_bytes(48))


def test_the_default_request_runs_on_the_cards_the_placement_was_made_for(sizes):
    for gb in (24, 32, 48, 80):
        placement = plan_placement(card_free_bytes(gb), sizes, P720)
        plan = plan_request(sizes, placement, P720, card_free_bytes(gb))
        assert plan.peak_bytes <= card_free_bytes(gb)


# --- the VAE knobs, on a real (tiny) VAE ----------------------------------------------------------------------------


def _tiny_vae():
    from diffusers import AutoencoderKLLTXVideo

    from ltxserve.engine.models import TINY_VAE

    torch.manual_seed(0)
    return AutoencoderKLLTXVideo(**TINY_VAE).eval()


@pytest.mark.parametrize("mode, tile, frames", [("spatial", 256, 0), ("spatial+temporal", 256, 16)])
def test_apply_request_plan_tiles_the_decode_only(sizes, mode, tile, frames):
    vae = _tiny_vae()
    # latents 3 frames x 9 x 9 (288 x 288 px): big enough for 256 px tiles and 16-frame chunks.
    plan = next(d for d in decode_candidates(sizes, 3, 9, 9) if d.mode == mode and d.tile_height == tile
                and d.tile_frames == frames)
    z = torch.randn(1, 16, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    temb = torch.tensor([0.05])
    calls = []
    vae.decoder.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        whole = vae.decode(z, temb=temb).sample
        assert len(calls) == 1
        apply_request_plan(vae, plan)
        tiled = vae.decode(z, temb=temb).sample
        # the encoder is not tiled: one image at 288 px encodes as before
        image = torch.randn(1, 3, 1, 288, 288, generator=torch.Generator().manual_seed(2))
        before = vae.use_tiling
        encoded = vae.encode(image).latent_dist.mode()
    assert tiled.shape == whole.shape
    assert len(calls) > 2  # the decoder ran on tiles / chunks
    assert all(s[3] <= tile // 32 for s in calls[1:])
    if frames:
        assert all(s[2] <= frames // 8 + 1 for s in calls[1:])
    assert not before and not vae.use_tiling and not vae.use_framewise_decoding  # flags only inside the decode
    assert encoded.shape == (1, 16, 1, 9, 9)
    # Back to a whole decode: the same numbers as before any tiling.
    apply_request_plan(vae, next(d for d in decode_candidates(sizes, 3, 9, 9) if d.mode == "full"))
    calls.clear()
    with torch.no_grad():
        again = vae.decode(z, temb=temb).sample
    assert len(calls) == 1 and torch.equal(again, whole)


def test_placement_fields_for_the_offloader(sizes):
    p = plan_placement(card_free_bytes(40), sizes, P720)
    assert p.memory == "offload" and p.resident == ("transformer", "latent_upsampler", "vae")
    assert p.visitors == ("text_encoder",)
    assert Placement("gpu", "bf16", "full", 0, 0).resident == ("text_encoder", "transformer", "latent_upsampler", "vae")
    assert Placement("sequential", "bf16", "full", 0, 0).resident == ("latent_upsampler",)
    with pytest.raises(ValueError):
        Placement("offload", "bf16", "full", 0, 0, resident=("unet",))
