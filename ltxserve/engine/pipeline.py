"""The two-pass (multi-scale) image-to-video generation of LTX-Video 0.9.7, step for step as Lightricks' reference.

Reads top to bottom beside the reference (ltx_video/pipelines/pipeline_ltx_video.py: LTXMultiScalePipeline and
LTXVideoPipeline.__call__; ltx_video/inference.py), with its names:

    encode the prompts → pass 1 at the downscaled size → un-normalise, upsample, normalise, adain_filter_latent →
    pass 2 at twice pass 1's size, from the upsampled latents noised to its first timestep → decode noise, VAE decode
    → resize to the padded size → crop the padding and the extra frames → uint8

Randomness reproduces the reference's draws exactly (same shapes, same order): `generator` is the reference's
torch.Generator; `global_rng` stands in for torch's default generator (which the reference uses for the VAE's
posterior samples and the decode noise), so a server never touches process-global RNG state.

Number formats follow the reference run in reduced precision (`precision: bfloat16`): the transformer, VAE and T5
compute in `c.dtype`; the latent upsampler stays fp32; the initial noise and the conditioning latents are in the
compute dtype, and the latents become fp32 at the first Euler step (fp32 timesteps times the model's output) and stay
fp32 between steps, cast to the compute dtype only at the model's input; pass 2 casts its starting latents back to the
compute dtype as the reference's prepare_latents does; the decode mixes its noise in fp32, casts to the VAE's dtype
before un-normalising, and gets an fp32 timestep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ltxserve.engine.contract import JobCancelled
from ltxserve.engine.models import LTXComponents
from ltxserve.engine.plan import (
    VAE_SPATIAL_SCALE,
    VAE_TEMPORAL_SCALE,
    Geometry,
    PassConfig,
    PipelineConfig,
    guidance_schedule,
    pass_timesteps,
)
from ltxserve.engine.segmented import is_segmented
from ltxserve.engine.stg import STGController

TEXT_MAX_TOKENS = 256
TIMESTEP_SCALE = 1000.0  # the reference's timestep_scale_multiplier; diffusers' transformer takes scaled steps


@dataclass
class GenerationInputs:
    prompt: str
    negative_prompt: str
    conditioning_image: torch.Tensor  # (1, 3, 1, h, w) in [-1, 1]: cropped, blurred, CRF'd, padded (media.py)
    geometry: Geometry
    frame_rate: int
    seed: int


StepCallback = Callable[[int, int, str], None]


@dataclass
class _Text:
    embeds: torch.Tensor  # (3, L, D): [negative, positive, positive]
    mask: torch.Tensor  # (3, L)


# --- small pieces, each as the reference computes it -------------------------------------------------------------


@torch.inference_mode()
def encode_prompts(c: LTXComponents, prompt: str, negative_prompt: str) -> _Text:
    """T5 at 256 tokens, padded to max length; the batch is [negative, positive, positive] as the reference's."""

    def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = c.tokenizer([text.strip()], padding="max_length", max_length=TEXT_MAX_TOKENS, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(c.device), tokens.attention_mask.to(c.device)
        return c.text_encoder(ids, attention_mask=mask)[0].to(c.dtype), mask

    pos, pos_mask = encode(prompt)
    neg, neg_mask = encode(negative_prompt)
    return _Text(embeds=torch.cat([neg, pos, pos]), mask=torch.cat([neg_mask, pos_mask, pos_mask]))


def normalize_latents(c: LTXComponents, latents: torch.Tensor) -> torch.Tensor:
    mean = c.vae.latents_mean.to(latents).view(1, -1, 1, 1, 1)
    std = c.vae.latents_std.to(latents).view(1, -1, 1, 1, 1)
    return (latents - mean) / std


def un_normalize_latents(c: LTXComponents, latents: torch.Tensor) -> torch.Tensor:
    mean = c.vae.latents_mean.to(latents).view(1, -1, 1, 1, 1)
    std = c.vae.latents_std.to(latents).view(1, -1, 1, 1, 1)
    return latents * std + mean


def vae_encode(c: LTXComponents, media: torch.Tensor, global_rng: torch.Generator) -> torch.Tensor:
    """Posterior *sample* (the reference's latent_dist.sample(), from the global RNG), normalised per channel, in
    the VAE's dtype."""
    posterior = c.vae.encode(media.to(device=c.device, dtype=c.dtype)).latent_dist
    return normalize_latents(c, posterior.sample(generator=global_rng))


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) → (b, f*h*w, c), tokens in (f, h, w) row-major order."""
    b, ch = latents.shape[:2]
    return latents.reshape(b, ch, -1).transpose(1, 2)


def unpatchify(tokens: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    b, _, ch = tokens.shape
    return tokens.transpose(1, 2).reshape(b, ch, f, h, w)


def token_noise(shape: tuple[int, int, int, int, int], generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Noise drawn in the token layout (b, f*h*w, c) and laid out as (b, c, f, h, w): the reference's order."""
    b, ch, f, h, w = shape
    noise = torch.randn((b, f * h * w, ch), generator=generator, device=generator.device, dtype=dtype)
    return unpatchify(noise, f, h, w).to(device)


def pixel_coords(f: int, h: int, w: int, frame_rate: float, device) -> torch.Tensor:
    """RoPE positions (1, 3, N): latent → pixel coordinates (×8, ×32, ×32) with the causal fix on frames, the
    frame coordinate in seconds (÷ frame_rate), as the reference feeds its transformer."""
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"))
    coords = grid.reshape(3, -1).to(torch.float32)
    coords = coords * torch.tensor([VAE_TEMPORAL_SCALE, VAE_SPATIAL_SCALE, VAE_SPATIAL_SCALE],
                                   dtype=torch.float32)[:, None]
    coords[0] = (coords[0] + 1 - VAE_TEMPORAL_SCALE).clamp(min=0)
    coords[0] = coords[0] * (1.0 / frame_rate)
    return coords[None].to(device)


def adain_filter_latent(latents: torch.Tensor, reference_latents: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """Match each (batch, channel)'s mean and (unbiased) std over all frames and positions to the reference's."""
    dims = (2, 3, 4)
    r_sd, r_mean = torch.std_mean(reference_latents, dim=dims, keepdim=True)
    i_sd, i_mean = torch.std_mean(latents, dim=dims, keepdim=True)
    result = (latents - i_mean) / i_sd * r_sd + r_mean
    return torch.lerp(latents, result, factor)


def lower_timesteps(per_token_t: torch.Tensor, timesteps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """For each token, the largest schedule timestep (or 0) strictly below its own: the Euler target."""
    padded = torch.cat([timesteps, timesteps.new_zeros(1)])
    below = padded[:, None, None] < (per_token_t[None] - eps)
    return (below * padded[:, None, None]).amax(dim=0)


def guide(noise_pred: torch.Tensor, g, cfg_star_rescale: bool) -> torch.Tensor:
    """CFG (with CFG-star rescale), STG and guidance rescale, on the batch [uncond?, cond, perturbed?]."""
    chunks = noise_pred.chunk(g.num_conds)
    if g.do_stg:
        noise_pred_text, noise_pred_text_perturb = chunks[-2], chunks[-1]
    if g.do_cfg:
        noise_pred_uncond, noise_pred_text = chunks[0], chunks[1]
        if cfg_star_rescale:
            positive = noise_pred_text.reshape(1, -1)
            negative = noise_pred_uncond.reshape(1, -1)
            alpha = (positive * negative).sum(dim=1, keepdim=True) / ((negative**2).sum(dim=1, keepdim=True) + 1e-8)
            noise_pred_uncond = alpha.view(1, 1, 1) * noise_pred_uncond
        out = noise_pred_uncond + g.guidance_scale * (noise_pred_text - noise_pred_uncond)
    elif g.do_stg:
        out = noise_pred_text
    else:
        out = chunks[0]
    if g.do_stg:
        out = out + g.stg_scale * (noise_pred_text - noise_pred_text_perturb)
        if g.do_rescaling and g.stg_scale > 0.0:
            factor = noise_pred_text.reshape(1, -1).std(dim=1) / out.reshape(1, -1).std(dim=1)
            factor = g.rescaling_scale * factor + (1 - g.rescaling_scale)
            out = out * factor.view(1, 1, 1)
    return out


# --- one pass ----------------------------------------------------------------------------------------------------


def denoise_pass(
    c: LTXComponents, stg: STGController, p: PassConfig, text: _Text, image: torch.Tensor, *, width: int,
    height: int, num_frames: int, frame_rate: int, image_cond_noise_scale: float, generator: torch.Generator,
    global_rng: torch.Generator, latents: torch.Tensor | None, stage: str, on_step: StepCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> torch.Tensor:
    """LTXVideoPipeline.__call__ for one frame-0 conditioning item, returning latents (b, c, f, h, w)."""
    device, dtype = c.device, c.dtype
    timesteps_np = pass_timesteps(p)
    timesteps = torch.from_numpy(timesteps_np).to(device)
    schedule = guidance_schedule(p, timesteps_np)
    channels = c.transformer.config.in_channels
    f = (num_frames - 1) // VAE_TEMPORAL_SCALE + 1
    h, w = height // VAE_SPATIAL_SCALE, width // VAE_SPATIAL_SCALE
    shape = (1, channels, f, h, w)

    # prepare_latents: noise in token layout, in the compute dtype; given latents (pass 2) are cast to it and noised
    # to the first timestep (a 0-dim fp32 factor keeps them in the compute dtype, as in the reference)
    noise = token_noise(shape, generator, device, dtype)
    t0 = timesteps[0]
    latents = noise if latents is None else t0 * noise + (1 - t0) * latents.to(device=device, dtype=dtype)

    # prepare_conditioning: the image at this pass's size, encoded, written over the first latent frame(s)
    media = F.interpolate(image[:, :, 0], size=(height, width), mode="bilinear", align_corners=False)[:, :, None]
    cond = vae_encode(c, media, global_rng).to(dtype)
    f_cond = cond.shape[2]
    latents = latents.clone()
    latents[:, :, :f_cond] = cond
    mask = torch.zeros((1, f, h, w), dtype=torch.float32, device=device)
    mask[:, :f_cond] = 1.0

    tokens = patchify(latents)
    mask_tokens = mask.reshape(1, -1)
    # The per-token timestep min(t, 1 - mask) has one value on the conditioned tokens (the first f_cond latent
    # frames, which lead the token order) and one on the rest: the transformer gets it per segment (segmented.py).
    n_cond = f_cond * h * w
    segments = (0, n_cond, f * h * w) if 0 < n_cond < f * h * w else (0, f * h * w)
    segment_mask = torch.tensor([1.0, 0.0] if len(segments) == 3 else [float(n_cond > 0)], device=device)
    segmented = is_segmented(c.transformer)
    init_tokens = tokens.clone()
    coords = pixel_coords(f, h, w, frame_rate, device)
    hard_conditioned = (mask_tokens > 1.0 - 1e-6).unsqueeze(-1)

    total = len(schedule)
    for i, g in enumerate(schedule):
        if should_cancel is not None and should_cancel():
            raise JobCancelled()
        t = timesteps[i]
        # add_noise_to_image_conditioning_latents: fresh noise on the hard-conditioned tokens, every step, drawn in
        # the latents' current dtype (compute dtype at the first step, fp32 after it) as the reference draws it
        cond_noise = torch.randn(tokens.shape, generator=generator, device=generator.device,
                                 dtype=tokens.dtype).to(device)
        tokens = torch.where(hard_conditioned, init_tokens + image_cond_noise_scale * cond_noise * (t**2), tokens)

        if g.do_cfg and g.do_stg:
            rows = slice(0, 3)
        elif g.do_cfg:
            rows = slice(0, 2)
        elif g.do_stg:
            rows = slice(1, 3)
        else:
            rows = slice(1, 2)
        n = g.num_conds
        perturbed = None
        if g.do_stg:
            perturbed = torch.zeros(n, dtype=torch.bool, device=device)
            perturbed[-1] = True
        stg.set(g.skip_block_list, perturbed)

        per_token_t = torch.minimum(t.expand(n, tokens.shape[1]), 1.0 - mask_tokens.expand(n, -1))
        if segmented:
            timestep = torch.minimum(t.expand(n, len(segments) - 1), 1.0 - segment_mask.expand(n, -1))
            by_segment = dict(segments=segments)
        else:
            timestep, by_segment = per_token_t, {}
        noise_pred = c.transformer(
            # cast at the model boundary; c.dtype, not transformer.dtype, which walks every parameter
            hidden_states=tokens.to(dtype).expand(n, -1, -1),
            encoder_hidden_states=text.embeds[rows],
            timestep=timestep * TIMESTEP_SCALE,
            encoder_attention_mask=text.mask[rows],
            video_coords=coords.expand(n, -1, -1),
            return_dict=False,
            **by_segment,
        )[0].to(dtype)
        noise_pred = guide(noise_pred, g, p.cfg_star_rescale)

        # denoising_step: Euler to each token's next lower timestep, only where t > 1 - mask; fp32 timesteps
        # promote the result, so the latents are fp32 from here on whatever the compute dtype
        token_t = per_token_t[:1]
        dt = (token_t - lower_timesteps(token_t, timesteps)).unsqueeze(-1)
        stepped = tokens - dt * noise_pred
        to_denoise = (t - 1e-6 < (1.0 - mask_tokens)).unsqueeze(-1)
        tokens = torch.where(to_denoise, stepped, tokens)
        if on_step is not None:
            on_step(i + 1, total, stage)
    stg.clear()
    return unpatchify(tokens, f, h, w)


# --- the whole generation ----------------------------------------------------------------------------------------


@torch.inference_mode()
def generate_frames(
    components: LTXComponents, config: PipelineConfig, inputs: GenerationInputs, *,
    on_step: StepCallback | None = None, should_cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """uint8 frames (num_frames, height, width, 3): LTXMultiScalePipeline + inference.py's crop, as the reference."""
    c, geo = components, inputs.geometry
    if config.stg_mode != "attention_values":
        raise ValueError(f"stg_mode {config.stg_mode!r} is not supported (attention_values is)")
    generator = torch.Generator(device="cpu" if c.device.type == "cpu" else c.device).manual_seed(inputs.seed)
    global_rng = torch.Generator(device="cpu" if c.device.type == "cpu" else c.device).manual_seed(inputs.seed)
    text = encode_prompts(c, inputs.prompt, inputs.negative_prompt)
    stg = STGController(c.transformer)
    common = dict(num_frames=geo.num_frames_padded, frame_rate=inputs.frame_rate,
                  image_cond_noise_scale=config.image_cond_noise_scale, generator=generator, global_rng=global_rng,
                  on_step=on_step, should_cancel=should_cancel)

    # Pass 1 at the downscaled size.
    latents = denoise_pass(c, stg, config.first_pass, text, inputs.conditioning_image,
                           width=geo.first_pass_width, height=geo.first_pass_height, latents=None, stage="pass 1",
                           **common)

    # Latent upsampling in fp32 (the upsampler's weights stay fp32), with AdaIN against the first pass's statistics.
    latents = latents.float()
    upsampled = normalize_latents(c, c.latent_upsampler(un_normalize_latents(c, latents)))
    upsampled = adain_filter_latent(upsampled, reference_latents=latents)

    # Pass 2 at twice pass 1's size, from the upsampled latents.
    latents = denoise_pass(c, stg, config.second_pass, text, inputs.conditioning_image,
                           width=geo.second_pass_width, height=geo.second_pass_height, latents=upsampled,
                           stage="pass 2", **common)

    # Decode: timestep-conditioned VAE with a little noise, as the reference.
    # The reference's randn_like keeps the unpatchified latents' strides (channels fastest), and the RNG fills
    # memory in that order: empty_like + normal_ on the same view draws the very same numbers.
    # The latents are fp32 here: the noise is drawn and mixed in fp32, then cast to the VAE's dtype before
    # un-normalising (vae_decode's `latents.to(vae.dtype)`); the decode timestep stays fp32.
    latents = latents.float()
    decode_noise = torch.empty_like(latents).normal_(generator=global_rng)
    latents = latents * (1 - config.decode_noise_scale) + decode_noise * config.decode_noise_scale
    timestep = torch.tensor([config.decode_timestep], device=c.device, dtype=torch.float32)
    video = c.vae.decode(un_normalize_latents(c, latents.to(c.dtype)), temb=timestep, return_dict=False)[0]
    return video_to_uint8(video, geo)


def video_to_uint8(video: torch.Tensor, geo: Geometry, frames_per_chunk: int = 16) -> np.ndarray:
    """(1, 3, F, H, W) VAE output in [-1, 1] → uint8 (num_frames, height, width, 3), as the reference: to [0, 1] and
    the bilinear resize to the padded size in the VAE's dtype, then fp32, x255 and a truncating cast. Done on the
    device in chunks of frames, so only uint8 frames cross to the host and no full-video fp32 copy is made."""
    left, right, top, bottom = geo.padding
    out = np.empty((geo.num_frames, geo.height, geo.width, 3), dtype=np.uint8)
    for start in range(0, geo.num_frames, frames_per_chunk):
        chunk = video[0, :, start: min(start + frames_per_chunk, geo.num_frames)].transpose(0, 1)  # (f, 3, H, W)
        chunk = (chunk / 2 + 0.5).clamp(0, 1)
        chunk = F.interpolate(chunk, size=(geo.height_padded, geo.width_padded), mode="bilinear",
                              align_corners=False)
        chunk = chunk[:, :, top: geo.height_padded - bottom, left: geo.width_padded - right]
        chunk = (chunk.float() * 255).to(torch.uint8).permute(0, 2, 3, 1)
        out[start: start + chunk.shape[0]] = chunk.cpu().numpy()
    return out
