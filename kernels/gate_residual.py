"""Gated residual add, base + x * gate, the gate constant per segment of tokens (segmented.py's `_gated_add`).

Unfused the product is written and read back before the add; fused, base and x are read once and the sum written
once.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from kernels._launch import _promote, check_3d, device_kernel, segment_bounds


def gate_residual_reference(base: torch.Tensor, x: torch.Tensor, gate: torch.Tensor,
                            segments: Sequence[int]) -> torch.Tensor:
    out = base.new_empty(base.shape, dtype=_promote(base, x, gate))
    for u, (start, end) in enumerate(zip(segments[:-1], segments[1:])):
        out[:, start:end] = base[:, start:end] + x[:, start:end] * gate[:, u: u + 1]
    return out


@device_kernel
def _gate_residual_kernel(base_ptr, x_ptr, gate_ptr, out_ptr, n_tokens, dim, b1, b2, b3,
                          sb_b, sb_n, sb_d, sx_b, sx_n, sx_d, sg_b, sg_u, sg_d, so_b, so_n,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(2).to(tl.int64)
    mask = (rows < n_tokens)[:, None] & (cols < dim)[None, :]
    base = tl.load(base_ptr + b * sb_b + rows[:, None] * sb_n + cols[None, :] * sb_d, mask=mask, other=0.0)
    x = tl.load(x_ptr + b * sx_b + rows[:, None] * sx_n + cols[None, :] * sx_d, mask=mask, other=0.0)
    seg = (rows >= b1).to(tl.int64) + (rows >= b2).to(tl.int64) + (rows >= b3).to(tl.int64)
    gate = tl.load(gate_ptr + b * sg_b + seg[:, None] * sg_u + cols[None, :] * sg_d, mask=mask, other=0.0)
    out = base.to(tl.float32) + x.to(tl.float32) * gate.to(tl.float32)
    tl.store(out_ptr + b * so_b + rows[:, None] * so_n + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def gate_residual(base: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, segments: Sequence[int],
                  block_m: int | None = None, block_d: int | None = None) -> torch.Tensor:
    """base, x (B, N, D) any strides; gate (B, U, D) any strides; segments: U + 1 host ints from 0 to N.
    Returns a new contiguous (B, N, D) tensor."""
    for name, t in (("base", base), ("x", x), ("gate", gate)):
        check_3d(name, t)
    batch, n_tokens, dim = base.shape
    if x.shape != base.shape or gate.shape[0] != batch or gate.shape[2] != dim:
        raise ValueError(f"x {tuple(x.shape)} / gate {tuple(gate.shape)} do not fit base {tuple(base.shape)}")
    if not (base.device == x.device == gate.device):
        raise ValueError("base, x and gate must be on one device")
    b1, b2, b3 = segment_bounds(segments, n_tokens, gate.shape[1])
    out = torch.empty(base.shape, device=base.device,
                      dtype=_promote(base, x, gate))
    if out.numel() == 0:
        return out
    if block_d is None:
        block_d = min(triton.next_power_of_2(dim), 1024 if base.is_cuda else 4096)
    if block_m is None:
        block_m = max(1, 4096 // block_d) if base.is_cuda else 64
    grid = (triton.cdiv(n_tokens, block_m), triton.cdiv(dim, block_d), batch)
    _gate_residual_kernel.on(base)[grid](
        base, x, gate, out, n_tokens, dim, b1, b2, b3, *base.stride(), *x.stride(), *gate.stride(),
        out.stride(0), out.stride(1), BLOCK_M=block_m, BLOCK_D=block_d)
    return out
