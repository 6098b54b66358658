"""Every request is planned against the GPU's placement: what fits gets its VAE tiling, what cannot fit is refused
with a 422 naming the largest size that would, before any work on the model."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.endpoint import ImageToVideoEndpoint
from ltxserve.engine.memory_plan import RequestTooLarge
from ltxserve.engine.placement import card_free_bytes, count_model_sizes, plan_placement
from ltxserve.engine.schema import ImageToVideoInput

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "reference"


class _Log:
    request_id = "test"

    def __init__(self):
        self.lines: list[str] = []

    def log(self, message: str, level: str = "INFO") -> None:
        self.lines.append(message)

    def progress(self, step: int, total: int, stage: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    settings = Settings(model=str(FIXTURES / "checkpoint"), device="cpu", dtype="fp32", safety_checker="tiny",
                        data_dir=tmp_path_factory.mktemp("memory-data"))
    e = ImageToVideoEndpoint(settings)
    # The tiny model on the CPU stands in; the plan is the one a 24 GB card gets for the real 13B.
    e.placement = plan_placement(card_free_bytes(24), count_model_sizes())
    return e


def _input(**fields) -> ImageToVideoInput:
    uri = "data:image/png;base64," + base64.b64encode((FIXTURES / "image_landscape.png").read_bytes()).decode()
    base = dict(prompt="a dog", seed=1, num_frames=9, first_pass_num_inference_steps=2, first_pass_skip_final_steps=1,
                second_pass_num_inference_steps=2, second_pass_skip_initial_steps=1)
    return ImageToVideoInput(image_url=uri, **{**base, **fields})


def test_a_request_that_cannot_fit_is_refused_before_any_model_work(endpoint, monkeypatch):
    import ltxserve.engine.endpoint as module

    monkeypatch.setattr(module, "generate_frames", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(RequestTooLarge) as refused:
        endpoint.generate(_input(num_frames=1441, resolution="720p"), _Log())
    error = refused.value
    assert isinstance(error, InputError)  # the worker turns it into fal's 422
    assert "does not fit this GPU" in str(error) and "the largest this GPU can run" in str(error)
    assert error.largest_fitting is not None and error.largest_fitting.num_frames == 1441
    assert error.longest_fitting is not None and error.longest_fitting.num_frames < 1441


def test_a_request_that_fits_gets_its_plan_and_runs(endpoint):
    log = _Log()
    video = endpoint.generate(_input(), log, width=96, height=64)
    assert video.frames.shape == (9, 64, 96, 3)
    assert any("decode at" in line and "estimated peak" in line for line in log.lines), log.lines
