"""Tiny-model fixtures: the real classes with random weights, saved in the real file layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE_CHECKPOINT = Path(__file__).resolve().parent / "fixtures" / "reference" / "checkpoint"


@pytest.fixture(scope="session")
def tiny_components():
    from ltxserve.engine.models import build_tiny_components

    return build_tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_original_checkpoint(tiny_components, tmp_path_factory) -> Path:
    from ltxserve.engine.models import save_original_layout

    folder = tmp_path_factory.mktemp("original")
    save_original_layout(tiny_components, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_diffusers_checkpoint(tiny_components, tmp_path_factory) -> Path:
    from ltxserve.engine.models import save_diffusers_layout

    folder = tmp_path_factory.mktemp("diffusers")
    save_diffusers_layout(tiny_components, folder)
    return folder
