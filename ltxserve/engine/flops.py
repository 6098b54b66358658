"""FLOPs of one request, counted from the model configurations at the request's geometry (no torch).

Counted as torch.utils.flop_counter.FlopCounterMode counts: 2 per multiply-add of every matmul and convolution, and
attention as its two matmuls (Q K^T and P V); element-wise work (norms, RoPE, activations, softmax) is not counted.
The work of a request: T5 on the prompt and the negative prompt; pass 1's and pass 2's transformer forwards, one per
batch row the guidance table asks for at each step (CFG and STG rows: 62 sample-forwards in pass 1 and 26 in pass 2
at the hosted defaults); the latent upsampler; one untiled VAE decode at the pass-2 size. The VAE encoder's work on
the conditioning frame (well under 0.1%) is left out.

`peak_bf16_flops(gpu_name)` knows the dense bf16 peak of common GPUs, so that FLOPs / peak is the time a request
cannot beat on that card.
"""

from __future__ import annotations

from dataclasses import dataclass

from ltxserve.engine.plan import LTXV_13B_097_DEV, PipelineConfig, guidance_schedule, pass_timesteps, plan_geometry

TEXT_TOKENS = 256
TIMESTEP_PROJ_DIM = 256  # the sinusoidal timestep embedding fed to the timestep MLP

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIE": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 6000 ADA": 364e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_bf16_flops(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name as CUDA reports it ("NVIDIA H100 80GB HBM3"), or None."""
    name = gpu_name.upper().replace("NVIDIA", "").replace("GEFORCE", "").strip()
    if "H100" in name and ("PCIE" in name or "PCI" in name):
        return GPU_PEAK_BF16["H100 PCIE"]
    if "H100" in name and "NVL" in name:
        return GPU_PEAK_BF16["H100 NVL"]
    for key in sorted(GPU_PEAK_BF16, key=len, reverse=True):
        if key in name:
            return GPU_PEAK_BF16[key]
    return None


@dataclass(frozen=True)
class Flops:
    gemm: float = 0.0  # matmuls and convolutions
    attention: float = 0.0  # Q K^T and P V

    @property
    def total(self) -> float:
        return self.gemm + self.attention

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.gemm + other.gemm, self.attention + other.attention)

    def __mul__(self, k: float) -> "Flops":
        return Flops(self.gemm * k, self.attention * k)

    __rmul__ = __mul__


def _mm(m: int, k: int, n: int) -> float:
    return 2.0 * m * k * n


def transformer_flops(cfg: dict, batch: int, tokens: int, text_tokens: int = TEXT_TOKENS,
                      timestep_rows: int | None = 2) -> Flops:
    """One forward of the transformer on `batch` rows of `tokens` latent tokens. `timestep_rows`: the rows the
    timestep MLP runs on: one per distinct timestep in the pipeline's segmented forward (2 in image-to-video), every
    token in diffusers' own forward (None)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ff = 4 * d
    cross, caption = cfg["cross_attention_dim"], cfg["caption_channels"]
    layers = cfg["num_layers"]
    n, t = tokens, text_tokens
    u = n if timestep_rows is None else timestep_rows
    per_row = (
        _mm(n, cfg["in_channels"], d)  # proj_in
        # timestep: sinusoid -> linear_1 -> linear_2 -> adaLN linear (6 D), per distinct value (or per token)
        + _mm(u, TIMESTEP_PROJ_DIM, d) + _mm(u, d, d) + _mm(u, d, 6 * d)
        + _mm(t, caption, d) + _mm(t, d, d)  # caption projection
        + layers * (
            4 * _mm(n, d, d)  # self-attention q, k, v, out
            + 2 * _mm(n, d, d) + 2 * _mm(t, cross, d)  # cross-attention q, out; k, v on the text
            + _mm(n, d, ff) + _mm(n, ff, d)  # feed-forward
        )
        + _mm(n, d, cfg["out_channels"])  # proj_out
    )
    attention = layers * (2 * _mm(n, d, n) + 2 * _mm(n, d, t))
    return Flops(batch * per_row, batch * attention)


def t5_flops(cfg: dict, tokens: int = TEXT_TOKENS, prompts: int = 2) -> Flops:
    """T5 encoder (gated-GELU) on `prompts` prompts of `tokens` tokens, one at a time."""
    d, dff = cfg["d_model"], cfg["d_ff"]
    inner = cfg["num_heads"] * cfg["d_kv"]
    gemm = cfg["num_layers"] * (3 * _mm(tokens, d, inner) + _mm(tokens, inner, d) + 2 * _mm(tokens, d, dff)
                                + _mm(tokens, dff, d))
    attention = cfg["num_layers"] * 2 * _mm(tokens, inner, tokens)
    return Flops(prompts * gemm, prompts * attention)


def _conv(cin: int, cout: int, kernel_volume: int, positions: int) -> float:
    return 2.0 * cin * cout * kernel_volume * positions


def upsampler_flops(cfg: dict, frames: int, height: int, width: int) -> Flops:
    """LTXLatentUpsamplerModel (spatial x2, 3-D convolutions) on latents (frames, height, width)."""
    c, mid, blocks = cfg["in_channels"], cfg["mid_channels"], cfg["num_blocks_per_stage"]
    low, high = frames * height * width, frames * height * width * 4
    gemm = (_conv(c, mid, 27, low) + blocks * 2 * _conv(mid, mid, 27, low)
            + _conv(mid, 4 * mid, 9, low)  # the 2-D upsampling convolution, per frame
            + blocks * 2 * _conv(mid, mid, 27, high) + _conv(mid, c, 27, high))
    return Flops(gemm, 0.0)


def vae_decode_flops(cfg: dict, frames: int, height: int, width: int) -> Flops:
    """AutoencoderKLLTXVideo's decoder on latents (frames, height, width), untiled: conv_in, the mid block, each up
    block (its depth-to-space convolution, then its resnets at twice the size), conv_out."""
    channels = list(reversed(cfg["decoder_block_out_channels"]))
    layers = list(reversed(cfg["decoder_layers_per_block"]))
    factors = list(reversed(cfg["upsample_factor"]))
    positions = frames * height * width
    c = channels[0]
    gemm = _conv(cfg["latent_channels"], c, 27, positions) + layers[0] * 2 * _conv(c, c, 27, positions)
    f, h, w = frames, height, width
    for i, block_channels in enumerate(channels):
        out = block_channels // factors[i]
        gemm += _conv(c, out * 8, 27, f * h * w)  # upsampler conv: (2, 2, 2) depth-to-space, then / factor
        f, h, w = 2 * f - 1, 2 * h, 2 * w
        if c // factors[i] != out:  # a channel-changing resnet first (not in 0.9.7)
            gemm += _conv(c // factors[i], out, 27, f * h * w) + _conv(out, out, 27, f * h * w)
        gemm += layers[i + 1] * 2 * _conv(out, out, 27, f * h * w)
        c = out
    gemm += _conv(c, cfg["out_channels"] * cfg["patch_size"] ** 2, 27, f * h * w)
    return Flops(gemm, 0.0)


def sample_forwards(config: PipelineConfig = LTXV_13B_097_DEV) -> tuple[int, int]:
    """Transformer batch rows summed over each pass's steps, per the guidance table (62 and 26 by default)."""
    out = []
    for p in (config.first_pass, config.second_pass):
        out.append(sum(g.num_conds for g in guidance_schedule(p, pass_timesteps(p))))
    return out[0], out[1]


@dataclass(frozen=True)
class RequestFlops:
    text_encoding: Flops
    pass1: Flops
    upsample: Flops
    pass2: Flops
    decode: Flops
    pass1_forwards: int
    pass2_forwards: int
    tokens1: int
    tokens2: int

    @property
    def total(self) -> float:
        return sum(s.total for s in self.stages().values())

    def stages(self) -> dict[str, Flops]:
        return {"text encoding": self.text_encoding, "pass 1": self.pass1, "upsample": self.upsample,
                "pass 2": self.pass2, "decode": self.decode}


def request_flops(configs: dict[str, dict], width: int, height: int, num_frames: int,
                  config: PipelineConfig = LTXV_13B_097_DEV) -> RequestFlops:
    """The FLOPs of one request. `configs` holds the diffusers configurations by component name ("transformer",
    "vae", "latent_upsampler", "text_encoder"), e.g. ltxserve/weights/configs/*.json."""
    g = plan_geometry(width, height, num_frames, config.downscale_factor)
    f = (g.num_frames_padded - 1) // 8 + 1
    h1, w1 = g.first_pass_height // 32, g.first_pass_width // 32
    h2, w2 = g.second_pass_height // 32, g.second_pass_width // 32
    n1, n2 = sample_forwards(config)
    t = configs["transformer"]
    return RequestFlops(
        text_encoding=t5_flops(configs["text_encoder"]),
        pass1=transformer_flops(t, n1, f * h1 * w1),
        upsample=upsampler_flops(configs["latent_upsampler"], f, h1, w1),
        pass2=transformer_flops(t, n2, f * h2 * w2),
        decode=vae_decode_flops(configs["vae"], f, h2, w2),
        pass1_forwards=n1, pass2_forwards=n2, tokens1=f * h1 * w1, tokens2=f * h2 * w2,
    )


def real_configs() -> dict[str, dict]:
    """The 13B 0.9.7 configurations shipped in ltxserve/weights/configs."""
    from ltxserve.engine.placement import _load_config

    return {name: _load_config(name) for name in ("transformer", "vae", "latent_upsampler", "text_encoder")}
