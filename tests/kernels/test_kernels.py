"""Every kernel against its PyTorch reference, run on CPU tensors through Triton's interpreter (the code the GPU
compiles): shapes with non-power-of-2 dims, segment boundaries inside a tile of tokens, non-contiguous inputs
(transposed activations, views into the adaLN table, broadcast RoPE tables), fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels.gate_residual import gate_residual, gate_residual_reference  # noqa: E402
from kernels.rmsnorm_modulate import rmsnorm_modulate, rmsnorm_modulate_reference  # noqa: E402
from kernels.rope_qk import rope_qk, rope_qk_reference  # noqa: E402

# fp32: the same maths in another order; bf16: the kernel rounds once where torch rounds after each op
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}
CASES = [  # (batch, tokens, dim, segments, block_m)
    pytest.param(2, 37, 48, (0, 6, 37), 4, id="boundary-inside-tile"),
    pytest.param(1, 20, 64, (0, 20), 8, id="one-segment"),
    pytest.param(3, 13, 40, (0, 3, 9, 13), 4, id="three-segments-batch3"),
    pytest.param(2, 9, 24, (0, 0, 9), 16, id="empty-first-segment"),
]


def _activations(batch, tokens, dim, dtype, contiguous, g):
    if contiguous:
        return torch.randn(batch, tokens, dim, generator=g).to(dtype)
    return torch.randn(batch, dim, tokens, generator=g).to(dtype).transpose(1, 2)  # token stride 1


def _ada_views(batch, segments, dim, dtype, g, count):
    """Views into a (B, U, 6, D) adaLN table, as the segmented block unbinds it: strided, not contiguous."""
    table = (torch.randn(batch, len(segments) - 1, 6, dim, generator=g) * 0.5).to(dtype)
    return table.unbind(dim=2)[:count]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch,tokens,dim,segments,block_m", CASES)
def test_rmsnorm_modulate_matches_reference(batch, tokens, dim, segments, block_m, contiguous, dtype):
    g = torch.Generator().manual_seed(dim + tokens)
    x = _activations(batch, tokens, dim, dtype, contiguous, g) * 3
    scale, shift = _ada_views(batch, segments, dim, dtype, g, 2)
    assert scale.stride(0) == (len(segments) - 1) * 6 * dim  # a view into the (B, U, 6, D) table
    out = rmsnorm_modulate(x, scale, shift, segments, 1e-6, block_m=block_m)
    expected = rmsnorm_modulate_reference(x, scale, shift, segments, 1e-6)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch,tokens,dim,segments,block_m", CASES)
def test_gate_residual_matches_reference(batch, tokens, dim, segments, block_m, contiguous, dtype):
    g = torch.Generator().manual_seed(dim * tokens)
    base = _activations(batch, tokens, dim, dtype, contiguous, g)
    x = _activations(batch, tokens, dim, dtype, not contiguous, g)
    (gate,) = _ada_views(batch, segments, dim, dtype, g, 1)
    out = gate_residual(base, x, gate, segments, block_m=block_m, block_d=16)  # several column tiles too
    expected = gate_residual_reference(base, x, gate, segments)
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch,tokens,dim,block_m,shared", [(2, 37, 48, 4, True), (3, 10, 96, 8, False),
                                                             (1, 5, 6, 2, True)])
def test_rope_qk_matches_reference(batch, tokens, dim, block_m, shared, contiguous, dtype):
    g = torch.Generator().manual_seed(dim)
    q = _activations(batch, tokens, dim, dtype, contiguous, g) * 2
    k = _activations(batch, tokens, dim, dtype, contiguous, g)
    w_q = (torch.rand(dim, generator=g) + 0.5).to(dtype)
    w_k = (torch.rand(dim, generator=g) + 0.5).to(dtype)
    angles = torch.rand(1 if shared else batch, tokens, dim // 2, generator=g) * 6
    # shared: as the segmented forward passes them, fp32 tables for the first row expanded over the batch
    # (stride 0, read once per tile); otherwise a table per row
    cos = angles.cos().repeat_interleave(2, dim=-1).expand(batch, -1, -1)
    sin = angles.sin().repeat_interleave(2, dim=-1).expand(batch, -1, -1)
    q_out, k_out = rope_qk(q, k, w_q, w_k, cos, sin, 1e-5, block_m=block_m)
    q_ref, k_ref = rope_qk_reference(q, k, w_q, w_k, cos, sin, 1e-5)
    assert q_out.dtype == dtype and q_out.is_contiguous()
    torch.testing.assert_close(q_out, q_ref, **TOLERANCE[dtype])
    torch.testing.assert_close(k_out, k_ref, **TOLERANCE[dtype])


def test_rope_qk_reference_is_diffusers_attention_maths():
    """The reference is what LTXAttention does: torch.nn.RMSNorm across heads, then apply_rotary_emb."""
    from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    norm_q, norm_k = torch.nn.RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm_q.weight.copy_(torch.rand(16, generator=g) + 0.5)
        norm_k.weight.copy_(torch.rand(16, generator=g) + 0.5)
    cos, sin = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    with torch.no_grad():
        q_ref, k_ref = rope_qk_reference(q, k, norm_q.weight, norm_k.weight, cos, sin, 1e-5)
        torch.testing.assert_close(q_ref, apply_rotary_emb(norm_q(q), (cos, sin)), rtol=0, atol=0)
        torch.testing.assert_close(k_ref, apply_rotary_emb(norm_k(k), (cos, sin)), rtol=0, atol=0)


def test_rmsnorm_modulate_reference_is_the_engine_maths():
    """The reference is diffusers' RMSNorm followed by segmented.py's `_modulate`."""
    from diffusers.models.normalization import RMSNorm

    from ltxserve.engine.segmented import _gated_add, _modulate

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 11, 24, generator=g).to(torch.bfloat16)
    scale, shift, gate = _ada_views(2, (0, 4, 11), 24, torch.bfloat16, g, 3)
    expected = _modulate(RMSNorm(24, eps=1e-6, elementwise_affine=False)(x), scale, shift, (0, 4, 11))
    assert torch.equal(rmsnorm_modulate_reference(x, scale, shift, (0, 4, 11), 1e-6), expected)
    assert torch.equal(gate_residual_reference(x, x * 2, gate, (0, 4, 11)), _gated_add(x, x * 2, gate, (0, 4, 11)))


@pytest.mark.parametrize("segments", [(0, 5), (1, 9), (0, 5, 4, 9), (0, 1, 2, 3, 4, 9)])
def test_segments_that_do_not_fit_are_refused(segments):
    x = torch.randn(1, 9, 8)
    values = torch.randn(1, len(segments) - 1, 8)
    with pytest.raises(ValueError):
        rmsnorm_modulate(x, values, values, segments, 1e-6)
    with pytest.raises(ValueError):
        gate_residual(x, x, values, segments)


def test_a_wrong_kernel_would_be_caught():
    """The tolerances are tight enough to see a modulation without the `1 +` (a real mistake)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 32, generator=g)
    scale, shift = _ada_views(1, (0, 8), 32, torch.float32, g, 2)
    out = rmsnorm_modulate(x, scale, shift, (0, 8), 1e-6)
    wrong = rmsnorm_modulate_reference(x, scale - 1, shift, (0, 8), 1e-6)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out, wrong, **TOLERANCE[torch.bfloat16])
