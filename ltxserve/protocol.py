"""fal's wire vocabulary: queue statuses, submit responses, File objects, webhook payloads and error bodies.

The one file that says what goes over the wire (see shared/reference/fal-protocol.md). Depends on nothing in the
package, so the API, the worker, the engine and the tests all speak it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

REQUEST_ID_HEADER = "x-fal-request-id"
ERROR_TYPE_HEADER = "x-fal-error-type"
TIMEOUT_TYPE_HEADER = "x-fal-request-timeout-type"
PRIORITY_HEADER = "x-fal-queue-priority"
REQUEST_TIMEOUT_HEADER = "x-fal-request-timeout"
LIFECYCLE_HEADER = "x-fal-object-lifecycle-preference"
TARGET_URL_HEADER = "x-fal-target-url"
RETRYABLE_HEADER = "x-fal-retryable"


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
    # a MIME type is printable ASCII (it goes back out in a Content-Type header); the name any Unicode text that
    # can be encoded (a lone surrogate is valid JSON but neither storable nor servable)
    content_type: str = Field(default="application/octet-stream", max_length=255,
                              pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e]*)?$")
    file_name: str | None = Field(default=None, max_length=255)

    @field_validator("file_name")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        if value is not None:
            value.encode("utf-8")  # UnicodeEncodeError is a ValueError: a 422
        return value


class UploadInitiateResponse(BaseModel):
    upload_url: str
    file_url: str


# error_type values of request errors, as fal names them (docs: "Request Errors"), plus ltxserve's own three
# (validation_error, request_cancelled, generation_error) that the queue has always reported.
class ErrorType(str, Enum):
    REQUEST_TIMEOUT = "request_timeout"  # 504
    STARTUP_TIMEOUT = "startup_timeout"  # 504
    RUNNER_SCHEDULING_FAILURE = "runner_scheduling_failure"  # 503
    RUNNER_CONNECTION_TIMEOUT = "runner_connection_timeout"  # 503
    RUNNER_DISCONNECTED = "runner_disconnected"  # 503
    RUNNER_CONNECTION_REFUSED = "runner_connection_refused"  # 503
    RUNNER_CONNECTION_ERROR = "runner_connection_error"  # 503
    RUNNER_INCOMPLETE_RESPONSE = "runner_incomplete_response"  # 502
    RUNNER_SERVER_ERROR = "runner_server_error"  # 500
    CLIENT_DISCONNECTED = "client_disconnected"  # 499
    CLIENT_CANCELLED = "client_cancelled"  # 499
    BAD_REQUEST = "bad_request"  # 400
    INTERNAL_ERROR = "internal_error"  # 500
    REQUEST_TOO_LARGE = "request_too_large"  # 413 (ltxserve)
    UNAUTHORIZED = "unauthorized"  # 401 (ltxserve)
    VALIDATION_ERROR = "validation_error"
    CANCELLED = "request_cancelled"
    GENERATION_ERROR = "generation_error"


# `type` values of model errors (docs: "Model Errors"); each links to https://docs.fal.ai/errors#<type>.
class ModelErrorType(str, Enum):
    INTERNAL_SERVER_ERROR = "internal_server_error"  # 500, retryable
    GENERATION_TIMEOUT = "generation_timeout"  # 504, retryable
    DOWNSTREAM_SERVICE_ERROR = "downstream_service_error"
    DOWNSTREAM_SERVICE_UNAVAILABLE = "downstream_service_unavailable"
    CONTENT_POLICY_VIOLATION = "content_policy_violation"
    IMAGE_TOO_SMALL = "image_too_small"  # ctx: min_width, min_height
    IMAGE_TOO_LARGE = "image_too_large"  # ctx: max_width, max_height (ltxserve adds max_pixels)
    IMAGE_LOAD_ERROR = "image_load_error"
    FILE_DOWNLOAD_ERROR = "file_download_error"
    FILE_TOO_LARGE = "file_too_large"  # ctx: max_size
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    FEATURE_NOT_SUPPORTED = "feature_not_supported"
    GREATER_THAN = "greater_than"
    GREATER_THAN_EQUAL = "greater_than_equal"
    LESS_THAN = "less_than"
    LESS_THAN_EQUAL = "less_than_equal"
    MULTIPLE_OF = "multiple_of"
    SEQUENCE_TOO_SHORT = "sequence_too_short"
    SEQUENCE_TOO_LONG = "sequence_too_long"
    ONE_OF = "one_of"


FAL_ERRORS_URL = "https://docs.fal.ai/errors"
# Model error types a retry of the same request may cure (X-Fal-Retryable: true).
RETRYABLE_MODEL_ERRORS = frozenset({"internal_server_error", "generation_timeout", "downstream_service_unavailable"})
# Longest piece of a client's input an error body repeats.
ERROR_INPUT_PREFIX = 64


def model_error(loc: tuple | list, msg: str, type: str, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """One Error object of a model error body: loc, msg, type, url (the type's documentation), optional ctx."""
    item: dict[str, Any] = {"loc": list(loc), "msg": msg, "type": type, "url": f"{FAL_ERRORS_URL}#{type}"}
    if ctx:
        item["ctx"] = ctx
    return item


def retryable(detail: Any) -> str:
    """X-Fal-Retryable for a model error body's detail list: true only when every error is a transient one."""
    types = [d.get("type") for d in detail if isinstance(d, dict)] if isinstance(detail, list) else []
    return "true" if types and all(t in RETRYABLE_MODEL_ERRORS for t in types) else "false"
