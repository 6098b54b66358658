#!/usr/bin/env python
"""Build the golden reference fixtures for ltxserve's fidelity tests.

Run with the REFERENCE venv's python (see scripts/setup_reference_env.sh), never with ltxserve's:

    /work/refenv/bin/python scripts/make_reference_fixtures.py [--out tests/fixtures/reference]
        [--checkpoint-only] [--cases a_defaults,b_fewer_steps] [--trace-rng FILE] [--precision bfloat16]

What it does:
1. builds a TINY LTX-Video 0.9.7-shaped checkpoint with random (seeded) weights using Lightricks' own classes
   (ltx_video 0.1.2) and a locally trained sentencepiece T5 tokenizer, saved in the ORIGINAL file layout that
   `ltx_video.inference.infer()` reads;
2. runs the reference top level `ltx_video.inference.infer(InferenceConfig(...))` on it for every case, with the
   0.9.7-dev multi-scale pipeline YAML (commit 832e043) pointed at the tiny checkpoint, and records the final uint8
   frames the reference hands to its video writer plus the conditioning tensor it built;
3. writes cases.json describing every case as an ltxserve request.

Only these things are patched in the reference, all recorded in cases.json["reference_patches"]:
- the video writer (imageio) records frames instead of encoding an mp4;
- crf_compressor.compress gets the case's CRF as its default (the reference hard-codes 29; the hosted endpoint's
  constant_rate_factor defaults to 35);
- the VAE and T5 are kept in float32 (the reference casts both to bfloat16 unconditionally; the fidelity target is
  fp32 end to end);
- seed_everething(seed) is re-applied right before the pipeline call (on CPU the VAE constructor consumes the global
  RNG that infer() seeded; on CUDA the global draws come from the untouched CUDA generator).

--precision bfloat16 records the same cases with the reference as its released YAML runs it (`precision: bfloat16`:
transformer, VAE and T5 cast to bf16, the latent upsampler fp32) into OUT/bf16/, with its own cases.json:
- the YAML says `precision: bfloat16`, and the VAE/T5 float32 patch above is NOT applied;
- every other patch is kept (recorded writer, per-case CRF, re-seed before the pipeline call, no prompt enhancement);
- it reuses OUT's committed checkpoint and images (never rebuilds them; "checkpoint": "../checkpoint") and needs OUT's
  fp32 frames: each case records the reference's own bf16-vs-fp32 distance (PSNR over uint8 with peak 255, mean and
  max |diff|) in "reference_bf16_vs_fp32";
- it runs with 2 intra-op threads (BF16_NUM_THREADS): bf16 CPU results depend on the thread count.
The default (float32) output is unchanged by this mode.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "reference"
CHECKPOINT_FILE = "ltxv-13b-0.9.7-dev.safetensors"
UPSCALER_FILE = "ltxv-spatial-upscaler-0.9.7.safetensors"
MODEL_SEED = 20250514  # fixes every random weight of the tiny checkpoint

# ---------------------------------------------------------------------------------------------------------------
# Tiny architecture (the engine contract's, in the reference's own config format)
# ---------------------------------------------------------------------------------------------------------------

TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "_class_name": "Transformer3DModel",
    "_diffusers_version": "0.25.1",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 8,
    "attention_type": "default",
    "caption_channels": 32,
    "cross_attention_dim": 16,
    "double_self_attention": False,
    "dropout": 0.0,
    "in_channels": 16,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "num_attention_heads": 2,
    "num_embeds_ada_norm": 1000,
    "num_layers": 48,  # so that the real skip_block_list indices (11, 22, 25, 27, 28, 35, 39) exist
    "num_vector_embeds": None,
    "only_cross_attention": False,
    "out_channels": 16,
    "project_to_2d_pos": True,
    "upcast_attention": False,
    "use_linear_projection": False,
    "qk_norm": "rms_norm",
    "standardization_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048],
    "timestep_scale_multiplier": 1000,
    "causal_temporal_positioning": True,
}

# The 0.9.7 VAE block structure (patch 4, x32 spatial, x8 temporal, timestep-conditioned non-causal decoder,
# residual depth-to-space upsampling), with one layer per block and narrow channels.
TINY_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "encoder_blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_space_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
        ["compress_time_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
    ],
    "decoder_blocks": [
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": False}],
    ],
    "encoder_base_channels": 4,
    "decoder_base_channels": 4,
    "scaling_factor": 1.0,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "causal_decoder": False,
    "timestep_conditioning": True,
    "normalize_latent_channels": False,
}

# As inferred in ltx-algorithm.md section 1.3 (unshifted LinearQuadratic schedule).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "RectifiedFlowScheduler",
    "num_train_timesteps": 1000,
    "shifting": None,
    "base_resolution": None,
    "sampler": "LinearQuadratic",
}

TINY_UPSAMPLER_CONFIG: dict[str, Any] = {
    "_class_name": "LatentUpsampler",
    "in_channels": 16,
    "mid_channels": 32,
    "num_blocks_per_stage": 1,
    "dims": 3,
    "spatial_upsample": True,
    "temporal_upsample": False,
}

TINY_T5_CONFIG: dict[str, Any] = {
    # T5 v1.1 flavour (gated-gelu, untied head) like the real PixArt/T5-XXL encoder, shrunk.
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
TOKENIZER_VOCAB_SIZE = 600

TOKENIZER_CORPUS = """\
A woman walks along a quiet beach at sunset while the waves roll in slowly.
The camera pans across a busy city street filled with cars, bicycles and people.
A small dog runs through tall green grass chasing a red ball.
Close-up of a cup of coffee on a wooden table, steam rising gently into the air.
An astronaut floats inside a space station, looking out of a round window at the earth.
Rain falls on a window; in the background a blurred street light flickers.
A chef chops vegetables quickly in a bright modern kitchen.
Snow covers the mountains as a train crosses a long stone bridge.
A boy rides a skateboard down a steep hill, his jacket flapping in the wind.
The old lighthouse stands on the cliff while seagulls circle above the stormy sea.
Worst quality, inconsistent motion, blurry, jittery, distorted.
Low resolution, artifacts, watermark, text, overexposed, underexposed, static image.
A cat sleeps on a sofa; sunlight moves slowly across the room.
Fireworks explode over a river and their reflections shimmer on the water.
A hot air balloon rises above green fields in the early morning mist.
Two friends laugh while walking through an autumn forest with orange leaves.
The waterfall pours into a clear blue pool surrounded by rocks and ferns.
A robot arm assembles a tiny watch with precise smooth movements.
Cinematic shot, shallow depth of field, soft light, golden hour, slow motion.
A horse gallops across the desert, kicking up clouds of dust behind it.
"""

# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"


@dataclass
class Case:
    name: str
    description: str
    image: str
    width: int
    height: int
    num_frames: int
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 42
    frame_rate: int = 30
    first_pass_num_inference_steps: int = 30
    first_pass_skip_final_steps: int = 3
    second_pass_num_inference_steps: int = 30
    second_pass_skip_initial_steps: int = 17
    constant_rate_factor: int = 35
    # Overrides of the 0.9.7-dev YAML's first_pass / second_pass guidance tables (keys as in the YAML).
    first_pass_overrides: dict[str, Any] = field(default_factory=dict)
    second_pass_overrides: dict[str, Any] = field(default_factory=dict)


GUIDANCE_OFF = {
    "guidance_scale": [1],
    "stg_scale": [0],
    "rescaling_scale": [1],
    "guidance_timesteps": [1.0],
    "skip_block_list": [[]],  # one entry per guidance timestep (unused: STG is off)
}

CASES: list[Case] = [
    Case(
        name="a_defaults",
        description="hosted default steps (30/3, 30/17) and guidance tables; 4:3 image cropped to 3:2",
        image="image_landscape.png",
        width=192,
        height=128,
        num_frames=9,
        prompt="A small dog runs through tall green grass chasing a red ball.",
    ),
    Case(
        name="b_fewer_steps",
        description="10/2 and 10/6 steps, portrait output from a landscape image (heavy crop), 17 frames",
        image="image_landscape.png",
        width=128,
        height=192,
        num_frames=17,
        prompt="The camera pans across a busy city street at night.",
        seed=1234,
        first_pass_num_inference_steps=10,
        first_pass_skip_final_steps=2,
        second_pass_num_inference_steps=10,
        second_pass_skip_initial_steps=6,
    ),
    Case(
        name="c_guidance_off",
        description="CFG and STG off in both passes (guidance_scale [1], stg_scale [0], rescaling [1]); CRF 29",
        image="image_odd.png",
        width=160,
        height=160,
        num_frames=9,
        prompt="Snow covers the mountains as a train crosses a stone bridge.",
        seed=7,
        first_pass_num_inference_steps=12,
        first_pass_skip_final_steps=2,
        second_pass_num_inference_steps=12,
        second_pass_skip_initial_steps=7,
        constant_rate_factor=29,
        first_pass_overrides=dict(GUIDANCE_OFF),
        second_pass_overrides=dict(GUIDANCE_OFF),
    ),
    Case(
        name="d_seed_negative_fps24_padding",
        description=(
            "different seed and negative prompt, frame_rate 24, 200x120 (padded to 224x128) and 12 frames "
            "(padded to 17), full default steps"
        ),
        image="image_odd.png",
        width=200,
        height=120,
        num_frames=12,
        prompt="Fireworks explode over a river and their reflections shimmer on the water.",
        negative_prompt="low resolution, watermark, text, static image",
        seed=987654321,
        frame_rate=24,
    ),
    Case(
        name="e_crf29_padding",
        description="CRF 29 (the reference's own default) with 150x100 (padded to 160x128), 20/2 and 20/11 steps",
        image="image_landscape.png",
        width=150,
        height=100,
        num_frames=9,
        prompt="A hot air balloon rises above green fields in the early morning mist.",
        seed=2024,
        first_pass_num_inference_steps=20,
        first_pass_skip_final_steps=2,
        second_pass_num_inference_steps=20,
        second_pass_skip_initial_steps=11,
        constant_rate_factor=29,
    ),
    Case(
        name="f_crf35_square_crop",
        description="CRF 35, odd-sized image cropped to 1:1, 10/2 and 10/6 steps",
        image="image_odd.png",
        width=128,
        height=128,
        num_frames=9,
        prompt="A waterfall pours into a clear blue pool surrounded by rocks.",
        seed=31337,
        first_pass_num_inference_steps=10,
        first_pass_skip_final_steps=2,
        second_pass_num_inference_steps=10,
        second_pass_skip_initial_steps=6,
        constant_rate_factor=35,
    ),
]

# The 0.9.7-dev pipeline YAML at LTX-Video commit 832e043 (ltx-algorithm.md section 1.1).
BASE_PIPELINE_CONFIG: dict[str, Any] = {
    "pipeline_type": "multi-scale",
    "checkpoint_path": CHECKPOINT_FILE,
    "downscale_factor": 0.6666666,
    "spatial_upscaler_model_path": UPSCALER_FILE,
    "stg_mode": "attention_values",
    "decode_timestep": 0.05,
    "decode_noise_scale": 0.025,
    "text_encoder_model_name_or_path": "PixArt-alpha/PixArt-XL-2-1024-MS",
    "precision": "bfloat16",
    "sampler": "from_checkpoint",
    "prompt_enhancement_words_threshold": 120,
    "prompt_enhancer_image_caption_model_name_or_path": "MiaoshouAI/Florence-2-large-PromptGen-v2.0",
    "prompt_enhancer_llm_model_name_or_path": "unsloth/Llama-3.2-3B-Instruct",
    "stochastic_sampling": False,
    "first_pass": {
        "guidance_scale": [1, 1, 6, 8, 6, 1, 1],
        "stg_scale": [0, 0, 4, 4, 4, 2, 1],
        "rescaling_scale": [1, 1, 0.5, 0.5, 1, 1, 1],
        "guidance_timesteps": [1.0, 0.996, 0.9933, 0.9850, 0.9767, 0.9008, 0.6180],
        "skip_block_list": [[], [11, 25, 35, 39], [22, 35, 39], [28], [28], [28], [28]],
        "num_inference_steps": 30,
        "skip_final_inference_steps": 3,
        "cfg_star_rescale": True,
    },
    "second_pass": {
        "guidance_scale": [1],
        "stg_scale": [1],
        "rescaling_scale": [1],
        "guidance_timesteps": [1.0],
        "skip_block_list": [27],
        "num_inference_steps": 30,
        "skip_initial_inference_steps": 17,
        "cfg_star_rescale": True,
    },
}


def pipeline_config_for(case: Case, checkpoint_dir: Path, precision: str = "float32") -> dict[str, Any]:
    config = json.loads(json.dumps(BASE_PIPELINE_CONFIG))
    config["checkpoint_path"] = str(checkpoint_dir / CHECKPOINT_FILE)
    config["spatial_upscaler_model_path"] = str(checkpoint_dir / UPSCALER_FILE)
    config["text_encoder_model_name_or_path"] = str(checkpoint_dir / "text_encoder")
    # "float32": any value but bfloat16 / float8_e4m3fn / mixed_precision keeps the transformer fp32.
    # "bfloat16": the released YAML's own value (transformer cast to bf16 as well as VAE and T5).
    config["precision"] = precision
    config["prompt_enhancement_words_threshold"] = 0  # no prompt enhancement
    config["first_pass"]["num_inference_steps"] = case.first_pass_num_inference_steps
    config["first_pass"]["skip_final_inference_steps"] = case.first_pass_skip_final_steps
    config["second_pass"]["num_inference_steps"] = case.second_pass_num_inference_steps
    config["second_pass"]["skip_initial_inference_steps"] = case.second_pass_skip_initial_steps
    config["first_pass"].update(case.first_pass_overrides)
    config["second_pass"].update(case.second_pass_overrides)
    return config


# ---------------------------------------------------------------------------------------------------------------
# Tiny checkpoint
# ---------------------------------------------------------------------------------------------------------------


def _random_vae_statistics(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-channel latent statistics far from 0/1 so that normalisation bugs change the output."""
    channels = TINY_VAE_CONFIG["latent_channels"]
    std_of_means = 0.5 + torch.rand(channels, generator=generator)  # in [0.5, 1.5)
    mean_of_means = 0.3 * torch.randn(channels, generator=generator)
    return {
        "per_channel_statistics.std-of-means": std_of_means,
        "per_channel_statistics.mean-of-means": mean_of_means,
    }


def _train_tokenizer(directory: Path) -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "spiece.model"
        with model_file.open("wb") as model_writer:
            # Corpus from memory and model to a writer: no temp paths end up in the model's trainer spec, so the
            # file is byte-for-byte reproducible.
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(TOKENIZER_CORPUS.splitlines()),
                model_writer=model_writer,
                vocab_size=TOKENIZER_VOCAB_SIZE,
                model_type="unigram",
                character_coverage=1.0,
                # T5's special-token layout: pad 0, eos 1, unk 2, no bos.
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                num_threads=1,
                hard_vocab_limit=False,
                minloglevel=2,
            )
        tokenizer = T5Tokenizer(vocab_file=str(model_file), extra_ids=100, legacy=True)
        tokenizer.model_max_length = 256
        tokenizer.save_pretrained(str(directory))


def build_checkpoint(checkpoint_dir: Path) -> None:
    from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder
    from ltx_video.models.autoencoders.latent_upsampler import LatentUpsampler
    from ltx_video.models.transformers.transformer3d import Transformer3DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True)

    torch.manual_seed(MODEL_SEED)
    transformer = Transformer3DModel.from_config(TINY_TRANSFORMER_CONFIG)
    vae = CausalVideoAutoencoder.from_config(json.loads(json.dumps(TINY_VAE_CONFIG)))
    statistics = _random_vae_statistics(torch.Generator().manual_seed(MODEL_SEED + 1))

    tensors: dict[str, torch.Tensor] = {}
    for key, value in transformer.state_dict().items():
        tensors[f"model.diffusion_model.{key}"] = value.detach().float().contiguous()
    for key, value in vae.state_dict().items():
        tensors[f"vae.{key}"] = value.detach().float().contiguous()
    for key, value in statistics.items():
        tensors[f"vae.{key}"] = value.contiguous()
    metadata = {
        "config": json.dumps(
            {"transformer": TINY_TRANSFORMER_CONFIG, "vae": TINY_VAE_CONFIG, "scheduler": SCHEDULER_CONFIG}
        )
    }
    save_file(tensors, str(checkpoint_dir / CHECKPOINT_FILE), metadata=metadata)
    os.chmod(checkpoint_dir / CHECKPOINT_FILE, 0o644)

    torch.manual_seed(MODEL_SEED + 2)
    upsampler = LatentUpsampler.from_config(TINY_UPSAMPLER_CONFIG)
    save_file(
        {k: v.detach().float().contiguous() for k, v in upsampler.state_dict().items()},
        str(checkpoint_dir / UPSCALER_FILE),
        metadata={"config": json.dumps(TINY_UPSAMPLER_CONFIG)},
    )
    os.chmod(checkpoint_dir / UPSCALER_FILE, 0o644)

    tokenizer_dir = checkpoint_dir / "text_encoder" / "tokenizer"
    _train_tokenizer(tokenizer_dir)
    tokenizer = T5Tokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(MODEL_SEED + 3)
    t5_config = T5Config(vocab_size=len(tokenizer), **TINY_T5_CONFIG)
    text_encoder = T5EncoderModel(t5_config)
    # The default init leaves T5's FF/attention near-trivial at this size; give every weight real variance.
    with torch.no_grad():
        for name, param in text_encoder.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / max(1, param.shape[-1]) ** 0.5)
    text_encoder.save_pretrained(str(checkpoint_dir / "text_encoder" / "text_encoder"), safe_serialization=True)


# ---------------------------------------------------------------------------------------------------------------
# Source images (deterministic synthetic pictures with structure at several scales)
# ---------------------------------------------------------------------------------------------------------------


def _synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127 + 100 * np.sin(x / width * 2 * np.pi * 1.5 + rng.uniform(0, 6))
    g = 127 + 100 * np.cos(y / height * 2 * np.pi * 2.0 + rng.uniform(0, 6))
    b = 127 + 60 * np.sin((x + y) / (width + height) * 2 * np.pi * 3.0) + 40 * ((x // 16 + y // 16) % 2)
    for _ in range(4):  # a few solid discs with sharp edges
        cx, cy, rad = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, min(width, height) / 3)
        color = rng.uniform(0, 255, size=3)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
        r, g, b = (np.where(inside, color[i], ch) for i, ch in enumerate((r, g, b)))
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


IMAGES = {
    "image_landscape.png": (240, 180, 11),  # 4:3
    "image_odd.png": (223, 171, 12),  # odd sizes: exercises the even-size crop in the CRF round-trip
}


def write_images(out: Path) -> None:
    for name, (width, height, seed) in IMAGES.items():
        _synthetic_image(width, height, seed).save(out / name)


# ---------------------------------------------------------------------------------------------------------------
# Running the reference
# ---------------------------------------------------------------------------------------------------------------


class _RecordingWriter:
    def __init__(self, sink: list[np.ndarray]):
        self._sink = sink

    def __enter__(self) -> "_RecordingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def append_data(self, frame: np.ndarray) -> None:
        self._sink.append(np.array(frame, copy=True))


class _RecordingImageio:
    """Stands in for the `imageio` module inside ltx_video.inference: records frames, writes nothing."""

    def __init__(self, real_imageio: Any):
        self._real = real_imageio
        self.frames: list[np.ndarray] = []
        self.fps: float | None = None

    def get_writer(self, path: Any, fps: float | None = None, **kwargs: Any) -> _RecordingWriter:
        self.fps = fps
        return _RecordingWriter(self.frames)

    def imwrite(self, path: Any, image: np.ndarray) -> None:
        self.frames.append(np.array(image, copy=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _keep_float32(cls: type) -> None:
    """Make `cls.to(torch.bfloat16)` a no-op (the reference casts VAE and T5 to bf16 unconditionally)."""
    if getattr(cls, "_ltxserve_fp32_patch", False):
        return
    original_to = cls.to

    def to(self, *args, **kwargs):
        args = tuple(a for a in args if a is not torch.bfloat16)
        if kwargs.get("dtype") is torch.bfloat16:
            kwargs.pop("dtype")
        if not args and not kwargs:
            return self
        return original_to(self, *args, **kwargs)

    cls.to = to
    cls._ltxserve_fp32_patch = True


class _RngTracer:
    """Logs every torch.randn / randn_like call (shape, generator or global) while active."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "_RngTracer":
        import traceback

        real_randn, real_randn_like = torch.randn, torch.randn_like

        def caller() -> str:
            for frame in reversed(traceback.extract_stack()[:-2]):
                if "ltx_video" in frame.filename or "diffusers" in frame.filename:
                    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
            return "?"

        def randn(*args, **kwargs):
            gen = kwargs.get("generator")
            out = real_randn(*args, **kwargs)
            self.events.append(f"randn shape={tuple(out.shape)} rng={'generator' if gen is not None else 'GLOBAL'} "
                               f"dtype={out.dtype} at {caller()}")
            return out

        def randn_like(t, *args, **kwargs):
            out = real_randn_like(t, *args, **kwargs)
            self.events.append(f"randn_like shape={tuple(out.shape)} rng=GLOBAL at {caller()}")
            return out

        self._saved = {"randn": real_randn, "randn_like": real_randn_like}
        torch.randn, torch.randn_like = randn, randn_like
        return self

    def __exit__(self, *exc: object) -> None:
        torch.randn, torch.randn_like = self._saved["randn"], self._saved["randn_like"]


def _reseed_before_pipeline_call(inference: Any, seed: int) -> Any:
    """Re-apply seed_everething(seed) right before the multi-scale pipeline runs.

    infer() seeds the global RNGs before building the models, and the VAE's constructor initialises its layers from
    the CPU default generator, so on CPU the pipeline's global-RNG draws (posterior samples, decode noise) would
    depend on the VAE architecture. On CUDA they come from the freshly seeded CUDA generator instead. Re-seeding
    here gives the CPU run the same clean semantics. Returns the original __call__ for restoring.
    """
    from ltx_video.pipelines.pipeline_ltx_video import LTXMultiScalePipeline

    original_call = LTXMultiScalePipeline.__call__

    def call(self, *args, **kwargs):
        inference.seed_everething(seed)
        return original_call(self, *args, **kwargs)

    LTXMultiScalePipeline.__call__ = call
    return original_call


def run_case(
    case: Case,
    out: Path,
    checkpoint_dir: Path,
    trace_rng: Path | None,
    *,
    precision: str = "float32",
    images_dir: Path | None = None,
) -> dict[str, Any]:
    """Run one case through infer() and write its frames and conditioning into `out`.

    precision "float32" keeps VAE and T5 in fp32 too (the _keep_float32 patches); "bfloat16" runs the reference
    exactly as its `precision: bfloat16` YAML does (transformer, VAE and T5 in bf16). Source images are read from
    `images_dir` (default: `out`).
    """
    import ltx_video.inference as inference
    from ltx_video.pipelines.pipeline_ltx_video import LTXMultiScalePipeline
    import ltx_video.pipelines.crf_compressor as crf_compressor
    from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder
    from transformers import T5EncoderModel

    if precision == "float32":
        _keep_float32(CausalVideoAutoencoder)
        _keep_float32(T5EncoderModel)
    elif getattr(CausalVideoAutoencoder, "_ltxserve_fp32_patch", False) or getattr(
        T5EncoderModel, "_ltxserve_fp32_patch", False
    ):
        raise RuntimeError("the fp32 patches are active in this process; run bfloat16 cases in a fresh process")
    images_dir = out if images_dir is None else images_dir

    recorder = _RecordingImageio(inference.imageio)
    conditioning: list[torch.Tensor] = []
    real_load_media_file = inference.load_media_file
    real_compress = crf_compressor.compress

    def recording_load_media_file(*args, **kwargs):
        tensor = real_load_media_file(*args, **kwargs)
        conditioning.append(tensor.detach().clone())
        return tensor

    with tempfile.TemporaryDirectory() as tmp:
        yaml_path = Path(tmp) / "ltxv-13b-0.9.7-dev.yaml"
        yaml_path.write_text(
            yaml.safe_dump(pipeline_config_for(case, checkpoint_dir, precision), sort_keys=False)
        )
        config = inference.InferenceConfig(
            prompt=case.prompt,
            negative_prompt=case.negative_prompt,
            output_path=str(Path(tmp) / "outputs"),
            pipeline_config=str(yaml_path),
            seed=case.seed,
            height=case.height,
            width=case.width,
            num_frames=case.num_frames,
            frame_rate=case.frame_rate,
            conditioning_media_paths=[str(images_dir / case.image)],
            conditioning_strengths=[1.0],
            conditioning_start_frames=[0],
        )
        inference.imageio = recorder
        inference.load_media_file = recording_load_media_file
        crf_compressor.compress = functools.partial(real_compress, crf=case.constant_rate_factor)
        real_pipeline_call = _reseed_before_pipeline_call(inference, case.seed)
        try:
            if trace_rng is not None:
                with _RngTracer() as tracer:
                    inference.infer(config)
                trace_rng.write_text(f"# case {case.name}\n" + "\n".join(tracer.events) + "\n")
            else:
                inference.infer(config)
        finally:
            inference.imageio = recorder._real
            inference.load_media_file = real_load_media_file
            crf_compressor.compress = real_compress
            LTXMultiScalePipeline.__call__ = real_pipeline_call

    frames = np.stack(recorder.frames).astype(np.uint8)
    expected_shape = (case.num_frames, case.height, case.width, 3)
    if frames.shape != expected_shape:
        raise RuntimeError(f"case {case.name}: reference wrote {frames.shape}, expected {expected_shape}")
    frames_file = f"{case.name}.frames.npy"
    np.save(out / frames_file, frames)
    conditioning_file = f"{case.name}.conditioning.npz"  # compressed: it is mostly smooth image + zero padding
    np.savez_compressed(out / conditioning_file, conditioning=conditioning[0].numpy().astype(np.float32))

    request = {
        "prompt": case.prompt,
        "negative_prompt": case.negative_prompt,
        "seed": case.seed,
        "num_frames": case.num_frames,
        "frame_rate": case.frame_rate,
        "first_pass_num_inference_steps": case.first_pass_num_inference_steps,
        "first_pass_skip_final_steps": case.first_pass_skip_final_steps,
        "second_pass_num_inference_steps": case.second_pass_num_inference_steps,
        "second_pass_skip_initial_steps": case.second_pass_skip_initial_steps,
        "constant_rate_factor": case.constant_rate_factor,
        "width": case.width,
        "height": case.height,
    }
    return {
        "name": case.name,
        "description": case.description,
        "request": request,
        "guidance_overrides": {"first_pass": case.first_pass_overrides, "second_pass": case.second_pass_overrides},
        "image": case.image,
        "frames": frames_file,
        "frames_shape": list(frames.shape),
        "conditioning": conditioning_file,
        "conditioning_shape": list(conditioning[0].shape),
        "reference_fps_passed_to_writer": recorder.fps,
        "pipeline_config": pipeline_config_for(case, Path("<checkpoint>"), precision),
    }


def reference_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    names = ["ltx-video", "torch", "transformers", "diffusers", "av", "numpy", "sentencepiece", "torchvision"]
    versions = {name: metadata.version(name) for name in names}
    versions["python"] = sys.version.split()[0]
    return versions


BF16_DIR = "bf16"  # under the fp32 fixture folder; shares its checkpoint and images
# bf16 CPU kernels split their reductions by intra-op thread, and the tiny random model amplifies the difference: the
# reference in bf16 with 1 thread instead of 2 lands 48.5-58.8 dB from itself on 4 of the 6 cases (identical on 2).
# The committed bf16 frames used 2.
BF16_NUM_THREADS = 2


def frame_distance(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """PSNR in dB over uint8 frames (peak 255; inf when identical), mean and max |diff| in levels."""
    diff = actual.astype(np.float64) - expected.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {
        "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse)),
        "mean_abs": float(np.abs(diff).mean()),
        "max_abs": int(np.abs(diff).max()),
    }


def main_bfloat16(out: Path, cases: str, trace_rng: Path | None) -> int:
    """Record every case with the reference in bf16 into OUT/bf16, reusing OUT's checkpoint, images and fp32 frames."""
    checkpoint_dir = out / "checkpoint"
    fp32_cases_path = out / "cases.json"
    if not (checkpoint_dir / CHECKPOINT_FILE).exists() or not fp32_cases_path.exists():
        raise SystemExit(f"bf16 fixtures need the fp32 fixtures (checkpoint and cases.json) in {out} first")
    fp32_cases = {c["name"]: c for c in json.loads(fp32_cases_path.read_text())["cases"]}
    bf16_dir = out / BF16_DIR
    bf16_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(BF16_NUM_THREADS)

    wanted = [c for c in CASES if not cases or c.name in cases.split(",")]
    cases_path = bf16_dir / "cases.json"
    previous = json.loads(cases_path.read_text())["cases"] if cases_path.exists() else []
    results = {c["name"]: c for c in previous}
    for index, case in enumerate(wanted):
        print(f"running reference case {case.name} in bfloat16 ...", flush=True)
        result = run_case(
            case, bf16_dir, checkpoint_dir, trace_rng if index == 0 else None,
            precision="bfloat16", images_dir=out,
        )
        result["image"] = f"../{case.image}"
        fp32_frames_file = f"../{fp32_cases[case.name]['frames']}"
        distance = frame_distance(np.load(bf16_dir / result["frames"]), np.load(bf16_dir / fp32_frames_file))
        result["reference_bf16_vs_fp32"] = {"fp32_frames": fp32_frames_file, **distance}
        print(f"  {case.name}: reference bf16 vs fp32 {distance}", flush=True)
        results[case.name] = result

    order = [c.name for c in CASES]
    document = {
        "about": (
            "Golden outputs of Lightricks' ltx_video.inference.infer() (the 0.9.7-dev multi-scale config, "
            "832e043) run with precision: bfloat16 on the tiny random-weight checkpoint of the fp32 fixtures (..); "
            "see scripts/make_reference_fixtures.py. Paths here are relative to this folder."
        ),
        "regenerate": (
            "scripts/setup_reference_env.sh REFENV && "
            "REFENV/bin/python scripts/make_reference_fixtures.py --precision bfloat16   "
            "(needs the committed fp32 fixtures: it reuses their checkpoint and images, never rebuilds them, and "
            "measures each case against their frames; the committed bf16 fixtures used REFENV=/work/refenv)"
        ),
        "precision": "bfloat16",
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_threads_note": (
            "the reference's bf16 CPU output depends on the intra-op thread count (reduction splits); regenerating "
            "with this count reproduces the frames bit for bit, another count moves them as far as bf16 vs fp32 does"
        ),
        "checkpoint": "../checkpoint",
        "reference_versions": reference_versions(),
        "reference_patches": [
            "imageio.get_writer in ltx_video.inference replaced by a recorder: frames are the uint8 arrays the "
            "reference hands to its mp4 writer (after padding crop and truncating cast), no encoding",
            "ltx_video.pipelines.crf_compressor.compress called with crf=request.constant_rate_factor (the reference "
            "hard-codes the default 29)",
            "seed_everething(seed) re-applied right before LTXMultiScalePipeline.__call__: on CPU the VAE "
            "constructor consumes the global RNG after infer() seeded it; on CUDA the global draws come from the "
            "fresh CUDA generator, and this makes the CPU run match those semantics",
            "pipeline YAML: precision bfloat16, prompt_enhancement_words_threshold 0, paths to the tiny checkpoint, "
            "per-case step counts and guidance overrides",
            "NOT patched (unlike the fp32 fixtures): the reference's own casts of the transformer, VAE and T5 to "
            "bfloat16; the latent upsampler stays fp32 as in the reference",
        ],
        "reference_bf16_vs_fp32_note": (
            "per case: the reference's own bf16 frames against its committed fp32 frames (fp32_frames); psnr_db over "
            "all uint8 values with peak 255, mean_abs and max_abs in levels"
        ),
        "conditioning_note": (
            "<case>.conditioning.npz (array 'conditioning') is the (1,3,1,h,w) float32 tensor in [-1,1] that the "
            "reference built from the image (center crop at source resolution, blur, CRF round-trip, zero padding) "
            "before per-pass resizing and the cast to the VAE's bf16"
        ),
        "cases": [results[name] for name in order if name in results],
    }
    cases_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {cases_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--checkpoint-only", action="store_true", help="build the tiny checkpoint and images only")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--trace-rng", type=Path, default=None, help="log the random draws of the first case here")
    parser.add_argument(
        "--precision", choices=["float32", "bfloat16"], default="float32",
        help="float32: the fp32 fixtures in OUT; bfloat16: the reference as its bf16 YAML runs it, into OUT/bf16",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out: Path = args.out.resolve()
    if args.precision == "bfloat16":
        if args.checkpoint_only:
            parser.error("--checkpoint-only builds the shared checkpoint: run it without --precision bfloat16")
        return main_bfloat16(out, args.cases, args.trace_rng)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = out / "checkpoint"
    if args.checkpoint_only or not (checkpoint_dir / CHECKPOINT_FILE).exists():
        build_checkpoint(checkpoint_dir)
        write_images(out)
        print(f"tiny checkpoint written to {checkpoint_dir}")
    if args.checkpoint_only:
        return 0

    wanted = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    cases_path = out / "cases.json"
    previous = json.loads(cases_path.read_text())["cases"] if cases_path.exists() else []
    results = {c["name"]: c for c in previous}
    for index, case in enumerate(wanted):
        print(f"running reference case {case.name} ...", flush=True)
        results[case.name] = run_case(case, out, checkpoint_dir, args.trace_rng if index == 0 else None)

    order = [c.name for c in CASES]
    document = {
        "about": (
            "Golden outputs of Lightricks' ltx_video.inference.infer() (the 0.9.7-dev multi-scale config, "
            "832e043) on a tiny random-weight checkpoint; see scripts/make_reference_fixtures.py."
        ),
        "regenerate": (
            "scripts/setup_reference_env.sh REFENV && "
            "REFENV/bin/python scripts/make_reference_fixtures.py --checkpoint-only && "
            "REFENV/bin/python scripts/make_reference_fixtures.py   "
            "(the second command reuses the existing checkpoint; the committed fixtures used REFENV=/work/refenv)"
        ),
        "checkpoint": "checkpoint",
        "reference_versions": reference_versions(),
        "reference_patches": [
            "imageio.get_writer in ltx_video.inference replaced by a recorder: frames are the uint8 arrays the "
            "reference hands to its mp4 writer (after padding crop and truncating cast), no encoding",
            "ltx_video.pipelines.crf_compressor.compress called with crf=request.constant_rate_factor (the reference "
            "hard-codes the default 29)",
            "CausalVideoAutoencoder.to(torch.bfloat16) and T5EncoderModel.to(torch.bfloat16) made no-ops: the "
            "reference casts VAE and T5 to bf16 unconditionally; these fixtures are fp32 end to end",
            "seed_everething(seed) re-applied right before LTXMultiScalePipeline.__call__: on CPU the VAE "
            "constructor consumes the global RNG after infer() seeded it; on CUDA the global draws come from the "
            "fresh CUDA generator, and this makes the CPU run match those semantics",
            "pipeline YAML: precision float32, prompt_enhancement_words_threshold 0, paths to the tiny checkpoint, "
            "per-case step counts and guidance overrides",
        ],
        "conditioning_note": (
            "<case>.conditioning.npz (array 'conditioning') is the (1,3,1,h,w) float32 tensor in [-1,1] that the "
            "reference built from the image (center crop at source resolution, blur, CRF round-trip, zero padding) "
            "before per-pass resizing"
        ),
        "cases": [results[name] for name in order if name in results],
    }
    cases_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {cases_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
