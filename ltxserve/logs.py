"""Logging for every ltxserve process: one set-up, text or JSON lines, and the request id in records about a job.

`configure_logging(settings, label)` is called once per process (the API process, each worker, the CLI commands).
While a worker runs a job it holds `request_context(request_id)`, and every record logged meanwhile carries that id
(`request_id` in JSON, `[id]` in text). Known noise from libraries is dropped here, in one place.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Iterator

_REQUEST_ID: ContextVar[str | None] = ContextVar("ltxserve_request_id", default=None)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


class _Context(logging.Filter):
    """Adds `request_id` (from the current job, if any) and the process label to every record."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _REQUEST_ID.get()
        record.label = self.label
        return True


class _LibraryNoise(logging.Filter):
    """diffusers warns "should be kept in float32: []" on every dtype cast of a model whose list is empty (nothing
    to keep): a warning about nothing. Non-empty lists still get through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(label)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid:
            head, sep, tail = text.partition(": ")
            text = f"{head} [{rid}]{sep}{tail}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process label, message, request_id (when set), exception."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": getattr(record, "label", None),
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text", label: str = "ltxserve") -> None:
    """Route every logger (ltxserve's, uvicorn's, libraries') to stderr in the chosen format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(label))
    handler._ltxserve = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_ltxserve", False)]:
        root.removeHandler(old)  # ours from an earlier call; others (a test harness's) are left alone
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers go through ours (one format); its level follows ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    # A filter on the logger that emits the noise works whatever handlers diffusers installs on import.
    noisy = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _LibraryNoise) for f in noisy.filters):
        noisy.addFilter(_LibraryNoise())
