"""Which exact attention kernel runs the transformer's self-attention.

On an H100 with a package that provides it, flash-attention 3 (`flash_attn_interface`, built from the
flash-attention repository's `hopper/` folder); otherwise PyTorch's SDPA restricted, in priority order, to cuDNN
attention and flash-attention 2 (then memory-efficient attention as a last resort). All are exact attention; they
differ only in rounding. On the CPU `auto` keeps diffusers' own dispatch (SDPA choosing for itself), so the
reference path there is unchanged; a named backend can still be forced (tests do, to check it is the one used).

The backend is applied by the permanent attention processors of ltxserve/engine/stg.py, so it holds with STG.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ltx import LTXAttention
from torch.nn.attention import SDPBackend, sdpa_kernel

_SDPA = {
    "cudnn": (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION),
    "flash": (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION,),
    "math": (SDPBackend.MATH,),
}
CHOICES = ("auto", "default", "fa3", *_SDPA)


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    sdpa: tuple[SDPBackend, ...] = ()

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(B, N, H, d) in, (B, N, H, d) out: softmax(q k^T / sqrt(d)) v without a mask."""
        if self.name == "fa3":
            out = _fa3().flash_attn_func(query, key, value)
            return out[0] if isinstance(out, tuple) else out  # some releases also return the log-sum-exp
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        with sdpa_kernel(list(self.sdpa), set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2)


def _fa3():
    return importlib.import_module("flash_attn_interface")


def fa3_available(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device)[0] == 9
            and importlib.util.find_spec("flash_attn_interface") is not None)


def choose_attention_backend(device: torch.device, requested: str = "auto") -> AttentionBackend | None:
    """The backend for self-attention, or None for diffusers' default dispatch. `requested` is one of CHOICES."""
    if requested not in CHOICES:
        raise ValueError(f"attention backend {requested!r}: expected one of {', '.join(CHOICES)}")
    if requested == "default" or (requested == "auto" and device.type != "cuda"):
        return None
    if requested == "fa3" or (requested == "auto" and fa3_available(device)):
        if not fa3_available(device):
            raise ValueError("attention backend fa3 needs a Hopper GPU and the flash_attn_interface package")
        return AttentionBackend("fa3")
    if requested == "auto":
        requested = "cudnn" if torch.backends.cudnn.is_available() else "flash"
    return AttentionBackend(requested, _SDPA[requested])


class DirectLTXAttention(LTXAttention):
    """diffusers' LTXAttention.forward runs `inspect.signature(processor.__call__)` on every call to filter extra
    keyword arguments; the transformer passes none, so call the processor directly (and defer to diffusers when
    there are some)."""

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                **kwargs):
        if kwargs:
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def install_direct_attention_calls(transformer: torch.nn.Module) -> None:
    """Swap the class of every LTXAttention in `transformer` (idempotent; weights and processors untouched)."""
    for module in transformer.modules():
        if type(module) is LTXAttention:
            module.__class__ = DirectLTXAttention
