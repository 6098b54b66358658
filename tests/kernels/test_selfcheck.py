"""The load-time self-check: the kernels pass it where they are right and `auto` falls back where they are not."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from kernels.selfcheck import selfcheck


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_pass_their_self_check_interpreted(dtype):
    assert selfcheck("cpu", dtype) == []


def test_a_wrong_kernel_fails_it_and_auto_falls_back_to_torch_ops(monkeypatch, caplog):
    import kernels.ops as ops
    from ltxserve.engine import speedups
    from ltxserve.engine.models import build_tiny_components

    def wrong(x, scale, shift, segments, eps):  # the modulation without its "1 +"
        return x * scale + shift

    monkeypatch.setattr(ops, "rmsnorm_modulate", wrong)
    assert any(p.startswith("rmsnorm_modulate") for p in selfcheck("cpu", torch.float32))

    monkeypatch.setattr(speedups, "kernels_wanted", lambda setting, device: True)  # as on a GPU with triton
    components = build_tiny_components()
    with caplog.at_level(logging.WARNING, logger="ltxserve.engine"):
        result = speedups.install_speedups(components, SimpleNamespace(use_triton_kernels="auto",
                                                                       attention_backend="auto",
                                                                       compile_blocks="off"))
    assert result.kernels == () and "self-check" in caplog.text
    assert all(b.fused_norm_modulate is None for b in components.transformer.transformer_blocks)
    with pytest.raises(RuntimeError, match="fail on this device"):
        speedups.install_speedups(components, SimpleNamespace(use_triton_kernels="on", attention_backend="auto",
                                                              compile_blocks="off"))
