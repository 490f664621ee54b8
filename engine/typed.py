"""Frozen dataclasses built once from what a user typed: ``KEY=VALUE`` text or a JSON mapping.

A config class declares its fields with :func:`option` (default, one line of help, bounds); the one
parser here turns ``{"percdamp": "0.02"}`` into the typed object, rejecting unknown keys and bad
values with a one-line :class:`ConfigError` that lists what is valid. Supported field types: ``int``,
``float``, ``bool``, ``str`` and ``bool | None`` (``None`` spelled ``auto``: decided later).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from engine.errors import QtuiError

T = TypeVar("T")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class ConfigError(QtuiError):
    """A parameter that does not exist or has a value its field cannot take."""


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with the help line and bounds the parser checks."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


def parse_assignments(text: str | Iterable[str], what: str = "parameter") -> dict[str, str]:
    """``"damp=0.01 act_order=true"`` (or a list of such words) -> ``{"damp": "0.01", ...}``."""
    words = text.split() if isinstance(text, str) else list(text)
    out: dict[str, str] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {word!r} is not KEY=VALUE")
        out[key.strip()] = raw.strip()
    return out


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every field of the config class ``cls``."""
    hints = typing.get_type_hints(cls)
    return [
        (f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)
    ]


def build(cls: type[T], values: Mapping[str, object] | None, what: str) -> T:
    """An instance of ``cls`` from ``values`` (strings or values), validated field by field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, raw in (values or {}).items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"{what}: unknown parameter {key!r} (valid: {valid})")
        try:
            kwargs[key] = _check(key, _convert(key, hints[key], raw), fields[key].metadata)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    return cls(**kwargs)


def check_value(cls: type, name: str, raw: object, label: str) -> Any:
    """One field of the config class ``cls`` parsed and bounds-checked on its own; a bad value is
    a :class:`ConfigError` naming ``label`` (the flag a user typed, e.g. ``--top-p``)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return _check(label, _convert(label, typing.get_type_hints(cls)[name], raw), field.metadata)


def values(obj: object) -> dict[str, Any]:
    """The fields of a config instance as a plain dict (what manifests and settings.json hold)."""
    return dataclasses.asdict(obj)  # type: ignore[call-overload, no-any-return]


def changed(obj: object) -> dict[str, Any]:
    """The fields of a config instance that differ from their defaults (for short labels)."""
    return {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)  # type: ignore[arg-type]
        if getattr(obj, f.name) != f.default
    }


def _type_name(tp: Any) -> str:
    if tp == bool | None or tp == typing.Optional[bool]:  # noqa: UP045 (both spellings resolve)
        return "bool|auto"
    return getattr(tp, "__name__", str(tp))


def _convert(key: str, tp: Any, raw: object) -> object:
    name = _type_name(tp)
    text = str(raw).strip().lower() if not isinstance(raw, bool | int | float) else None
    if name == "bool|auto" and (raw is None or text == "auto"):
        return None
    if name in ("bool", "bool|auto"):
        if isinstance(raw, bool):
            return raw
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        expected = "true or false" + (" or auto" if name == "bool|auto" else "")
        raise ConfigError(f"{key} must be {expected}, got {raw!r}")
    if name == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key} must be a whole number, got {raw!r}") from None
    if name == "float":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            try:
                value = float(str(raw).strip())
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} must be a finite number, got {raw!r}")
        return value
    if name == "str":
        return str(raw)
    raise TypeError(f"field {key}: unsupported type {tp!r}")  # a programming error, not user input


def _check(key: str, value: object, meta: Mapping[str, Any]) -> object:
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{key} must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be <= {hi}, got {value}")
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value
