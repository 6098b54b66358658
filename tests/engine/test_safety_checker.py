"""The safety checker: frame sampling and the max reduction, the label lookup, the real loader on tiny checkers built
in the published layout, where the weights are found, where the checker runs, and every path end to end through
the queue (flagged input, flagged output never stored, a normal completion, the check switched off)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltxserve.config import Settings
from ltxserve.engine.contract import ContentPolicyViolation
from ltxserve.engine.placement import Placement
from ltxserve.engine.safety_checker import (
    FOLDER_NAME,
    REQUIRED_FILES,
    SafetyChecker,
    SafetyCheckerMissing,
    SafetyGate,
    build_tiny_safety_checker,
    count_params,
    fits_beside,
    gpu_bytes,
    nsfw_label_index,
    resolve_folder,
    sample_frame_indices,
    tiny_safety_checker_folder,
    verdict,
)
from ltxserve.protocol import retryable

GiB = 1024**3


def png_uri(level: int, size: tuple[int, int] = (120, 80)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (level,) * 3).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def checkers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkers")
    return {v: build_tiny_safety_checker(root / v, verdict=v) for v in ("normal", "nsfw", "bright")}


# --- pure parts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames, count, expected", [
    (121, 8, [0, 17, 34, 51, 69, 86, 103, 120]),
    (9, 8, [0, 1, 2, 3, 5, 6, 7, 8]),
    (8, 8, list(range(8))),
    (5, 8, [0, 1, 2, 3, 4]),
    (121, 2, [0, 120]),
    (121, 1, [0]),
    (1, 8, [0]),
    (0, 8, []),
])
def test_frames_are_sampled_uniformly_first_and_last_included(frames, count, expected):
    assert sample_frame_indices(frames, count) == expected


def test_the_largest_score_decides_and_the_threshold_is_strict():
    v = verdict([0.1, 0.7, 0.3], 0.5, frames=[0, 60, 120])
    assert (v.score, v.flagged, v.frame, v.checked) == (0.7, True, 60, 3)
    assert not verdict([0.1, 0.7, 0.3], 0.7).flagged  # flagged only above the threshold, as fal's toolkit
    assert not verdict([0.2], 0.5).flagged and verdict([0.2], 0.0).flagged


@pytest.mark.parametrize("id2label, index", [
    ({0: "normal", 1: "nsfw"}, 1),
    ({"0": "NSFW", "1": "normal"}, 0),  # as JSON gives it: string keys; any case
    ({0: "safe", 1: "other", 2: "nsfw"}, 2),
])
def test_the_nsfw_index_is_read_from_the_labels(id2label, index):
    assert nsfw_label_index(id2label) == index


@pytest.mark.parametrize("id2label", [{0: "LABEL_0", 1: "LABEL_1"}, {0: "nsfw", 1: "nsfw"}])
def test_labels_without_exactly_one_nsfw_are_refused(id2label):
    with pytest.raises(ValueError, match="nsfw"):
        nsfw_label_index(id2label)


def test_content_policy_violation_is_a_fal_422_and_not_retryable():
    exc = ContentPolicyViolation("flagged", loc=("body", "image_url"), input="data:image/png;base64,AAAA")
    assert exc.status_code == 422
    [item] = exc.body()["detail"]
    assert item == {"loc": ["body", "image_url"], "msg": "flagged", "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors#content_policy_violation",
                    "input": "data:image/png;base64,AAAA", "categories": ["nsfw"]}
    assert retryable(exc.body()["detail"]) == "false"
    assert "input" not in ContentPolicyViolation("flagged output").body()["detail"][0]


# --- the model through the real loader ----------------------------------------------------------------------------


def test_tiny_checkers_are_saved_in_the_published_layout_and_load_with_transformers(checkers):
    for folder in checkers.values():
        assert {p.name for p in folder.iterdir()} >= set(REQUIRED_FILES)
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["ViTForImageClassification"]
        assert config["id2label"] == {"0": "normal", "1": "nsfw"}
    images = [np.full((40, 60, 3), level, np.uint8) for level in (0, 128, 255)]
    assert max(SafetyChecker.load(checkers["normal"]).scores(images)) < 1e-6
    assert min(SafetyChecker.load(checkers["nsfw"]).scores(images)) > 1 - 1e-6


def test_bright_checker_crosses_at_its_level_and_is_deterministic(checkers):
    checker = SafetyChecker.load(checkers["bright"])
    levels = [0, 20, 31, 128, 255]  # it crosses 0.5 at 10% brightness (25.5 of 255)
    scores = checker.scores([np.full((64, 64, 3), lv, np.uint8) for lv in levels])
    assert scores == sorted(scores) and scores[1] < 0.5 < scores[2]
    assert scores == checker.scores([np.full((64, 64, 3), lv, np.uint8) for lv in levels])
    pil = checker.check_image(Image.new("L", (50, 70), 255))  # any PIL mode is converted to RGB
    assert pil.flagged and pil.checked == 1


def test_the_label_index_comes_from_the_config_not_the_position(checkers, tmp_path):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in REQUIRED_FILES:
        (swapped / name).write_bytes((checkers["nsfw"] / name).read_bytes())
    config = json.loads((swapped / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "nsfw", "1": "normal"}, {"nsfw": 0, "normal": 1}
    (swapped / "config.json").write_text(json.dumps(config))
    checker = SafetyChecker.load(swapped)
    assert checker.nsfw_index == 0 and checker.scores([np.zeros((32, 32, 3), np.uint8)])[0] < 1e-6


def test_a_video_is_flagged_by_its_worst_sampled_frame(checkers):
    checker = SafetyChecker.load(checkers["bright"], frames=8)
    video = np.zeros((121, 32, 48, 3), np.uint8)
    assert not checker.check_frames(video).flagged
    video[103] = 200  # a sampled frame
    found = checker.check_frames(video)
    assert found.flagged and found.frame == 103 and found.checked == 8
    video[103], video[104] = 0, 200  # between two samples: not seen with 8 frames, seen with every frame
    assert not checker.check_frames(video).flagged
    assert SafetyChecker.load(checkers["bright"], frames=121).check_frames(video).frame == 104


def test_processor_pixels_are_unchanged_by_the_early_resize(checkers):
    checker = SafetyChecker.load(checkers["normal"])
    image = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    direct = checker.processor(images=[image], return_tensors="pt")["pixel_values"]
    early = checker.processor(images=[checker._model_size(image)], return_tensors="pt")["pixel_values"]
    assert torch.equal(direct, early)


# --- where the weights are and where the checker runs --------------------------------------------------------------


def _folder_with_checker(root: Path, source: Path) -> Path:
    (root / FOLDER_NAME).mkdir(parents=True)
    for name in REQUIRED_FILES:
        (root / FOLDER_NAME / name).write_bytes((source / name).read_bytes())
    return root / FOLDER_NAME


def test_weights_are_found_beside_the_model_then_in_the_weights_folder(checkers, tmp_path):
    settings = Settings(weights_dir=tmp_path / "weights")
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(SafetyCheckerMissing, match="ltxserve weights pull --component safety_checker"):
        resolve_folder(settings, str(model))
    in_weights = _folder_with_checker(tmp_path / "weights", checkers["normal"])
    assert resolve_folder(settings, str(model)) == in_weights
    assert resolve_folder(settings, str(model / "ltxv.safetensors")) == in_weights  # a model file: its folder
    beside = _folder_with_checker(model, checkers["normal"])
    assert resolve_folder(settings, str(model)) == beside
    assert resolve_folder(settings, "tiny") == tiny_safety_checker_folder()
    assert resolve_folder(Settings(safety_checker="off"), "tiny") is None
    assert resolve_folder(Settings(safety_checker=str(checkers["nsfw"])), str(model)) == checkers["nsfw"]
    with pytest.raises(SafetyCheckerMissing, match="model.safetensors"):
        resolve_folder(Settings(safety_checker=str(tmp_path)), "tiny")


def _placement(free_gib: float, peak_gib: float) -> Placement:
    return Placement(memory="gpu", dtype="bf16", vae_decode="full", peak_bytes=int(peak_gib * GiB),
                     free_bytes=int(free_gib * GiB))


def test_the_checker_goes_to_the_gpu_only_where_the_plan_leaves_room():
    need = gpu_bytes(count_params(), 8)
    assert count_params() == 85_800_194  # ViT-base/16 with two labels, counted from the shipped configuration
    assert 0.15 * GiB < need < 0.3 * GiB
    assert fits_beside(_placement(47.5, 45.1), need) and not fits_beside(_placement(23.5, 23.4), need)
    settings = Settings(safety_checker="tiny")
    cuda = torch.device("cuda")  # nothing is loaded: only the choice is made
    roomy = _placement(47.5, 45.1)
    gate, planned = SafetyGate.for_endpoint(settings, "tiny", cuda, torch.bfloat16, roomy)
    assert gate.device.type == "cuda" and gate.dtype == torch.bfloat16
    assert planned.free_bytes == roomy.free_bytes - need  # every request is planned with the checker in place
    tight = _placement(23.5, 23.4)
    gate, planned = SafetyGate.for_endpoint(settings, "tiny", cuda, torch.bfloat16, tight)
    assert gate.device.type == "cpu" and gate.dtype == torch.float32 and planned == tight  # the model keeps it all
    gate, planned = SafetyGate.for_endpoint(Settings(safety_checker="off"), "tiny", cuda, torch.bfloat16, roomy)
    assert not gate.enabled and planned == roomy


# --- offline: `ltxserve generate` ------------------------------------------------------------------------------------


def test_generate_refuses_a_flagged_input_and_writes_no_file(checkers, tmp_path, capsys):
    from ltxserve.cli import main

    image = tmp_path / "white.png"
    Image.new("RGB", (96, 64), (255,) * 3).save(image)
    out = tmp_path / "out.mp4"
    args = ["generate", "--image", str(image), "--prompt", "x", "--num-frames", "9", "--width", "96", "--height",
            "64", "--first-pass-steps", "2", "--first-pass-skip-final-steps", "0", "--second-pass-steps", "2",
            "--second-pass-skip-initial-steps", "1", "--model", "tiny", "--device", "cpu",
            "--safety-checker", str(checkers["bright"]), "-o", str(out)]
    assert main(args) == 1
    assert "flagged by the safety checker" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--no-safety-checker"]) == 0 and out.exists()


# --- end to end through the queue ----------------------------------------------------------------------------------

ENDPOINT = "fal-ai/ltx-video-13b-dev/image-to-video"
REQUEST = {"prompt": "a ball", "seed": 3, "num_frames": 9, "width": 96, "height": 64,
           "first_pass_num_inference_steps": 2, "first_pass_skip_final_steps": 0,
           "second_pass_num_inference_steps": 2, "second_pass_skip_initial_steps": 1}
DARK, BRIGHT = png_uri(0), png_uri(255)  # the tiny model's output is mid-grey noise: flagged by the bright checker


@pytest.fixture(scope="module")
def bright_server(tmp_path_factory):
    """The tiny model with the 'bright' checker, over TLS for the official client."""
    from ltxserve.tls import init_tls
    from tests.fixtures_server import LTX_ENDPOINT_SPEC, LiveServer, free_port

    root = tmp_path_factory.mktemp("safety")
    folder = build_tiny_safety_checker(root / "bright", verdict="bright")
    init_tls(root / "tls")
    server = LiveServer(data_dir=root / "data", port=free_port(), endpoints=[LTX_ENDPOINT_SPEC],
                        tls_dir=root / "tls", extra_args=["--model", "tiny", "--safety-checker", str(folder)])
    server.start()
    yield server
    server.stop()


def _stored(server) -> list[Path]:
    files = server.data_dir / "files"
    return sorted(p for p in files.rglob("*") if p.is_file()) if files.exists() else []


def test_flagged_input_is_a_422_content_policy_violation_through_fal_client(bright_server):
    from tests.clients.conftest_helpers import run_py

    before = _stored(bright_server)
    out = run_py("failure_detail", bright_server, ENDPOINT, {**REQUEST, "image_url": BRIGHT})
    assert out["raised"] and out["status"] == 422 and out["retryable"] == "false", out
    [item] = out["detail"]
    assert item["loc"] == ["body", "image_url"] and item["type"] == "content_policy_violation"
    assert item["categories"] == ["nsfw"] and BRIGHT.startswith(item["input"].removesuffix("..."))
    assert item["url"].endswith("#content_policy_violation")
    assert _stored(bright_server) == before


def test_flagged_output_is_a_422_and_is_not_stored(bright_server):
    from tests.api.helpers import submit, wait_completed

    before = _stored(bright_server)
    with bright_server.client() as c:
        sub = submit(c, ENDPOINT, {**REQUEST, "image_url": DARK})
        done = wait_completed(c, sub["status_url"], timeout=120)
        messages = [line["message"] for line in done["logs"]]
        assert any(m.startswith("safety checker: input image p(nsfw)") and "passed" in m for m in messages), messages
        assert any(m.startswith("safety checker: output video p(nsfw)") and "flagged" in m for m in messages)
        assert "pass 2 step 1/1" in messages  # it was generated, then refused
        r = c.get(sub["response_url"])
        assert r.status_code == 422 and r.headers["x-fal-retryable"] == "false"
        [item] = r.json()["detail"]
        assert item["loc"] == ["body"] and item["type"] == "content_policy_violation" and "input" not in item
    assert _stored(bright_server) == before  # no output file for that request


def test_enable_safety_checker_false_skips_both_checks(bright_server):
    from tests.api.helpers import submit, wait_completed

    with bright_server.client() as c:
        sub = submit(c, ENDPOINT, {**REQUEST, "image_url": BRIGHT, "enable_safety_checker": False})
        done = wait_completed(c, sub["status_url"], timeout=120)
        assert done["error"] is None, done
        messages = [line["message"] for line in done["logs"]]
        assert "safety checker: skipped (enable_safety_checker is false)" in messages
        assert not any("p(nsfw)" in m for m in messages)
        assert c.get(sub["response_url"]).json()["video"]["content_type"] == "video/mp4"


def test_a_request_that_passes_both_checks_completes(ltx_server):
    from tests.api.helpers import submit, wait_completed

    with ltx_server.client() as c:  # --model tiny: the tiny checker, which passes every image
        sub = submit(c, ENDPOINT, {**REQUEST, "image_url": BRIGHT})
        done = wait_completed(c, sub["status_url"], timeout=120)
        assert done["error"] is None, done
        checks = [line["message"] for line in done["logs"] if line["message"].startswith("safety checker:")]
        assert len(checks) == 2 and all("passed" in m for m in checks), checks
        assert c.get(sub["response_url"]).json()["video"]["content_type"] == "video/mp4"


def test_doctor_says_where_the_checker_would_run(monkeypatch, tmp_path):
    import argparse

    from ltxserve import doctor

    monkeypatch.setattr(doctor, "read_meminfo", lambda: doctor.HostMemory(128 * GiB, 120 * GiB))
    parser = argparse.ArgumentParser(prog="ltxserve")
    doctor.add_doctor_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor"])
    outputs = {}
    for name, gpus in (("gpu", [doctor.GpuInfo(0, "NVIDIA Test", 80 * GiB, int(79.5 * GiB), (9, 0))]), ("cpu", [])):
        monkeypatch.setattr(doctor, "probe_gpus", lambda gpus=gpus: gpus)
        monkeypatch.setattr(doctor, "driver_version", lambda: "1")
        lines: list[str] = []
        args.func(args, Settings(weights_dir=tmp_path / "w"), lines.append)
        outputs[name] = [line for line in lines if "safety checker (Falconsai/nsfw_image_detection" in line]
    # an 80 GB card keeps the 13B resident with room to spare (the tight case: test_the_checker_goes_to_the_gpu...)
    [gpu] = outputs["gpu"]
    assert "85.8M parameters" in gpu and gpu.endswith("on the GPU beside the model")
    [cpu] = outputs["cpu"]
    assert cpu.endswith("on the GPU when the plan leaves that much free, else on the CPU")


def test_a_served_model_without_its_checker_stops_at_start_and_off_says_so_per_request(tmp_path):
    from ltxserve.engine.endpoint import ImageToVideoEndpoint
    from ltxserve.engine.schema import ImageToVideoInput
    from tests.fixtures_models import REFERENCE_CHECKPOINT

    settings = Settings(model=str(REFERENCE_CHECKPOINT), device="cpu", dtype="fp32", weights_dir=tmp_path / "w",
                        data_dir=tmp_path / "d")
    with pytest.raises(SafetyCheckerMissing, match="ltxserve weights pull --component safety_checker"):
        ImageToVideoEndpoint(settings)
    endpoint = ImageToVideoEndpoint(settings.model_copy(update={"safety_checker": "off"}))

    class Refused(Exception):
        pass

    class Ctx:
        request_id = "r"

        def __init__(self) -> None:
            self.lines: list[tuple[str, str]] = []

        def log(self, message: str, level: str = "INFO") -> None:
            self.lines.append((level, message))
            if message.startswith(ENDPOINT_PLAN_LINE):
                raise Refused  # stop once the checks are past: only the checker's lines matter here

        def progress(self, *a) -> None:
            pass

        def cancelled(self) -> bool:
            return False

    ctx = Ctx()
    with pytest.raises(Refused):
        endpoint.generate(ImageToVideoInput(prompt="x", image_url=BRIGHT, **{k: v for k, v in REQUEST.items()
                                                                            if k != "prompt"}), ctx)
    assert ("WARN", "enable_safety_checker: this server runs no safety checker (--safety-checker off)") in ctx.lines


ENDPOINT_PLAN_LINE = "96x64, 9 frames"


def test_weights_import_lays_the_checker_out_where_the_server_finds_it(checkers, tmp_path):
    import argparse

    from ltxserve.weights.cli import add_weights_arguments
    from ltxserve.weights.lock import default_lock_path, load_lock

    lock_path = tmp_path / "weights.lock"
    lock_path.write_bytes(default_lock_path().read_bytes())  # a copy: import records the hashes it learns
    snapshot = tmp_path / "snapshot"  # the repository's own layout, as `huggingface-cli download` leaves it
    snapshot.mkdir()
    for name in REQUIRED_FILES:
        (snapshot / name).write_bytes((checkers["bright"] / name).read_bytes())
    settings = Settings(weights_dir=tmp_path / "w", weights_lock=lock_path)
    parser = argparse.ArgumentParser(prog="ltxserve")
    add_weights_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", "import", str(snapshot), "--component", "safety_checker"])
    lines: list[str] = []
    assert args.func(args, settings, lines.append) == 0, lines
    recorded = load_lock(lock_path).component("safety_checker")
    assert all(f.hash_known and not f.verified for f in recorded.files)  # trust on first use, not "verified"
    found = resolve_folder(settings, str(tmp_path / "some-model"))
    assert found == tmp_path / "w" / FOLDER_NAME
    assert SafetyChecker.load(found).check_image(Image.new("RGB", (8, 8), (255,) * 3)).flagged
