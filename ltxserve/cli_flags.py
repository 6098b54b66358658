"""The one mapping from command-line flags to `Settings`, used by every `ltxserve` command.

Each command names the settings it exposes; the flag, its type, its choices (from `Literal` fields), its help (the
field's description, its default and its environment variable) all come from the `Settings` field. A flag the user
gave overrides the environment; one not given leaves the environment or the default in force. Invalid values, from
a flag or from the environment, become one line naming the setting, its flag and its variable.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import ValidationError

from ltxserve.config import Settings

# Flags whose name is not simply --field-name.
FLAG_NAMES = {
    "api_keys": "--api-key",
    "endpoints": "--endpoint",
    "lora_dirs": "--lora-dir",
    "weights_lock": "--lock",
    "weights_base_url": "--base-url",
    "weights_pull_workers": "--workers",
    "use_triton_kernels": "--kernels",
}
LOGGING = ("log_level", "log_format")


class SettingsError(ValueError):
    """Configuration that cannot be used; the message is one line per problem, fit to print as is."""


def flag_for(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def env_names(field: str) -> list[str]:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    names = [a for a in getattr(alias, "choices", []) if isinstance(a, str) and a.isupper()]
    return names or [f"LTXSERVE_{field.upper()}"]


def _unwrap(annotation: Any) -> Any:
    """int | None -> int; list[str] -> list[str] (kept); Literal stays."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def add_settings_flags(parser: argparse.ArgumentParser, fields: Iterable[str]) -> None:
    """Add one flag per Settings field, described from the field."""
    for field in fields:
        info = Settings.model_fields[field]
        kind = _unwrap(info.annotation)
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else ("[]" if default == [] else default)
        help_text = (info.description or "").rstrip(".")
        help_text = f"{help_text + '. ' if help_text else ''}Default {shown}; env {' or '.join(env_names(field))}"
        kwargs: dict[str, Any] = {"dest": field, "default": None, "help": help_text.replace("%", "%%")}
        if typing.get_origin(kind) is Literal:
            kwargs["choices"] = list(typing.get_args(kind))
            kwargs["metavar"] = "{" + ",".join(kwargs["choices"]) + "}"
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            kwargs.update(action="append", type=_unwrap(item), metavar=flag_for(field).lstrip("-").upper())
        elif kind in (int, float, Path):
            kwargs["type"] = kind
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = flag_for(field).lstrip("-").replace("-", "_").upper()
        parser.add_argument(flag_for(field), **kwargs)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_flags(parser, LOGGING)


def settings_from_args(args: argparse.Namespace, base: Settings | None = None, **extra: Any) -> Settings:
    """Settings from the environment (or `base`), overridden by the flags given and then by `extra`."""
    overrides = {f: v for f in Settings.model_fields if (v := getattr(args, f, None)) is not None}
    overrides.update(extra)
    try:
        if base is not None:
            return Settings.model_validate({**base.model_dump(), **overrides})
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = str(err["loc"][0]) if err["loc"] else "?"
        field = next((f for f in Settings.model_fields if loc == f or loc in env_names(f)), loc)
        where = f"{flag_for(field)} / {' / '.join(env_names(field))}" if field in Settings.model_fields else loc
        got = err.get("input")
        lines.append(f"invalid {field} ({where}): {err['msg']}" + (f", got {got!r}" if got is not None else ""))
    return "\n".join(lines)
