"""Memory placement: which component lives where, in which dtype, so that a request fits the GPU.

`plan_placement(free_bytes, sizes, request)` is a pure function. It walks a ladder of placements from the fastest
and most faithful to the most frugal, and returns the first whose estimated peak fits the free memory:

1. ``gpu``        every component resident on the GPU, bf16;
2. ``offload``    model-level offload: components live in host memory and visit the GPU one at a time for their
                  stage (text encoder for the prompt, then the transformer for denoising, ...), bf16;
3. ``offload``    the same with fp8 storage for the transformer's linear weights (compute stays bf16);
4. ``sequential`` weights streamed to the GPU one block at a time: slow, but only activations need to fit.

Under the chosen rung the VAE decodes the whole video at once when that fits, else in tiles / frame chunks.

The estimate is weights (exact: parameter counts of the real 13B configuration, counted on the ``meta`` device by
`count_model_sizes`) plus activations (a model of the tensors alive at each stage's peak, documented below and in
`estimate_activations`) plus headroom for the allocator. The activation model assumes a memory-efficient attention
kernel (SDPA flash / efficient backend): the N x N attention matrix is never materialised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ltxserve.engine.plan import LTXV_13B_097_DEV, plan_geometry

GiB = 1024**3

MemoryMode = Literal["gpu", "offload", "sequential"]
WeightDtype = Literal["bf16", "fp8", "fp16", "fp32"]
DecodeMode = Literal["full", "tiled"]

MEMORY_CHOICES = ("auto", "gpu", "offload", "sequential")
DTYPE_CHOICES = ("auto", "bf16", "fp8", "fp16", "fp32")

# Card classes named in errors ("the smallest card that works"), in GB as sold (which are GiB for NVIDIA cards).
CARD_CLASSES_GB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)
# What the driver and the CUDA context take before the model gets any: a card of N GB shows about N - 0.5 GiB free.
CUDA_CONTEXT_BYTES = GiB // 2
# Allocator headroom: fragmentation and cuDNN / cuBLAS workspaces.
HEADROOM_FIXED_BYTES = 1 * GiB
HEADROOM_ACTIVATION_FRACTION = 0.15

CONFIG_DIR = Path(__file__).resolve().parent.parent / "weights" / "configs"

# The 0.9.7-dev multi-scale recipe: pass 1 runs at 2/3 of the padded size with CFG + STG (batch of 3: negative,
# positive, perturbed); pass 2 at twice pass 1 with STG only (batch of 2).
PASS1_BATCH = 3
PASS2_BATCH = 2
PROMPT_TOKENS = 256
PROMPT_BATCH = 2  # the prompt and the negative prompt


class PlacementError(RuntimeError):
    """No placement fits; the message says how much is needed and which card class would do."""


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts and the few architecture numbers the activation model needs."""

    transformer_params: int
    transformer_linear_weight_params: int  # the part stored as fp8 under --dtype fp8
    transformer_block_params: int  # one transformer block: the unit streamed by sequential offload
    vae_params: int
    upsampler_params: int
    text_encoder_params: int
    text_encoder_block_params: int
    largest_vae_module_params: int  # the largest leaf module of the VAE (streamed as one unit)
    transformer_inner_dim: int = 4096
    transformer_ff_dim: int = 16384
    text_encoder_d_model: int = 4096
    text_encoder_d_ff: int = 10240
    vae_decoder_last_channels: int = 128  # channels of the decoder's full-resolution stage
    vae_patch_size: int = 4
    vae_spatial_compression: int = 32
    vae_temporal_compression: int = 8
    latent_channels: int = 128
    upsampler_mid_channels: int = 512


@dataclass(frozen=True)
class RequestSize:
    """The output video asked for (before padding)."""

    width: int = 1280
    height: int = 720
    num_frames: int = 121

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.num_frames <= 0:
            raise ValueError(f"request size must be positive, got {self.width}x{self.height}x{self.num_frames}")


@dataclass(frozen=True)
class PassSizes:
    """Padded canvas and the two passes' pixel sizes, as the multi-scale pipeline computes them."""

    padded_width: int
    padded_height: int
    padded_frames: int
    pass1_width: int
    pass1_height: int
    pass2_width: int
    pass2_height: int


def pass_sizes(request: RequestSize) -> PassSizes:
    """The pipeline's own geometry (plan.plan_geometry): padded canvas, pass 1 at 2/3, pass 2 at twice pass 1."""
    g = plan_geometry(request.width, request.height, request.num_frames, LTXV_13B_097_DEV.downscale_factor)
    return PassSizes(
        g.width_padded, g.height_padded, g.num_frames_padded,
        g.first_pass_width, g.first_pass_height, g.second_pass_width, g.second_pass_height,
    )


@dataclass(frozen=True)
class Activations:
    """Estimated bytes of activations at each stage's peak (compute dtype bf16)."""

    encode_prompt: int
    encode_image: int
    denoise_pass1: int
    upsample: int
    denoise_pass2: int
    decode_full: int
    decode_tiled: int


ACT_BYTES = 2  # bf16 activations


def estimate_activations(sizes: ModelSizes, request: RequestSize) -> Activations:
    """Tensors alive at each stage's peak, per the diffusers implementations of the components.

    Transformer, per token and per batch element (D = inner dim, FF = feed-forward dim):
      kept through the forward: the per-token timestep embedding (6D), the embedded timestep (D), RoPE cos/sin in
      fp32 (2D x 4 bytes); inside a block at its feed-forward peak: the block input (D), the per-token adaLN values (6D),
      the normed input (D), the FF projection and its GELU (2 x FF).
    VAE decoder: ~6 live tensors of its last, full-resolution stage (input, norm, activation, the causal conv's padded
      copy, conv output, residual), plus the decoded video and its resized copy. Tiled decoding uses diffusers'
      default tiles (512 x 512 pixels, 16 frames) and keeps the assembled video.
    """
    ps = pass_sizes(request)
    d, ff = sizes.transformer_inner_dim, sizes.transformer_ff_dim
    per_token = ACT_BYTES * (6 * d + d) + 4 * (2 * d) + ACT_BYTES * (d + 6 * d + d + 2 * ff)
    latent_frames = (ps.padded_frames - 1) // sizes.vae_temporal_compression + 1
    sc = sizes.vae_spatial_compression
    tokens1 = latent_frames * (ps.pass1_height // sc) * (ps.pass1_width // sc)
    tokens2 = latent_frames * (ps.pass2_height // sc) * (ps.pass2_width // sc)
    latents = (PASS1_BATCH * tokens1 + 2 * tokens2) * sizes.latent_channels * 4  # fp32 latents, noise, conditioning

    te_per_token = ACT_BYTES * (4 * sizes.text_encoder_d_model + 3 * sizes.text_encoder_d_ff)
    encode_prompt = PROMPT_BATCH * PROMPT_TOKENS * te_per_token

    # The conditioning image is encoded at the pass-2 size: one frame through the encoder's first stage.
    image_stage = (ps.pass2_height // sizes.vae_patch_size) * (ps.pass2_width // sizes.vae_patch_size)
    encode_image = 6 * image_stage * 128 * ACT_BYTES

    up_cells = latent_frames * (ps.pass2_height // sc) * (ps.pass2_width // sc)
    upsample = 4 * up_cells * sizes.upsampler_mid_channels * ACT_BYTES + latents

    decoded_frames = ps.padded_frames
    pixels2 = decoded_frames * ps.pass2_height * ps.pass2_width
    stage_elems_per_pixel = sizes.vae_decoder_last_channels / (sizes.vae_patch_size**2)
    video_bytes = 3 * pixels2 * ACT_BYTES + 3 * decoded_frames * ps.padded_height * ps.padded_width * ACT_BYTES
    decode_full = int(6 * pixels2 * stage_elems_per_pixel * ACT_BYTES) + video_bytes
    tile_pixels = min(decoded_frames, 17) * min(ps.pass2_height, 512) * min(ps.pass2_width, 512)
    decode_tiled = int(6 * tile_pixels * stage_elems_per_pixel * ACT_BYTES) + video_bytes

    return Activations(
        encode_prompt=encode_prompt,
        encode_image=encode_image,
        denoise_pass1=PASS1_BATCH * tokens1 * per_token + latents,
        upsample=upsample,
        denoise_pass2=PASS2_BATCH * tokens2 * per_token + latents,
        decode_full=decode_full,
        decode_tiled=decode_tiled,
    )


_BYTES_PER_PARAM = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 2}  # fp8 applies to transformer linear weights only


@dataclass(frozen=True)
class WeightBytes:
    transformer: int
    vae: int
    upsampler: int
    text_encoder: int

    @property
    def total(self) -> int:
        return self.transformer + self.vae + self.upsampler + self.text_encoder


def weight_bytes(sizes: ModelSizes, dtype: WeightDtype) -> WeightBytes:
    """Bytes of each component's weights in `dtype`. fp8: the transformer's Linear weights at 1 byte, the rest bf16."""
    b = _BYTES_PER_PARAM[dtype]
    if dtype == "fp8":
        rest = sizes.transformer_params - sizes.transformer_linear_weight_params
        transformer = sizes.transformer_linear_weight_params + 2 * rest
    else:
        transformer = b * sizes.transformer_params
    return WeightBytes(transformer, b * sizes.vae_params, b * sizes.upsampler_params, b * sizes.text_encoder_params)


@dataclass(frozen=True)
class Placement:
    memory: MemoryMode
    dtype: WeightDtype
    vae_decode: DecodeMode
    peak_bytes: int  # estimated peak GPU memory, headroom included
    free_bytes: int
    stage_bytes: dict[str, int] = field(default_factory=dict)  # estimated GPU bytes at each stage's peak
    weights: WeightBytes | None = None
    host_bytes: int = 0  # weights kept in host memory (offload / sequential)
    request: RequestSize = RequestSize()
    reason: str = ""
    # offload mode: components that stay on the GPU for the whole job; the others visit it for their stage
    resident: tuple[str, ...] = ()

    @property
    def text_encoder_offloaded(self) -> bool:
        return self.memory != "gpu"

    def describe(self) -> str:
        lines = [
            f"memory placement: {self.memory} ({_MODE_TEXT[self.memory]})",
            f"transformer weights: {self.dtype}; VAE decode: {self.vae_decode}",
            f"request: {self.request.width}x{self.request.height}, {self.request.num_frames} frames",
            f"estimated peak GPU memory: {self.peak_bytes / GiB:.1f} GiB of {self.free_bytes / GiB:.1f} GiB free",
        ]
        if self.host_bytes:
            lines.append(f"host memory for offloaded weights: {self.host_bytes / GiB:.1f} GiB")
        lines.extend(f"  {stage:<14} {nbytes / GiB:6.1f} GiB" for stage, nbytes in self.stage_bytes.items())
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)


_MODE_TEXT = {
    "gpu": "every component resident on the GPU",
    "offload": "components visit the GPU one at a time; the text encoder leaves it after encoding",
    "sequential": "weights streamed to the GPU block by block (slow)",
}


def _with_activations_and_headroom(weights: int, activations: int) -> int:
    return weights + activations + HEADROOM_FIXED_BYTES + int(HEADROOM_ACTIVATION_FRACTION * activations)


def stage_peaks(
    sizes: ModelSizes, request: RequestSize, memory: MemoryMode, dtype: WeightDtype, vae_decode: DecodeMode
) -> dict[str, int]:
    """Estimated GPU bytes (headroom included) at the peak of each stage of one request."""
    w = weight_bytes(sizes, dtype)
    act = estimate_activations(sizes, request)
    decode_act = act.decode_full if vae_decode == "full" else act.decode_tiled
    stages = {
        "encode_prompt": (("text_encoder",), act.encode_prompt),
        "encode_image": (("vae",), act.encode_image),
        "denoise_pass1": (("transformer",), act.denoise_pass1),
        "upsample": (("upsampler", "vae"), act.upsample),
        "denoise_pass2": (("transformer",), act.denoise_pass2),
        "decode": (("vae",), decode_act),
    }
    if memory == "sequential":
        bpp = 2 if dtype == "fp8" else _BYTES_PER_PARAM[dtype]
        unit = {
            "text_encoder": sizes.text_encoder_block_params * bpp,
            "transformer": sizes.transformer_block_params * (1 if dtype == "fp8" else bpp),
            "vae": sizes.largest_vae_module_params * bpp,
            "upsampler": sizes.upsampler_params * bpp,  # small enough to move whole
        }
    component_bytes = {"transformer": w.transformer, "vae": w.vae, "upsampler": w.upsampler, "text_encoder": w.text_encoder}
    peaks: dict[str, int] = {}
    for stage, (components, activations) in stages.items():
        if memory == "gpu":
            resident = w.total
        elif memory == "offload":
            resident = sum(component_bytes[c] for c in components)
        else:
            resident = max(unit[c] for c in components)
        peaks[stage] = _with_activations_and_headroom(resident, activations)
    return peaks


def _ladder(memory: str, dtype: str) -> list[tuple[MemoryMode, WeightDtype]]:
    """The placements to try, best first, honouring any explicit choice."""
    ladder: list[tuple[MemoryMode, WeightDtype]] = [
        ("gpu", "bf16"),
        ("offload", "bf16"),
        ("offload", "fp8"),
        ("sequential", "bf16"),
    ]
    if memory != "auto" and dtype != "auto":
        return [(memory, dtype)]  # type: ignore[list-item]
    if memory != "auto":
        return [(memory, d) for d in ("bf16", "fp8")]  # type: ignore[misc]
    if dtype != "auto":
        modes: tuple[MemoryMode, ...] = ("gpu", "offload", "sequential")
        return [(m, dtype) for m in modes]  # type: ignore[misc]
    return ladder


def _evaluate(
    free_bytes: int, sizes: ModelSizes, request: RequestSize, memory: MemoryMode, dtype: WeightDtype
) -> Placement | None:
    for decode in ("full", "tiled"):
        peaks = stage_peaks(sizes, request, memory, dtype, decode)  # type: ignore[arg-type]
        peak = max(peaks.values())
        if peak <= free_bytes:
            w = weight_bytes(sizes, dtype)
            host = 0 if memory == "gpu" else w.total
            return Placement(memory, dtype, decode, peak, free_bytes, peaks, w, host, request)  # type: ignore[arg-type]
    return None


def minimum_bytes(sizes: ModelSizes, request: RequestSize, memory: str = "auto", dtype: str = "auto") -> int:
    """The least free GPU memory any allowed placement needs for this request."""
    return min(
        max(stage_peaks(sizes, request, m, d, decode).values())
        for m, d in _ladder(memory, dtype)
        for decode in ("full", "tiled")
    )


def smallest_card_gb(sizes: ModelSizes, request: RequestSize, memory: str = "auto", dtype: str = "auto") -> int | None:
    """The smallest card class (GB) whose free memory fits some allowed placement; None if even the largest is short."""
    need = minimum_bytes(sizes, request, memory, dtype)
    for gb in CARD_CLASSES_GB:
        if card_free_bytes(gb) >= need:
            return gb
    return None


def card_free_bytes(card_gb: int) -> int:
    """Free memory a card of `card_gb` GB shows once a CUDA context exists."""
    return card_gb * GiB - CUDA_CONTEXT_BYTES


def plan_placement(
    free_bytes: int,
    sizes: ModelSizes,
    request: RequestSize = RequestSize(),
    *,
    memory: str = "auto",
    dtype: str = "auto",
) -> Placement:
    """Choose where each component lives for `request` given `free_bytes` of GPU memory.

    `memory` is auto|gpu|offload|sequential and `dtype` auto|bf16|fp8|fp16|fp32 (weights); explicit choices are
    honoured (auto fills in the rest). Raises PlacementError when nothing allowed fits.
    """
    if memory not in MEMORY_CHOICES:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_CHOICES)}; got {memory!r}")
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}")
    tried: list[str] = []
    for mode, weight_dtype in _ladder(memory, dtype):
        placement = _evaluate(free_bytes, sizes, request, mode, weight_dtype)
        if placement is not None:
            skipped = f"; did not fit: {', '.join(tried)}" if tried else ""
            reason = f"chosen: first placement that fits{skipped}" if memory == "auto" else "chosen: requested explicitly"
            return replace(placement, reason=reason)
        tried.append(f"{mode}/{weight_dtype}")

    need = minimum_bytes(sizes, request, memory, dtype)
    card = smallest_card_gb(sizes, request, memory, dtype)
    what = "" if memory == "auto" and dtype == "auto" else f" with --memory {memory} --dtype {dtype}"
    card_text = (
        f"the smallest card that works is a {card} GB card"
        if card is not None
        else f"no single card up to {CARD_CLASSES_GB[-1]} GB works"
    )
    raise PlacementError(
        f"not enough GPU memory for a {request.width}x{request.height}, {request.num_frames}-frame video{what}: "
        f"{free_bytes / GiB:.1f} GiB free, the most frugal placement needs {need / GiB:.1f} GiB; {card_text}"
        f"{'' if memory == 'auto' else ' (or try --memory auto)'}; smaller or shorter videos need less."
    )


def _load_config(name: str) -> dict:
    raw = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


@lru_cache(maxsize=1)
def count_model_sizes() -> ModelSizes:
    """Count the real 13B 0.9.7 components' parameters on the meta device (no weights, no memory, ~seconds)."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def largest_leaf(module: torch.nn.Module) -> int:
        return max(params(m) for m in module.modules() if not list(m.children()))

    transformer_cfg = _load_config("transformer")
    vae_cfg = _load_config("vae")
    with torch.device("meta"):
        transformer = LTXVideoTransformer3DModel(**transformer_cfg)
        vae = AutoencoderKLLTXVideo(**vae_cfg)
        upsampler = LTXLatentUpsamplerModel(**_load_config("latent_upsampler"))
        text_cfg = _load_config("text_encoder")
        text_encoder = T5EncoderModel(T5Config(**text_cfg))
    linear = sum(m.weight.numel() for m in transformer.modules() if isinstance(m, torch.nn.Linear))
    inner = transformer_cfg["num_attention_heads"] * transformer_cfg["attention_head_dim"]
    return ModelSizes(
        transformer_params=params(transformer),
        transformer_linear_weight_params=linear,
        transformer_block_params=params(transformer.transformer_blocks[0]),
        vae_params=params(vae),
        upsampler_params=params(upsampler),
        text_encoder_params=params(text_encoder),
        text_encoder_block_params=params(text_encoder.encoder.block[0]),
        largest_vae_module_params=largest_leaf(vae),
        transformer_inner_dim=inner,
        transformer_ff_dim=4 * inner,
        text_encoder_d_model=text_cfg["d_model"],
        text_encoder_d_ff=text_cfg["d_ff"],
        vae_decoder_last_channels=vae_cfg["block_out_channels"][0],
        vae_patch_size=vae_cfg["patch_size"],
        vae_spatial_compression=vae_cfg["spatial_compression_ratio"],
        vae_temporal_compression=vae_cfg["temporal_compression_ratio"],
        latent_channels=vae_cfg["latent_channels"],
        upsampler_mid_channels=_load_config("latent_upsampler")["mid_channels"],
    )
