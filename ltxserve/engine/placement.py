"""Memory placement: which component lives where, in which dtype, so that the model fits the GPU.

`plan_placement(free_bytes, sizes, request)` is a pure function. It walks a ladder of placements from the fastest
and most faithful to the most frugal, and returns the first whose estimated peak fits the free memory for `request`
(the size it is planned for; every later request is planned again by memory_plan.plan_request):

1. ``gpu``        every component resident on the GPU, bf16;
2. ``offload``    the transformer, VAE and upsampler resident; only the text encoder visits the GPU (it runs once,
                  first, and leaves), bf16;
3. ``offload``    fewer components resident: the others visit the GPU for their stage, one visitor at a time;
4. the same rungs with fp8 transformer weights (1 byte per Linear weight in the blocks, an fp32 scale per row);
5. ``sequential`` diffusers' block-level group offload with a prefetch stream: weights stream to the GPU block by
                  block, so only a block or two, and the activations, need to fit. Slow.

The VAE decode is chosen with the placement (whole, or tiled in space and/or time: memory_plan.decode_candidates).
Estimates are weights (exact: parameter counts of the real 13B configuration, counted on the ``meta`` device by
`count_model_sizes`) plus activations (memory_plan's model, checked against traced peaks) plus headroom.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ltxserve.engine.memory_plan import (  # noqa: F401  (re-exported: callers import these from here)
    COMPONENTS,
    HEADROOM_ACTIVATION_FRACTION,
    HEADROOM_FIXED_BYTES,
    PASS1_BATCH,
    PASS2_BATCH,
    PROMPT_BATCH,
    PROMPT_TOKENS,
    DecodePlan,
    GiB,
    ModelSizes,
    PassSizes,
    RequestSize,
    WeightBytes,
    WeightDtype,
    fitting_decode,
    frugal_decode,
    pass_sizes,
    stage_activations,
    weight_bytes,
)
from ltxserve.engine.memory_plan import stage_peaks as _stage_peaks

MemoryMode = Literal["gpu", "offload", "sequential"]
DecodeMode = Literal["full", "tiled"]

MEMORY_CHOICES = ("auto", "gpu", "offload", "sequential")
DTYPE_CHOICES = ("auto", "bf16", "fp8", "fp16", "fp32")

# Card classes named in errors ("the smallest card that works"), in GB as sold (which are GiB for NVIDIA cards).
CARD_CLASSES_GB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)
# What the driver and the CUDA context take before the model gets any: a card of N GB shows about N - 0.5 GiB free.
CUDA_CONTEXT_BYTES = GiB // 2

# Host memory of a serving process besides the weights it keeps there: Python, torch and CUDA libraries, the CUDA
# context's host side, decoded frames (an estimate).
HOST_PROCESS_BYTES = 3 * GiB

CONFIG_DIR = Path(__file__).resolve().parent.parent / "weights" / "configs"

ALL_RESIDENT = ("text_encoder", "transformer", "latent_upsampler", "vae")
# sequential mode streams the transformer, T5 and the VAE block by block; the small upsampler stays resident
SEQUENTIAL_RESIDENT = ("latent_upsampler",)
DEFAULT_RESIDENT = {"gpu": ALL_RESIDENT, "offload": (), "sequential": SEQUENTIAL_RESIDENT}
# Offload rungs, most resident first: every component left out visits the GPU for its stage, one at a time.
OFFLOAD_RESIDENTS: tuple[tuple[str, ...], ...] = (
    ("transformer", "latent_upsampler", "vae"),  # only T5 visits: it runs once, first
    ("transformer", "latent_upsampler"),
    ("transformer",),
    ("latent_upsampler", "vae"),
    (),
)


class PlacementError(RuntimeError):
    """No placement fits; the message says how much is needed and which card class would do."""


@dataclass(frozen=True)
class Placement:
    """Where the components live for the whole job. Read by offload.apply_placement:

    memory:     "gpu" (all resident), "offload" (`resident` stay on the GPU; each other component is moved to the
                GPU for its stage and back, one visitor at a time) or "sequential" (block-level group offload).
    dtype:      weight dtype: "bf16" | "fp16" | "fp32", or "fp8" (transformer blocks' Linear weights in fp8 with
                per-row scales; everything else bf16).
    resident:   the components (among COMPONENTS) on the GPU for the whole job: every one in "gpu"; in "offload"
                the rung's choice (e.g. all but T5); in "sequential" the small upsampler (the rest is streamed).
    fp8_matmul: with dtype "fp8": "scaled_mm" (fp8 tensor-core matmuls) or "dequant" (fp8 storage only); the
                activations differ (scaled_mm quantizes them through fp32 copies), so the plan needs to know.
    vae_decode: "full" or "tiled": what the decode of the request it was planned for needs (`decode` says how);
                every request's own decode comes from memory_plan.plan_request / apply_request_plan.
    """

    memory: MemoryMode
    dtype: WeightDtype
    vae_decode: DecodeMode
    peak_bytes: int  # estimated peak GPU memory, headroom included
    free_bytes: int
    stage_bytes: dict[str, int] = field(default_factory=dict)  # estimated GPU bytes at each stage's peak
    weights: WeightBytes | None = None
    host_bytes: int = 0  # weights kept in host memory (the visitors' in offload; all in sequential)
    request: RequestSize = RequestSize()
    reason: str = ""
    resident: tuple[str, ...] | None = None  # None: the mode's default (DEFAULT_RESIDENT)
    decode: DecodePlan | None = None
    fp8_matmul: str = "scaled_mm"

    def __post_init__(self) -> None:
        if self.resident is None:
            object.__setattr__(self, "resident", DEFAULT_RESIDENT[self.memory])
        unknown = set(self.resident) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components in resident: {sorted(unknown)}")

    @property
    def visitors(self) -> tuple[str, ...]:
        """Components moved to the GPU only for their stage (offload mode)."""
        if self.memory != "offload":
            return ()
        return tuple(c for c in COMPONENTS if c not in self.resident)

    @property
    def text_encoder_offloaded(self) -> bool:
        return "text_encoder" not in self.resident

    def describe(self) -> str:
        lines = [
            f"memory placement: {self.memory} ({_mode_text(self)})",
            f"transformer weights: {self.dtype}; VAE decode: {self.vae_decode}"
            + (f" ({self.decode.describe()})" if self.decode and self.vae_decode != "full" else ""),
            f"request: {self.request.width}x{self.request.height}, {self.request.num_frames} frames",
            f"estimated peak GPU memory: {self.peak_bytes / GiB:.1f} GiB of {self.free_bytes / GiB:.1f} GiB free",
        ]
        if self.host_bytes:
            lines.append(f"host memory for offloaded weights: {self.host_bytes / GiB:.1f} GiB")
        lines.extend(f"  {stage:<14} {nbytes / GiB:6.1f} GiB" for stage, nbytes in self.stage_bytes.items())
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)


def _mode_text(p: Placement) -> str:
    if p.memory == "gpu":
        return "every component resident on the GPU"
    if p.memory == "sequential":
        return "weights streamed to the GPU block by block (slow)"
    resident = ", ".join(p.resident) or "nothing"
    return f"resident: {resident}; visiting the GPU for their stage: {', '.join(p.visitors)}"


def host_weight_bytes(memory: str, dtype: WeightDtype, resident: tuple[str, ...], sizes: ModelSizes) -> int:
    """Weights that stay in host memory for the whole job: every visitor's (offload), every weight (sequential)."""
    w = weight_bytes(sizes, dtype)
    if memory == "gpu":
        return 0
    return sum(w.of(c) for c in COMPONENTS if c not in resident)


def stage_peaks(sizes: ModelSizes, request: RequestSize, memory: MemoryMode, dtype: WeightDtype,
                vae_decode: DecodeMode | DecodePlan = "full", resident: tuple[str, ...] | None = None
                ) -> dict[str, int]:
    """Estimated GPU bytes (headroom included) at the peak of each stage of one request. `vae_decode` "tiled"
    means the most frugal decode; a DecodePlan means that one."""
    if resident is None:
        resident = DEFAULT_RESIDENT[memory]
    if isinstance(vae_decode, DecodePlan):
        decode = vae_decode
    else:
        decode = None if vae_decode == "full" else frugal_decode(sizes, request)
    return _stage_peaks(sizes, request, memory, dtype, resident, decode)


Rung = tuple[MemoryMode, WeightDtype, tuple[str, ...]]


def _rungs(dtype: WeightDtype) -> list[Rung]:
    return [("gpu", dtype, ALL_RESIDENT)] + [("offload", dtype, r) for r in OFFLOAD_RESIDENTS]


def _ladder(memory: str, dtype: str) -> list[Rung]:
    """The placements to try, best first, honouring any explicit choice."""
    dtypes: tuple[WeightDtype, ...] = ("bf16", "fp8") if dtype == "auto" else (dtype,)  # type: ignore[assignment]
    ladder = [r for d in dtypes for r in _rungs(d)] + [("sequential", d, SEQUENTIAL_RESIDENT) for d in dtypes]
    if memory != "auto":
        ladder = [r for r in ladder if r[0] == memory]
    return ladder


def _evaluate(free_bytes: int, sizes: ModelSizes, request: RequestSize, rung: Rung, fp8_matmul: str
              ) -> Placement | None:
    mode, dtype, resident = rung
    found = fitting_decode(sizes, request, mode, dtype, resident, free_bytes, fp8_matmul)
    if found is None:
        return None
    decode, peaks = found
    return Placement(
        mode, dtype, "full" if decode.mode == "full" else "tiled", max(peaks.values()), free_bytes, peaks,
        weight_bytes(sizes, dtype), host_weight_bytes(mode, dtype, resident, sizes), request,
        resident=resident, decode=decode, fp8_matmul=fp8_matmul,
    )


def minimum_bytes(sizes: ModelSizes, request: RequestSize, memory: str = "auto", dtype: str = "auto",
                  fp8_matmul: str = "scaled_mm") -> int:
    """The least free GPU memory any allowed placement needs for this request."""
    frugal = frugal_decode(sizes, request)
    return min(
        max(_stage_peaks(sizes, request, m, d, r, frugal, fp8_matmul).values()) for m, d, r in _ladder(memory, dtype)
    )


def smallest_card_gb(sizes: ModelSizes, request: RequestSize, memory: str = "auto", dtype: str = "auto",
                     fp8_matmul: str = "scaled_mm") -> int | None:
    """The smallest card class (GB) whose free memory fits some allowed placement; None if even the largest is short."""
    need = minimum_bytes(sizes, request, memory, dtype, fp8_matmul)
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
    host_bytes: int | None = None,
    fp8_matmul: str = "scaled_mm",
) -> Placement:
    """Choose where each component lives for `request` given `free_bytes` of GPU memory.

    `memory` is auto|gpu|offload|sequential and `dtype` auto|bf16|fp8|fp16|fp32 (weights); explicit choices are
    honoured (auto fills in the rest). `host_bytes` (the machine's RAM), when given, also rules out placements
    whose weights kept in host memory (plus HOST_PROCESS_BYTES) do not fit it. Raises PlacementError when nothing
    allowed fits. `fp8_matmul` says how fp8 placements would compute ("scaled_mm" or "dequant": fp8.py).
    """
    if memory not in MEMORY_CHOICES:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_CHOICES)}; got {memory!r}")
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}")
    tried: list[str] = []
    short_of_host: list[str] = []
    for rung in _ladder(memory, dtype):
        if host_bytes is not None and host_weight_bytes(*rung, sizes) + HOST_PROCESS_BYTES > host_bytes:
            short_of_host.append(f"{rung[0]}/{rung[1]}")
            continue
        placement = _evaluate(free_bytes, sizes, request, rung, fp8_matmul)
        if placement is not None:
            skipped = f"; did not fit: {', '.join(tried)}" if tried else ""
            reason = f"chosen: first placement that fits{skipped}" if memory == "auto" else "chosen: requested explicitly"
            return replace(placement, reason=reason)
        mode, weight_dtype, resident = rung
        tried.append(f"{mode}/{weight_dtype}" + (f"[{'+'.join(resident) or 'none'} resident]" if mode == "offload" else ""))

    need = minimum_bytes(sizes, request, memory, dtype, fp8_matmul)
    card = smallest_card_gb(sizes, request, memory, dtype, fp8_matmul)
    what = "" if memory == "auto" and dtype == "auto" else f" with --memory {memory} --dtype {dtype}"
    host_text = ""
    if short_of_host:
        host_text = (f" ({', '.join(dict.fromkeys(short_of_host))} would keep more weights in host memory than this "
                     f"machine's {host_bytes / GiB:.0f} GiB of RAM)")
    card_text = (
        f"the smallest card that works is a {card} GB card"
        if card is not None
        else f"no single card up to {CARD_CLASSES_GB[-1]} GB works"
    )
    raise PlacementError(
        f"not enough GPU memory for a {request.width}x{request.height}, {request.num_frames}-frame video{what}: "
        f"{free_bytes / GiB:.1f} GiB free, the most frugal placement needs {need / GiB:.1f} GiB; {card_text}"
        f"{'' if memory == 'auto' else ' (or try --memory auto)'}{host_text}; smaller or shorter videos need less."
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

    from ltxserve.engine.safety_checker import count_params as count_safety_checker_params

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    transformer_cfg = _load_config("transformer")
    vae_cfg = _load_config("vae")
    with torch.device("meta"):
        transformer = LTXVideoTransformer3DModel(**transformer_cfg)
        vae = AutoencoderKLLTXVideo(**vae_cfg)
        upsampler = LTXLatentUpsamplerModel(**_load_config("latent_upsampler"))
        text_cfg = _load_config("text_encoder")
        text_encoder = T5EncoderModel(T5Config(**text_cfg))
    block_linears = [m for m in transformer.transformer_blocks.modules() if isinstance(m, torch.nn.Linear)]
    inner = transformer_cfg["num_attention_heads"] * transformer_cfg["attention_head_dim"]
    # Block-level group offload of the VAE's decoder (encoder): its own group (what is outside its block list) stays
    # on the device through its forward, with the running block and the one being prefetched.
    vae_groups = []
    for part, blocks in ((vae.decoder, vae.decoder.up_blocks), (vae.encoder, vae.encoder.down_blocks)):
        largest = sorted((params(b) for b in blocks), reverse=True)
        vae_groups.append(params(part) - sum(params(b) for b in blocks) + sum(largest[:2]))
    te_blocks = sum(params(b) for b in text_encoder.encoder.block)
    return ModelSizes(
        transformer_params=params(transformer),
        transformer_linear_weight_params=sum(m.weight.numel() for m in block_linears),
        transformer_block_params=params(transformer.transformer_blocks[0]),
        vae_params=params(vae),
        upsampler_params=params(upsampler),
        text_encoder_params=params(text_encoder),
        text_encoder_block_params=params(text_encoder.encoder.block[0]),
        largest_vae_module_params=max(vae_groups),
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
        vae_encoder_first_channels=vae_cfg["block_out_channels"][0],
        transformer_rows_fp8=sum(m.out_features for m in block_linears),
        transformer_unblocked_params=params(transformer) - sum(params(b) for b in transformer.transformer_blocks),
        text_encoder_unblocked_params=params(text_encoder) - te_blocks,
        safety_checker_params=count_safety_checker_params(),
    )
