"""Each kernel against its torch reference on the device it is about to serve, at load.

The kernels are tested in the CPU suite through Triton's interpreter; a GPU's compiler, driver or architecture is
only met at run time. So before `--kernels auto` puts them in the model, they run once on small tensors of the
serving dtype on the serving device (a segment boundary inside a tile, broadcast RoPE tables) and must match their
references to within a few units of that dtype's last place. `auto` falls back to the torch ops with a warning if
any of them fails; `on` refuses to start.
"""

from __future__ import annotations

import torch

from kernels.gate_residual import gate_residual_reference
from kernels.rmsnorm_modulate import rmsnorm_modulate_reference
from kernels.rope_qk import rope_qk_reference


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps * 8  # values up to ~8 in these checks


def selfcheck(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """Problems found (empty: every kernel matches its reference on `device` in `dtype`)."""
    from kernels import ops

    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    batch, tokens, dim, heads = 2, 100, 96, 4
    segments = [0, 37, tokens]  # a boundary inside a tile
    x, base = rand(batch, tokens, dim, scale=2.0), rand(batch, tokens, dim)
    scale, shift, gate = rand(batch, 2, dim, scale=0.3), rand(batch, 2, dim, scale=0.3), rand(batch, 2, dim)
    q, k = rand(batch, tokens, dim), rand(batch, tokens, dim)
    wq, wk = rand(dim, scale=0.1) + 1, rand(dim, scale=0.1) + 1
    angles = torch.rand(1, tokens, dim // 2, generator=g).repeat_interleave(2, dim=-1).to(device) * 6.28
    cos, sin = angles.cos().expand(batch, -1, -1), angles.sin().expand(batch, -1, -1)

    checks = {
        "rmsnorm_modulate": (lambda: ops.rmsnorm_modulate(x, scale, shift, segments, 1e-6),
                             lambda: rmsnorm_modulate_reference(x, scale, shift, segments, 1e-6)),
        "gate_residual": (lambda: ops.gate_residual(base, x, gate, segments),
                          lambda: gate_residual_reference(base, x, gate, segments)),
        "rope_qk": (lambda: ops.rope_qk(q, k, wq, wk, cos, sin, 1e-6),
                    lambda: rope_qk_reference(q, k, wq, wk, cos, sin, 1e-6)),
    }
    problems = []
    for name, (kernel, reference) in checks.items():
        try:
            got, want = kernel(), reference()
            got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
            worst = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, want))
        except Exception as exc:  # a kernel that cannot compile or launch here
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if not worst <= _tolerance(dtype):
            problems.append(f"{name}: differs from its torch reference by {worst:.3g}")
    return problems
