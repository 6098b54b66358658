"""Tiny endpoints for the worker and supervisor tests; spawned workers import them by these paths.

`Steps` really works: it runs `steps` steps (each `step_seconds` long, checking for cancellation between them),
reverses the text, and writes it to a real file. Markers under the data directory let a test see where a worker is,
and `crash_until` makes the worker process die by SIGKILL while the marker count is below it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pydantic import BaseModel, Field

from ltxserve.engine.contract import EndpointError, EndpointSpec, JobCancelled
from ltxserve.protocol import File

STEPS_ID = "test/steps"


class StepsInput(BaseModel):
    text: str = Field(min_length=1)
    steps: int = Field(default=3, ge=1, le=100)
    step_seconds: float = Field(default=0.0, ge=0, le=5)
    fail_with: str | None = None  # "endpoint" -> EndpointError, "bug" -> a plain exception
    crash_until: int = 0  # SIGKILL this worker while fewer than this many attempts have been marked


class StepsOutput(BaseModel):
    reversed: str
    file: File


class Steps:
    endpoint_id = STEPS_ID
    input_model = StepsInput

    def __init__(self, settings):
        self.markers = Path(settings.data_dir) / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)

    def run(self, inp: StepsInput, ctx) -> StepsOutput:
        attempt_marker = self.markers / f"{ctx.request_id}.{len(list(self.markers.glob(ctx.request_id + '.*')))}"
        attempt_marker.write_text(str(os.getpid()))
        if len(list(self.markers.glob(ctx.request_id + ".*"))) <= inp.crash_until:
            os.kill(os.getpid(), signal.SIGKILL)
        if inp.fail_with == "endpoint":
            raise EndpointError("the text is unprintable", error_type="generation_error", status_code=500)
        if inp.fail_with == "bug":
            raise ZeroDivisionError("secret internals")
        for step in range(1, inp.steps + 1):
            if ctx.cancelled():
                raise JobCancelled()
            ctx.progress(step, inp.steps, "steps")
            ctx.log(f"step {step}/{inp.steps}")
            time.sleep(inp.step_seconds)
        out = inp.text[::-1]
        return StepsOutput(reversed=out, file=ctx.save_file(out.encode(), "out.txt", "text/plain"))


STEPS = EndpointSpec(endpoint_id=STEPS_ID, input_model=StepsInput, output_model=StepsOutput,
                     factory="tests.worker.endpoints:Steps", summary="Reverses text in steps (tests only).")
