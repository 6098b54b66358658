"""Scaled fp8: per-row weight scales, the fp8 matmul and its dequantizing fallback, Lightricks' fp8 checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ltxserve.engine.fp8 import (
    FP8,
    FP8_MAX,
    Fp8Linear,
    convert_transformer_to_fp8,
    fp8_matmul_supported,
    quantize_activation_rows,
    quantize_rows,
)
from ltxserve.engine.models import (
    FP8_CHECKPOINT_NAME,
    build_tiny_components,
    load_components,
    save_original_layout,
)


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_row_scales_put_each_row_at_the_top_of_e4m3():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) * torch.logspace(-3, 0, 64)[:, None]  # rows from 1e-3 to 1
    w[5] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == FP8 and scale.dtype == torch.float32 and scale.shape == (64,)
    torch.testing.assert_close(q.float().abs().amax(dim=1)[6:], torch.full((58,), FP8_MAX))
    assert torch.isfinite(scale).all() and (q[5].float() == 0).all()
    back = q.float() * scale[:, None]
    assert _rel_error(back[6:], w[6:]) < 0.04  # e4m3 has 3 mantissa bits: ~2-3% per matrix


def test_scaling_is_what_keeps_small_weights():
    """The reason for scales: a std-0.005 matrix cast to e4m3 unscaled lands in the subnormals."""
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(1)) * 0.005
    unscaled = _rel_error(w.to(FP8).float(), w)
    q, scale = quantize_rows(w)
    scaled = _rel_error(q.float() * scale[:, None], w)
    assert unscaled > 0.08 and scaled < 0.04, (unscaled, scaled)


@pytest.mark.parametrize("matmul", ["dequant", "scaled_mm"])
@pytest.mark.parametrize("rows", [16, 37])  # 37: the fp8 GEMM pads tokens to a multiple of 16
def test_fp8_linear_matches_the_float_layer(matmul, rows):
    g = torch.Generator().manual_seed(2)
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=g) * 0.02)
        linear.bias.copy_(torch.randn(48, generator=g))
    layer = Fp8Linear.from_linear(linear, matmul)
    x = torch.randn(2, rows, 64, generator=g).to(torch.bfloat16)
    out = layer(x)
    assert out.shape == (2, rows, 48) and out.dtype == torch.bfloat16
    assert _rel_error(out - linear.bias, linear(x) - linear.bias) < 0.06


def test_scaled_mm_path_is_the_scaled_math():
    """The fp8 GEMM computes (x8 * sx) @ (w8 * sw)^T: the same value as dequantizing both operands exactly."""
    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(16, 32, generator=g))
    layer = Fp8Linear.from_linear(linear.to(torch.bfloat16), "scaled_mm")
    x = torch.randn(5, 32, generator=g).to(torch.bfloat16)
    x8, sx = quantize_activation_rows(x)
    expected = (x8.float() * sx) @ (layer.weight.float() * layer.weight_scale[:, None]).T
    torch.testing.assert_close(layer(x).float(), expected, rtol=1e-2, atol=1e-2)


def test_fp8_matmul_needs_a_recent_gpu():
    assert not fp8_matmul_supported("cpu")


def test_conversion_keeps_embeddings_norms_and_proj_out():
    c = build_tiny_components().to("cpu", torch.bfloat16)
    converted = convert_transformer_to_fp8(c.transformer)
    assert converted == 48 * 10
    t = c.transformer
    for linear in (t.proj_in, t.proj_out, t.time_embed.linear, t.caption_projection.linear_1):
        assert type(linear) is nn.Linear and linear.weight.dtype == torch.bfloat16
    block = t.transformer_blocks[0]
    assert isinstance(block.attn1.to_q, Fp8Linear) and isinstance(block.ff.net[2], Fp8Linear)
    assert block.scale_shift_table.dtype == torch.bfloat16


def test_lightricks_fp8_checkpoint_loads_its_e4m3_weights_exactly(tmp_path):
    c = build_tiny_components(seed=4)
    save_original_layout(c, tmp_path, fp8_blocks=True)
    assert (tmp_path / FP8_CHECKPOINT_NAME).exists()
    stored = c.transformer.transformer_blocks[3].attn2.to_k.weight.to(FP8)

    fp8 = load_components(tmp_path, dtype=torch.bfloat16, fp8="dequant")
    layer = fp8.transformer.transformer_blocks[3].attn2.to_k
    assert isinstance(layer, Fp8Linear)
    assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))  # the file's bytes, not re-rounded
    assert torch.equal(layer.weight_scale, torch.ones(layer.out_features))

    upcast = load_components(tmp_path, dtype=torch.bfloat16)  # asked for bf16: the same values, exactly
    plain = upcast.transformer.transformer_blocks[3].attn2.to_k
    assert type(plain) is nn.Linear and torch.equal(plain.weight, stored.to(torch.bfloat16))
    assert np.isfinite(upcast.transformer.proj_in.weight.float().numpy()).all()


def test_beside_the_bf16_checkpoint_the_fp8_file_is_taken_only_for_fp8(tmp_path):
    c = build_tiny_components(seed=5)
    save_original_layout(c, tmp_path)  # the bf16/fp32 checkpoint, upscaler, T5
    save_original_layout(c, tmp_path, fp8_blocks=True)  # and Lightricks' fp8 file beside it
    plain = load_components(tmp_path, dtype=torch.float32)
    layer = plain.transformer.transformer_blocks[1].ff.net[2]
    assert type(layer) is nn.Linear and torch.equal(layer.weight, c.transformer.transformer_blocks[1].ff.net[2].weight)
    fp8 = load_components(tmp_path, dtype=torch.bfloat16, fp8="dequant")
    stored = c.transformer.transformer_blocks[1].ff.net[2].weight.to(FP8)
    assert torch.equal(fp8.transformer.transformer_blocks[1].ff.net[2].weight.view(torch.uint8), stored.view(torch.uint8))
