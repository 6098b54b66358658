"""LTXAttention's q/k RMSNorm across heads (with weight) and the interleaved rotary embedding, q and k in one pass.

diffusers runs, for each of q and k: an fp32 upcast and the norm, a copy in the input dtype, the weight, then
`apply_rotary_emb`: an unbind into pairs, a stack of the rotated copy, two fp32 upcasts, two products with the fp32
cos/sin tables and the sum -- about a dozen passes over (B, N, inner) per tensor, and the fp32 tables are read
twice. Fused: q, k and the tables are read once, q and k written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._launch import check_3d, device_kernel


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """torch.nn.RMSNorm: statistics and normalisation in fp32, back to x's dtype, then times the weight."""
    xf = x.to(torch.float32)
    out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out if weight is None else out * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb: pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in fp32."""
    real, imag = x.unflatten(2, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def rope_qk_reference(q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor | None,
                      weight_k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (_rotate(_rms_norm(q, weight_q, eps), cos, sin), _rotate(_rms_norm(k, weight_k, eps), cos, sin))


@device_kernel
def _rope_qk_kernel(q_ptr, k_ptr, wq_ptr, wk_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, batch, n_tokens, dim,
                    sq_b, sq_n, sq_d, sk_b, sk_n, sk_d, sc_b, sc_n, sc_d, ss_b, ss_n, ss_d, so_b, so_n, eps,
                    HAS_WEIGHT: tl.constexpr, SHARED_TABLES: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    # one program per tile of tokens, looping over the batch: tables shared by every row (a broadcast batch, as
    # the transformer passes them) are read from memory once per tile, not once per row
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.arange(0, BLOCK_P).to(tl.int64)
    even, odd = 2 * pairs, 2 * pairs + 1
    wmask = pairs < dim // 2
    mask = (rows < n_tokens)[:, None] & wmask[None, :]
    if HAS_WEIGHT:
        wq_even = tl.load(wq_ptr + even, mask=wmask, other=0.0).to(tl.float32)
        wq_odd = tl.load(wq_ptr + odd, mask=wmask, other=0.0).to(tl.float32)
        wk_even = tl.load(wk_ptr + even, mask=wmask, other=0.0).to(tl.float32)
        wk_odd = tl.load(wk_ptr + odd, mask=wmask, other=0.0).to(tl.float32)
    cbase = cos_ptr + rows[:, None] * sc_n
    sbase = sin_ptr + rows[:, None] * ss_n
    c_even = tl.load(cbase + even[None, :] * sc_d, mask=mask, other=0.0).to(tl.float32)
    c_odd = tl.load(cbase + odd[None, :] * sc_d, mask=mask, other=0.0).to(tl.float32)
    s_even = tl.load(sbase + even[None, :] * ss_d, mask=mask, other=0.0).to(tl.float32)
    s_odd = tl.load(sbase + odd[None, :] * ss_d, mask=mask, other=0.0).to(tl.float32)
    for b in range(batch):
        if not SHARED_TABLES:
            c_even = tl.load(cbase + b * sc_b + even[None, :] * sc_d, mask=mask, other=0.0).to(tl.float32)
            c_odd = tl.load(cbase + b * sc_b + odd[None, :] * sc_d, mask=mask, other=0.0).to(tl.float32)
            s_even = tl.load(sbase + b * ss_b + even[None, :] * ss_d, mask=mask, other=0.0).to(tl.float32)
            s_odd = tl.load(sbase + b * ss_b + odd[None, :] * ss_d, mask=mask, other=0.0).to(tl.float32)
        for which in tl.static_range(2):  # q, then k
            if which == 0:
                base = q_ptr + b * sq_b + rows[:, None] * sq_n
                stride_d = sq_d
                obase = qo_ptr + b * so_b + rows[:, None] * so_n
            else:
                base = k_ptr + b * sk_b + rows[:, None] * sk_n
                stride_d = sk_d
                obase = ko_ptr + b * so_b + rows[:, None] * so_n
            x_even = tl.load(base + even[None, :] * stride_d, mask=mask, other=0.0)
            x_odd = tl.load(base + odd[None, :] * stride_d, mask=mask, other=0.0)
            xe = x_even.to(tl.float32)
            xo = x_odd.to(tl.float32)
            # tl.reduce with the sum combiner, not tl.sum: the same reduction, and it also runs in the interpreter
            # when triton was imported before TRITON_INTERPRET could be set (torch imports it early)
            square_sum = (tl.reduce(xe * xe, 1, tl.standard._sum_combine)
                          + tl.reduce(xo * xo, 1, tl.standard._sum_combine))
            inv = tl.rsqrt(square_sum / dim + eps)
            # rounded where torch.nn.RMSNorm rounds: the normalised x in x's dtype, the weighted one in the output
            ne = (xe * inv[:, None]).to(x_even.dtype).to(tl.float32)
            no = (xo * inv[:, None]).to(x_even.dtype).to(tl.float32)
            if HAS_WEIGHT:
                if which == 0:
                    ne = ne * wq_even[None, :]
                    no = no * wq_odd[None, :]
                else:
                    ne = ne * wk_even[None, :]
                    no = no * wk_odd[None, :]
                ne = ne.to(qo_ptr.dtype.element_ty).to(tl.float32)
                no = no.to(qo_ptr.dtype.element_ty).to(tl.float32)
            tl.store(obase + even[None, :], (ne * c_even - no * s_even).to(qo_ptr.dtype.element_ty), mask=mask)
            tl.store(obase + odd[None, :], (no * c_odd + ne * s_odd).to(qo_ptr.dtype.element_ty), mask=mask)


def rope_qk(q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor | None, weight_k: torch.Tensor | None,
            cos: torch.Tensor, sin: torch.Tensor, eps: float,
            block_m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, N, C) any strides, C even; weights (C,) or both None; cos, sin (B or 1, N, C) any strides
    (a batch stride of 0, as broadcast tables have, is fine). Returns new contiguous q and k."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_3d(name, t)
    batch, n_tokens, dim = q.shape
    if k.shape != q.shape or dim % 2:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must match, with an even last dim")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape[1:] != q.shape[1:] or t.shape[0] not in (1, batch):
            raise ValueError(f"{name} {tuple(t.shape)} does not fit q {tuple(q.shape)}")
    if (weight_q is None) != (weight_k is None):
        raise ValueError("weight_q and weight_k must both be given or both be None")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k dtypes differ: {q.dtype} vs {k.dtype}")
    has_weight = weight_q is not None
    if has_weight:
        if weight_q.shape != (dim,) or weight_k.shape != (dim,) or weight_q.dtype != weight_k.dtype:
            raise ValueError(f"weights must be ({dim},) of one dtype")
        weight_q, weight_k = weight_q.contiguous(), weight_k.contiguous()
    out_dtype = torch.result_type(q, weight_q) if has_weight else q.dtype
    q_out = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    k_out = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    if q.numel() == 0:
        return q_out, k_out
    cos_strides = (0 if cos.shape[0] == 1 else cos.stride(0),) + cos.stride()[1:]
    sin_strides = (0 if sin.shape[0] == 1 else sin.stride(0),) + sin.stride()[1:]
    block_p = triton.next_power_of_2(dim // 2)
    if block_m is None:
        block_m = max(1, min(8, 2048 // block_p)) if q.is_cuda else 64
    grid = (triton.cdiv(n_tokens, block_m),)
    _rope_qk_kernel.on(q)[grid](
        q, k, weight_q if has_weight else q, weight_k if has_weight else k, cos, sin, q_out, k_out, batch, n_tokens,
        dim, *q.stride(), *k.stride(), *cos_strides, *sin_strides, q_out.stride(0), q_out.stride(1), eps,
        HAS_WEIGHT=has_weight, SHARED_TABLES=cos_strides[0] == 0 and sin_strides[0] == 0, BLOCK_M=block_m,
        BLOCK_P=block_p,
        **({"num_warps": 8 if block_p >= 1024 else 4} if q.is_cuda else {}))
    return q_out, k_out
