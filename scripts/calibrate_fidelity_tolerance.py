#!/usr/bin/env python
"""Measure how far the reference's own frames move under float-sized perturbations and under a real bug.

Backs the tolerance in tests/engine/test_fidelity.py. Run with the REFERENCE venv's python after
scripts/make_reference_fixtures.py has produced tests/fixtures/reference/:

    REFENV/bin/python scripts/calibrate_fidelity_tolerance.py perturb:1e-6 a_defaults,d_seed_negative_fps24_padding
    REFENV/bin/python scripts/calibrate_fidelity_tolerance.py decode-noise-bug a_defaults

Modes:
  perturb:R         multiply every transformer output by (1 + R * N(0,1)) (fixed side generator) at every call,
                    standing in for kernel / operation-order differences; perturb:0 checks determinism.
  decode-noise-bug  draw the decode noise from a fixed side generator instead of the global RNG: a subtle real bug.
Prints one JSON line per case: mean/max |diff| in uint8 levels and the fractions of values exact / within 1 / 2.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference_fixtures as fixtures  # noqa: E402


def install_perturbation(relative: float) -> None:
    from ltx_video.models.transformers.transformer3d import Transformer3DModel

    original_forward = Transformer3DModel.forward
    side = torch.Generator().manual_seed(99)

    def forward(self, *args, **kwargs):
        out = original_forward(self, *args, **kwargs)
        noisy = out[0] * (1 + relative * torch.randn(out[0].shape, generator=side, dtype=out[0].dtype))
        return (noisy,) + tuple(out[1:])

    Transformer3DModel.forward = forward


def install_decode_noise_bug() -> None:
    import ltx_video.pipelines.pipeline_ltx_video as pipeline_module

    class TorchWithWrongDecodeNoise:
        """The pipeline module's `torch`, except randn_like (used only for decode noise) ignores the global RNG."""

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def randn_like(tensor, *args, **kwargs):
            return torch.randn(tensor.shape, generator=torch.Generator().manual_seed(12345), dtype=tensor.dtype)

    pipeline_module.torch = TorchWithWrongDecodeNoise()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    mode, names = argv[0], set(argv[1].split(","))
    if mode.startswith("perturb:"):
        install_perturbation(float(mode.split(":", 1)[1]))
    elif mode == "decode-noise-bug":
        install_decode_noise_bug()
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2

    golden_dir = fixtures.DEFAULT_OUT
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for image in fixtures.IMAGES:
            shutil.copy(golden_dir / image, out / image)
        for case in fixtures.CASES:
            if case.name not in names:
                continue
            result = fixtures.run_case(case, out, golden_dir / "checkpoint", None)
            actual = np.load(out / result["frames"]).astype(np.int16)
            golden = np.load(golden_dir / result["frames"]).astype(np.int16)
            diff = np.abs(actual - golden)
            print(json.dumps({
                "mode": mode, "case": case.name, "mean_abs": float(diff.mean()), "max_abs": int(diff.max()),
                "exact": float((diff == 0).mean()), "within_1": float((diff <= 1).mean()),
                "within_2": float((diff <= 2).mean()),
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
