"""Measure the activation memory of a forward without running it: live tensor bytes traced on the ``meta`` device.

`LiveBytes` is a TorchDispatchMode that sees every tensor an operator returns, counts the bytes of each new storage
once (views share their base's storage), and forgets them when the storage dies (a weakref callback on the storage
object, which PyTorch keeps unique per storage). Its `peak` is the most bytes alive at once above what existed when
tracing began: the activations of the traced code. On the meta device nothing is computed or allocated, so a 13B
forward at the real token counts costs only Python time.

The attention kernel is the one thing a meta trace gets wrong: the meta device takes SDPA's math path, which
materialises the N x N score matrix that a GPU's flash / memory-efficient kernels never build. `flash_like_sdpa()`
stands in for those kernels while tracing: it returns the output and allocates the per-row log-sum-exp (fp32) that
they keep, nothing more.

Used by the estimator's test (tests/engine/test_memory_plan.py) and by benchmarks/gpu_request.py --cpu.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once among the tensors created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0  # the largest single storage seen
        self._refs: dict[int, weakref.ref] = {}

    def reset_peak(self) -> None:
        self.peak = self.live

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return  # a view of a storage already counted
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        self.largest = max(self.largest, nbytes)

        def released(_ref: weakref.ref, key: int = key, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, released)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _flash_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # What a fused kernel leaves behind: the output, shaped like the query (value's head dim), and fp32 log-sum-exp
    # per (batch, head, query row). Layout (B, H, N, d).
    out = torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    del lse  # freed when the kernel returns, as on the GPU
    return out


@contextlib.contextmanager
def flash_like_sdpa() -> Iterator[None]:
    """Replace torch.nn.functional.scaled_dot_product_attention by a shape-only stand-in for fused kernels."""
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _flash_like
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@dataclass(frozen=True)
class Trace:
    peak_bytes: int  # activations: the most bytes alive at once above the inputs
    largest_bytes: int  # the largest single tensor


def trace(fn, *args, **kwargs) -> Trace:
    """Run `fn` (on meta tensors) under LiveBytes and flash-like attention; inputs made before are not counted."""
    with flash_like_sdpa(), torch.inference_mode(), LiveBytes() as tracker:
        result = fn(*args, **kwargs)
        del result
    return Trace(tracker.peak, tracker.largest)


# --- the real 13B components at reduced depth, on the meta device -------------------------------------------------


@dataclass
class MetaComponents:
    transformer: torch.nn.Module
    vae: torch.nn.Module
    latent_upsampler: torch.nn.Module
    text_encoder: torch.nn.Module


def build_meta_components(transformer_layers: int = 2, text_layers: int = 2, dtype: torch.dtype = torch.bfloat16,
                          fp8_matmul: str | None = None) -> MetaComponents:
    """The real configurations (ltxserve/weights/configs) with fewer transformer / T5 blocks; the VAE and the
    upsampler whole. The upsampler stays fp32, as the reference keeps it. The transformer gets the pipeline's
    segmented forward (segmented.py; called without `segments` it is diffusers' own), and with `fp8_matmul` its block
    Linears become fp8.py's Fp8Linear computing that way."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel

    from ltxserve.engine.placement import _load_config

    with torch.device("meta"):
        transformer = LTXVideoTransformer3DModel(**{**_load_config("transformer"), "num_layers": transformer_layers})
        vae = AutoencoderKLLTXVideo(**_load_config("vae"))
        upsampler = LTXLatentUpsamplerModel(**_load_config("latent_upsampler"))
        text_encoder = T5EncoderModel(T5Config(**{**_load_config("text_encoder"), "num_layers": text_layers}))
    for m in (transformer, vae, text_encoder):
        m.to(dtype).eval().requires_grad_(False)
    upsampler.eval().requires_grad_(False)
    from ltxserve.engine.segmented import install_segmented_forward

    install_segmented_forward(transformer)
    if fp8_matmul is not None:
        from ltxserve.engine.fp8 import convert_transformer_to_fp8

        convert_transformer_to_fp8(transformer, fp8_matmul)  # type: ignore[arg-type]
    return MetaComponents(transformer, vae, upsampler, text_encoder)


def trace_transformer(transformer: torch.nn.Module, batch: int, frames: int, height: int, width: int,
                      segmented: bool = True) -> Trace:
    """One forward as the pipeline makes it: `batch` rows of frames x height x width latent tokens, 256 text tokens,
    the first latent frame conditioned (two timestep segments); `segmented=False`: diffusers' per-token form."""
    n, n_cond = frames * height * width, height * width

    def empty(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    kwargs = dict(hidden_states=empty(batch, n, 128), encoder_hidden_states=empty(batch, 256, 4096),
                  encoder_attention_mask=empty(batch, 256), video_coords=empty(batch, 3, n, dtype=torch.float32),
                  return_dict=False)
    if segmented:
        return trace(transformer, timestep=empty(batch, 2, dtype=torch.float32), segments=(0, n_cond, n), **kwargs)
    return trace(transformer, timestep=empty(batch, n, dtype=torch.float32), **kwargs)
