"""fal's wire vocabulary: queue statuses, submit responses, File objects, webhook payloads and error bodies.

The one file that says what goes over the wire (see shared/reference/fal-protocol.md). Depends on nothing in the
package, so the API, the worker, the engine and the tests all speak it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REQUEST_ID_HEADER = "x-fal-request-id"
ERROR_TYPE_HEADER = "x-fal-error-type"
TIMEOUT_TYPE_HEADER = "x-fal-request-timeout-type"
PRIORITY_HEADER = "x-fal-queue-priority"
REQUEST_TIMEOUT_HEADER = "x-fal-request-timeout"
LIFECYCLE_HEADER = "x-fal-object-lifecycle-preference"
TARGET_URL_HEADER = "x-fal-target-url"


class QueueState(str, Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(str, Enum):
    NORMAL = "normal"
    LOW = "low"


class LogLevel(str, Enum):
    STDERR = "STDERR"
    STDOUT = "STDOUT"
    ERROR = "ERROR"
    INFO = "INFO"
    WARN = "WARN"
    DEBUG = "DEBUG"


class LogEntry(BaseModel):
    message: str
    level: LogLevel = LogLevel.INFO
    source: Literal["USER"] = "USER"
    timestamp: str


class Metrics(BaseModel):
    inference_time: float | None = None


class File(BaseModel):
    """fal's File object, as outputs carry it and as clients read it."""

    model_config = ConfigDict(extra="allow")

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class SubmitResponse(BaseModel):
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    gateway_request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int


class QueuedStatus(BaseModel):
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    queue_position: int
    response_url: str
    status_url: str
    cancel_url: str
    logs: list[LogEntry] | None = None


class InProgressStatus(BaseModel):
    status: Literal["IN_PROGRESS"] = "IN_PROGRESS"
    request_id: str
    # The Python client indexes data["logs"]: the key must be present even when null.
    logs: list[LogEntry] | None
    response_url: str
    status_url: str
    cancel_url: str


class CompletedStatus(BaseModel):
    status: Literal["COMPLETED"] = "COMPLETED"
    request_id: str
    logs: list[LogEntry] | None
    metrics: Metrics = Field(default_factory=Metrics)
    response_url: str
    status_url: str
    cancel_url: str
    error: str | None = None
    error_type: str | None = None


QueueStatus = QueuedStatus | InProgressStatus | CompletedStatus


class CancelStatus(str, Enum):
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


class CancelResponse(BaseModel):
    status: CancelStatus


class ValidationErrorItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422, as FastAPI and fal send it."""

    detail: list[ValidationErrorItem]


class ErrorBody(BaseModel):
    """Request and infrastructure errors: `{"detail": "...", "error_type": "..."}`."""

    detail: str
    error_type: str | None = None


class WebhookPayload(BaseModel):
    request_id: str
    gateway_request_id: str
    status: Literal["OK", "ERROR"]
    payload: Any | None
    error: str | None = None
    payload_error: str | None = None


class UploadInitiateRequest(BaseModel):
    content_type: str = "application/octet-stream"
    file_name: str | None = None


class UploadInitiateResponse(BaseModel):
    upload_url: str
    file_url: str


# error_type values, as fal names them
class ErrorType(str, Enum):
    REQUEST_TIMEOUT = "request_timeout"
    RUNNER_DISCONNECTED = "runner_disconnected"
    INTERNAL_ERROR = "internal_error"
    VALIDATION_ERROR = "validation_error"
    CANCELLED = "request_cancelled"
    GENERATION_ERROR = "generation_error"
