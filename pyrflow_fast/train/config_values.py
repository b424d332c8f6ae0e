"""Config values: type checks naming the field (:func:`check_section`), validation errors (:func:`raise_first`)
and TOML values (:func:`toml_value`), shared by the training and the distillation configs."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

__all__ = ["check_section", "raise_first", "toml_value"]


_TYPE_NAMES = {
    bool: ("a bool", "bools"),
    int: ("an int", "ints"),
    float: ("a float", "floats"),
    str: ("a string", "strings"),
}


def _type_name(hint: Any, plural: bool = False) -> str:
    """``list[int]`` -> ``"a list of ints"`` (``plural``: ``"lists of ints"``)."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return ("lists" if plural else "a list") + " of " + _type_name(item, plural=True)
    return _TYPE_NAMES[hint][plural]


def _typed(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (``bool``, ``int``, ``float``, ``str`` or ``list[...]``
    of them): an int for a float becomes a float, a tuple for a list a list; ValueError naming ``where`` and the
    expected type otherwise (a bool is not an int)."""
    if typing.get_origin(hint) is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(hint)
            return [_typed(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{where}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def check_section(name: str, section: Any, cls: type) -> None:
    """Check (and normalise in place, see :func:`_typed`) every field of the config section ``name``."""
    if not isinstance(section, cls):
        raise ValueError(f"config section {name!r} must be a {cls.__name__}, got {type(section).__name__}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(section):
        setattr(section, f.name, _typed(f"{name}.{f.name}", getattr(section, f.name), hints[f.name]))


def raise_first(checks: list[tuple[bool, str]]) -> None:
    """ValueError with the message of the first failed ``(ok, message)`` check (every config's validation)."""
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid config: {message}")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))
