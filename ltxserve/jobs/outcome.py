"""What a job ended with: one typed value, built where the ending is decided and stored as is by every backend.

The wire has no FAILED state: every outcome is a COMPLETED job; an error outcome carries `error`/`error_type` (what
the status shows) and `error_body`/`status_code` (what the result endpoint answers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ltxserve.protocol import ErrorType


class OutcomeKind(str, Enum):
    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    RUNNER_LOST = "runner_lost"


def _error_body(message: str, error_type: str) -> dict[str, Any]:
    return {"detail": message, "error_type": error_type}


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    result: dict | None = None  # OK only: the output JSON
    error: str | None = None  # human message (None for OK)
    error_type: str | None = None  # an ltxserve.protocol.ErrorType value (or a model error's type)
    error_body: dict | None = None  # what the result endpoint answers, e.g. 422 {"detail": [...]}
    status_code: int = 200
    inference_time: float | None = None

    @classmethod
    def ok(cls, result: dict, inference_time: float | None = None) -> Outcome:
        return cls(OutcomeKind.OK, result=result, inference_time=inference_time)

    @classmethod
    def failed(cls, message: str, error_type: str, body: dict | None, status_code: int,
               inference_time: float | None = None) -> Outcome:
        return cls(OutcomeKind.FAILED, error=message, error_type=str(getattr(error_type, "value", error_type)),
                   error_body=body, status_code=status_code, inference_time=inference_time)

    @classmethod
    def cancelled(cls, inference_time: float | None = None) -> Outcome:
        message, kind = "Request was cancelled", ErrorType.CANCELLED.value
        return cls(OutcomeKind.CANCELLED, error=message, error_type=kind, error_body=_error_body(message, kind),
                   status_code=400, inference_time=inference_time)

    @classmethod
    def timed_out(cls) -> Outcome:
        """Not started before the deadline the client set (X-Fal-Request-Timeout)."""
        kind = ErrorType.REQUEST_TIMEOUT.value
        return cls(OutcomeKind.TIMED_OUT, error="Request timed out before it started", error_type=kind,
                   error_body=_error_body("Request timed out", kind), status_code=504)

    @classmethod
    def runner_lost(cls, message: str) -> Outcome:
        """The worker running the job went away and the job is not retried (again)."""
        kind = ErrorType.RUNNER_DISCONNECTED.value
        return cls(OutcomeKind.RUNNER_LOST, error=message, error_type=kind, error_body=_error_body(message, kind),
                   status_code=503)

    @property
    def is_error(self) -> bool:
        return self.kind is not OutcomeKind.OK

    def with_time(self, seconds: float | None) -> Outcome:
        return dataclasses.replace(self, inference_time=seconds)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "result": self.result, "error": self.error, "error_type": self.error_type,
                "error_body": self.error_body, "status_code": self.status_code,
                "inference_time": self.inference_time}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        return cls(kind=OutcomeKind(d["kind"]), result=d.get("result"), error=d.get("error"),
                   error_type=d.get("error_type"), error_body=d.get("error_body"),
                   status_code=int(d.get("status_code", 200)), inference_time=d.get("inference_time"))
