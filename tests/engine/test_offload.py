"""Applying a placement: residents stay, visitors swap, host copies are never copied back, VAE tiling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from torch import nn

from ltxserve.engine.offload import HostCopies, ModelOffloader, apply_placement
from ltxserve.engine.placement import Placement


def test_offloader_keeps_one_visitor_on_the_device():
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


def test_residents_stay_and_the_visitor_leaves_when_a_resident_starts():
    modules = {"text_encoder": nn.Linear(2, 2), "transformer": nn.Linear(2, 2), "vae": nn.Linear(2, 2)}
    moves: list[tuple[str, str]] = []
    names = {id(m): n for n, m in modules.items()}
    offloader = ModelOffloader(modules, "cuda", move=lambda m, d: moves.append((names[id(m)], d.type)),
                               resident=("transformer", "vae"))
    assert moves == [("transformer", "cuda"), ("vae", "cuda")]  # moved once, at placement
    x = torch.zeros(1, 2)
    modules["text_encoder"](x)
    modules["transformer"](x)  # T5 goes home; the transformer does not move
    modules["vae"](x)
    modules["transformer"](x)
    assert moves[2:] == [("text_encoder", "cuda"), ("text_encoder", "cpu")]
    assert offloader.active is None


def test_host_copies_are_reused_not_copied_back():
    layer = nn.Linear(4, 4)
    host_weight = layer.weight.data
    copies = HostCopies(layer, torch.device("cpu"))
    assert layer.weight.data.data_ptr() == host_weight.data_ptr()  # on the host already: kept, not cloned
    copies.to_device()
    copies.to_host()
    assert layer.weight.data.data_ptr() == host_weight.data_ptr()  # pointed back at the host copy, no copy made


@dataclass
class _Components:
    text_encoder: nn.Module
    transformer: nn.Module
    latent_upsampler: nn.Module
    vae: nn.Module
    dtype: torch.dtype
    device: torch.device = torch.device("cpu")


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


def _placement(memory: str, decode: str, resident: tuple[str, ...] = ()) -> Placement:
    return Placement(memory=memory, dtype="bf16", vae_decode=decode, peak_bytes=0, free_bytes=0,  # type: ignore[arg-type]
                     resident=resident)


def test_offload_mode_returns_an_offloader_with_the_placements_residents():
    c = _tiny_components()
    offloader = apply_placement(c, _placement("offload", "tiled", ("transformer", "vae")), "cpu")
    assert isinstance(offloader, ModelOffloader)
    assert offloader.resident == ("transformer", "vae")
    assert not c.vae.use_tiling  # tiling is chosen per request (memory_plan.apply_request_plan), not by placement
    assert c.device == torch.device("cpu")
    offloader.remove()


def test_gpu_mode_has_no_offloader_and_full_decode():
    c = _tiny_components()
    assert apply_placement(c, _placement("gpu", "full"), "cpu") is None
    assert not c.vae.use_tiling
