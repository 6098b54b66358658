"""An endpoint whose model cannot load (for the fail-fast tests); spawned workers import it by this path."""

from __future__ import annotations

from pathlib import Path

from ltxserve.engine.contract import EndpointSpec
from tests.worker.endpoints import StepsInput, StepsOutput

BROKEN_ID = "test/broken"


class Broken:
    endpoint_id = BROKEN_ID
    input_model = StepsInput

    def __init__(self, settings):
        # Loads "the model" from settings.model, as the real endpoint does; a missing path is the failure.
        path = Path(settings.model)
        if not path.exists():
            raise FileNotFoundError(f"model path {path} does not exist")

    def run(self, inp, ctx):  # pragma: no cover - never reached: the model never loads
        raise AssertionError("unreachable")


BROKEN = EndpointSpec(endpoint_id=BROKEN_ID, input_model=StepsInput, output_model=StepsOutput,
                      factory="tests.worker.broken_endpoint:Broken", summary="Never loads (tests only).")
