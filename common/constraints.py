"""Field rules declared once: a config field says what it accepts in its metadata, beside its help.

Every job of the toolkit has a frozen config dataclass shared by the Python API and the command
line (`common.cli` builds the flags from its fields). The rule a field obeys belongs there too,
so that the check, the error message and the flag cannot drift apart::

    @dataclass(frozen=True)
    class Config:
        batch_size: int = field(default=64, metadata={"help": "...", "min": 1})
        rate: float = field(default=0.1, metadata={"help": "...", "gt": 0, "max": 1})
        mode: str = field(default="a", metadata={"help": "...", "choices": ("a", "b")})
        grpc: str = field(default="localhost:8500", metadata={"help": "...", "rule": "target"})

        def __post_init__(self) -> None:
            check_fields(self)          # then whatever involves several fields

The type is the field's annotation: ``int`` is an integer and never a bool (``True`` is not a
batch size), ``float`` is any real number but a bool, ``str`` a string, ``bool`` a bool; ``X |
None`` also accepts None; ``tuple[X, ...]`` checks each item. Bounds: ``min``/``max``
(inclusive), ``gt``/``lt`` (exclusive); ``choices`` (which the command line also offers);
``rule`` names a check of `RULES` for strings (``target``: a gRPC target; ``host_port``: HOST:PORT
only; ``url``: an http(s) URL; ``nonempty``). ``"check": True`` checks the type alone (a seed is
any integer, a flag ``True`` or ``False``). A field without any of these keys, or with
``"check": False``, is left to the config's own code.

The message is the toolkit's one line (`common.errors.invalid`): the argument, what was received
and what was expected, the expectation worded from the rule ("a positive integer", "a number in
(0, 1]", "one of 'a', 'b'"). The same checks are functions (`check_int`, `check_number`,
`check_choice`, `check_target`) for arguments that are not config fields.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from common.errors import invalid

__all__ = [
    "RULES",
    "check_choice",
    "check_fields",
    "check_host_port",
    "check_int",
    "check_number",
    "check_target",
    "check_url",
    "describe",
    "is_int",
    "is_number",
]

_BOUND_KEYS = ("min", "max", "gt", "lt")
_RULE_KEYS = _BOUND_KEYS + ("choices", "rule")

_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)"
_HOST_PORT = re.compile(rf"^{_HOST}:(\d{{1,5}})$")
_URL = re.compile(rf"^https?://{_HOST}(:(\d{{1,5}}))?/?$")
_SCHEMES = ("unix:", "unix-abstract:", "dns:")


def is_int(value: Any) -> bool:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (int or float, Python or numpy) that is not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, bool)


def _fmt(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def describe(kind: str, *, min: float | None = None, max: float | None = None,
             gt: float | None = None, lt: float | None = None, optional: bool = False) -> str:
    """The words for an integer (``kind="int"``) or number (``"float"``) with these bounds."""
    noun, article = ("integer", "an") if kind == "int" else ("number", "a")
    low, high = (gt if gt is not None else min), (lt if lt is not None else max)
    if high is None and (gt == 0 or (kind == "int" and min == 1)):
        text = f"a positive {noun}"
    elif high is None and min == 0:
        text = f"a non-negative {noun}"
    elif low is None and high is None:
        text = f"{article} {noun}"
    elif high is None:
        text = f"{article} {noun} {'>' if gt is not None else '>='} {_fmt(low)}"
    elif low is None:
        text = f"{article} {noun} {'<' if lt is not None else '<='} {_fmt(high)}"
    else:
        left, right = ("(" if gt is not None else "["), (")" if lt is not None else "]")
        text = f"{article} {noun} in {left}{_fmt(low)}, {_fmt(high)}{right}"
    return f"{text} or None" if optional else text


def _within(value: float, min: float | None, max: float | None, gt: float | None,
            lt: float | None) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return ((min is None or value >= min) and (max is None or value <= max)
            and (gt is None or value > gt) and (lt is None or value < lt))


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None,
              optional: bool = False, expected: str | None = None) -> Any:
    """`value` unchanged if it is an int (not a bool) within the bounds, else `UsageError`."""
    if optional and value is None:
        return value
    if not is_int(value) or not _within(value, min, max, None, None):
        raise invalid(name, value, expected or describe("int", min=min, max=max,
                                                        optional=optional))
    return value


def check_number(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                 gt: float | None = None, lt: float | None = None, optional: bool = False,
                 finite: bool = True, expected: str | None = None) -> Any:
    """`value` unchanged if it is a real number (not a bool) within the bounds (and finite)."""
    if optional and value is None:
        return value
    ok = is_number(value) and _within(value, min, max, gt, lt) \
        and (not finite or math.isfinite(value))
    if not ok:
        raise invalid(name, value, expected or describe("float", min=min, max=max, gt=gt, lt=lt,
                                                        optional=optional))
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any], *, optional: bool = False) -> Any:
    """`value` unchanged if it is one of `choices`."""
    choices = tuple(choices)
    if (optional and value is None) or any(value == c and type(value) is type(c)
                                           for c in choices):
        return value
    words = ", ".join(repr(c) for c in choices)
    raise invalid(name, value, f"one of {words}" + (" or None" if optional else ""))


def check_host_port(name: str, value: Any) -> str:
    """HOST:PORT with a port in 1..65535 (``[::1]:8500`` for IPv6)."""
    match = _HOST_PORT.match(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(3)) <= 65535:
        raise invalid(name, value, "HOST:PORT (port 1..65535)")
    return value


def check_target(name: str, value: Any) -> str:
    """A gRPC target: HOST:PORT, or ``unix:/path``, ``unix-abstract:name``, ``dns:...``."""
    if isinstance(value, str) and value.startswith(_SCHEMES) \
            and len(value.split(":", 1)[1]) > 0 and not any(c.isspace() for c in value):
        return value
    try:
        return check_host_port(name, value)
    except ValueError:
        raise invalid(name, value, "HOST:PORT (port 1..65535) or unix:/path/to/socket") from None


def check_url(name: str, value: Any) -> str:
    """An http(s) URL of a host and optional port, e.g. ``http://localhost:8501``."""
    match = _URL.match(value) if isinstance(value, str) else None
    if match is None or (match.group(4) is not None and not 1 <= int(match.group(4)) <= 65535):
        raise invalid(name, value, "an http(s) URL such as http://HOST:8501")
    return value


def _check_nonempty(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, "a non-empty string")
    return value


RULES: dict[str, Callable[[str, Any], Any]] = {
    "host_port": check_host_port,
    "target": check_target,
    "url": check_url,
    "nonempty": _check_nonempty,
}
"""Named string rules a field may give as ``metadata={"rule": name}``."""


def _split_type(annotation: Any) -> tuple[Any, bool, bool]:
    """(item type, optional, sequence) of an annotation such as ``tuple[int, ...] | None``."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(rest) != len(typing.get_args(annotation))
        annotation = rest[0] if len(rest) == 1 else Any
    sequence = typing.get_origin(annotation) in (tuple, list)
    if sequence:
        annotation = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
    if typing.get_origin(annotation) is typing.Literal:
        annotation = type(typing.get_args(annotation)[0])
    return annotation, optional, sequence


def _check_one(name: str, value: Any, base: Any, meta: dict, optional: bool) -> None:
    bounds = {key: meta[key] for key in _BOUND_KEYS if key in meta}
    if "choices" in meta:
        check_choice(name, value, meta["choices"], optional=optional)
    elif base is bool:
        if not isinstance(value, bool) and not (optional and value is None):
            raise invalid(name, value, "True or False" + (" or None" if optional else ""))
    elif base is int:
        if "gt" in bounds or "lt" in bounds:
            raise TypeError(f"field {name!r}: an int field takes min/max, not gt/lt")
        check_int(name, value, optional=optional, **bounds)
    elif base is float:
        check_number(name, value, optional=optional, **bounds)
    elif base is str:
        if optional and value is None:
            return
        if not isinstance(value, str):
            raise invalid(name, value, "a string" + (" or None" if optional else ""))
    if "rule" in meta and not (optional and value is None):
        RULES[meta["rule"]](name, value)


_HINTS: dict[type, dict[str, Any]] = {}


def check_fields(config: Any) -> None:
    """Check every field of dataclass instance `config` that declares a rule in its metadata.

    Raises `UsageError` (via `common.errors.invalid`) for the first field that breaks its rule,
    in declaration order. Fields without rule keys are not touched.
    """
    cls = type(config)
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    for f in dataclasses.fields(config):
        meta = f.metadata
        if meta.get("check") is False or not (meta.get("check") is True
                                               or any(key in meta for key in _RULE_KEYS)):
            continue
        base, optional, sequence = _split_type(hints.get(f.name, Any))
        value = getattr(config, f.name)
        if sequence and not (optional and value is None):
            if not isinstance(value, (tuple, list)):
                raise invalid(f.name, value, "a sequence of values")
            for item in value:
                _check_one(f.name, item, base, meta, False)
        else:
            _check_one(f.name, value, base, meta, optional)
