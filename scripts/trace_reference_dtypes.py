#!/usr/bin/env python
"""Log the dtype and device of every tensor at the boundaries of the reference's pipeline, at runtime.

Run with the REFERENCE venv's python (see scripts/setup_reference_env.sh):

    /work/refenv/bin/python scripts/trace_reference_dtypes.py [--case f_crf35_square_crop] [--precision bfloat16]
        [--out trace.log]

It runs one case of scripts/make_reference_fixtures.py exactly as that script does (same patches, into a temporary
folder, the committed fixtures are untouched) while wrapping the reference's functions and methods at the
boundaries (text encoder, transformer, scheduler step, noise draws, VAE encode/decode, posterior sample, latent
upsampler, AdaIN, tone mapping, post-processing, the final uint8 cast). Consecutive identical events are collapsed
into one line with a count. docs/reference-bf16-trace.md summarises the bf16 log.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_reference_fixtures as fixtures  # noqa: E402
import torch  # noqa: E402


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).replace('torch.', '')}@{value.device.type}{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    if hasattr(value, "images"):  # ImagePipelineOutput
        return f"{type(value).__name__}(images={describe(value.images)})"
    if hasattr(value, "latent_dist"):
        return f"{type(value).__name__}(latent_dist.parameters={describe(value.latent_dist.parameters)})"
    if hasattr(value, "last_hidden_state"):
        return f"{type(value).__name__}(last_hidden_state={describe(value.last_hidden_state)})"
    if hasattr(value, "std_of_means"):  # the VAE: its per-channel statistics are buffers cast with it
        return f"{type(value).__name__}(std_of_means={describe(value.std_of_means)})"
    if isinstance(value, float):
        return f"python float {value:g}"
    if value is None:
        return "None"
    return type(value).__name__


def reference_caller(skip: int = 2) -> str:
    """The innermost ltx_video (or diffusers/transformers) frame that led here."""
    for frame in reversed(traceback.extract_stack()[:-skip]):
        if "site-packages/ltx_video" in frame.filename:
            rel = frame.filename.split("site-packages/")[1]
            return f"{rel}:{frame.lineno} {frame.name}"
    for frame in reversed(traceback.extract_stack()[:-skip]):
        if "site-packages/diffusers" in frame.filename or "site-packages/transformers" in frame.filename:
            rel = frame.filename.split("site-packages/")[1]
            return f"{rel}:{frame.lineno} {frame.name}"
    return "?"


class Tracer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counts: list[int] = []
        self._restore: list[Callable[[], None]] = []

    def log(self, line: str) -> None:
        if self.lines and self.lines[-1] == line:
            self.counts[-1] += 1
        else:
            self.lines.append(line)
            self.counts.append(1)

    def text(self) -> str:
        return "\n".join(line + (f"   [x{n}]" if n > 1 else "") for line, n in zip(self.lines, self.counts)) + "\n"

    def wrap(self, owner: Any, name: str, label: str, args_of_interest: tuple[str, ...] = (),
             with_self_dtype: bool = False, with_caller: bool = False) -> None:
        """Replace owner.name by a wrapper logging the named arguments and the result."""
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        is_static = isinstance(original, staticmethod)
        function = original.__func__ if is_static else original
        signature = inspect.signature(function)
        tracer = self

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs).arguments
            parts = [f"{arg}={describe(bound[arg])}" for arg in args_of_interest if arg in bound]
            if with_self_dtype and args and hasattr(args[0], "parameters"):
                param = next(iter(args[0].parameters()), None)
                parts.append(f"[module params {describe(param).split('@')[0]}]")
            result = function(*args, **kwargs)
            where = f" at {reference_caller()}" if with_caller else ""
            tracer.log(f"{label}: " + ", ".join(parts) + f" -> {describe(result)}{where}")
            return result

        setattr(owner, name, staticmethod(wrapper) if is_static else wrapper)
        self._restore.append(lambda: setattr(owner, name, original))

    def hook_submodules(self, root: torch.nn.Module, root_name: str, names: list[str]) -> None:
        """Log each named submodule's input/output dtypes, once per distinct signature (they run many times)."""
        seen: set[str] = set()
        tracer = self

        for name in names:
            module = root.get_submodule(name)
            label = f"    [{root_name}.{name} {type(module).__name__}]"

            def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any, label: str = label) -> None:
                inputs = [describe(a) for a in args if isinstance(a, torch.Tensor)]
                inputs += [f"{k}={describe(v)}" for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
                line = f"{label}: in {', '.join(inputs)} -> {describe(output)}"
                if line not in seen:
                    seen.add(line)
                    tracer.log(line)

            handle = module.register_forward_hook(hook, with_kwargs=True)
            self._restore.append(handle.remove)

    def trace_random(self) -> None:
        real_randn, real_randn_like = torch.randn, torch.randn_like
        tracer = self

        def randn(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = real_randn(*args, **kwargs)
            rng = "generator" if kwargs.get("generator") is not None else "GLOBAL"
            tracer.log(f"  torch.randn rng={rng} -> {describe(out)} at {reference_caller()}")
            return out

        def randn_like(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = real_randn_like(t, *args, **kwargs)
            tracer.log(f"  torch.randn_like rng=GLOBAL -> {describe(out)} at {reference_caller()}")
            return out

        torch.randn, torch.randn_like = randn, randn_like

        def restore() -> None:
            torch.randn, torch.randn_like = real_randn, real_randn_like

        self._restore.append(restore)

    def restore(self) -> None:
        for undo in reversed(self._restore):
            undo()


TRANSFORMER_SUBMODULES = [
    "patchify_proj", "adaln_single", "adaln_single.emb.timestep_embedder", "caption_projection",
    "transformer_blocks.0", "transformer_blocks.0.attn1", "transformer_blocks.0.attn1.q_norm",
    "transformer_blocks.0.attn2", "transformer_blocks.0.ff", "norm_out", "proj_out",
]
VAE_SUBMODULES = [
    "encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.up_blocks.0", "decoder.last_time_embedder",
    "decoder.conv_norm_out", "decoder.conv_out",
]


def install(tracer: Tracer) -> None:
    import diffusers.models.autoencoders.vae as diffusers_vae
    import ltx_video.inference as inference
    import ltx_video.models.autoencoders.vae_encode as vae_encode_module
    import ltx_video.pipelines.pipeline_ltx_video as pipe
    from diffusers.image_processor import VaeImageProcessor
    from ltx_video.models.autoencoders.causal_video_autoencoder import Decoder
    from ltx_video.models.autoencoders.vae import AutoencoderKLWrapper
    from ltx_video.models.autoencoders.latent_upsampler import LatentUpsampler
    from ltx_video.models.transformers.transformer3d import Transformer3DModel
    from ltx_video.schedulers.rf import RectifiedFlowScheduler
    from transformers import T5EncoderModel

    tracer.trace_random()
    tracer.wrap(inference, "create_ltx_video_pipeline", "create_ltx_video_pipeline", ("precision",))
    real_create = inference.create_ltx_video_pipeline

    def create_and_hook(*args: Any, **kwargs: Any) -> Any:
        pipeline = real_create(*args, **kwargs)
        tracer.hook_submodules(pipeline.transformer, "transformer", TRANSFORMER_SUBMODULES)
        tracer.hook_submodules(pipeline.vae, "vae", VAE_SUBMODULES)
        return pipeline

    inference.create_ltx_video_pipeline = create_and_hook
    tracer.wrap(T5EncoderModel, "forward", "T5EncoderModel.forward",
                ("input_ids", "attention_mask"), with_self_dtype=True)
    tracer.wrap(pipe.LTXVideoPipeline, "encode_prompt", "LTXVideoPipeline.encode_prompt")
    tracer.wrap(pipe.LTXVideoPipeline, "prepare_latents", "LTXVideoPipeline.prepare_latents",
                ("latents", "media_items", "timestep", "dtype"))
    tracer.wrap(pipe.LTXVideoPipeline, "prepare_conditioning", "LTXVideoPipeline.prepare_conditioning",
                ("init_latents",))
    tracer.wrap(pipe, "vae_encode", "vae_encode", ("media_items",))
    tracer.wrap(AutoencoderKLWrapper, "encode", "  CausalVideoAutoencoder.encode", ("z",),
                with_self_dtype=True)
    tracer.wrap(diffusers_vae.DiagonalGaussianDistribution, "sample", "  DiagonalGaussianDistribution.sample")
    tracer.wrap(pipe.LTXVideoPipeline, "add_noise_to_image_conditioning_latents",
                "add_noise_to_image_conditioning_latents",
                ("t", "init_latents", "latents", "conditioning_mask"))
    tracer.wrap(RectifiedFlowScheduler, "scale_model_input", "scheduler.scale_model_input", ("sample",))
    tracer.wrap(Transformer3DModel, "forward", "Transformer3DModel.forward",
                ("hidden_states", "indices_grid", "encoder_hidden_states", "timestep", "encoder_attention_mask",
                 "skip_layer_mask"), with_self_dtype=True)
    tracer.wrap(Transformer3DModel, "precompute_freqs_cis", "  Transformer3DModel.precompute_freqs_cis",
                ("indices_grid",))
    tracer.wrap(RectifiedFlowScheduler, "step", "scheduler.step",
                ("model_output", "timestep", "sample"))
    tracer.wrap(pipe.LTXVideoPipeline, "denoising_step", "denoising_step (torch.where)",
                ("latents", "noise_pred", "current_timestep", "conditioning_mask"))
    tracer.wrap(pipe.LTXMultiScalePipeline, "_upsample_latents", "LTXMultiScalePipeline._upsample_latents",
                ("latents",))
    tracer.wrap(pipe, "un_normalize_latents", "  un_normalize_latents", ("latents", "vae"))
    tracer.wrap(pipe, "normalize_latents", "  normalize_latents", ("latents", "vae"))
    tracer.wrap(vae_encode_module, "normalize_latents", "  normalize_latents (vae_encode)", ("latents", "vae"))
    tracer.wrap(vae_encode_module, "un_normalize_latents", "  un_normalize_latents (vae_decode)", ("latents", "vae"))
    tracer.wrap(LatentUpsampler, "forward", "  LatentUpsampler.forward", ("latent",), with_self_dtype=True)
    tracer.wrap(pipe, "adain_filter_latent", "adain_filter_latent", ("latents", "reference_latents"))
    tracer.wrap(pipe.LTXVideoPipeline, "tone_map_latents", "tone_map_latents", ("latents",))
    tracer.wrap(pipe, "vae_decode", "vae_decode", ("latents", "timestep"))
    tracer.wrap(AutoencoderKLWrapper, "decode", "  CausalVideoAutoencoder.decode", ("z", "timestep"),
                with_self_dtype=True)
    tracer.wrap(Decoder, "forward", "    Decoder.forward", ("sample", "timestep"), with_self_dtype=True)
    tracer.wrap(VaeImageProcessor, "postprocess", "VaeImageProcessor.postprocess", ("image",))
    tracer.wrap(pipe.torch.nn.functional, "interpolate", "  F.interpolate", ("input",), with_caller=True)
    tracer.wrap(pipe.LTXMultiScalePipeline, "__call__", "LTXMultiScalePipeline.__call__")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="f_crf35_square_crop")
    parser.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, default=None, help="write the log here (default: stdout)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    case = next(c for c in fixtures.CASES if c.name == args.case)
    golden = fixtures.DEFAULT_OUT
    tracer = Tracer()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        install(tracer)
        try:
            fixtures.run_case(case, out, golden / "checkpoint", None, precision=args.precision, images_dir=golden)
        finally:
            tracer.restore()
        import numpy as np

        frames = np.load(out / f"{case.name}.frames.npy")
    tracer.log(f"frames handed to the video writer: {frames.dtype} {frames.shape}")
    header = f"# reference dtype trace: case {case.name}, precision {args.precision}, torch {torch.__version__}\n"
    text = header + tracer.text()
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
