"""RMSNorm (no affine) fused with adaLN modulation, scale/shift constant per segment of tokens.

Unfused (diffusers' RMSNorm, then segmented.py's `_modulate`) a bf16 block reads x, writes and re-reads an fp32
upcast and the normalised copy, then reads it again to modulate: about 5 passes over the activations; fused, one
read of x and one write of the output.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from kernels._launch import _promote, check_3d, device_kernel, segment_bounds


def rmsnorm_modulate_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, segments: Sequence[int],
                               eps: float) -> torch.Tensor:
    """diffusers' RMSNorm(elementwise_affine=False) then x * (1 + scale) + shift per segment, operation for
    operation as the engine runs them."""
    normed = (x * torch.rsqrt(x.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    out = normed.new_empty(x.shape, dtype=_promote(normed, scale, shift))
    for u, (start, end) in enumerate(zip(segments[:-1], segments[1:])):
        out[:, start:end] = normed[:, start:end] * (1 + scale[:, u: u + 1]) + shift[:, u: u + 1]
    return out


@device_kernel
def _rmsnorm_modulate_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, n_tokens, dim, b1, b2, b3,
                             sx_b, sx_n, sx_d, ssc_b, ssc_u, ssc_d, ssh_b, ssh_u, ssh_d, so_b, so_n, eps,
                             BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < n_tokens)[:, None] & (cols < dim)[None, :]
    x = tl.load(x_ptr + b * sx_b + rows[:, None] * sx_n + cols[None, :] * sx_d, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    # tl.reduce with the sum combiner, not tl.sum: the same reduction, and it also runs in the interpreter when
    # triton was imported before TRITON_INTERPRET could be set (torch imports it early)
    inv = tl.rsqrt(tl.reduce(xf * xf, 1, tl.standard._sum_combine) / dim + eps)
    # the norm's output is rounded to x's dtype, as diffusers' RMSNorm returns it
    normed = (xf * inv[:, None]).to(x.dtype).to(tl.float32)
    seg = (rows >= b1).to(tl.int64) + (rows >= b2).to(tl.int64) + (rows >= b3).to(tl.int64)
    scale = tl.load(scale_ptr + b * ssc_b + seg[:, None] * ssc_u + cols[None, :] * ssc_d, mask=mask, other=0.0)
    shift = tl.load(shift_ptr + b * ssh_b + seg[:, None] * ssh_u + cols[None, :] * ssh_d, mask=mask, other=0.0)
    out = normed * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    tl.store(out_ptr + b * so_b + rows[:, None] * so_n + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, segments: Sequence[int],
                     eps: float, block_m: int | None = None) -> torch.Tensor:
    """x (B, N, D) any strides; scale, shift (B, U, D) any strides (e.g. views into the adaLN table); segments:
    U + 1 host ints from 0 to N. Returns a new contiguous (B, N, D) tensor."""
    for name, t in (("x", x), ("scale", scale), ("shift", shift)):
        check_3d(name, t)
    batch, n_tokens, dim = x.shape
    if scale.shape != shift.shape or scale.shape[0] != batch or scale.shape[2] != dim:
        raise ValueError(f"scale {tuple(scale.shape)} / shift {tuple(shift.shape)} do not fit x {tuple(x.shape)}")
    if not (x.device == scale.device == shift.device):
        raise ValueError("x, scale and shift must be on one device")
    b1, b2, b3 = segment_bounds(segments, n_tokens, scale.shape[1])
    out = torch.empty(x.shape, device=x.device, dtype=_promote(x, scale, shift))
    if out.numel() == 0:
        return out
    block_d = triton.next_power_of_2(dim)
    if block_m is None:
        block_m = max(1, min(16, 4096 // block_d)) if x.is_cuda else 64
    grid = (triton.cdiv(n_tokens, block_m), batch)
    _rmsnorm_modulate_kernel.on(x)[grid](
        x, scale, shift, out, n_tokens, dim, b1, b2, b3, *x.stride(), *scale.stride(), *shift.stride(),
        out.stride(0), out.stride(1), eps, BLOCK_M=block_m, BLOCK_D=block_d,
        **({"num_warps": 8 if block_d >= 2048 else 4} if x.is_cuda else {}))
    return out
