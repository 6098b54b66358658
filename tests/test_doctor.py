"""`ltxserve doctor` on this (CPU) machine, and with a GPU probe that reports stated cards."""

from __future__ import annotations

import argparse

import pytest

from ltxserve import doctor
from ltxserve.config import Settings
from ltxserve.engine.placement import GiB


def _run(argv: list[str], settings: Settings) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="ltxserve")
    doctor.add_doctor_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *argv])
    lines: list[str] = []
    code = args.func(args, settings, lines.append)
    return code, "\n".join(lines)


@pytest.fixture
def settings(tmp_path):
    return Settings(weights_dir=tmp_path / "weights")


def test_cpu_machine_says_what_it_would_do(monkeypatch, settings):
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [])
    code, out = _run([], settings)
    assert code == 1
    assert "no CUDA GPU" in out and "TINY" in out
    for gb in doctor.REFERENCE_CARDS_GB:
        assert f"{gb:>3} GB card:" in out
    assert "80 GB card: gpu" in out
    assert "missing" in out and "ltxv-13b-0.9.7-dev.safetensors" in out
    assert "no pinned revision" not in out  # the shipped lock pins every component
    assert "not yet confirmed with the Hub" in out


def test_gpu_machine_prints_the_plan(monkeypatch, settings):
    fake = doctor.GpuInfo(0, "NVIDIA Test 48GB", 48 * GiB, int(47.5 * GiB), (8, 9))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: "999.1")
    code, out = _run([], settings)
    assert "NVIDIA Test 48GB" in out and "999.1" in out and "47.5 GiB free" in out
    assert "memory placement: offload" in out
    assert code == 1  # the weights are missing


def test_too_small_gpu_names_the_smallest_card(monkeypatch, settings):
    fake = doctor.GpuInfo(0, "Small", 12 * GiB, int(11.5 * GiB), (8, 6))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: None)
    _, out = _run([], settings)
    assert "smallest card that works is a 16 GB card" in out
    _, out = _run(["--width", "848", "--height", "480"], settings)
    assert "memory placement: sequential" in out


def test_explicit_memory_flag_is_used(monkeypatch, settings):
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [])
    _, out = _run(["--memory", "sequential"], settings)
    assert "80 GB card: sequential" in out
