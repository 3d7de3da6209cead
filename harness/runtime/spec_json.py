"""Typed access to decoded JSON, each failure a one-line UserError naming the JSON path."""

from __future__ import annotations

import json
from typing import NoReturn

from harness.errors import UserError
from harness.runtime.spec import INT64_MAX, INT64_MIN


def _fail(path: str, problem: str, accepted: str) -> NoReturn:
    raise UserError(f"config.json: {path}: {problem}; accepted: {accepted}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a fractional number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a Python {type(value).__name__}"


def _show(value: object) -> str:
    """value as one short line of JSON, so that no error message spans lines."""
    if isinstance(value, list | tuple):
        return "[...]"
    if isinstance(value, dict):
        return "{...}"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON at all, or an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _wrong_type(value: object, path: str, accepted: str) -> NoReturn:
    if value is None:
        _fail(path, "missing or null", accepted)
    if isinstance(value, str | int | float):
        _fail(path, f"{_show(value)} is {_kind(value)}", accepted)
    _fail(path, f"got {_kind(value)}", accepted)


def _obj(value: object, path: str, accepted: str = "a JSON object") -> dict[str, object]:
    if not isinstance(value, dict):
        _wrong_type(value, path, accepted)
    return value


def _list(value: object, path: str, accepted: str) -> list[object]:
    """The items of an optional JSON list (absent or null = empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        _wrong_type(value, path, accepted)
    return value


def _each_object(value: object, path: str) -> list[tuple[dict[str, object], str]]:
    """The objects of an optional JSON list, each with its own JSON path."""
    items = _list(value, path, "a list of objects")
    return [(_obj(item, f"{path}[{i}]"), f"{path}[{i}]") for i, item in enumerate(items)]


def _int(value: object, path: str, minimum: int, maximum: int, accepted: str | None = None) -> int:
    """A required integer in [minimum, maximum]; like Go, booleans and 1.0 are not integers."""
    accepted = accepted or f"an integer from {minimum} to {maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        _wrong_type(value, path, accepted)
    if value < minimum:
        problem = "is negative" if value < 0 <= minimum else f"is less than {minimum}"
        _fail(path, f"{_show(value)} {problem}", accepted)
    if value > maximum:
        _fail(path, f"{_show(value)} is more than {maximum}", accepted)
    return value


def _opt_int(
    value: object, path: str, minimum: int, maximum: int, accepted: str | None = None
) -> int | None:
    return None if value is None else _int(value, path, minimum, maximum, accepted)


def _positive_or_unlimited(value: object, path: str, accepted: str) -> int | None:
    """An optional int64 that is positive, -1 (unlimited), or 0 (unset, as runc reads it)."""
    if value is None:
        return None
    number = _int(value, path, INT64_MIN, INT64_MAX, accepted)
    if number < -1:
        _fail(path, f"{number} is negative", accepted)
    # Tools that drive runc write 0 for "not set"; runc skips such fields.
    return number or None


def _opt_bool(value: object, path: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        _wrong_type(value, path, "true or false")
    return value


def _bool(value: object, path: str, default: bool) -> bool:
    checked = _opt_bool(value, path)
    return default if checked is None else checked


def _str(value: object, path: str, accepted: str = "a string") -> str:
    if not isinstance(value, str):
        _wrong_type(value, path, accepted)
    if "\0" in value:
        _fail(path, "contains a NUL character", accepted)
    return value


def _opt_str(value: object, path: str) -> str | None:
    return None if value is None else _str(value, path)


def _str_list(value: object, path: str) -> tuple[str, ...]:
    items = _list(value, path, "a list of strings")
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(items))


def _choice(value: object, path: str, choices: tuple[str, ...], what: str) -> str:
    accepted = ", ".join(choices)
    text = _str(value, path, accepted)
    if text not in choices:
        _fail(path, f"unknown {what} {_show(text)}", accepted)
    return text


def _opt_choice(value: object, path: str, choices: tuple[str, ...], what: str) -> str | None:
    return None if value is None else _choice(value, path, choices, what)


def _abs_path(value: object, path: str, accepted: str = "an absolute path") -> str:
    text = _str(value, path, accepted)
    if not text.startswith("/"):
        _fail(path, f"{_show(text)} is not absolute", accepted)
    return text


def _opt_abs_path(value: object, path: str) -> str | None:
    return None if value is None else _abs_path(value, path)


def _abs_paths(value: object, path: str) -> tuple[str, ...]:
    items = _list(value, path, "a list of absolute paths")
    return tuple(_abs_path(item, f"{path}[{i}]") for i, item in enumerate(items))


def _str_map(value: object, path: str) -> tuple[tuple[str, str], ...]:
    """An optional object of string values, as (key, value) pairs in the given order."""
    accepted = "an object whose values are strings"
    pairs = []
    for key, item in _obj({} if value is None else value, path, accepted).items():
        if not isinstance(key, str):
            _fail(path, f"key {_show(key)} is {_kind(key)}", accepted)
        pairs.append((key, _str(item, f"{path}[{_show(key)}]")))
    return tuple(pairs)


def _env(value: object, path: str) -> tuple[str, ...]:
    accepted = 'a "KEY=VALUE" string'
    entries: list[str] = []
    for i, item in enumerate(_list(value, path, 'a list of "KEY=VALUE" strings')):
        entry = _str(item, f"{path}[{i}]", accepted)
        key, equals, _ = entry.partition("=")
        if not equals or not key:
            _fail(f"{path}[{i}]", f"{_show(entry)} is not KEY=VALUE", accepted)
        entries.append(entry)
    return tuple(entries)
