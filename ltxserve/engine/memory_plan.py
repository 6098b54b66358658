"""A memory plan per request: how the VAE decodes it, what each stage holds on the GPU, or why it cannot run here.

Pure functions (no torch at import). `plan_request(sizes, placement, request, free_bytes)` takes the placement chosen
at start-up (which components stay resident, which visit the GPU for their stage, in which dtype) and one request's
size, and returns a `RequestPlan`: the cheapest VAE decode that fits (whole, in spatial tiles, in frame chunks, or
both) and the estimated GPU bytes at each stage's peak; or raises `RequestTooLarge`, an `InputError` (so a fal 422)
whose message names what does not fit and the largest size and frame count this GPU can run.
`apply_request_plan(vae, plan)` sets diffusers' tiling knobs on the VAE for that request.

The activation model: bytes alive at each stage's peak, per component, for bf16 compute with fused (flash /
memory-efficient) attention. Its terms are the tensors diffusers' implementations keep (documented at each
function); its constants were read from traces of the real 13B configurations on the meta device
(ltxserve/engine/memory_trace.py), and tests/engine/test_memory_plan.py re-traces and requires every stage within
10% at 480p, 720p and a 257-frame 720p video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ltxserve.engine.contract import InputError
from ltxserve.engine.plan import LTXV_13B_097_DEV, plan_geometry

if TYPE_CHECKING:  # placement imports this module
    from ltxserve.engine.placement import Placement

GiB = 1024**3
MiB = 1024**2
BF16 = 2
FP32 = 4

COMPONENTS = ("text_encoder", "transformer", "latent_upsampler", "vae")

# The 0.9.7-dev multi-scale recipe: pass 1 at 2/3 of the padded size, batch up to 3 (negative, positive, perturbed:
# CFG + STG); pass 2 at twice pass 1, batch 2 (STG only). The prompt and the negative prompt are encoded one by one.
PASS1_BATCH = 3
PASS2_BATCH = 2
PROMPT_TOKENS = 256
PROMPT_BATCH = 1

# Allocator headroom: fragmentation, cuBLAS / cuDNN workspaces, the CUDA graph of the step. A fixed part and a
# fraction of the activations (the caching allocator rounds blocks up and keeps freed ones split).
HEADROOM_FIXED_BYTES = 1 * GiB
HEADROOM_ACTIVATION_FRACTION = 0.15


# --- sizes -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts and the architecture numbers the activation model needs (count_model_sizes fills it)."""

    transformer_params: int
    transformer_linear_weight_params: int  # the Linear weights inside the blocks: stored as fp8 under --dtype fp8
    transformer_block_params: int  # one transformer block
    vae_params: int
    upsampler_params: int
    text_encoder_params: int
    text_encoder_block_params: int
    largest_vae_module_params: int  # block-level offload of the VAE's decoder (or encoder): its own group + 2 blocks
    transformer_inner_dim: int = 4096
    transformer_ff_dim: int = 16384
    text_encoder_d_model: int = 4096
    text_encoder_d_ff: int = 10240
    vae_decoder_last_channels: int = 128  # channels of the decoder's full-resolution stage
    vae_encoder_first_channels: int = 128
    vae_patch_size: int = 4
    vae_spatial_compression: int = 32
    vae_temporal_compression: int = 8
    latent_channels: int = 128
    upsampler_mid_channels: int = 512
    transformer_rows_fp8: int = 0  # output rows of the fp8 Linear weights: one fp32 scale each
    transformer_unblocked_params: int = 0  # outside the blocks (embeddings, proj_in/out): one offload group
    text_encoder_unblocked_params: int = 0  # T5's shared embedding and final norm
    safety_checker_params: int = 0  # the NSFW classifier: on the GPU only where the plan has room (safety_checker)


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

    @property
    def latent_frames(self) -> int:
        return (self.padded_frames - 1) // 8 + 1

    def tokens(self, which: int) -> int:
        w, h = (self.pass1_width, self.pass1_height) if which == 1 else (self.pass2_width, self.pass2_height)
        return self.latent_frames * (h // 32) * (w // 32)


def pass_sizes(request: RequestSize) -> PassSizes:
    """The pipeline's own geometry (plan.plan_geometry): padded canvas, pass 1 at 2/3, pass 2 at twice pass 1."""
    g = plan_geometry(request.width, request.height, request.num_frames, LTXV_13B_097_DEV.downscale_factor)
    return PassSizes(
        g.width_padded, g.height_padded, g.num_frames_padded,
        g.first_pass_width, g.first_pass_height, g.second_pass_width, g.second_pass_height,
    )


# --- the activation model, per component ---------------------------------------------------------------------------


# Traced on the meta device (memory_trace.py), in D bytes per token (D = inner dim), for the forward the pipeline
# runs: segmented.py's (adaLN values per distinct timestep, RoPE tables once per call).
SEGMENTED_PER_ROW = 24.3  # per batch row: the hidden states and a block's working set at its peak
SEGMENTED_PER_CALL = 7.6  # once per call: RoPE's fp32 cos / sin tables, shared by the rows


def transformer_activation_bytes(sizes: ModelSizes, batch: int, tokens: int, fp8_matmul: str | None = None) -> int:
    """One forward of the transformer as the pipeline calls it (segmented.py), bf16 compute, fused attention.

    Per token, in units of the inner dim D: each batch row holds its hidden states and, at a block's peak (the
    feed-forward), its input, the normed and modulated copies and the 4D-wide projection and GELU: 24.3 D bytes;
    the call holds RoPE's cos and sin in fp32 once (7.6 D bytes). With fp8 matmuls (`fp8_matmul` "scaled_mm") each
    block Linear's input is quantized per token a chunk of rows at a time (fp8.ACTIVATION_CHUNK_ROWS): on top of the
    bf16 working set, two fp32 chunk temporaries at the widest input (the feed-forward's down projection, 4D); the
    1-byte quantized copy fits inside the bf16 peak (traced within 6% at 480p-720p x 257 frames). With "dequant" each Linear's weight is dequantized for its matmul (fp32
    and bf16 copies of the largest, 4D x D: 8 bytes per weight) on top of 70% of the bf16 working set; at large
    token counts the bf16 peak elsewhere dominates. Attention adds only its output: fused kernels never build the
    N x N matrix.
    """
    d = sizes.transformer_inner_dim
    bf16 = int(batch * tokens * SEGMENTED_PER_ROW * d + tokens * SEGMENTED_PER_CALL * d)
    if fp8_matmul == "scaled_mm":
        from ltxserve.engine.fp8 import ACTIVATION_CHUNK_ROWS  # here: the planner stays importable without torch

        return bf16 + 2 * ACTIVATION_CHUNK_ROWS * sizes.transformer_ff_dim * 4
    if fp8_matmul == "dequant":
        return max(bf16, int(0.7 * bf16) + 8 * sizes.transformer_ff_dim * d)
    return bf16


def text_encoder_activation_bytes(sizes: ModelSizes) -> int:
    """T5 on one prompt of 256 tokens: the gated-GELU feed-forward (4 tensors of d_ff) and fp32 RMSNorm upcasts
    (4 of d_model) at its peak; a few tens of MiB."""
    per_token = BF16 * 4 * sizes.text_encoder_d_ff + FP32 * 4 * sizes.text_encoder_d_model
    return PROMPT_BATCH * PROMPT_TOKENS * per_token


def encode_image_activation_bytes(sizes: ModelSizes, width: int, height: int) -> int:
    """The VAE encoder on the one conditioning frame: 11.4 tensors of its first (full-resolution, 128-channel)
    stage, bf16 (traced)."""
    stage = (height // sizes.vae_patch_size) * (width // sizes.vae_patch_size) * sizes.vae_encoder_first_channels
    return int(11.375 * stage * BF16)


def upsampler_activation_bytes(sizes: ModelSizes, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """The latent upsampler in fp32 (the reference keeps it fp32): 16 tensors of its mid channels at the input's
    resolution, i.e. 4 at the doubled resolution (traced)."""
    return 16 * latent_frames * latent_height * latent_width * sizes.upsampler_mid_channels * FP32


def _decoded_frames(sizes: ModelSizes, latent_frames: int) -> int:
    return (latent_frames - 1) * sizes.vae_temporal_compression + 1


def decoder_activation_bytes(sizes: ModelSizes, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """One call of the VAE decoder on latents (f, h, w): its peak is at the RMSNorm of the last resnet of the
    full-resolution (128-channel) stage: the stage tensor S in bf16, its fp32 upcast (2 S), the normed, modulated
    and activated copies: 6.25 S in all (traced at every size with f >= 2; a single latent frame 8.5 S)."""
    up = sizes.vae_spatial_compression // sizes.vae_patch_size
    stage = (_decoded_frames(sizes, latent_frames) * latent_height * up * latent_width * up
             * sizes.vae_decoder_last_channels * BF16)
    return int((6.25 if latent_frames > 1 else 8.5) * stage)


def video_bytes(sizes: ModelSizes, frames: int, height: int, width: int, nbytes: int = BF16) -> int:
    return 3 * frames * height * width * nbytes


# --- VAE decode plans: diffusers' AutoencoderKLLTXVideo tiling, simulated --------------------------------------------

DecodeMode = Literal["full", "spatial", "temporal", "spatial+temporal"]

# Candidate tiles, in pixels of the decoded video (multiples of 32), and frame chunks (multiples of 8), each with the
# overlap diffusers blends (64 pixels, 8 frames = one latent frame).
SPATIAL_TILES = (1024, 768, 512, 384, 256)
SPATIAL_OVERLAP = 64
TEMPORAL_TILES = (96, 64, 48, 32, 24, 16)
TEMPORAL_OVERLAP = 8


@dataclass(frozen=True)
class DecodePlan:
    mode: DecodeMode
    tile_height: int = 0  # pixels of the decoded video; 0 = no spatial tiling
    tile_width: int = 0
    tile_stride: int = 0  # pixels between tile starts (tile - overlap)
    tile_frames: int = 0  # decoded frames per chunk; 0 = no temporal tiling
    tile_stride_frames: int = 0
    activation_bytes: int = 0  # the decode's peak (estimated), decoded video included
    work: float = 1.0  # decoder work relative to one full decode (overlaps are decoded twice)

    def describe(self) -> str:
        parts = []
        if self.tile_height:
            parts.append(f"{self.tile_width}x{self.tile_height} px tiles (stride {self.tile_stride})")
        if self.tile_frames:
            parts.append(f"{self.tile_frames}-frame chunks (stride {self.tile_stride_frames})")
        return "whole video at once" if not parts else ", ".join(parts)


def _spatial_tiled(sizes: ModelSizes, f: int, h: int, w: int, tile: int, stride: int) -> tuple[int, int]:
    """(peak, latent cells decoded) of diffusers' tiled_decode: every tile's output is kept until all are blended,
    then the rows and the whole video are concatenated."""
    sc = sizes.vae_spatial_compression
    t, s = tile // sc, stride // sc
    frames = _decoded_frames(sizes, f)
    stored = peak = cells = 0
    for i in range(0, h, s):
        for j in range(0, w, s):
            th, tw = min(t, h - i), min(t, w - j)
            peak = max(peak, stored + decoder_activation_bytes(sizes, f, th, tw))
            stored += video_bytes(sizes, frames, th * sc, tw * sc)
            cells += f * th * tw
    out = video_bytes(sizes, frames, h * sc, w * sc)
    return max(peak, stored + 2 * out), cells


def _decode_peak(sizes: ModelSizes, f: int, h: int, w: int, tile: int, stride: int, tile_frames: int,
                 stride_frames: int) -> tuple[int, float]:
    """(peak bytes, work) of AutoencoderKLLTXVideo._decode with these knobs, as diffusers runs it."""
    tc, sc = sizes.vae_temporal_compression, sizes.vae_spatial_compression
    spatial = tile > 0 and (h > tile // sc or w > tile // sc)

    def one(frames_latent: int) -> tuple[int, int]:
        if spatial:
            return _spatial_tiled(sizes, frames_latent, h, w, tile, stride)
        return decoder_activation_bytes(sizes, frames_latent, h, w), frames_latent * h * w

    lmin, lstride = tile_frames // tc, stride_frames // tc
    if tile_frames and f > lmin:
        # _temporal_tiled_decode: windows of lmin + 1 latent frames every lstride; all chunks kept, then joined.
        stored = peak = cells = 0
        for i in range(0, f, lstride):
            n = min(lmin + 1, f - i)
            chunk_peak, chunk_cells = one(n)
            peak = max(peak, stored + chunk_peak)
            stored += video_bytes(sizes, _decoded_frames(sizes, n), h * sc, w * sc)
            cells += chunk_cells
        peak = max(peak, stored + video_bytes(sizes, _decoded_frames(sizes, f), h * sc, w * sc))
    else:
        peak, cells = one(f)
    return peak, cells / (f * h * w)


def decode_candidates(sizes: ModelSizes, latent_frames: int, latent_height: int, latent_width: int) -> list[DecodePlan]:
    """Every decode this module would consider for latents (f, h, w), cheapest (least recomputation) first."""
    f, h, w = latent_frames, latent_height, latent_width
    sc, tc = sizes.vae_spatial_compression, sizes.vae_temporal_compression
    spatial = [(0, 0)] + [(t, t - SPATIAL_OVERLAP) for t in SPATIAL_TILES if t < max(h, w) * sc]
    temporal = [(0, 0)] + [(t, t - TEMPORAL_OVERLAP) for t in TEMPORAL_TILES if t // tc < f]
    plans = []
    for tile, stride in spatial:
        for tile_frames, stride_frames in temporal:
            peak, work = _decode_peak(sizes, f, h, w, tile, stride, tile_frames, stride_frames)
            mode: DecodeMode = ("spatial+temporal" if tile and tile_frames else "spatial" if tile
                                else "temporal" if tile_frames else "full")
            plans.append(DecodePlan(mode, tile, tile, stride, tile_frames, stride_frames, peak, work))
    return sorted(plans, key=lambda p: (round(p.work, 3), p.activation_bytes))


POSTPROCESS_CHUNK_FRAMES = 16  # pipeline.video_to_uint8's frames per chunk


def postprocess_bytes(sizes: ModelSizes, ps: PassSizes) -> int:
    """After the decode (pipeline.video_to_uint8): the decoded video (bf16, pass-2 size) and, per chunk of 16 frames,
    its scaled and clamped copies (bf16), the resize to the padded size (bf16), its fp32 x255 copy and the uint8."""
    v = video_bytes(sizes, ps.padded_frames, ps.pass2_height, ps.pass2_width)
    n = min(POSTPROCESS_CHUNK_FRAMES, ps.padded_frames)
    chunk = (2 * video_bytes(sizes, n, ps.pass2_height, ps.pass2_width)
             + video_bytes(sizes, n, ps.padded_height, ps.padded_width) * (BF16 + 2 * FP32 + 1) // BF16)
    return v + chunk


# --- weights on the GPU per stage ------------------------------------------------------------------------------------

WeightDtype = Literal["bf16", "fp8", "fp16", "fp32"]
_BYTES_PER_PARAM = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 2}  # fp8 applies to the blocks' Linear weights only


@dataclass(frozen=True)
class WeightBytes:
    transformer: int
    vae: int
    upsampler: int
    text_encoder: int

    @property
    def total(self) -> int:
        return self.transformer + self.vae + self.upsampler + self.text_encoder

    def of(self, component: str) -> int:
        return {"transformer": self.transformer, "vae": self.vae, "latent_upsampler": self.upsampler,
                "text_encoder": self.text_encoder}[component]


def weight_bytes(sizes: ModelSizes, dtype: WeightDtype) -> WeightBytes:
    """Bytes of each component's weights. fp8: the blocks' Linear weights at 1 byte plus an fp32 scale per output
    row; everything else (embeddings, norms, timestep MLP, proj_out, biases) bf16. The upsampler is kept in fp32
    whatever the dtype, as the reference keeps it."""
    b = _BYTES_PER_PARAM[dtype]
    if dtype == "fp8":
        rest = sizes.transformer_params - sizes.transformer_linear_weight_params
        transformer = sizes.transformer_linear_weight_params + FP32 * sizes.transformer_rows_fp8 + BF16 * rest
    else:
        transformer = b * sizes.transformer_params
    return WeightBytes(transformer, b * sizes.vae_params, FP32 * sizes.upsampler_params, b * sizes.text_encoder_params)


def streamed_bytes(sizes: ModelSizes, dtype: WeightDtype, component: str) -> int:
    """Sequential mode (diffusers' block-level group offload with a prefetch stream): the group outside the blocks
    plus the running block and the one being prefetched."""
    b = _BYTES_PER_PARAM[dtype]
    if component == "transformer":
        block = sizes.transformer_block_params * (1 if dtype == "fp8" else b)
        return b * sizes.transformer_unblocked_params + 2 * block
    if component == "text_encoder":
        return b * sizes.text_encoder_unblocked_params + 2 * b * sizes.text_encoder_block_params
    if component == "vae":
        return b * sizes.largest_vae_module_params  # the decoder's (or encoder's) own group and two up blocks
    return FP32 * sizes.upsampler_params  # small: moved whole


# --- stage peaks -------------------------------------------------------------------------------------------------

# Which component runs in each stage.
STAGE_COMPONENT = {
    "encode_prompt": "text_encoder",
    "encode_image": "vae",
    "denoise_pass1": "transformer",
    "upsample": "latent_upsampler",
    "denoise_pass2": "transformer",
    "decode": "vae",
}


def job_bytes(sizes: ModelSizes, ps: PassSizes) -> int:
    """Tensors the pipeline holds across stages: the prompt embeddings and pass 2's tokens, initial tokens, noise
    and conditioning noise (fp32)."""
    text = 3 * PROMPT_TOKENS * sizes.text_encoder_d_model * BF16
    return text + 4 * ps.tokens(2) * sizes.latent_channels * FP32


def stage_activations(sizes: ModelSizes, request: RequestSize, decode: DecodePlan | None = None,
                      fp8_matmul: str | None = None) -> dict[str, int]:
    """Activation bytes at each stage's peak; the decode's as `decode` plans it (whole video when None)."""
    ps = pass_sizes(request)
    f = ps.latent_frames
    h2, w2 = ps.pass2_height // 32, ps.pass2_width // 32
    if decode is None:
        decode_peak = decoder_activation_bytes(sizes, f, h2, w2)
    else:
        decode_peak = decode.activation_bytes
    return {
        "encode_prompt": text_encoder_activation_bytes(sizes),
        "encode_image": encode_image_activation_bytes(sizes, ps.pass2_width, ps.pass2_height),
        "denoise_pass1": transformer_activation_bytes(sizes, PASS1_BATCH, ps.tokens(1), fp8_matmul),
        "upsample": upsampler_activation_bytes(sizes, f, ps.pass1_height // 32, ps.pass1_width // 32),
        "denoise_pass2": transformer_activation_bytes(sizes, PASS2_BATCH, ps.tokens(2), fp8_matmul),
        "decode": max(decode_peak, postprocess_bytes(sizes, ps)),
    }


def with_headroom(nbytes_weights: int, activations: int) -> int:
    return nbytes_weights + activations + HEADROOM_FIXED_BYTES + int(HEADROOM_ACTIVATION_FRACTION * activations)


def gpu_weight_bytes(sizes: ModelSizes, memory: str, dtype: WeightDtype, resident: tuple[str, ...],
                     component: str) -> int:
    """Weights on the GPU while `component` runs: the resident set, plus the visitor (offload), or the streamed
    groups (sequential)."""
    w = weight_bytes(sizes, dtype)
    if memory == "sequential":  # the resident ones (the small upsampler) plus the running component's groups
        streamed = 0 if component in resident else streamed_bytes(sizes, dtype, component)
        return sum(w.of(c) for c in resident) + streamed
    on_gpu = set(resident) | {component}
    return sum(w.of(c) for c in on_gpu)


FP8_MATMULS = ("scaled_mm", "dequant")


def stage_peaks(sizes: ModelSizes, request: RequestSize, memory: str, dtype: WeightDtype,
                resident: tuple[str, ...], decode: DecodePlan | None = None,
                fp8_matmul: str = "scaled_mm") -> dict[str, int]:
    """Estimated GPU bytes (headroom included) at the peak of each stage of one request. `fp8_matmul` (fp8 only):
    "scaled_mm" (fp8 tensor-core matmuls, Ada / Hopper and newer) or "dequant" (fp8 storage, bf16 matmuls)."""
    act = stage_activations(sizes, request, decode, fp8_matmul if dtype == "fp8" else None)
    job = job_bytes(sizes, pass_sizes(request))
    return {
        stage: with_headroom(gpu_weight_bytes(sizes, memory, dtype, resident, STAGE_COMPONENT[stage]) + job, a)
        for stage, a in act.items()
    }


def latent_shape(sizes: ModelSizes, request: RequestSize) -> tuple[int, int, int]:
    ps = pass_sizes(request)
    sc = sizes.vae_spatial_compression
    return ps.latent_frames, ps.pass2_height // sc, ps.pass2_width // sc


def fitting_decode(sizes: ModelSizes, request: RequestSize, memory: str, dtype: WeightDtype,
                   resident: tuple[str, ...], free_bytes: int, fp8_matmul: str = "scaled_mm"
                   ) -> tuple[DecodePlan, dict[str, int]] | None:
    """The cheapest decode with which every stage fits `free_bytes`, and the stage peaks; None if none does."""
    for decode in decode_candidates(sizes, *latent_shape(sizes, request)):
        peaks = stage_peaks(sizes, request, memory, dtype, resident, decode, fp8_matmul)
        if max(peaks.values()) <= free_bytes:
            return decode, peaks
    return None


def frugal_decode(sizes: ModelSizes, request: RequestSize) -> DecodePlan:
    """The decode with the least memory."""
    return min(decode_candidates(sizes, *latent_shape(sizes, request)), key=lambda p: p.activation_bytes)


# --- the per-request plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestPlan:
    request: RequestSize
    passes: PassSizes
    memory: str  # the placement's, repeated for the log
    dtype: str
    resident: tuple[str, ...]
    decode: DecodePlan
    stage_bytes: dict[str, int] = field(default_factory=dict)  # estimated GPU bytes at each stage's peak
    peak_bytes: int = 0
    free_bytes: int = 0

    def describe(self) -> str:
        r, p = self.request, self.passes
        return (f"{r.width}x{r.height}x{r.num_frames}: decode at {p.pass2_width}x{p.pass2_height}x{p.padded_frames} "
                f"({self.decode.describe()}); estimated peak {self.peak_bytes / GiB:.1f} GiB of "
                f"{self.free_bytes / GiB:.1f} GiB free")


class RequestTooLarge(InputError):
    """A request this GPU cannot run with the server's placement: a 422 naming what does not fit and what would."""

    def __init__(self, message: str, *, largest_fitting: RequestSize | None = None,
                 longest_fitting: RequestSize | None = None, need_bytes: int = 0, free_bytes: int = 0):
        super().__init__(message, loc=("body",), type="request_too_large")
        self.largest_fitting = largest_fitting
        self.longest_fitting = longest_fitting
        self.need_bytes = need_bytes
        self.free_bytes = free_bytes


def _fits(sizes: ModelSizes, request: RequestSize, memory: str, dtype: WeightDtype, resident: tuple[str, ...],
          free_bytes: int, fp8_matmul: str = "scaled_mm") -> bool:
    try:
        return fitting_decode(sizes, request, memory, dtype, resident, free_bytes, fp8_matmul) is not None
    except ValueError:
        return False


def largest_fitting_size(sizes: ModelSizes, request: RequestSize, memory: str, dtype: WeightDtype,
                         resident: tuple[str, ...], free_bytes: int, fp8_matmul: str = "scaled_mm"
                         ) -> RequestSize | None:
    """The largest size with the request's aspect ratio and frame count that fits (sides in steps of 32)."""
    aspect = request.width / request.height
    best = None
    lo, hi = 1, max(request.width, request.height) // 32  # scale in steps of 32 px of the longer side
    while lo <= hi:
        mid = (lo + hi) // 2
        long_side = 32 * mid
        if aspect >= 1:
            w, h = long_side, max(32, int(round(long_side / aspect / 32)) * 32)
        else:
            h, w = long_side, max(32, int(round(long_side * aspect / 32)) * 32)
        candidate = RequestSize(w, h, request.num_frames)
        if _fits(sizes, candidate, memory, dtype, resident, free_bytes, fp8_matmul):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def longest_fitting(sizes: ModelSizes, request: RequestSize, memory: str, dtype: WeightDtype,
                    resident: tuple[str, ...], free_bytes: int, fp8_matmul: str = "scaled_mm"
                    ) -> RequestSize | None:
    """The most frames (8k + 1) at the request's size that fit."""
    best = None
    lo, hi = 1, (request.num_frames - 1) // 8
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = RequestSize(request.width, request.height, 8 * mid + 1)
        if _fits(sizes, candidate, memory, dtype, resident, free_bytes, fp8_matmul):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def plan_request(sizes: ModelSizes, placement: "Placement", request: RequestSize,
                 free_bytes: int | None = None) -> RequestPlan:
    """Plan one request under the server's placement. `free_bytes` is the GPU memory the model may use in all, as
    the placement was planned with (what the device had free before the model was placed: the placement's resident
    weights are counted here, not subtracted first); by default the placement's own `free_bytes`.
    Raises RequestTooLarge (a 422 InputError) when no decode makes every stage fit."""
    if free_bytes is None:
        free_bytes = placement.free_bytes
    ps = pass_sizes(request)
    memory, dtype, resident = placement.memory, placement.dtype, tuple(placement.resident)
    fp8_matmul = getattr(placement, "fp8_matmul", "scaled_mm")
    found = fitting_decode(sizes, request, memory, dtype, resident, free_bytes, fp8_matmul)
    if found is not None:
        decode, peaks = found
        return RequestPlan(request, ps, memory, dtype, resident, decode, peaks, max(peaks.values()), free_bytes)

    frugal = stage_peaks(sizes, request, memory, dtype, resident, frugal_decode(sizes, request), fp8_matmul)
    short = {s: b for s, b in frugal.items() if b > free_bytes}
    worst = max(short, key=short.get)
    what = ", ".join(f"{s} needs {b / GiB:.1f} GiB" for s, b in sorted(short.items(), key=lambda kv: -kv[1]))
    largest = largest_fitting_size(sizes, request, memory, dtype, resident, free_bytes, fp8_matmul)
    longest = longest_fitting(sizes, request, memory, dtype, resident, free_bytes, fp8_matmul)
    options = []
    if largest is not None:
        options.append(f"{largest.width}x{largest.height} at {request.num_frames} frames")
    if longest is not None:
        options.append(f"{longest.num_frames} frames at {request.width}x{request.height}")
    can = ("; the largest this GPU can run: " + " or ".join(options)) if options else (
        "; nothing of this shape fits this GPU with the server's placement")
    raise RequestTooLarge(
        f"a {request.width}x{request.height}, {request.num_frames}-frame video does not fit this GPU "
        f"({free_bytes / GiB:.1f} GiB, placement {memory}/{dtype}): {what} even with the VAE decoding in tiles"
        f"{can}.",
        largest_fitting=largest, longest_fitting=longest, need_bytes=frugal[worst], free_bytes=free_bytes,
    )


def apply_request_plan(vae, plan: RequestPlan | DecodePlan) -> None:
    """Set diffusers' AutoencoderKLLTXVideo tiling for this request's decode.

    Spatial tiling is diffusers' `use_tiling` with tiles of tile_sample_min_height/width pixels every
    tile_sample_stride_height/width; temporal tiling its `use_framewise_decoding`, chunks of
    tile_sample_min_num_frames decoded frames every tile_sample_stride_num_frames (each window is one latent frame
    longer, blended over the overlap). The decoder's timestep conditioning (`temb`) goes unchanged to every tile and
    chunk, and 0.9.7's decoder injects no noise, so tiles need no other state.

    diffusers' encoder reads the same `use_tiling` flag, and the conditioning frame (1664 px wide at 720p) would be
    encoded in tiles too, changing the conditioning. So the flags are switched on only inside `_decode`: the first
    call wraps this VAE instance's `_decode`, and every later call just replaces the plan it reads.
    """
    decode = plan.decode if isinstance(plan, RequestPlan) else plan
    if decode.tile_height:
        vae.tile_sample_min_height = decode.tile_height
        vae.tile_sample_min_width = decode.tile_width
        vae.tile_sample_stride_height = decode.tile_stride
        vae.tile_sample_stride_width = decode.tile_stride
    if decode.tile_frames:
        vae.tile_sample_min_num_frames = decode.tile_frames
        vae.tile_sample_stride_num_frames = decode.tile_stride_frames
    vae.use_tiling = False
    vae.use_framewise_decoding = False
    vae._ltxserve_decode_plan = decode
    if getattr(vae, "_ltxserve_decode_wrapped", False):
        return
    original = vae._decode

    def _decode(z, temb=None, return_dict: bool = True):
        d = vae._ltxserve_decode_plan
        vae.use_tiling, vae.use_framewise_decoding = bool(d.tile_height), bool(d.tile_frames)
        try:
            return original(z, temb, return_dict=return_dict)
        finally:
            vae.use_tiling = vae.use_framewise_decoding = False

    vae._decode = _decode
    vae._ltxserve_decode_wrapped = True
