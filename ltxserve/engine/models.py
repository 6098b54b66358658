"""The model components, loaded from the real file layouts (or built tiny, with random weights).

Layouts:
- original (as Lightricks publish ltxv-13b-0.9.7-dev.safetensors): one file holding the transformer under
  `model.diffusion_model.` and the VAE under `vae.` (with its per-channel statistics), its `config` metadata
  describing both in the reference's own format; the spatial upscaler in its own file with `config` metadata; the
  T5 encoder and tokenizer under text_encoder/text_encoder and text_encoder/tokenizer (PixArt's layout).
- diffusers: model_index.json with transformer/, vae/, text_encoder/, tokenizer/, latent_upsampler/.

Configurations are always read from the files and translated into diffusers' constructor arguments, so any
checkpoint of the 0.9.7 family loads, whatever its depth or width. Weights are created on the meta device and
assigned from the file, so no random initialisation and no second copy of the weights is ever made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from ltxserve.engine.fp8 import FP8, Fp8Matmul, block_linears, convert_transformer_to_fp8
from ltxserve.engine.segmented import install_segmented_forward
from ltxserve.engine.stg import install_stg_processors

CHECKPOINT_NAME = "ltxv-13b-0.9.7-dev.safetensors"
FP8_CHECKPOINT_NAME = "ltxv-13b-0.9.7-dev-fp8.safetensors"  # Lightricks' e4m3 block Linears, the rest bf16
UPSCALER_NAME = "ltxv-spatial-upscaler-0.9.7.safetensors"
TRANSFORMER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
ASSETS = Path(__file__).resolve().parent / "assets"
UPSAMPLER_DTYPE = torch.float32  # the reference never casts the latent upsampler


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: the message says which file and which keys or settings."""


@dataclass
class LTXComponents:
    transformer: LTXVideoTransformer3DModel
    vae: AutoencoderKLLTXVideo
    latent_upsampler: LTXLatentUpsamplerModel
    text_encoder: T5EncoderModel
    tokenizer: Any
    scheduler_config: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    source: str = ""

    def __post_init__(self) -> None:
        # before any placement hook wraps the forwards: the adaLN values per distinct timestep (segmented.py)
        install_segmented_forward(self.transformer)
        install_stg_processors(self.transformer)  # permanent STG processors on attn1 (stg.py; configured at load)

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny"

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "LTXComponents":
        """Move to `device`; the transformer, VAE and T5 compute in `dtype`, the latent upsampler stays fp32 (as the
        reference keeps it whatever its `precision`)."""
        device = torch.device(device)
        for m in (self.transformer, self.vae, self.text_encoder):
            m.to(device=device, dtype=dtype)
        self.latent_upsampler.to(device=device, dtype=UPSAMPLER_DTYPE)
        self.device, self.dtype = device, dtype
        return self


# --- the reference's config format -> diffusers constructor arguments -------------------------------------------

_TRANSFORMER_RENAMES = (("patchify_proj", "proj_in"), ("adaln_single", "time_embed"), ("q_norm", "norm_q"),
                        ("k_norm", "norm_k"))
_DOWNSAMPLE_TYPES = {"compress_space_res": "spatial", "compress_time_res": "temporal",
                     "compress_all_res": "spatiotemporal"}


def transformer_kwargs(ref: dict) -> dict:
    if ref.get("positional_embedding_type", "rope") != "rope":
        raise CheckpointError("only rope positional embeddings are supported")
    if not ref.get("causal_temporal_positioning", True):
        raise CheckpointError("checkpoints without causal temporal positioning (LTX < 0.9.5) are not supported")
    return dict(
        in_channels=ref["in_channels"], out_channels=ref.get("out_channels", ref["in_channels"]),
        patch_size=1, patch_size_t=1, num_attention_heads=ref["num_attention_heads"],
        attention_head_dim=ref["attention_head_dim"], cross_attention_dim=ref["cross_attention_dim"],
        num_layers=ref["num_layers"], activation_fn=ref.get("activation_fn", "gelu-approximate"),
        qk_norm="rms_norm_across_heads", norm_elementwise_affine=ref.get("norm_elementwise_affine", False),
        norm_eps=ref.get("norm_eps", 1e-6), caption_channels=ref["caption_channels"],
        attention_bias=ref.get("attention_bias", True), attention_out_bias=True,
    )


def _blocks(blocks: list) -> list[tuple[str, dict]]:
    out = []
    for name, params in blocks:
        out.append((name, {"num_layers": params} if isinstance(params, int) else dict(params)))
    return out


def vae_kwargs(ref: dict) -> dict:
    """The reference's CausalVideoAutoencoder config (0.9.5+ structure) as AutoencoderKLLTXVideo arguments."""
    enc = _blocks(ref.get("encoder_blocks") or ref["blocks"])
    dec = _blocks(ref.get("decoder_blocks") or ref["blocks"])
    if ref.get("latent_log_var", "uniform") != "uniform" or ref.get("use_quant_conv", False):
        raise CheckpointError("only the 0.9.5+ VAE (uniform log-variance, no quant conv) is supported")
    channels = ref.get("encoder_base_channels", 128)
    block_out, layers, down_types = [], [], []
    for name, params in enc:
        if name == "res_x":
            block_out.append(channels)
            layers.append(params["num_layers"])
        elif name in _DOWNSAMPLE_TYPES:
            down_types.append(_DOWNSAMPLE_TYPES[name])
            channels *= params.get("multiplier", 2)
        else:
            raise CheckpointError(f"unsupported VAE encoder block {name!r}")
    channels = ref.get("decoder_base_channels", 128)
    dec_out, dec_layers, inject, residual, factor = [], [], [], [], []
    for name, params in dec:
        if name == "res_x":
            dec_layers.append(params["num_layers"])
            inject.append(bool(params.get("inject_noise", False)))
        elif name == "compress_all":
            channels *= params.get("multiplier", 1)
            dec_out.append(channels)
            residual.append(bool(params.get("residual", False)))
            factor.append(params.get("multiplier", 1))
        else:
            raise CheckpointError(f"unsupported VAE decoder block {name!r}")
    return dict(
        in_channels=ref.get("in_channels", 3), out_channels=ref.get("out_channels", 3),
        latent_channels=ref["latent_channels"], block_out_channels=tuple(block_out),
        down_block_types=("LTXVideo095DownBlock3D",) * len(down_types), decoder_block_out_channels=tuple(dec_out),
        layers_per_block=tuple(layers), decoder_layers_per_block=tuple(dec_layers),
        spatio_temporal_scaling=(True,) * len(down_types), decoder_spatio_temporal_scaling=(True,) * len(dec_out),
        decoder_inject_noise=tuple(inject), downsample_type=tuple(down_types), upsample_residual=tuple(residual),
        upsample_factor=tuple(factor), timestep_conditioning=bool(ref.get("timestep_conditioning", False)),
        patch_size=ref.get("patch_size", 4), patch_size_t=1, resnet_norm_eps=1e-6,
        scaling_factor=ref.get("scaling_factor", 1.0), encoder_causal=True,
        decoder_causal=bool(ref.get("causal_decoder", False)),
        spatial_compression_ratio=ref.get("patch_size", 4) * 2 ** sum(t != "temporal" for t in down_types),
        temporal_compression_ratio=2 ** sum(t != "spatial" for t in down_types),
    )


def vae_reference_config(kw: dict) -> dict:
    """Inverse of vae_kwargs: the reference's config for a diffusers 0.9.5+ VAE (for writing original layouts)."""
    inverse = {v: k for k, v in _DOWNSAMPLE_TYPES.items()}
    enc: list = []
    for i, layers in enumerate(kw["layers_per_block"]):
        enc.append(["res_x", {"num_layers": layers}])
        if i < len(kw["downsample_type"]):
            mult = kw["block_out_channels"][i + 1] // kw["block_out_channels"][i]
            enc.append([inverse[kw["downsample_type"][i]], {"multiplier": mult}])
    dec: list = []
    for i, layers in enumerate(kw["decoder_layers_per_block"]):
        dec.append(["res_x", {"num_layers": layers, "inject_noise": kw["decoder_inject_noise"][i]}])
        if i < len(kw["upsample_factor"]):
            dec.append(["compress_all", {"residual": kw["upsample_residual"][i],
                                         "multiplier": kw["upsample_factor"][i]}])
    return {
        "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": kw["in_channels"],
        "out_channels": kw["out_channels"], "latent_channels": kw["latent_channels"], "encoder_blocks": enc,
        "decoder_blocks": dec, "encoder_base_channels": kw["block_out_channels"][0],
        "decoder_base_channels": kw["decoder_block_out_channels"][0] // kw["upsample_factor"][0],
        "scaling_factor": kw["scaling_factor"], "norm_layer": "pixel_norm", "patch_size": kw["patch_size"],
        "latent_log_var": "uniform", "use_quant_conv": False, "causal_decoder": kw["decoder_causal"],
        "timestep_conditioning": kw["timestep_conditioning"], "spatial_padding_mode": "zeros",
    }


def vae_key_map(ref: dict) -> list[tuple[str, str]]:
    """(reference prefix, diffusers prefix) pairs for the VAE's blocks, derived from the block lists."""
    pairs: list[tuple[str, str]] = []
    enc = _blocks(ref.get("encoder_blocks") or ref["blocks"])
    d = 0
    for r, (name, _) in enumerate(enc):
        if name == "res_x":
            target = "encoder.mid_block" if r == len(enc) - 1 else f"encoder.down_blocks.{d}"
            pairs.append((f"encoder.down_blocks.{r}.res_blocks.", f"{target}.resnets."))
        else:
            pairs.append((f"encoder.down_blocks.{r}.", f"encoder.down_blocks.{d}.downsamplers.0."))
            d += 1
    dec = list(reversed(_blocks(ref.get("decoder_blocks") or ref["blocks"])))
    u, seen_mid = 0, False
    for r, (name, _) in enumerate(dec):
        if name == "res_x":
            target = "decoder.mid_block" if not seen_mid else f"decoder.up_blocks.{u}"
            if seen_mid:
                u += 1
            seen_mid = True
            pairs.append((f"decoder.up_blocks.{r}.res_blocks.", f"{target}.resnets."))
            pairs.append((f"decoder.up_blocks.{r}.time_embedder.", f"{target}.time_embedder."))
        else:
            pairs.append((f"decoder.up_blocks.{r}.", f"decoder.up_blocks.{u}.upsamplers.0."))
    pairs += [
        ("decoder.last_time_embedder.", "decoder.time_embedder."),
        ("decoder.last_scale_shift_table", "decoder.scale_shift_table"),
        ("per_channel_statistics.mean-of-means", "latents_mean"),
        ("per_channel_statistics.std-of-means", "latents_std"),
    ]
    return pairs


def _translate(key: str, pairs: list[tuple[str, str]], reverse: bool = False) -> str:
    best = None
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        if key.startswith(src) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    if best:
        key = best[1] + key[len(best[0]):]
    # inside blocks: conv_shortcut / norm3 naming differ too
    if reverse:
        return key.replace(".conv_shortcut.conv.", ".conv_shortcut.").replace(".norm3.", ".norm3.norm.")
    return key.replace(".conv_shortcut.", ".conv_shortcut.conv.").replace(".norm3.norm.", ".norm3.")


_IGNORED_VAE_KEYS = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds",
                     "per_channel_statistics.mean-of-stds_over_std-of-means")


# --- loading ----------------------------------------------------------------------------------------------------


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load every parameter and buffer from `state`, refusing partial matches with the names that differ."""
    expected = set(model.state_dict().keys())
    given = set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: the checkpoint does not match the model built from its config "
            f"(missing {len(missing)}: {missing[:8]}; unexpected {len(unexpected)}: {unexpected[:8]})"
        )
    model.load_state_dict(state, strict=True, assign=True)


def _read_safetensors(path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(path, framework="pt", device=device) as f:
        metadata = f.metadata() or {}
        return {k: f.get_tensor(k) for k in f.keys()}, metadata


def _materialise(model: torch.nn.Module, dtype: torch.dtype, keep_fp8: frozenset[str] = frozenset()) -> torch.nn.Module:
    """Check every tensor was loaded and cast to `dtype`, except the parameters named in `keep_fp8` that the file
    holds in e4m3 (an fp8 checkpoint's block Linears: exact as they are, converted to Fp8Linear next)."""
    # Non-persistent buffers (rope frequencies etc.) are created by the constructor; anything left on the meta
    # device after loading is a bug in the key mapping, so say so.
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise CheckpointError(f"{type(model).__name__}.{name} was not loaded from the checkpoint")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and t.dtype != dtype and not (name in keep_fp8 and t.dtype == FP8):
            t.data = t.data.to(dtype)
    return model.eval().requires_grad_(False)


def load_original_layout(folder: Path, device: str, dtype: torch.dtype, prefer_fp8: bool = False) -> LTXComponents:
    checkpoint = folder / CHECKPOINT_NAME if (folder / CHECKPOINT_NAME).exists() else None
    if (prefer_fp8 or checkpoint is None) and (folder / FP8_CHECKPOINT_NAME).exists():
        checkpoint = folder / FP8_CHECKPOINT_NAME  # in bf16 / fp32 its e4m3 weights are upcast, exactly
    if checkpoint is None:
        candidates = [p for p in sorted(folder.glob("*.safetensors"))
                      if "upscaler" not in p.name and p.name != FP8_CHECKPOINT_NAME]
        if len(candidates) != 1:
            raise CheckpointError(f"{folder}: expected {CHECKPOINT_NAME} (or exactly one checkpoint file)")
        checkpoint = candidates[0]
    tensors, metadata = _read_safetensors(checkpoint, device)
    if "config" not in metadata:
        raise CheckpointError(f"{checkpoint}: no `config` metadata; not an LTX-Video single-file checkpoint")
    config = json.loads(metadata["config"])

    with torch.device("meta"):
        transformer = LTXVideoTransformer3DModel(**transformer_kwargs(config["transformer"]))
    t_state = {}
    for k, v in tensors.items():
        if k.startswith(TRANSFORMER_PREFIX):
            name = k[len(TRANSFORMER_PREFIX):]
            for a, b in _TRANSFORMER_RENAMES:
                name = name.replace(a, b)
            t_state[name] = v
    _assign(transformer, t_state, f"{checkpoint.name} transformer")

    vkw = vae_kwargs(config["vae"])
    with torch.device("meta"):
        vae = AutoencoderKLLTXVideo(**vkw)
    pairs = vae_key_map(config["vae"])
    v_state = {
        _translate(k[len(VAE_PREFIX):], pairs): v for k, v in tensors.items()
        if k.startswith(VAE_PREFIX) and not k[len(VAE_PREFIX):].startswith(_IGNORED_VAE_KEYS)
    }
    _assign(vae, v_state, f"{checkpoint.name} VAE")
    del tensors

    upscaler_path = folder / UPSCALER_NAME
    if not upscaler_path.exists():
        raise CheckpointError(f"{folder}: missing {UPSCALER_NAME}")
    upsampler = _load_original_upsampler(upscaler_path, device)

    text_root = folder / "text_encoder"
    text_encoder, tokenizer = _load_text(text_root / "text_encoder", text_root / "tokenizer", device, dtype)
    return LTXComponents(
        transformer=_materialise(transformer, dtype,
                                 keep_fp8=_block_linear_weights(transformer) if prefer_fp8 else frozenset()),
        vae=_materialise(vae, dtype),
        latent_upsampler=_materialise(upsampler, UPSAMPLER_DTYPE), text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler_config=config.get("scheduler", {}), device=torch.device(device), dtype=dtype, source=str(folder),
    )


def _block_linear_weights(transformer: torch.nn.Module) -> frozenset[str]:
    """Parameter names of the blocks' Linear weights: the only tensors an fp8 checkpoint may keep in e4m3."""
    names = {id(linear) for _, _, linear in block_linears(transformer)}
    return frozenset(f"{n}.weight" for n, m in transformer.named_modules() if id(m) in names)


def _load_original_upsampler(path: Path, device: str) -> LTXLatentUpsamplerModel:
    """The upscaler's single file, its architecture read from the `config` metadata (dtype as stored)."""
    state, metadata = _read_safetensors(path, device)
    if "config" not in metadata:
        raise CheckpointError(f"{path}: no `config` metadata")
    cfg = json.loads(metadata["config"])
    with torch.device("meta"):
        upsampler = LTXLatentUpsamplerModel(
            in_channels=cfg.get("in_channels", 128), mid_channels=cfg.get("mid_channels", 512),
            num_blocks_per_stage=cfg.get("num_blocks_per_stage", 4), dims=cfg.get("dims", 3),
            spatial_upsample=cfg.get("spatial_upsample", True), temporal_upsample=cfg.get("temporal_upsample", False))
    _assign(upsampler, state, path.name)
    return upsampler


def _load_diffusers_upsampler(folder: Path, device: str, dtype: torch.dtype) -> LTXLatentUpsamplerModel:
    """Lightricks publish the upscaler apart from the diffusers pipeline (Lightricks/ltxv-spatial-upscaler-0.9.7,
    itself a folder with latent_upsampler/). Accepted, in this order: FOLDER/latent_upsampler/, that repository's
    folder placed anywhere one level inside FOLDER, or the original-layout upscaler file inside FOLDER."""
    direct = folder / "latent_upsampler"
    nested = sorted(p.parent for p in folder.glob("*/latent_upsampler/config.json"))
    if (direct / "config.json").exists():
        source = direct
    elif len(nested) == 1:
        source = nested[0]
    elif len(nested) > 1:
        raise CheckpointError(f"{folder}: several latent upsamplers ({', '.join(str(p) for p in nested)})")
    elif (folder / UPSCALER_NAME).exists():
        return _materialise(_load_original_upsampler(folder / UPSCALER_NAME, device), UPSAMPLER_DTYPE)
    else:
        raise CheckpointError(f"{folder}: missing latent_upsampler/ (or the upscaler's folder, or {UPSCALER_NAME})")
    return LTXLatentUpsamplerModel.from_pretrained(source, local_files_only=True, torch_dtype=UPSAMPLER_DTYPE)


def _load_text(encoder_dir: Path, tokenizer_dir: Path, device: str, dtype: torch.dtype):
    if not encoder_dir.exists() or not tokenizer_dir.exists():
        raise CheckpointError(f"missing text encoder or tokenizer folder: {encoder_dir}, {tokenizer_dir}")
    text_encoder = T5EncoderModel.from_pretrained(encoder_dir, local_files_only=True, torch_dtype=dtype)
    tokenizer = T5TokenizerFast.from_pretrained(tokenizer_dir, local_files_only=True)
    return text_encoder.to(device).eval().requires_grad_(False), tokenizer


def load_diffusers_layout(folder: Path, device: str, dtype: torch.dtype) -> LTXComponents:
    def sub(name: str) -> Path:
        p = folder / name
        if not p.exists():
            raise CheckpointError(f"{folder}: missing {name}/")
        return p

    common = dict(local_files_only=True, torch_dtype=dtype)
    transformer = LTXVideoTransformer3DModel.from_pretrained(sub("transformer"), **common)
    vae = AutoencoderKLLTXVideo.from_pretrained(sub("vae"), **common)
    upsampler = _load_diffusers_upsampler(folder, device, dtype)
    text_encoder, tokenizer = _load_text(sub("text_encoder"), sub("tokenizer"), device, dtype)
    scheduler = {}
    if (folder / "scheduler" / "scheduler_config.json").exists():
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    for m in (transformer, vae, upsampler):
        m.to(device).eval().requires_grad_(False)
    return LTXComponents(transformer=transformer, vae=vae, latent_upsampler=upsampler, text_encoder=text_encoder,
                         tokenizer=tokenizer, scheduler_config=scheduler, device=torch.device(device), dtype=dtype,
                         source=str(folder))


def check_scheduler(config: dict) -> None:
    """0.9.7's checkpoints use the unshifted linear-quadratic schedule; refuse what ltxserve would misrun."""
    if not config:
        return
    if config.get("_class_name") == "RectifiedFlowScheduler":
        if config.get("shifting") not in (None, "", "null"):
            raise CheckpointError(f"scheduler shifting {config.get('shifting')!r} is not supported (0.9.7 has none)")
        if config.get("sampler", "LinearQuadratic") not in ("LinearQuadratic",):
            raise CheckpointError(f"scheduler sampler {config.get('sampler')!r} is not supported")


def load_components(model: str | Path, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, fp8: Fp8Matmul | None = None) -> LTXComponents:
    """'tiny' builds the random-weight model; a path is an original-layout or diffusers-layout folder.

    `dtype` is the compute dtype of the transformer, VAE and T5 (the upsampler stays fp32). `fp8` ("scaled_mm" or
    "dequant") stores the transformer blocks' Linear weights in scaled e4m3 (engine/fp8.py); an original-layout
    folder that holds Lightricks' fp8 checkpoint is then loaded from it."""
    device = str(device)
    if str(model) == "tiny":
        components = build_tiny_components().to(device, dtype)
    else:
        folder = Path(model)
        if folder.is_file():
            folder = folder.parent
        if not folder.is_dir():
            raise CheckpointError(f"model path {folder} does not exist")
        if (folder / "model_index.json").exists() or (folder / "transformer" / "config.json").exists():
            components = load_diffusers_layout(folder, device, dtype)
        else:
            components = load_original_layout(folder, device, dtype, prefer_fp8=fp8 is not None)
        check_scheduler(components.scheduler_config)
    if fp8 is not None:
        convert_transformer_to_fp8(components.transformer, fp8)
    return components


# --- tiny random-weight components --------------------------------------------------------------------------------

TINY_TRANSFORMER = dict(in_channels=16, out_channels=16, patch_size=1, patch_size_t=1, num_attention_heads=2,
                        attention_head_dim=8, cross_attention_dim=16, num_layers=48,
                        activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
                        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=32, attention_bias=True,
                        attention_out_bias=True)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(4, 8, 16, 32, 64),
                down_block_types=("LTXVideo095DownBlock3D",) * 4, decoder_block_out_channels=(8, 16, 32),
                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                spatio_temporal_scaling=(True,) * 4, decoder_spatio_temporal_scaling=(True,) * 3,
                decoder_inject_noise=(False,) * 4,
                downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4,
                patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True, decoder_causal=False,
                spatial_compression_ratio=32, temporal_compression_ratio=8)
TINY_UPSAMPLER = dict(in_channels=16, mid_channels=32, num_blocks_per_stage=1, dims=3, spatial_upsample=True,
                      temporal_upsample=False)
TINY_SCHEDULER = {"_class_name": "RectifiedFlowScheduler", "num_train_timesteps": 1000, "shifting": None,
                  "base_resolution": None, "sampler": "LinearQuadratic"}


def _randomise(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def tiny_tokenizer():
    return T5TokenizerFast(vocab_file=str(ASSETS / "tiny_spiece.model"), extra_ids=0)


def build_tiny_components(seed: int = 0) -> LTXComponents:
    """The real architectures at toy size with seeded random weights: for CPU machines and tests.
    48 transformer blocks so that the real skip-block indices of the 13B configuration exist."""
    g = torch.Generator().manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(**TINY_TRANSFORMER)
    _randomise(transformer, g, 0.1)
    vae = AutoencoderKLLTXVideo(**TINY_VAE)
    _randomise(vae, g, 0.2)
    with torch.no_grad():
        vae.latents_mean.copy_(torch.randn(16, generator=g) * 0.3)
        vae.latents_std.copy_(torch.rand(16, generator=g) + 0.5)
    upsampler = LTXLatentUpsamplerModel(**TINY_UPSAMPLER)
    _randomise(upsampler, g, 0.1)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    _randomise(text_encoder, g, 0.3)
    for m in (transformer, vae, upsampler, text_encoder):
        m.eval().requires_grad_(False)
    return LTXComponents(transformer=transformer, vae=vae, latent_upsampler=upsampler, text_encoder=text_encoder,
                         tokenizer=tokenizer, scheduler_config=dict(TINY_SCHEDULER), source="tiny")


# --- writing the real layouts (tests, conversions) ---------------------------------------------------------------


def _reference_transformer_config(t: LTXVideoTransformer3DModel) -> dict:
    c = t.config
    return {
        "_class_name": "Transformer3DModel", "activation_fn": c.activation_fn, "attention_bias": c.attention_bias,
        "attention_head_dim": c.attention_head_dim, "caption_channels": c.caption_channels,
        "cross_attention_dim": c.cross_attention_dim, "in_channels": c.in_channels,
        "norm_elementwise_affine": c.norm_elementwise_affine, "norm_eps": c.norm_eps,
        "num_attention_heads": c.num_attention_heads, "num_layers": c.num_layers, "out_channels": c.out_channels,
        "qk_norm": "rms_norm", "standardization_norm": "rms_norm", "positional_embedding_type": "rope",
        "positional_embedding_theta": 10000.0, "positional_embedding_max_pos": [20, 2048, 2048],
        "timestep_scale_multiplier": 1000, "causal_temporal_positioning": True,
    }


def save_original_layout(c: LTXComponents, directory: Path, *, fp8_blocks: bool = False) -> None:
    """The original layout. `fp8_blocks` writes the checkpoint as Lightricks' fp8 file instead
    (FP8_CHECKPOINT_NAME): the blocks' Linear weights cast to e4m3 without scales, everything else bf16."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    fp8_names = _block_linear_weights(c.transformer) if fp8_blocks else frozenset()
    for k, v in c.transformer.state_dict().items():
        if fp8_blocks:
            v = v.to(FP8) if k in fp8_names else v.to(torch.bfloat16)
        for a, b in _TRANSFORMER_RENAMES:
            k = k.replace(b, a)
        tensors[TRANSFORMER_PREFIX + k] = v.detach().contiguous().cpu()
    vcfg = vae_reference_config(dict(c.vae.config))
    pairs = vae_key_map(vcfg)
    for k, v in c.vae.state_dict().items():
        tensors[VAE_PREFIX + _translate(k, pairs, reverse=True)] = v.detach().contiguous().cpu()
    config = {"transformer": _reference_transformer_config(c.transformer), "vae": vcfg,
              "scheduler": c.scheduler_config or TINY_SCHEDULER}
    save_file(tensors, directory / (FP8_CHECKPOINT_NAME if fp8_blocks else CHECKPOINT_NAME),
              metadata={"config": json.dumps(config)})
    ucfg = {"_class_name": "LatentUpsampler", **{k: c.latent_upsampler.config[k] for k in TINY_UPSAMPLER}}
    save_file({k: v.contiguous().cpu() for k, v in c.latent_upsampler.state_dict().items()},
              directory / UPSCALER_NAME, metadata={"config": json.dumps(ucfg)})
    c.text_encoder.save_pretrained(directory / "text_encoder" / "text_encoder")
    c.tokenizer.save_pretrained(directory / "text_encoder" / "tokenizer")


def save_diffusers_layout(c: LTXComponents, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c.transformer.save_pretrained(directory / "transformer")
    c.vae.save_pretrained(directory / "vae")
    c.latent_upsampler.save_pretrained(directory / "latent_upsampler")
    c.text_encoder.save_pretrained(directory / "text_encoder")
    c.tokenizer.save_pretrained(directory / "tokenizer")
    (directory / "scheduler").mkdir(exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(c.scheduler_config or TINY_SCHEDULER))
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "LTXConditionPipeline", "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLLTXVideo"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "latent_upsampler": ["ltxserve", "LTXLatentUpsamplerModel"],
    }))
