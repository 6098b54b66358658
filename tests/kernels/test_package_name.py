"""Our top-level `kernels` package shares its import name with Hugging Face's `kernels` (hub kernels); transformers
and diffusers probe that name. They must never take ours for theirs."""

from __future__ import annotations


def test_transformers_does_not_take_our_kernels_for_hub_kernels():
    from transformers.utils.import_utils import is_kernels_available

    import kernels

    assert hasattr(kernels, "triton_available")  # the name resolves to this project's package here
    assert not is_kernels_available()
