"""The narrow interface between the worker and whatever generates: Endpoint, JobContext, EndpointSpec, errors.

Torch-free, so that the API can import endpoint specs (for their input models) without loading the engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from pydantic import BaseModel

from ltxserve.protocol import File, model_error

if TYPE_CHECKING:
    from ltxserve.config import Settings


@runtime_checkable
class JobContext(Protocol):
    request_id: str

    def log(self, message: str, level: str = "INFO") -> None:
        """A line that appears in the job's status logs."""

    def progress(self, step: int, total: int, stage: str) -> None:
        """Where the job is, e.g. (7, 27, "pass 1")."""

    def cancelled(self) -> bool:
        """True once a cancel was requested; the endpoint checks it between steps and raises JobCancelled."""

    def save_file(self, data: bytes | Path, file_name: str, content_type: str) -> File:
        """Store an output file; returns the fal File object with its public URL."""


@runtime_checkable
class Endpoint(Protocol):
    endpoint_id: str
    input_model: type[BaseModel]

    def run(self, inp: BaseModel, ctx: JobContext) -> BaseModel: ...


@dataclass(frozen=True)
class EndpointSpec:
    """What the API needs to know of an endpoint (its id and schema) plus how a worker builds it.

    `factory` is an import path ('module:callable') called as factory(settings) -> Endpoint in the worker process
    only, so that specs stay cheap to import.
    """

    endpoint_id: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    factory: str
    # A short summary for the OpenAPI document.
    summary: str = ""

    @property
    def owner(self) -> str:
        return self.endpoint_id.split("/")[0]

    @property
    def app(self) -> str:
        return self.endpoint_id.split("/")[1]

    @property
    def path(self) -> str:
        return "/".join(self.endpoint_id.split("/")[2:])

    def build(self, settings: "Settings") -> Endpoint:
        make: Callable[[Any], Endpoint] = import_object(self.factory)
        return make(settings)


def import_object(path: str) -> Any:
    """Resolve 'package.module:attribute'."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_specs(paths: list[str]) -> list[EndpointSpec]:
    specs = [import_object(p) for p in paths]
    for p, s in zip(paths, specs):
        if not isinstance(s, EndpointSpec):
            raise TypeError(f"{p} is not an EndpointSpec")
    return specs


# --- errors an endpoint raises; the worker turns each into a COMPLETED status with error/error_type -----------


class EndpointError(Exception):
    """A failure with a message fit for the client. `status_code` is what the result endpoint answers."""

    error_type = "generation_error"
    status_code = 500

    def __init__(self, message: str, *, error_type: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if error_type:
            self.error_type = error_type
        if status_code:
            self.status_code = status_code

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "error_type": self.error_type}


class InputError(EndpointError):
    """The input passed the schema but cannot be used (unreachable image_url, undecodable image, ...).

    Answered as fal answers a model's validation error: 422 `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`.
    """

    error_type = "validation_error"
    status_code = 422

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = ("body",), type: str = "value_error",
                 ctx: dict[str, Any] | None = None):
        super().__init__(message)
        self.loc = list(loc)
        self.type = type
        self.ctx = ctx

    def body(self) -> dict[str, Any]:
        return {"detail": [model_error(self.loc, self.message, self.type, self.ctx)]}


class ContentPolicyViolation(InputError):
    """The safety checker flagged the input image or the output: 422 `content_policy_violation`, not retryable,
    with the flagged `input` (when it was the client's) and the `categories`, as fal answers."""

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = ("body",), input: Any = None,
                 categories: tuple[str, ...] = ("nsfw",)):
        super().__init__(message, loc=loc, type="content_policy_violation")
        self.input = input
        self.categories = list(categories)

    def body(self) -> dict[str, Any]:
        item = model_error(self.loc, self.message, self.type)
        if self.input is not None:
            item["input"] = self.input
        item["categories"] = self.categories
        return {"detail": [item]}


class JobCancelled(Exception):
    """Raised by an endpoint when ctx.cancelled() turned true between steps."""
