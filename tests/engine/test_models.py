"""Loading through the real file layouts: the reference-built checkpoint, and ltxserve's own writes of both layouts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltxserve.engine.models import CHECKPOINT_NAME, CheckpointError, load_components
from tests.fixtures_models import REFERENCE_CHECKPOINT


def _outputs(c):
    """One forward of every component on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        tokens = torch.randn(2, 6, 16, generator=g)
        coords = torch.rand(2, 3, 6, generator=g) * 64
        text = torch.randn(2, 5, 32, generator=g)
        tr = c.transformer(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.full((2, 6), 500.0),
                           encoder_attention_mask=torch.ones(2, 5), video_coords=coords, return_dict=False)[0]
        video = torch.rand(1, 3, 9, 64, 96, generator=g) * 2 - 1
        mode = c.vae.encode(video).latent_dist.mode()
        dec = c.vae.decode(torch.randn(1, 16, 2, 2, 3, generator=g), temb=torch.tensor([0.05])).sample
        up = c.latent_upsampler(torch.randn(1, 16, 2, 2, 3, generator=g))
        ids = c.tokenizer(["a cat walks"], return_tensors="pt")
        te = c.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)[0]
    return [tr, mode, dec, up, te, c.vae.latents_mean, c.vae.latents_std]


@pytest.mark.skipif(not REFERENCE_CHECKPOINT.exists(),
                    reason="reference-built checkpoint absent: run scripts/make_reference_fixtures.py")
def test_reference_built_checkpoint_loads_strictly():
    """A checkpoint ltxserve did not write: built and saved by the reference package's own classes."""
    c = load_components(REFERENCE_CHECKPOINT)
    assert c.transformer.config.num_layers == 48 and c.vae.config.latent_channels == 16
    with safe_open(REFERENCE_CHECKPOINT / CHECKPOINT_NAME, "pt") as f:
        mean = f.get_tensor("vae.per_channel_statistics.mean-of-means")
    torch.testing.assert_close(c.vae.latents_mean, mean)
    assert c.scheduler_config["sampler"] == "LinearQuadratic"


@pytest.mark.parametrize("layout", ["tiny_original_checkpoint", "tiny_diffusers_checkpoint"])
def test_round_trip_through_each_layout(layout, tiny_components, request):
    loaded = load_components(request.getfixturevalue(layout))
    for a, b in zip(_outputs(tiny_components), _outputs(loaded)):
        # Same weights; tensors assigned from the file may differ in memory layout from freshly built ones, which
        # can change the order of float sums in the 3-D convolutions (seen: 1e-5 on the decoded video).
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not REFERENCE_CHECKPOINT.exists(),
                    reason="reference-built checkpoint absent: run scripts/make_reference_fixtures.py")
def test_original_layout_is_what_the_reference_reads(tiny_original_checkpoint):
    with safe_open(tiny_original_checkpoint / CHECKPOINT_NAME, "pt") as f:
        keys = set(f.keys())
        config = json.loads(f.metadata()["config"])
    assert {"transformer", "vae", "scheduler"} <= set(config)
    assert config["vae"]["_class_name"] == "CausalVideoAutoencoder"
    assert "model.diffusion_model.patchify_proj.weight" in keys
    assert "vae.per_channel_statistics.std-of-means" in keys
    assert "vae.decoder.last_scale_shift_table" in keys
    assert "vae.encoder.down_blocks.1.conv.conv.weight" in keys  # the first downsampler, reference numbering
    with safe_open(REFERENCE_CHECKPOINT / CHECKPOINT_NAME, "pt") as f:
        reference_keys = set(f.keys())
    assert {k for k in keys if k.startswith("vae.") and "per_channel" not in k} == \
        {k for k in reference_keys if k.startswith("vae.") and "per_channel" not in k}


def test_mismatched_keys_are_named(tiny_original_checkpoint, tmp_path):
    import shutil

    shutil.copytree(tiny_original_checkpoint, tmp_path / "broken")
    path = tmp_path / "broken" / CHECKPOINT_NAME
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors.pop("model.diffusion_model.transformer_blocks.7.attn1.to_q.weight")
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.7\.attn1\.to_q\.weight"):
        load_components(tmp_path / "broken")


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_components(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        load_components(tmp_path / "empty")


@pytest.mark.parametrize("placement", ["upscaler_repo_folder", "original_file"])
def test_diffusers_layout_finds_the_separately_published_upsampler(placement, tiny_components,
                                                                   tiny_diffusers_checkpoint, tiny_original_checkpoint,
                                                                   tmp_path):
    """Lightricks publish the upscaler apart from the pipeline; the diffusers layout accepts it in its two forms."""
    import shutil

    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_diffusers_checkpoint, folder)
    moved = folder / "latent_upsampler"
    if placement == "upscaler_repo_folder":
        shutil.move(moved, folder / "ltxv-spatial-upscaler-0.9.7" / "latent_upsampler")
    else:
        shutil.rmtree(moved)
        shutil.copy(tiny_original_checkpoint / "ltxv-spatial-upscaler-0.9.7.safetensors", folder)
    loaded = load_components(folder)
    latents = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded.latent_upsampler(latents), tiny_components.latent_upsampler(latents))
    shutil.rmtree(folder / "ltxv-spatial-upscaler-0.9.7", ignore_errors=True)
    (folder / "ltxv-spatial-upscaler-0.9.7.safetensors").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="latent_upsampler"):
        load_components(folder)
