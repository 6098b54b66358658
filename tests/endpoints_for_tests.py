"""Test-only endpoints: cheap, but they really transform their input and write real files.

Served by the live-server fixture with `--endpoint tests.endpoints_for_tests:ECHO` etc.; the worker process imports
them by that path.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from pathlib import Path

import httpx
from PIL import Image, ImageOps
from pydantic import BaseModel, Field

from ltxserve.engine.contract import EndpointError, EndpointSpec, InputError, JobCancelled
from ltxserve.protocol import File


def _fetch(url: str) -> bytes:
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        return base64.b64decode(payload) if ";base64" in header else payload.encode()
    response = httpx.get(url, timeout=10, verify=False)
    response.raise_for_status()
    return response.content


class EchoInput(BaseModel):
    image_url: str = Field(description="http(s) URL or data: URI of an image")
    text: str = Field(min_length=1)
    repeat: int = Field(default=1, ge=1, le=10)


class EchoOutput(BaseModel):
    image: File
    text: str
    width: int
    height: int


class EchoImage:
    """Inverts the image and repeats the text."""

    endpoint_id = "test/echo-image"
    input_model = EchoInput

    def __init__(self, settings):
        self.settings = settings

    def run(self, inp: EchoInput, ctx) -> EchoOutput:
        try:
            image = Image.open(io.BytesIO(_fetch(inp.image_url))).convert("RGB")
        except Exception as exc:
            raise InputError(f"Could not read image_url: {exc}", loc=("body", "image_url"))
        ctx.log(f"image {image.width}x{image.height}")
        out = io.BytesIO()
        ImageOps.invert(image).save(out, format="PNG")
        f = ctx.save_file(out.getvalue(), "inverted.png", "image/png")
        return EchoOutput(image=f, text=inp.text * inp.repeat, width=image.width, height=image.height)


class StepsInput(BaseModel):
    steps: int = Field(default=5, ge=1, le=10_000)
    seconds_per_step: float = Field(default=0.05, ge=0, le=5)
    label: str = "job"


class StepsOutput(BaseModel):
    label: str
    steps_done: int
    report: File


class Steps:
    """Counts steps with progress and logs, checking for cancellation between steps, and writes a report."""

    endpoint_id = "test/steps"
    input_model = StepsInput

    def __init__(self, settings):
        self.settings = settings

    def run(self, inp: StepsInput, ctx) -> StepsOutput:
        lines = []
        for i in range(1, inp.steps + 1):
            if ctx.cancelled():
                raise JobCancelled()
            time.sleep(inp.seconds_per_step)
            ctx.progress(i, inp.steps, "steps")
            ctx.log(f"{inp.label} step {i}/{inp.steps}")
            lines.append(f"{inp.label}:{i}")
        report = ctx.save_file("\n".join(lines).encode(), "report.txt", "text/plain")
        return StepsOutput(label=inp.label, steps_done=inp.steps, report=report)


class FailInput(BaseModel):
    kind: str = Field(default="endpoint", pattern="^(endpoint|input|bug)$")


class FailOutput(BaseModel):
    never: str


class Fail:
    endpoint_id = "test/fail"
    input_model = FailInput

    def __init__(self, settings):
        self.settings = settings

    def run(self, inp: FailInput, ctx) -> FailOutput:
        if inp.kind == "input":
            raise InputError("image_url could not be decoded", loc=("body", "image_url"))
        if inp.kind == "bug":
            raise ZeroDivisionError("oops")
        raise EndpointError("the generator gave up")


class CrashInput(BaseModel):
    times: int = Field(default=1, ge=0, le=5, description="how many attempts die before one succeeds")
    token: str = Field(description="names the marker file that counts attempts")


class CrashOutput(BaseModel):
    attempts: int


class Crash:
    """Kills its own worker process (SIGKILL, like the OOM killer) on the first `times` attempts."""

    endpoint_id = "test/crash"
    input_model = CrashInput

    def __init__(self, settings):
        self.settings = settings

    def run(self, inp: CrashInput, ctx) -> CrashOutput:
        marker = Path(self.settings.data_dir) / f"crash-{inp.token}"
        attempts = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(attempts))
        if attempts <= inp.times:
            ctx.log(f"attempt {attempts}: dying")
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)
        return CrashOutput(attempts=attempts)


ECHO = EndpointSpec("test/echo-image", EchoInput, EchoOutput, factory="tests.endpoints_for_tests:EchoImage")
STEPS = EndpointSpec("test/steps", StepsInput, StepsOutput, factory="tests.endpoints_for_tests:Steps")
FAIL = EndpointSpec("test/fail", FailInput, FailOutput, factory="tests.endpoints_for_tests:Fail")
CRASH = EndpointSpec("test/crash", CrashInput, CrashOutput, factory="tests.endpoints_for_tests:Crash")
ALL = [f"tests.endpoints_for_tests:{n}" for n in ("ECHO", "STEPS", "FAIL", "CRASH")]
