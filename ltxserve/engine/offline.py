"""`ltxserve generate`: the same engine from the command line, for offline and batch work (no server).

One request from flags or a JSON file, or many from a JSONL file (one request per line; an "output" key names its
mp4). The JSON carries the hosted schema's fields plus ltxserve's width/height. Local image paths are accepted for
--image and in requests' image_url, and become data: URIs.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from ltxserve.cli_flags import add_settings_flags, settings_from_args
from ltxserve.logs import configure_logging
from ltxserve.engine.contract import EndpointError
from ltxserve.engine.schema import ImageToVideoInput

GENERATE_SETTINGS = ("model", "device", "dtype", "fp8_matmul", "memory", "use_triton_kernels", "attention_backend",
                     "compile_blocks", "weights_dir", "log_level", "log_format", "data_dir", "prompt_enhancer_dir",
                     "prompt_enhancer_caption_tokens", "prompt_enhancer_max_tokens", "safety_checker",
                     "safety_checker_threshold", "safety_checker_frames")
log = logging.getLogger("ltxserve.generate")

_FIELD_FLAGS = {  # schema field -> (flag, type)
    "prompt": ("--prompt", str), "negative_prompt": ("--negative-prompt", str), "seed": ("--seed", int),
    "num_frames": ("--num-frames", int), "resolution": ("--resolution", str),
    "aspect_ratio": ("--aspect-ratio", str), "frame_rate": ("--frame-rate", int),
    "first_pass_num_inference_steps": ("--first-pass-steps", int),
    "first_pass_skip_final_steps": ("--first-pass-skip-final-steps", int),
    "second_pass_num_inference_steps": ("--second-pass-steps", int),
    "second_pass_skip_initial_steps": ("--second-pass-skip-initial-steps", int),
    "constant_rate_factor": ("--constant-rate-factor", int), "width": ("--width", int), "height": ("--height", int),
}


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="input image: a local path, an http(s) URL or a data: URI")
    for field, (flag, kind) in _FIELD_FLAGS.items():
        p.add_argument(flag, dest=field, type=kind, help=ImageToVideoInput.model_fields[field].description)
    p.add_argument("--reverse-video", action="store_true", default=None)
    p.add_argument("--expand-prompt", action="store_true", default=None,
                   help=ImageToVideoInput.model_fields["expand_prompt"].description)
    p.add_argument("--no-safety-checker", dest="enable_safety_checker", action="store_false", default=None,
                   help="enable_safety_checker: false (the input image and the output are not checked)")
    p.add_argument("--request", type=Path, help="a JSON request (flags override its fields)")
    p.add_argument("--batch", type=Path, help="a JSONL file: one request per line")
    p.add_argument("-o", "--output", type=Path, help="output mp4 (single request)")
    p.add_argument("--output-dir", type=Path, default=Path("."), help="where batch outputs go")
    p.add_argument("--frames-out", type=Path, help="also save the final uint8 frames (F, H, W, 3) as .npy")
    add_settings_flags(p, GENERATE_SETTINGS)


def as_image_url(value: str) -> str:
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise SystemExit(f"ltxserve generate: no such image file: {value}")
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _requests(args: argparse.Namespace) -> list[tuple[dict[str, Any], Path]]:
    if args.batch:
        out = []
        for n, line in enumerate(args.batch.read_text().splitlines(), 1):
            if not line.strip():
                continue
            req = json.loads(line)
            target = Path(req.pop("output", f"video_{n:04d}.mp4"))
            out.append((req, target if target.is_absolute() else args.output_dir / target))
        return out
    req = json.loads(args.request.read_text()) if args.request else {}
    for field in _FIELD_FLAGS:
        if getattr(args, field, None) is not None:
            req[field] = getattr(args, field)
    if args.image:
        req["image_url"] = args.image
    if args.reverse_video:
        req["reverse_video"] = True
    if args.expand_prompt:
        req["expand_prompt"] = True
    if args.enable_safety_checker is False:
        req["enable_safety_checker"] = False
    return [(req, args.output or Path("output.mp4"))]


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format, "generate")  # a weights pull inside is not silent
    jobs = []
    for req, target in _requests(args):
        if "image_url" in req:
            req["image_url"] = as_image_url(req["image_url"])
        try:
            jobs.append((ImageToVideoInput.model_validate(req), target))
        except ValidationError as exc:
            print(f"ltxserve generate: invalid request for {target}:\n{exc}", file=sys.stderr)
            return 2
    if args.frames_out and len(jobs) != 1:
        print("ltxserve generate: --frames-out takes a single request", file=sys.stderr)
        return 2

    from ltxserve.engine.endpoint import ImageToVideoEndpoint  # torch only once the requests are known good
    from ltxserve.engine.media import write_mp4

    log.info("loading the model (--model %s)", settings.model)
    started = time.perf_counter()
    try:
        endpoint = ImageToVideoEndpoint(settings)
    except Exception as exc:  # a missing path, unverifiable weights, no network for the first pull: say why, no trace
        log.debug("model load failed", exc_info=True)
        print(f"ltxserve generate: cannot load the model: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    log.info("model loaded in %.1f s", time.perf_counter() - started)
    failures = 0
    for inp, target in jobs:
        bar = tqdm(desc=target.name, unit="step", leave=True)

        class Progress:
            request_id = "offline"

            def log(self, message: str, level: str = "INFO") -> None:
                if level in ("WARN", "ERROR"):
                    tqdm.write(f"{level}: {message}")

            def progress(self, step: int, total: int, stage: str) -> None:
                if step == 1:
                    bar.reset(total=total)
                bar.set_postfix_str(stage)
                bar.n = step
                bar.refresh()

            def cancelled(self) -> bool:
                return False

        try:
            video = endpoint.generate(inp, Progress())
        except EndpointError as exc:
            bar.close()
            print(f"ltxserve generate: {target}: {exc.message}", file=sys.stderr)
            failures += 1
            continue
        bar.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(video.frames, target, inp.frame_rate)
        if args.frames_out:
            np.save(args.frames_out, video.frames)
        print(f"{target}  seed={video.seed}  {video.frames.shape[2]}x{video.frames.shape[1]}x{video.frames.shape[0]}")
        if inp.expand_prompt:
            print(f"  prompt: {video.prompt}")
    return 1 if failures else 0
