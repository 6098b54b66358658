"""`ltxserve doctor` on this (CPU) machine, and with a GPU probe that reports stated cards."""

from __future__ import annotations

import argparse

import pytest

from ltxserve import doctor
from ltxserve.config import Settings
from ltxserve.engine.placement import GiB


READ_MEMINFO = doctor.read_meminfo


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


@pytest.fixture(autouse=True)
def roomy_host(monkeypatch):
    """A host with plenty of RAM unless a test states another (this machine's own must not decide)."""
    monkeypatch.setattr(doctor, "read_meminfo", lambda: doctor.HostMemory(128 * GiB, 120 * GiB))


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
    fake = doctor.GpuInfo(0, "NVIDIA Test 40GB", 40 * GiB, int(39.5 * GiB), (8, 9))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: "999.1")
    code, out = _run([], settings)
    assert "NVIDIA Test 40GB" in out and "999.1" in out and "39.5 GiB free" in out
    assert "memory placement: offload" in out and "visiting the GPU for their stage: text_encoder" in out
    assert code == 1  # the weights are missing


def test_too_small_gpu_names_the_smallest_card(monkeypatch, settings):
    fake = doctor.GpuInfo(0, "Small", 8 * GiB, int(7.5 * GiB), (8, 6))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: None)
    _, out = _run([], settings)
    assert "smallest card that works is a 12 GB card" in out
    _, out = _run(["--width", "848", "--height", "480"], settings)
    assert "memory placement: sequential" in out


def test_explicit_memory_flag_is_used(monkeypatch, settings):
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [])
    _, out = _run(["--memory", "sequential"], settings)
    assert "80 GB card: sequential" in out


MEMINFO = """MemTotal:       {total} kB
MemFree:         1000000 kB
MemAvailable:   {available} kB
Buffers:          100000 kB
"""


def test_meminfo_is_read(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO.format(total=32 * 1024**2, available=20 * 1024**2))
    host = READ_MEMINFO(path)
    assert host == doctor.HostMemory(32 * GiB, 20 * GiB)
    assert READ_MEMINFO(tmp_path / "absent") is None


def test_a_32_gb_desktop_is_told_what_it_can_run(monkeypatch, settings, tmp_path):
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO.format(total=int(31.3 * 1024**2), available=int(28 * 1024**2)))
    real_read = READ_MEMINFO
    monkeypatch.setattr(doctor, "read_meminfo", lambda: real_read(path))
    fake = doctor.GpuInfo(0, "NVIDIA GeForce RTX 4090", 24 * GiB, int(23.5 * GiB), (8, 9))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: "999.1")
    _, out = _run([], settings)
    assert "this machine: 31.3 GiB RAM, 28.0 GiB available" in out
    rows = {line.split("~")[0].strip(): line for line in out.splitlines() if "GiB: " in line and "~" in line}
    # bf16 sequential keeps every weight (~36 GiB) in host memory: more than 31.3 GiB; fp8 sequential does not.
    assert "needs more RAM" in rows["sequential, bf16"] and rows["sequential, fp8"].endswith("fits")
    assert rows["gpu (all resident), bf16"].endswith("fits")
    # The 24 GB card keeps the fp8 transformer resident; T5 and the VAE visit, and the host has room for them.
    assert "memory placement: offload" in out and "transformer weights: fp8" in out
    assert "the chosen placement (offload) needs" in out and "GiB of host RAM: fits" in out


@pytest.mark.parametrize("ram_gb, weights", [(64, "bf16"), (31.3, "fp8")])
def test_host_memory_decides_what_a_small_card_streams(monkeypatch, settings, tmp_path, ram_gb, weights):
    """A 12 GB card streams the weights block by block; bf16 streaming keeps ~39 GiB in host memory, so a 32 GB
    desktop streams fp8 weights instead and a 64 GB one streams bf16."""
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO.format(total=int(ram_gb * 1024**2), available=int((ram_gb - 4) * 1024**2)))
    real_read = READ_MEMINFO
    monkeypatch.setattr(doctor, "read_meminfo", lambda: real_read(path))
    fake = doctor.GpuInfo(0, "NVIDIA RTX A2000", 12 * GiB, int(11.5 * GiB), (8, 6))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: None)
    _, out = _run([], settings)
    assert "memory placement: sequential" in out and f"transformer weights: {weights}" in out
    assert "the chosen placement (sequential) needs" in out and "GiB of host RAM: fits" in out


def test_too_little_host_memory_for_any_placement_is_not_ready(monkeypatch, settings, tmp_path):
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO.format(total=8 * 1024**2, available=6 * 1024**2))
    real_read = READ_MEMINFO
    monkeypatch.setattr(doctor, "read_meminfo", lambda: real_read(path))
    fake = doctor.GpuInfo(0, "NVIDIA GeForce RTX 4090", 24 * GiB, int(23.5 * GiB), (8, 9))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: None)
    code, out = _run([], settings)
    assert code == 1
    assert "more weights in host memory than this machine's 8 GiB of RAM" in out


def test_prompt_enhancer_section_says_whether_expand_prompt_can_run(monkeypatch, settings):
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [])
    _, out = _run([], settings)
    section = out.split("Prompt enhancer (expand_prompt; optional)")[1]
    assert "not available" in section and "weights pull --component prompt_captioner --component prompt_llm" in section
    assert "80 GB card: gpu" in section and "48 GB card: visit" in section
    fake = doctor.GpuInfo(0, "NVIDIA Test 48GB", 48 * GiB, int(47.5 * GiB), (8, 9))
    monkeypatch.setattr(doctor, "probe_gpus", lambda: [fake])
    monkeypatch.setattr(doctor, "driver_version", lambda: "999.1")
    _, out = _run([], settings)
    assert "moved onto the GPU only while it runs" in out.split("Prompt enhancer")[1]
