"""Applying a placement: the model-level offloader's swaps, fp8 storage and VAE tiling on real (tiny) classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from torch import nn

from ltxserve.engine.offload import FP8_STORAGE, ModelOffloader, apply_placement
from ltxserve.engine.placement import Placement


def test_offloader_keeps_one_component_on_the_device():
    modules = {"text_encoder": nn.Linear(2, 2), "transformer": nn.Linear(2, 2), "vae": nn.Linear(2, 2)}
    moves: list[tuple[str, str]] = []
    names = {id(m): n for n, m in modules.items()}
    offloader = ModelOffloader(modules, "cuda", move=lambda m, d: moves.append((names[id(m)], d.type)))

    x = torch.zeros(1, 2)
    modules["text_encoder"](x)
    modules["transformer"](x)
    modules["transformer"](x)  # already there: no move
    modules["vae"](x)

    assert moves == [
        ("text_encoder", "cuda"),
        ("text_encoder", "cpu"),  # the text encoder leaves as the transformer arrives
        ("transformer", "cuda"),
        ("transformer", "cpu"),
        ("vae", "cuda"),
    ]
    offloader.remove()
    modules["text_encoder"](x)
    assert len(moves) == 5


@dataclass
class _Components:
    text_encoder: nn.Module
    transformer: nn.Module
    latent_upsampler: nn.Module
    vae: nn.Module
    dtype: torch.dtype


def _tiny_components() -> _Components:
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=1, caption_channels=16,
    )
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    )
    return _Components(nn.Linear(4, 4), transformer, nn.Linear(4, 4), vae, torch.float32)


def _placement(memory: str, dtype: str, decode: str) -> Placement:
    return Placement(memory=memory, dtype=dtype, vae_decode=decode, peak_bytes=0, free_bytes=0)  # type: ignore[arg-type]


def test_fp8_stores_transformer_linear_weights_in_float8_and_still_runs():
    c = _tiny_components()
    apply_placement(c, _placement("gpu", "fp8", "tiled"), "cpu")

    # The blocks' attention and feed-forward weights (nearly all of the 13B's parameters) are stored in fp8.
    linears = [m for m in c.transformer.transformer_blocks.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == FP8_STORAGE for m in linears)
    assert c.vae.use_tiling
    out = c.transformer(
        hidden_states=torch.randn(1, 2 * 2 * 2, 8),
        encoder_hidden_states=torch.randn(1, 3, 16),
        timestep=torch.tensor([500]),
        encoder_attention_mask=torch.ones(1, 3),
        num_frames=2, height=2, width=2,
    ).sample
    assert out.shape == (1, 8, 8) and torch.isfinite(out).all()


def test_offload_mode_returns_an_offloader_and_leaves_weights_in_bf16_or_given_dtype():
    c = _tiny_components()
    offloader = apply_placement(c, _placement("offload", "bf16", "full"), "cpu")
    assert isinstance(offloader, ModelOffloader)
    assert not c.vae.use_tiling
    assert all(p.dtype == torch.float32 for p in c.transformer.parameters())
    offloader.remove()
