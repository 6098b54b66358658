"""Regional compilation: every block compiled, equal output, and the guidance batch sizes 1-3 do not recompile
per block or per size."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from diffusers import LTXVideoTransformer3DModel
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from ltxserve.engine.compile import blocks_compiled, compile_blocks
from ltxserve.engine.models import TINY_TRANSFORMER
from ltxserve.engine.segmented import install_segmented_forward
from ltxserve.engine.speedups import install_kernels
from ltxserve.engine.stg import STGController, configure_attention

TOKENS, TEXT, LAYERS = 24, 5, 4


def _transformer():
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": LAYERS}).eval()
    return install_segmented_forward(transformer)


def _inputs(batch):
    g = torch.Generator().manual_seed(batch)
    return dict(hidden_states=torch.randn(batch, TOKENS, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, TEXT, 32, generator=g),
                encoder_attention_mask=torch.ones(batch, TEXT), timestep=torch.tensor([[0.0, 600.0]] * batch),
                video_coords=(torch.rand(1, 3, TOKENS, generator=g) * 40).expand(batch, -1, -1),
                segments=(0, 8, TOKENS), return_dict=False)


@pytest.mark.parametrize("kernels", [False, True], ids=["torch-ops", "kernels"])
def test_compiled_blocks_match_eager_without_recompiling_per_block_or_batch(kernels):
    if kernels:
        pytest.importorskip("triton")
    transformer = _transformer()
    install_kernels(transformer, kernels)
    if kernels:
        from kernels.ops import rope_qk

        configure_attention(transformer, None, rope_qk)
    stg = STGController(transformer)
    with torch.inference_mode():
        eager = {}
        for batch in (1, 2, 3):
            stg.set((1,), torch.arange(batch) == batch - 1 if batch > 1 else None)
            eager[batch] = transformer(**_inputs(batch))[0]
        counter = CompileCounterWithBackend("aot_eager")
        torch._dynamo.reset()
        counters.clear()
        assert compile_blocks(transformer, backend=counter) == LAYERS and blocks_compiled(transformer)
        for batch in (1, 2, 3):
            stg.set((1,), torch.arange(batch) == batch - 1 if batch > 1 else None)
            compiled = transformer(**_inputs(batch))[0]
            torch.testing.assert_close(compiled, eager[batch], rtol=1e-5, atol=1e-5)
    # graphs shared by every block: batch 1 and the dynamic batch after it, each with and without a perturbed STG
    # row (4 here), not one per block or per batch size (12 block calls x 3 sizes)
    assert counter.frame_count <= 4, counter.frame_count
    assert not counters["graph_break"], dict(counters["graph_break"])
