"""How far each number format moves the frames, on the reference fixtures' tiny checkpoint, in one run.

For every request of tests/fixtures/reference/cases.json (the golden outputs of Lightricks' reference) this runs
ltxserve's engine in fp32, bf16 and fp8 (both fp8 matmuls: the scaled fp8 GEMM and the dequantizing fallback) and
prints PSNR in dB over the uint8 frames (peak 255; higher is closer):

    ours-fp32 vs ref-fp32 | ours-bf16 vs ref-bf16 | ref-bf16 vs ref-fp32 | ours-bf16 vs ours-fp32 |
    fp8(scaled_mm) vs ours-bf16 | fp8(dequant) vs ours-bf16

The ref-bf16 columns need the fixtures recorded with the reference in bf16 (tests/fixtures/reference/bf16/).

    python benchmarks/format_fidelity.py [--cases a_defaults,f_crf35_square_crop] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "reference"
sys.path.insert(0, str(ROOT))

from ltxserve.config import Settings  # noqa: E402
from ltxserve.engine import media, plan  # noqa: E402
from ltxserve.engine.endpoint import ImageToVideoEndpoint  # noqa: E402
from ltxserve.engine.pipeline import GenerationInputs, generate_frames  # noqa: E402
from tests.engine.frame_metrics import psnr  # noqa: E402
from tests.engine.test_fidelity import _pipeline_config_for  # noqa: E402  (the cases' configs, as the tests build them)

FORMATS = {"fp32": ("fp32", "auto"), "bf16": ("bf16", "auto"), "fp8-mm": ("fp8", "scaled_mm"),
           "fp8-dq": ("fp8", "dequant")}


def generate(endpoint: ImageToVideoEndpoint, case: dict) -> np.ndarray:
    """The case through the pipeline with its guidance tables (as tests/engine/test_fidelity.py drives it)."""
    from PIL import Image

    r = case["request"]
    config = _pipeline_config_for(case)
    geometry = plan.plan_geometry(r["width"], r["height"], r["num_frames"], config.downscale_factor)
    with Image.open(FIXTURES / case["image"]) as image:
        conditioning = media.prepare_conditioning_image(image.convert("RGB"), r["width"], r["height"],
                                                        geometry.padding, r["constant_rate_factor"])
    inputs = GenerationInputs(prompt=r["prompt"], negative_prompt=r["negative_prompt"],
                              conditioning_image=conditioning, geometry=geometry, frame_rate=r["frame_rate"],
                              seed=r["seed"])
    return generate_frames(endpoint.components, config, inputs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    cases = json.loads((FIXTURES / "cases.json").read_text())["cases"]
    bf16_doc = FIXTURES / "bf16" / "cases.json"
    ref_bf16 = {c["name"]: c for c in json.loads(bf16_doc.read_text())["cases"]} if bf16_doc.exists() else {}
    wanted = [c for c in cases if not args.cases or c["name"] in args.cases.split(",")]

    data = Path(tempfile.mkdtemp(prefix="ltxserve-formats-"))
    endpoints = {name: ImageToVideoEndpoint(Settings(model=str(FIXTURES / "checkpoint"), device="cpu", dtype=dtype,
                                                     fp8_matmul=matmul, data_dir=data,
                                                     safety_checker="tiny"))
                 for name, (dtype, matmul) in FORMATS.items()}
    rows = []
    header = (f"{'case':32} {'fp32/ref':>9} {'bf16/refbf16':>12} {'refbf16/ref':>11} {'bf16/fp32':>9} "
              f"{'fp8mm/bf16':>10} {'fp8dq/bf16':>10} {'seconds':>8}")
    print(header)
    for case in wanted:
        start = time.perf_counter()
        out = {name: generate(endpoint, case) for name, endpoint in endpoints.items()}
        seconds = time.perf_counter() - start
        gold = np.load(FIXTURES / case["frames"])
        row = {"case": case["name"], "fp32_vs_ref": psnr(out["fp32"], gold),
               "bf16_vs_fp32": psnr(out["bf16"], out["fp32"]), "fp8_scaled_mm_vs_bf16": psnr(out["fp8-mm"], out["bf16"]),
               "fp8_dequant_vs_bf16": psnr(out["fp8-dq"], out["bf16"]), "seconds": seconds}
        if case["name"] in ref_bf16:
            gold_bf16 = np.load(FIXTURES / "bf16" / ref_bf16[case["name"]]["frames"])
            row["bf16_vs_ref_bf16"] = psnr(out["bf16"], gold_bf16)
            row["ref_bf16_vs_ref"] = psnr(gold_bf16, gold)
        rows.append(row)

        def cell(key: str, width: int) -> str:
            return f"{row[key]:{width}.2f}" if key in row else f"{'-':>{width}}"

        print(f"{case['name']:32} {cell('fp32_vs_ref', 9)} {cell('bf16_vs_ref_bf16', 12)} "
              f"{cell('ref_bf16_vs_ref', 11)} {cell('bf16_vs_fp32', 9)} {cell('fp8_scaled_mm_vs_bf16', 10)} "
              f"{cell('fp8_dequant_vs_bf16', 10)} {seconds:8.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
