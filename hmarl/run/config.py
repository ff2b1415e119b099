"""Validation of option dictionaries (from YAML) into dataclasses, and of the folders runs write to."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys or wrong types fail with the list of fields."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; "
                         f"known options: {', '.join(fields)}")
    missing = [name for name, f in fields.items() if name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing required option(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        values[name] = _coerce(value, hints[name], f"{where}.{name}")
    return cls(**values)


def writable_folder(path: str | Path, what: str) -> None:
    """Fail (ValueError naming ``what``) unless ``path`` is a folder that can be created or written to.

    Creates nothing: the nearest existing ancestor must be a writable folder, so that a refused
    run leaves no empty folders behind.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {existing} is a file, not a folder; "
                         f"choose another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable (no write permission on {existing}); "
                         f"choose another {what}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return origin(items)
    if origin is dict or hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {bool_problem(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def bool_problem(value: Any) -> str:
    """Why ``value`` is not a bool, with the fix for the command line's own spelling.

    sacred reads ``key=value`` as a Python literal: ``True`` is a bool but ``true`` is the
    string ``'true'``, which would otherwise count as on whatever it says.
    """
    hint = " (on the command line write True or False)" if isinstance(value, str) and value.lower() in (
        "true", "false", "yes", "no", "on", "off") else ""
    return f"expected true/false, got {value!r}{hint}"
