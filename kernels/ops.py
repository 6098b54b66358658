"""The kernels as torch custom operators: opaque to torch.compile (no graph break around a Triton launch it cannot
trace), with shape-only fake implementations for tracing. The engine calls these."""

from __future__ import annotations

import torch

from kernels._launch import _promote
from kernels.gate_residual import gate_residual as _gate_residual
from kernels.rmsnorm_modulate import rmsnorm_modulate as _rmsnorm_modulate
from kernels.rope_qk import rope_qk as _rope_qk


@torch.library.custom_op("ltxserve::rmsnorm_modulate", mutates_args=())
def rmsnorm_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, segments: list[int],
                     eps: float) -> torch.Tensor:
    return _rmsnorm_modulate(x, scale, shift, segments, eps)


@rmsnorm_modulate.register_fake
def _(x, scale, shift, segments, eps):
    return x.new_empty(x.shape, dtype=_promote(x, scale, shift))


@torch.library.custom_op("ltxserve::gate_residual", mutates_args=())
def gate_residual(base: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, segments: list[int]) -> torch.Tensor:
    return _gate_residual(base, x, gate, segments)


@gate_residual.register_fake
def _(base, x, gate, segments):
    return base.new_empty(base.shape, dtype=_promote(base, x, gate))


@torch.library.custom_op("ltxserve::rope_qk", mutates_args=())
def rope_qk(q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor | None, weight_k: torch.Tensor | None,
            cos: torch.Tensor, sin: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _rope_qk(q, k, weight_q, weight_k, cos, sin, eps)


@rope_qk.register_fake
def _(q, k, weight_q, weight_k, cos, sin, eps):
    dtype = q.dtype if weight_q is None else torch.promote_types(q.dtype, weight_q.dtype)
    return q.new_empty(q.shape, dtype=dtype), q.new_empty(q.shape, dtype=dtype)
