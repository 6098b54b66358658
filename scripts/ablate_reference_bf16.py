#!/usr/bin/env python
"""How much does each bf16 detail of the reference matter? Undo one at a time and measure.

Run with the REFERENCE venv's python (see scripts/setup_reference_env.sh), after the bf16 fixtures exist:

    /work/refenv/bin/python scripts/ablate_reference_bf16.py [--cases f_crf35_square_crop,d_seed_negative_fps24_padding]

Each variant reruns the reference in bf16 (as make_reference_fixtures.py --precision bfloat16 does) with ONE detail
switched to fp32, and prints the PSNR of its frames against the committed bf16 frames and the committed fp32 frames.
A variant that stays far above the bf16 test threshold (45 dB) is a detail an engine may get wrong at little cost; one
that drops towards it must be reproduced. "as_is" reruns unmodified: identical (inf dB) with the thread count the
fixtures were made with (2), not necessarily with another (bf16 CPU kernels split their reductions by thread).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_reference_fixtures as fixtures  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


@contextlib.contextmanager
def patched(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def as_is() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def fp32_latents_from_start() -> contextlib.AbstractContextManager:
    """prepare_latents with dtype fp32: noise drawn in fp32, the second pass's upsampled latents not cast to bf16."""
    import ltx_video.pipelines.pipeline_ltx_video as pipe

    def make(original):
        def prepare_latents(self, *args, **kwargs):
            kwargs["dtype"] = torch.float32
            return original(self, *args, **kwargs)
        return prepare_latents

    return patched(pipe.LTXVideoPipeline, "prepare_latents", make)


def fp32_guidance() -> contextlib.AbstractContextManager:
    """The transformer output upcast to fp32 before CFG/STG/rescale and the scheduler step."""
    from ltx_video.models.transformers.transformer3d import Transformer3DModel

    def make(original):
        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            return (out[0].float(), *out[1:]) if isinstance(out, tuple) else out
        return forward

    return patched(Transformer3DModel, "forward", make)


def fp32_stats_around_upsampler() -> contextlib.AbstractContextManager:
    """The latent upsampler's un-normalize/normalize with the fp32 statistics from the checkpoint."""
    import ltx_video.pipelines.pipeline_ltx_video as pipe
    from safetensors import safe_open

    with safe_open(str(fixtures.DEFAULT_OUT / "checkpoint" / fixtures.CHECKPOINT_FILE), framework="pt") as f:
        std = f.get_tensor("vae.per_channel_statistics.std-of-means").float()
        mean = f.get_tensor("vae.per_channel_statistics.mean-of-means").float()

    def make(original):
        def upsample(self, upsampler, latents):
            saved = self.vae.std_of_means, self.vae.mean_of_means
            self.vae.std_of_means, self.vae.mean_of_means = std, mean
            try:
                return original(self, upsampler, latents)
            finally:
                self.vae.std_of_means, self.vae.mean_of_means = saved
        return upsample

    return patched(pipe.LTXMultiScalePipeline, "_upsample_latents", make)


def fp32_postprocess() -> contextlib.AbstractContextManager:
    """The VAE's bf16 pixels upcast to fp32 before denormalise/clamp and the final resize."""
    import ltx_video.pipelines.pipeline_ltx_video as pipe

    def make(original):
        def vae_decode(*args, **kwargs):
            return original(*args, **kwargs).float()
        return vae_decode

    return patched(pipe, "vae_decode", make)


def fp32_decoder_input_unnormalize() -> contextlib.AbstractContextManager:
    """Decode latents un-normalised in fp32 with fp32 statistics, then cast to bf16 (the reference casts first)."""
    import ltx_video.models.autoencoders.vae_encode as vae_encode
    from safetensors import safe_open

    with safe_open(str(fixtures.DEFAULT_OUT / "checkpoint" / fixtures.CHECKPOINT_FILE), framework="pt") as f:
        std = f.get_tensor("vae.per_channel_statistics.std-of-means").float()
        mean = f.get_tensor("vae.per_channel_statistics.mean-of-means").float()

    def make(original):
        def run_decoder(latents, vae, is_video, vae_per_channel_normalize=False, timestep=None):
            real = (latents.float() * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)).to(vae.dtype)
            # feed already un-normalised latents through an identity normalisation
            saved = vae.std_of_means, vae.mean_of_means
            vae.std_of_means = torch.ones_like(saved[0])
            vae.mean_of_means = torch.zeros_like(saved[1])
            try:
                return original(real, vae, is_video, vae_per_channel_normalize, timestep)
            finally:
                vae.std_of_means, vae.mean_of_means = saved
        return run_decoder

    return patched(vae_encode, "_run_decoder", make)


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "as_is": as_is,
    "fp32_latents_from_start": fp32_latents_from_start,
    "fp32_guidance": fp32_guidance,
    "fp32_stats_around_upsampler": fp32_stats_around_upsampler,
    "fp32_decoder_input_unnormalize": fp32_decoder_input_unnormalize,
    "fp32_postprocess": fp32_postprocess,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="f_crf35_square_crop,d_seed_negative_fps24_padding")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the fixtures were made with 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    golden = fixtures.DEFAULT_OUT
    bf16_dir = golden / fixtures.BF16_DIR
    cases = [c for c in fixtures.CASES if c.name in args.cases.split(",")]
    print(f"{'case':32s} {'variant':32s} {'vs bf16 ref':>12s} {'vs fp32 ref':>12s}  mean|d| bf16  max|d| bf16")
    for case in cases:
        bf16 = np.load(bf16_dir / f"{case.name}.frames.npy")
        fp32 = np.load(golden / f"{case.name}.frames.npy")
        for name in args.variants.split(","):
            with tempfile.TemporaryDirectory() as tmp, VARIANTS[name]():
                fixtures.run_case(case, Path(tmp), golden / "checkpoint", None, precision="bfloat16",
                                  images_dir=golden)
                frames = np.load(Path(tmp) / f"{case.name}.frames.npy")
            to_bf16 = fixtures.frame_distance(frames, bf16)
            to_fp32 = fixtures.frame_distance(frames, fp32)
            print(f"{case.name:32s} {name:32s} {to_bf16['psnr_db']:12.2f} {to_fp32['psnr_db']:12.2f}  "
                  f"{to_bf16['mean_abs']:12.3f}  {to_bf16['max_abs']:11d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
