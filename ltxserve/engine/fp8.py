"""Scaled fp8 (e4m3) for the transformer blocks' Linear layers: weights stored in fp8 with one fp32 scale per
output row, computed at load; matmuls in fp8 where the GPU has them.

Why scaled: unscaled e4m3 loses precision as weights shrink (a matrix of std 0.005 sits in e4m3's subnormals and
comes back ~11% off); one scale per output row (amax / 448) puts every row's largest value at the top of the format.

Two ways to compute, the same scaled math:
- ``scaled_mm``: the activations are quantized per token (row) to e4m3 with their own scale and multiplied by the fp8
  weights with `torch._scaled_mm` (fp32 accumulation, both scales applied in the epilogue). Chosen on CUDA GPUs of
  compute capability 8.9+ (Ada, Hopper, Blackwell). torch's CPU build runs the same op, so tests exercise it.
- ``dequant``: the weights are dequantized row by row to the compute dtype and multiplied by the unquantized
  activations: storage-only fp8, for GPUs without fp8 matmuls (and the CPU by default).

What published fp8 recipes keep in bf16 stays in bf16 here: everything outside the blocks' attention and
feed-forward Linears (the patchify projection, the caption projection, the timestep MLP, `proj_out`, every norm and
the adaLN tables). A checkpoint whose Linear weights are already e4m3 (Lightricks' `-fp8` file) is taken as is, with
unit scales: its values are exact in e4m3 and re-scaling would round them again.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
Fp8Matmul = Literal["scaled_mm", "dequant"]
_MIN_SCALE = 1e-12  # an all-zero row keeps a finite scale


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight → (e4m3 weight, fp32 scale per output row) with weight ≈ q * scale[:, None]."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=_MIN_SCALE)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_activation_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations → (e4m3, fp32 scale (M, 1)): one scale per token."""
    x32 = x.float()
    scale = (x32.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=_MIN_SCALE)
    return (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """fp8 tensor-core matmuls: CUDA compute capability 8.9 or newer, with torch's `_scaled_mm`."""
    device = torch.device(device)
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(nn.Linear):
    """A Linear whose weight is e4m3 with a per-output-row fp32 scale. Still an `nn.Linear` (in/out features,
    `weight`, `bias`), so LoRA hooks and offload hooks treat it like any other Linear."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 matmul: Fp8Matmul = "dequant"):
        nn.Module.__init__(self)  # nn.Linear.__init__ would allocate a float weight
        self.out_features, self.in_features = weight_fp8.shape
        self.weight = nn.Parameter(weight_fp8, requires_grad=False)
        self.weight_scale = nn.Parameter(weight_scale.float(), requires_grad=False)  # moves with the weight
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.matmul: Fp8Matmul = matmul

    @classmethod
    def from_linear(cls, linear: nn.Linear, matmul: Fp8Matmul = "dequant") -> "Fp8Linear":
        w = linear.weight.detach()
        if w.dtype == FP8:  # already e4m3 in the checkpoint: exact as it is
            q, scale = w, torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
        else:
            q, scale = quantize_rows(w)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scale, bias, matmul)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matmul == "scaled_mm":
            return self._scaled_mm(x)
        return F.linear(x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        m = rows.shape[0]
        pad = (-m) % 16  # the fp8 GEMM wants every dimension a multiple of 16
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        x8, x_scale = quantize_activation_rows(rows)
        out = torch._scaled_mm(x8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale.view(1, -1),
                               out_dtype=torch.bfloat16 if x.dtype == torch.float32 else x.dtype)
        out = out[:m].to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 per-row scaled, " \
               f"matmul={self.matmul}"


def block_linears(transformer: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) for every Linear inside the transformer blocks: attention q/k/v/out of both
    attentions and the feed-forward's two projections."""
    found = []
    for block in transformer.transformer_blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, name, child))
    return found


def convert_transformer_to_fp8(transformer: nn.Module, matmul: Fp8Matmul = "dequant") -> int:
    """Swap the blocks' Linears for Fp8Linear in place, one at a time (peak extra memory: one layer). Returns the
    number of layers converted."""
    converted = 0
    for parent, name, linear in block_linears(transformer):
        if isinstance(linear, Fp8Linear):
            linear.matmul = matmul
            continue
        setattr(parent, name, Fp8Linear.from_linear(linear, matmul))
        converted += 1
    return converted


def set_fp8_matmul(transformer: nn.Module, matmul: Fp8Matmul) -> None:
    for module in transformer.modules():
        if isinstance(module, Fp8Linear):
            module.matmul = matmul


def fp8_weight_bytes(transformer: nn.Module) -> int:
    """Bytes the fp8 layers hold (weights, scales, biases)."""
    total = 0
    for module in transformer.modules():
        if isinstance(module, Fp8Linear):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total
