"""`ltxserve generate` end to end on the tiny model: mp4 and frames written, batch from JSONL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from tests.fixtures_models import REFERENCE_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
IMAGE = REFERENCE_CHECKPOINT.parent / "image_landscape.png"
FAST = ["--first-pass-steps", "6", "--first-pass-skip-final-steps", "1", "--second-pass-steps", "6",
        "--second-pass-skip-initial-steps", "3"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltxserve.cli", "generate", "--model", "tiny", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_single_request_writes_mp4_and_frames(tmp_path):
    r = _run("--image", str(IMAGE), "--prompt", "a dog", "--seed", "3", "--width", "96", "--height", "64",
             "--num-frames", "10", "--frame-rate", "12", *FAST, "-o", str(tmp_path / "a.mp4"),
             "--frames-out", str(tmp_path / "a.npy"))
    assert r.returncode == 0, r.stderr
    frames = np.load(tmp_path / "a.npy")
    assert frames.shape == (10, 64, 96, 3) and frames.dtype == np.uint8
    with av.open(str(tmp_path / "a.mp4")) as c:
        s = c.streams.video[0]
        assert len(list(c.decode(s))) == 10 and (s.width, s.height) == (96, 64) and s.average_rate == 12
    assert "seed=3" in r.stdout


def test_batch_from_jsonl(tmp_path):
    base = {"prompt": "x", "image_url": str(IMAGE), "num_frames": 9, "width": 64, "height": 64,
            "first_pass_num_inference_steps": 4, "first_pass_skip_final_steps": 1,
            "second_pass_num_inference_steps": 4, "second_pass_skip_initial_steps": 2}
    lines = [json.dumps({**base, "seed": 1, "output": "one.mp4"}), json.dumps({**base, "seed": 2})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines))
    r = _run("--batch", str(tmp_path / "b.jsonl"), "--output-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one.mp4").stat().st_size > 0 and (tmp_path / "video_0002.mp4").stat().st_size > 0


def test_invalid_request_is_refused_before_loading(tmp_path):
    r = _run("--image", str(IMAGE), "--prompt", "x", "--first-pass-steps", "3", "--first-pass-skip-final-steps",
             "3", "-o", str(tmp_path / "x.mp4"))
    assert r.returncode == 2 and "first_pass_skip_final_steps" in r.stderr


def test_expand_prompt_is_honoured_offline(tmp_path):
    common = ["--image", str(IMAGE), "--prompt", "a dog", "--seed", "3", "--width", "64", "--height", "64",
              "--num-frames", "9", *FAST, "--data-dir", str(tmp_path / "data"), "--prompt-enhancer-caption-tokens", "8",
              "--prompt-enhancer-max-tokens", "12"]
    expanded = _run(*common, "--expand-prompt", "-o", str(tmp_path / "e.mp4"), "--frames-out", str(tmp_path / "e.npy"))
    assert expanded.returncode == 0, expanded.stderr
    line = next(x for x in expanded.stdout.splitlines() if x.startswith("  prompt: "))
    assert line != "  prompt: a dog"
    plain = _run(*common, "-o", str(tmp_path / "p.mp4"), "--frames-out", str(tmp_path / "p.npy"))
    assert plain.returncode == 0 and "prompt:" not in plain.stdout
    assert not np.array_equal(np.load(tmp_path / "e.npy"), np.load(tmp_path / "p.npy"))  # generated from the expansion
