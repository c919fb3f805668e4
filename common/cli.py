"""The bridge between a job's frozen config dataclass and its command line.

Each job of the toolkit (train a victim, run an attack, calibrate a detector) has one frozen
dataclass that validates itself in ``__post_init__`` (raising `UsageError`) and is shared by the
Python API and the CLI. `build_parser` derives the argparse parser from the dataclass fields, so
flag, default and help text cannot drift apart: field ``batch_size`` becomes ``--batch-size``,
``field(metadata={"help": ..., "choices": ..., "metavar": ...})`` supplies the rest, a ``bool``
field becomes ``--x/--no-x``, ``X | None`` accepts ``none``, ``tuple[X, ...]`` takes several
values, and a field without a default is a required flag. `run_cli` gives every ``main(argv=None)
-> int`` the same behaviour: a `UsageError` becomes one line ``prog: error: message`` on stderr
and exit code 2 (what argparse does for its own errors). `save_config` / `load_config` write a
config as JSON into the run or output directory and read it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common import quiet
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic

__all__ = [
    "add_dataclass_arguments",
    "build_parser",
    "config_from_args",
    "config_to_dict",
    "configure_logging",
    "load_config",
    "parse_config",
    "report_usage_error",
    "run_cli",
    "save_config",
]

T = TypeVar("T")

_NONE_WORDS = ("none", "null")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in the help and keep the description/epilog (worked examples) as written."""


@dataclasses.dataclass(frozen=True)
class _FieldType:
    base: type
    optional: bool
    sequence: bool


def _describe_type(annotation: Any, field_name: str) -> _FieldType:
    optional = False
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"field {field_name!r}: unsupported union type {annotation!r}")
        optional = len(rest) != len(args)
        annotation = rest[0]
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
    sequence = False
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"field {field_name!r}: only tuple[X, ...] is supported")
        sequence = True
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        annotation = type(typing.get_args(annotation)[0])
    if annotation not in (str, int, float, bool, Path):
        raise TypeError(f"field {field_name!r}: unsupported type {annotation!r}")
    return _FieldType(base=annotation, optional=optional, sequence=sequence)


def _converter(ftype: _FieldType, flag: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if ftype.optional and text.strip().lower() in _NONE_WORDS:
            return None
        if ftype.base is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        try:
            return ftype.base(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(ftype.base, ftype.base.__name__)
            expected = f"{kind} or 'none'" if ftype.optional else kind
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    convert.__name__ = ftype.base.__name__  # argparse names the type in its error messages
    return convert


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli", True)]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per init field of dataclass `cls` to `parser` (see the module docstring).

    Field metadata keys: ``help``, ``choices``, ``metavar``, ``flag`` (override the flag name),
    ``cli`` (False: leave the field off the command line; it keeps its default).
    """
    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls):
        ftype = _describe_type(hints[f.name], f.name)
        flag = f.metadata.get("flag", _flag(f.name))
        default = _default_of(f)
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs["default"] = default
        if ftype.base is bool and not ftype.sequence and not ftype.optional:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(ftype, flag)
            if ftype.sequence:
                kwargs["nargs"] = "*"
            if "choices" in f.metadata:
                kwargs["choices"] = list(f.metadata["choices"])
                if ftype.optional:
                    kwargs["choices"].append(None)
            if "metavar" in f.metadata:
                kwargs["metavar"] = f.metadata["metavar"]
            elif "choices" in f.metadata:
                kwargs["metavar"] = "{" + ",".join(str(c) for c in f.metadata["choices"]) + "}"
        parser.add_argument(flag, **kwargs)


def build_parser(
    cls: type,
    *,
    prog: str | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """An `ArgumentParser` with one flag per field of `cls`; defaults shown in ``--help``.

    `description` defaults to the first paragraph of the dataclass docstring.
    """
    if description is None and cls.__doc__:
        description = cls.__doc__.strip().split("\n\n")[0]
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=_HelpFormatter
    )
    add_dataclass_arguments(parser, cls)
    quiet.add_verbose_argument(parser)
    return parser


def config_from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build the config dataclass `cls` from a parsed namespace (runs its validation)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in _cli_fields(cls):
        if not hasattr(namespace, f.name):
            continue
        value = getattr(namespace, f.name)
        if value is not None and _describe_type(hints[f.name], f.name).sequence:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> T:
    """Parse `argv` (sys.argv[1:] when None) into a validated `cls`.

    argparse errors and ``--help`` raise `SystemExit` (as argparse does); validation errors
    raise `UsageError`. Use inside `run_cli` to turn both into an exit code.
    """
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    namespace = parser.parse_args(None if argv is None else list(argv))
    quiet.configure(namespace.verbose)  # before validation or the job imports TensorFlow
    return config_from_args(cls, namespace)


def report_usage_error(prog: str, err: BaseException) -> int:
    """Print `err` as one line ``prog: error: message`` on stderr and return exit code 2."""
    message = " ".join(str(err).split())
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_cli(
    body: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
) -> int:
    """Run ``body(argv)`` as a command and return its exit code, never raising for usage errors.

    A `UsageError` becomes one line on stderr and exit code 2; argparse's own exits (``--help``:
    0, a bad flag: 2) become the returned code, so ``main(argv) -> int`` is testable directly.
    """
    try:
        code = body(argv)
    except UsageError as err:
        return report_usage_error(prog, err)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0 if code is None else int(code)


def configure_logging(verbose: int = 0) -> None:
    """Log INFO (or DEBUG with `verbose` > 0) to stderr; for `main()` functions only."""
    logging.basicConfig(
        level=logging.DEBUG if verbose > 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# --------------------------------------------------------------------------------------------
# JSON round trip.


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config's init fields as a JSON-ready dict (paths as strings, tuples as lists)."""
    return {f.name: _jsonable(getattr(config, f.name))
            for f in dataclasses.fields(config) if f.init}


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write `config` as indented JSON to `path` atomically (temp file + `os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, config_to_dict(config), sort_keys=True)


def load_config(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read a config written by `save_config`; unknown keys or bad values raise `UsageError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise invalid("config", str(path), "an existing JSON config file") from None
    except (OSError, json.JSONDecodeError) as err:
        raise invalid("config", str(path), f"a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise invalid("config", str(path), "a JSON object")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise invalid("config", str(path), f"only the fields {', '.join(known)}; "
                      f"unknown: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        ftype = _describe_type(hints[name], name)
        to_path = (lambda v: Path(v) if isinstance(v, str) else v) if ftype.base is Path \
            else (lambda v: v)
        if isinstance(value, list) and ftype.sequence:
            value = tuple(to_path(v) for v in value)
        else:
            value = to_path(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise invalid("config", str(path), f"all required fields ({err})") from err
