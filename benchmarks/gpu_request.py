"""One request on the GPU, stage by stage: time, peak memory against the plan, and the distance to the physical limit.

On a CUDA machine, with the real weights (--model PATH) or the real architecture with random weights
(--random-weights), runs the hosted defaults (1280x720, 121 frames) and 480p through ltxserve's engine
(pipeline.generate_frames under the placement and request plan the server would choose) and prints, per stage
(text encoding, pass 1, upsample, pass 2, decode, mp4): wall time, peak GPU memory (max_memory_allocated, reset at
each stage) against the plan's estimate, FLOPs counted from the configuration (ltxserve/engine/flops.py), the time
those FLOPs take at the GPU's dense bf16 peak, and the ratio of that ideal to the measured time.

    python benchmarks/gpu_request.py --random-weights [--memory auto] [--dtype auto] [--peak-tflops 989] [--json F]
    python benchmarks/gpu_request.py --model /path/to/weights
    python benchmarks/gpu_request.py --cpu [--json F]

--cpu (for CI, no GPU): the real 13B architecture at reduced depth (1 transformer block, 1 T5 layer, one resnet per
VAE stage, real widths) with random weights, at a small geometry and few steps, on the CPU. It checks the FLOP
counter against torch's FlopCounterMode on the very forwards the engine runs (within 5% per component), and the
memory estimator against meta-device traces of the full-depth components at 480p and 720p (within 10% per stage),
and prints both tables. Exit status 1 if a check fails.

Stage boundaries come from forward hooks on the components (no change to the pipeline): the VAE encoder's first
call starts pass 1, the upsampler's call is the upsample, the VAE decoder's first call starts the decode.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ltxserve.engine import flops as fl  # noqa: E402
from ltxserve.engine import memory_plan as mp  # noqa: E402
from ltxserve.engine.media import prepare_conditioning_image, write_mp4  # noqa: E402
from ltxserve.engine.models import LTXComponents, tiny_tokenizer  # noqa: E402
from ltxserve.engine.pipeline import GenerationInputs, generate_frames  # noqa: E402
from ltxserve.engine.placement import _load_config, count_model_sizes, plan_placement  # noqa: E402
from ltxserve.engine.plan import LTXV_13B_097_DEV, plan_geometry, with_steps  # noqa: E402

GiB = 1024**3
STAGES = ("text encoding", "pass 1", "upsample", "pass 2", "decode", "mp4")
# The plan's stages behind each measured stage (pass 1 and pass 2 also encode the conditioning frame).
PLAN_STAGES = {"text encoding": ("encode_prompt",), "pass 1": ("encode_image", "denoise_pass1"),
               "upsample": ("upsample",), "pass 2": ("encode_image", "denoise_pass2"), "decode": ("decode",)}
PROMPT = "A slow dolly shot along a rocky coast at sunset, waves breaking, warm light"
NEGATIVE = "worst quality, inconsistent motion, blurry, jittery, distorted"


# --- stage clock ---------------------------------------------------------------------------------------------------


@dataclass
class StageClock:
    """Wall time and peak device memory per stage; stages only move forward."""

    cuda: bool
    current: str | None = None
    started: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def enter(self, stage: str | None) -> None:
        if self.current is not None and stage is not None and STAGES.index(stage) <= STAGES.index(self.current):
            return
        self._sync()
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = now - self.started
            if self.cuda:
                self.peak_bytes[self.current] = torch.cuda.max_memory_allocated()
        if self.cuda and stage is not None:
            torch.cuda.reset_peak_memory_stats()
        self.current, self.started = stage, now

    def hooks(self, c: LTXComponents) -> list:
        return [
            c.vae.encoder.register_forward_pre_hook(lambda *_: self.enter("pass 1")),
            c.latent_upsampler.register_forward_pre_hook(lambda *_: self.enter("upsample")),
            c.latent_upsampler.register_forward_hook(lambda *_: self.enter("pass 2")),
            c.vae.decoder.register_forward_pre_hook(lambda *_: self.enter("decode")),
        ]


# --- components ----------------------------------------------------------------------------------------------------


def real_architecture_configs(reduced: bool) -> dict[str, dict]:
    """The 13B configurations; reduced: 1 transformer block, 1 T5 layer, one resnet per VAE stage, one upsampler
    block per stage (every width as in the real model)."""
    cfgs = fl.real_configs()
    if reduced:
        cfgs["transformer"] = {**cfgs["transformer"], "num_layers": 1}
        cfgs["text_encoder"] = {**cfgs["text_encoder"], "num_layers": 1}
        vae = cfgs["vae"]
        cfgs["vae"] = {**vae, "layers_per_block": [1] * len(vae["layers_per_block"]),
                       "decoder_layers_per_block": [1] * len(vae["decoder_layers_per_block"])}
        cfgs["latent_upsampler"] = {**cfgs["latent_upsampler"], "num_blocks_per_stage": 1}
    return cfgs


def build_random_components(cfgs: dict[str, dict], dtype: torch.dtype, seed: int = 0,
                            fp8: str | None = None) -> LTXComponents:
    """The real classes from `cfgs`, initialised by their constructors (seeded) directly in `dtype` (the upsampler
    in fp32, as the reference keeps it), on the CPU; with `fp8` ("scaled_mm" | "dequant") the blocks' Linears in
    scaled fp8 (fp8.py), as load_components does."""
    from ltxserve.engine.fp8 import convert_transformer_to_fp8
    from ltxserve.engine.models import UPSAMPLER_DTYPE

    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        transformer = LTXVideoTransformer3DModel(**cfgs["transformer"])
        vae = AutoencoderKLLTXVideo(**cfgs["vae"])
        upsampler = LTXLatentUpsamplerModel(**cfgs["latent_upsampler"])
        t5 = {**cfgs["text_encoder"], "dropout_rate": 0.0}
        if cfgs["text_encoder"]["num_layers"] < 24:  # reduced: a vocabulary the size of the tokenizer's
            t5["vocab_size"] = len(tokenizer)
        text_encoder = T5EncoderModel(T5Config(**t5))
    finally:
        torch.set_default_dtype(previous)
    upsampler.to(UPSAMPLER_DTYPE)
    for m in (transformer, vae, upsampler, text_encoder):
        m.eval().requires_grad_(False)
    c = LTXComponents(transformer=transformer, vae=vae, latent_upsampler=upsampler, text_encoder=text_encoder,
                      tokenizer=tokenizer, device=torch.device("cpu"), dtype=dtype, source="random")
    if fp8 is not None:
        convert_transformer_to_fp8(c.transformer, fp8)  # type: ignore[arg-type]
    return c


def _image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                       (x + y) * 127 // max(width + height - 2, 1)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


# --- one request -----------------------------------------------------------------------------------------------------


@dataclass
class RequestRun:
    name: str
    width: int
    height: int
    num_frames: int
    seconds: dict[str, float]
    peak_bytes: dict[str, int]
    estimate_bytes: dict[str, int]
    flops: dict[str, float]
    decode: str
    placement: str


def run_request(c: LTXComponents, name: str, width: int, height: int, num_frames: int, config, *, cuda: bool,
                plan: mp.RequestPlan | None, cfgs: dict[str, dict], placement_text: str = "",
                flop_counter=None) -> RequestRun:
    geometry = plan_geometry(width, height, num_frames, config.downscale_factor)
    image = prepare_conditioning_image(_image(width, height), width, height, geometry.padding, 35)
    inputs = GenerationInputs(prompt=PROMPT, negative_prompt=NEGATIVE, conditioning_image=image, geometry=geometry,
                              frame_rate=30, seed=42)
    clock = StageClock(cuda=cuda)
    handles = clock.hooks(c)
    try:
        clock.enter("text encoding")
        if flop_counter is not None:
            with flop_counter:
                frames = generate_frames(c, config, inputs)
        else:
            frames = generate_frames(c, config, inputs)
        clock.enter("mp4")
        with tempfile.TemporaryDirectory() as tmp:
            write_mp4(frames, Path(tmp) / "out.mp4", 30)
        clock.enter(None)
    finally:
        for h in handles:
            h.remove()
    counted = fl.request_flops(cfgs, width, height, num_frames, config)
    flops = {s: f.total for s, f in counted.stages().items()}
    estimate = {}
    if plan is not None:
        estimate = {s: max(plan.stage_bytes[p] for p in ps) for s, ps in PLAN_STAGES.items()}
    return RequestRun(name, width, height, num_frames, clock.seconds, clock.peak_bytes, estimate, flops,
                      plan.decode.describe() if plan else "whole video at once", placement_text)


def table(run: RequestRun, peak_flops: float | None) -> str:
    head = (f"{run.name}: {run.width}x{run.height}, {run.num_frames} frames; placement {run.placement or '-'}; "
            f"VAE decode: {run.decode}")
    rows = [f"{'stage':<14}{'time s':>9}{'peak GiB':>10}{'plan GiB':>10}{'TFLOP':>11}{'ideal s':>9}{'of peak':>9}"]
    total_t = total_f = 0.0
    for s in STAGES:
        t = run.seconds.get(s, float("nan"))
        f = run.flops.get(s, 0.0)
        total_t += 0 if np.isnan(t) else t
        total_f += f
        ideal = f / peak_flops if peak_flops else float("nan")
        ratio = ideal / t if peak_flops and t > 0 else float("nan")
        peak = run.peak_bytes.get(s)
        est = run.estimate_bytes.get(s)
        rows.append(f"{s:<14}{t:>9.2f}{(peak / GiB if peak is not None else float('nan')):>10.2f}"
                    f"{(est / GiB if est is not None else float('nan')):>10.2f}{f / 1e12:>11.1f}{ideal:>9.2f}"
                    f"{ratio:>9.1%}")
    ideal = total_f / peak_flops if peak_flops else float("nan")
    rows.append(f"{'total':<14}{total_t:>9.2f}{'':>10}{'':>10}{total_f / 1e12:>11.1f}{ideal:>9.2f}"
                f"{(ideal / total_t if peak_flops else float('nan')):>9.1%}")
    return "\n".join([head, *rows])


# --- CPU mode: the checks -------------------------------------------------------------------------------------------


def check_flop_counter(counter, c: LTXComponents, cfgs: dict[str, dict], width: int, height: int,
                       num_frames: int, config) -> list[dict]:
    """flops.py's count against FlopCounterMode's for each component over the whole run (FlopCounterMode files a
    call under the class name of the module called at the top)."""
    counts = counter.get_flop_counts()

    def measured(key: str) -> float:
        return float(sum(counts.get(key, {}).values()))

    r = fl.request_flops(cfgs, width, height, num_frames, config)
    mine = {
        type(c.transformer).__name__: r.pass1.total + r.pass2.total,
        type(c.text_encoder).__name__: r.text_encoding.total,
        type(c.latent_upsampler).__name__: r.upsample.total,
        type(c.vae.decoder).__name__: r.decode.total,
    }
    out = []
    for key, counted in mine.items():
        m = measured(key)
        out.append({"component": key, "flops_py": counted, "flop_counter_mode": m,
                    "diff": counted / m - 1 if m else float("nan")})
    return out


def check_estimator() -> list[dict]:
    """The estimator against meta-device traces of the full-depth 13B components at the hosted geometries."""
    from ltxserve.engine import memory_trace as mt

    sizes = count_model_sizes()
    meta = mt.build_meta_components(transformer_layers=2, text_layers=2)

    def empty(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    rows = []
    for name, req in (("480p", mp.RequestSize(848, 480, 121)), ("720p", mp.RequestSize(1280, 720, 121))):
        ps = mp.pass_sizes(req)
        f = ps.latent_frames
        for stage, batch, (w, h) in (("denoise_pass1", mp.PASS1_BATCH, (ps.pass1_width, ps.pass1_height)),
                                     ("denoise_pass2", mp.PASS2_BATCH, (ps.pass2_width, ps.pass2_height))):
            traced = mt.trace_transformer(meta.transformer, batch, f, h // 32, w // 32).peak_bytes
            rows.append((name, stage, mp.transformer_activation_bytes(sizes, batch, f * (h // 32) * (w // 32)), traced))
        lf, lh, lw = mp.latent_shape(sizes, req)
        for decode in (d for d in mp.decode_candidates(sizes, lf, lh, lw)
                       if d.mode == "full" or (d.mode == "spatial" and d.tile_height == 1024)):
            mp.apply_request_plan(meta.vae, decode)
            traced = mt.trace(meta.vae.decode, empty(1, 128, lf, lh, lw), temb=empty(1), return_dict=False).peak_bytes
            rows.append((name, f"decode ({decode.mode})", decode.activation_bytes, traced))
        h1, w1 = ps.pass1_height // 32, ps.pass1_width // 32
        traced = mt.trace(meta.latent_upsampler, empty(1, 128, f, h1, w1, dtype=torch.float32)).peak_bytes
        rows.append((name, "upsample", mp.upsampler_activation_bytes(sizes, f, h1, w1), traced))
    traced = mt.trace(meta.text_encoder, torch.zeros(1, 256, dtype=torch.long, device="meta")).peak_bytes
    rows.append(("any", "encode_prompt", mp.text_encoder_activation_bytes(sizes), traced))
    return [{"geometry": g, "stage": s, "estimate_bytes": e, "traced_bytes": t, "diff": e / t - 1}
            for g, s, e, t in rows]


def cpu_main(args: argparse.Namespace) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfgs = real_architecture_configs(reduced=True)
    t0 = time.perf_counter()
    c = build_random_components(cfgs, torch.float32)
    build_s = time.perf_counter() - t0
    # Few steps, with the guidance table's batch sizes for them.
    config = with_steps(LTXV_13B_097_DEV, *(int(x) for x in args.cpu_steps.split(",")))
    width, height, frames = args.cpu_width, args.cpu_height, args.cpu_frames
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH):  # the math path, so that FlopCounterMode sees attention's two matmuls
        run = run_request(c, "cpu (real widths, reduced depth)", width, height, frames, config, cuda=False,
                          plan=None, cfgs=cfgs, flop_counter=counter)
    flop_rows = check_flop_counter(counter, c, cfgs, width, height, frames, config)
    est_rows = check_estimator()

    print(f"built the reduced real architecture with random weights in {build_s:.1f} s")
    print(table(run, args.peak_tflops * 1e12 if args.peak_tflops else None))
    print("\nFLOP counter (flops.py) against FlopCounterMode on the same forwards")
    print(f"{'component':<28}{'flops.py':>14}{'FlopCounterMode':>17}{'diff':>9}")
    for r in flop_rows:
        print(f"{r['component']:<28}{r['flops_py']:>14.4e}{r['flop_counter_mode']:>17.4e}{r['diff']:>+9.2%}")
    print("\nMemory estimator against meta-device traces of the full 13B components (activations)")
    print(f"{'geometry':<9}{'stage':<22}{'estimate GiB':>13}{'traced GiB':>12}{'diff':>9}")
    for r in est_rows:
        print(f"{r['geometry']:<9}{r['stage']:<22}{r['estimate_bytes'] / GiB:>13.3f}{r['traced_bytes'] / GiB:>12.3f}"
              f"{r['diff']:>+9.2%}")
    real = fl.request_flops(fl.real_configs(), 1280, 720, 121)
    print(f"\nthe hosted default request on the real 13B: {real.total:.3e} FLOPs "
          f"({real.pass1_forwards} + {real.pass2_forwards} sample-forwards)")
    ok = all(abs(r["diff"]) <= 0.05 for r in flop_rows) and all(abs(r["diff"]) <= 0.10 for r in est_rows)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "mode": "cpu", "ok": ok, "requests": [run.__dict__], "flop_check": flop_rows, "estimator_check": est_rows,
            "default_request_flops": real.total,
        }, indent=2))
    print("\nchecks passed" if ok else "\nCHECKS FAILED")
    return 0 if ok else 1


# --- CUDA mode --------------------------------------------------------------------------------------------------------


def cuda_main(args: argparse.Namespace) -> int:
    from ltxserve.engine.models import load_components
    from ltxserve.engine.offload import apply_placement

    if not torch.cuda.is_available():
        print("no CUDA GPU: use --cpu", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else fl.peak_bf16_flops(name)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32 if args.dtype == "fp32" else torch.bfloat16
    # (fp8: bf16 compute, the blocks' Linear weights in scaled e4m3)
    from ltxserve.doctor import read_meminfo
    from ltxserve.engine.fp8 import fp8_matmul_supported

    cfgs = real_architecture_configs(reduced=False)
    free = torch.cuda.mem_get_info(device)[0]
    sizes = count_model_sizes()
    fp8_matmul = "scaled_mm" if fp8_matmul_supported(device) else "dequant"
    host = read_meminfo()
    placement = plan_placement(free, sizes, mp.RequestSize(1280, 720, 121), memory=args.memory, dtype=args.dtype,
                               fp8_matmul=fp8_matmul, host_bytes=host.total_bytes if host else None)
    fp8 = fp8_matmul if placement.dtype == "fp8" else None
    t0 = time.perf_counter()
    if args.random_weights:
        c = build_random_components(cfgs, dtype, fp8=fp8)
    else:
        c = load_components(args.model, device="cpu", dtype=dtype, fp8=fp8)
    load_s = time.perf_counter() - t0
    apply_placement(c, placement, device)
    c.device = device
    placement_text = (f"{placement.memory}/{placement.dtype}{'/' + fp8 if fp8 else ''} "
                      f"resident={'+'.join(placement.resident) or 'none'}")
    print(f"{name}: {free / GiB:.1f} GiB free; peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s; "
          f"weights ready in {load_s:.0f} s; {placement_text}")
    runs = []
    for label, (w, h, n) in (("hosted default", (1280, 720, 121)), ("480p", (848, 480, 121))):
        if args.only and label != args.only:
            continue
        req = mp.RequestSize(w, h, n)
        plan = mp.plan_request(sizes, placement, req, free)
        mp.apply_request_plan(c.vae, plan)
        run = run_request(c, label, w, h, n, LTXV_13B_097_DEV, cuda=True, plan=plan, cfgs=cfgs,
                          placement_text=placement_text)
        runs.append(run)
        print(table(run, peak))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "cuda", "gpu": name, "peak_flops": peak,
                                               "free_bytes": free, "requests": [r.__dict__ for r in runs]}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="CI mode: reduced-depth real architecture on the CPU + checks")
    p.add_argument("--model", default=None, help="weights folder (original or diffusers layout)")
    p.add_argument("--random-weights", action="store_true", help="the real 13B architecture with random weights")
    p.add_argument("--memory", default="auto", choices=("auto", "gpu", "offload", "sequential"))
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp8", "fp16", "fp32"))
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: from its name)")
    p.add_argument("--only", choices=("hosted default", "480p"), default=None)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--cpu-width", type=int, default=256)
    p.add_argument("--cpu-height", type=int, default=160)
    p.add_argument("--cpu-frames", type=int, default=9)
    p.add_argument("--cpu-steps", default="4,1,4,2", help="pass 1 steps, its final skips, pass 2 steps, its initial "
                   "skips (--cpu; default 4,1,4,2: 3 + 2 steps)")
    args = p.parse_args(argv)
    if args.cpu:
        return cpu_main(args)
    if not args.random_weights and not args.model:
        p.error("give --model PATH or --random-weights (or --cpu)")
    return cuda_main(args)


if __name__ == "__main__":
    sys.exit(main())
