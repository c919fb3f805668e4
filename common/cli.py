"""The bridge between a job's frozen config dataclass and its command line.

Each job of the toolkit (train a victim, run an attack, calibrate a detector) has one frozen
dataclass that validates itself in ``__post_init__`` (raising `UsageError`) and is shared by the
Python API and the CLI. `build_parser` derives the argparse parser from the dataclass fields, so
flag, default and help text cannot drift apart: field ``batch_size`` becomes ``--batch-size``,
``field(metadata={"help": ..., "choices": ..., "metavar": ...})`` supplies the rest, a ``bool``
field becomes ``--x/--no-x``, ``X | None`` accepts ``none``, ``tuple[X, ...]`` takes several
values, and a field without a default is a required flag. `run_cli` gives every ``main(argv=None)
-> int`` the same behaviour:

* a `UsageError` becomes one line ``prog: error: message`` on stderr and exit code 2, naming the
  flag the user typed (``--target-fpr``, not the parameter ``target_fpr``; a data-layer error
  about a dataset ``spec`` or ``split`` names the flag that held that value, e.g.
  ``--transfer-set``); argparse's own errors are one line too, with a pointer to ``--help``
  instead of the whole usage;
* every output the config declares (a field named ``out``: a folder, or a file when its
  metavar is ``FILE``; or ``metadata={"output": "dir"}`` / ``"file"``; ``"output": False`` opts
  out) is checked writable by `parse_config`, before any training, query or download
  (`common.fileio.check_writable`); a permission, read-only or full-disk `OSError` met later is
  one line and exit code 2 as well;
* Ctrl-C (SIGINT) and SIGTERM end in one line and exit codes 130 and 143, as shells expect,
  with the command that continues the work: for a config with a ``resume`` flag whose ``out``
  folder holds a run, the same command with ``--resume``; otherwise the hint given to `run_cli`.

Which flags the user typed, as against defaults, is recorded by the parser itself: each field's
argparse action notes its field when argparse applies a value from the command line, whatever
the spelling argparse accepted (``--budget 5``, ``--budget=5``, the abbreviation ``--bud 5``,
``--no-augment``, a value of negative numbers). `typed_fields(cls, argv)` returns those field
names, so a command can tell a typed ``--budget 100000`` from the default 100000 without
scanning argv by hand; `typed_in(namespace)` reads the record of a namespace parsed by a parser
that `add_dataclass_arguments` built (an ``@file`` argument, where a parser allows them, counts
as typed).

`save_config` / `load_config` write a config as JSON into the run or output directory and read
it back.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import errno
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common import quiet
from common.errors import UsageError, invalid
from common.fileio import check_writable, write_json_atomic

__all__ = [
    "ArgumentParser",
    "add_dataclass_arguments",
    "as_flags",
    "check_outputs",
    "build_parser",
    "config_from_args",
    "config_to_dict",
    "configure_logging",
    "load_config",
    "parse_config",
    "report_usage_error",
    "run_cli",
    "save_config",
    "typed_fields",
    "typed_in",
]

T = TypeVar("T")

_NONE_WORDS = ("none", "null")
# What argparse takes for a value, not a flag, after a flag: negative numbers, and
# comma-separated lists of numbers that start with one (``-1,1``, ``-0.5,0.5``).
_NEGATIVE_VALUES = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d*\.?\d+(,-?\d*\.?\d+)+$")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in the help and keep the description/epilog (worked examples) as written."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``prog: error: message (see prog --help)``, exit 2.

    Stock argparse prints the whole usage (25 lines for an attack) before the line that
    matters; the usage is one ``--help`` away. A value made of negative numbers, such as
    ``--input-range -1,1``, is a value, not an unknown flag (stock argparse knows only ``-1``
    and ``-.5`` and stops with "expected one argument"); no flag of ours starts with a digit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUES

    def error(self, message: str) -> typing.NoReturn:
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The namespace attribute in which the actions below note the fields typed on the command line.
_TYPED = "_cli_typed_fields"


def _note_typed(namespace: argparse.Namespace, dest: str) -> None:
    vars(namespace).setdefault(_TYPED, set()).add(dest)


class _Store(argparse.Action):
    """argparse's ``store``, noting the field as typed. argparse calls an action only for an
    argument found on the command line, never for a default, so the note is exactly "typed"."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        _note_typed(namespace, self.dest)


class _BooleanOptional(argparse.BooleanOptionalAction):
    """``--x/--no-x``, noting the field as typed (either spelling)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _note_typed(namespace, self.dest)


# What the command being run parsed: flags and values of its config, for messages and hints.
@dataclasses.dataclass
class _Parsed:
    flags: dict[str, str] = dataclasses.field(default_factory=dict)
    metavars: dict[str, str] = dataclasses.field(default_factory=dict)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)


_PARSED: contextvars.ContextVar[_Parsed | None] = contextvars.ContextVar("parsed", default=None)


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
            kwargs["action"] = _BooleanOptional
        else:
            kwargs["action"] = _Store
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
    parser = ArgumentParser(
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
    raise `UsageError`, and so does an output the config declares that cannot be written
    (`check_outputs`). Use inside `run_cli` to turn both into an exit code.
    """
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    namespace = parser.parse_args(None if argv is None else list(argv))
    quiet.configure(namespace.verbose)  # before validation or the job imports TensorFlow
    _remember(cls, namespace)
    config = config_from_args(cls, namespace)
    check_outputs(config)
    return config


def typed_in(namespace: argparse.Namespace) -> frozenset[str]:
    """The fields whose flags were typed in the command line `namespace` was parsed from (by a
    parser built with `add_dataclass_arguments`); fields left at their defaults are not in it."""
    return frozenset(vars(namespace).get(_TYPED, ()))


def typed_fields(cls: type, argv: Sequence[str] | None = None) -> frozenset[str]:
    """The fields of config dataclass `cls` that `argv` (sys.argv[1:] when None) sets on the
    command line, in any spelling its parser accepts: ``{"budget"}`` for ``--budget 100000``,
    ``--budget=100000`` or ``--bud 100000``, nothing for a budget left at its default of
    100000. Parses `argv` with `cls`'s parser (`build_parser`), so a bad command line exits as
    `parse_config` does: call it once the config is parsed (inside `run_cli`)."""
    parser = build_parser(cls)
    return typed_in(parser.parse_args(None if argv is None else list(argv)))


def _remember(cls: type, namespace: argparse.Namespace) -> None:
    """Inside `run_cli`: keep the flags and values the user typed, for its messages."""
    parsed = _PARSED.get()
    if parsed is None:
        return
    for f in _cli_fields(cls):
        parsed.flags[f.name] = f.metadata.get("flag", _flag(f.name))
        parsed.metavars[f.name] = f.metadata.get("metavar", "")
        if hasattr(namespace, f.name):
            parsed.values[f.name] = getattr(namespace, f.name)


def as_flags(config: Any, values: dict[str, Any]) -> str:
    """``values`` (field name -> value) of `config`'s class written as its command-line flags,
    e.g. ``{"budget": 600, "arch_args": ["alpha=0.25"]}`` -> ``--budget 600 --arch-args
    alpha=0.25``; for messages that tell the user what to type."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    words: list[str] = []
    for name, value in values.items():
        f = fields.get(name)
        flag = f.metadata.get("flag", _flag(name)) if f is not None else _flag(name)
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            words += [flag, "none"]
        elif isinstance(value, (list, tuple)):
            words += [flag, *(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _output_kind(f: dataclasses.Field) -> str | None:
    default = None
    if f.name == "out":  # the convention: a folder, or a file when its metavar says FILE
        default = "file" if f.metadata.get("metavar") == "FILE" else "dir"
    kind = f.metadata.get("output", default)
    if kind in (None, False):
        return None
    if kind not in ("dir", "file"):
        raise TypeError(f"field {f.name!r}: metadata output={kind!r}, expected 'dir' or 'file'")
    return kind


def check_outputs(config: Any) -> None:
    """`UsageError` unless every output path `config` declares can be written (see the module
    docstring); nothing is created. `parse_config` calls it; the Python API may too."""
    for f in dataclasses.fields(config):
        kind = _output_kind(f)
        value = getattr(config, f.name)
        if kind is not None and isinstance(value, (str, os.PathLike)) and str(value).strip():
            check_writable(value, f.name, kind=kind)


# Loader parameters that stand for a flag: the data layer says `spec` for --dataset,
# --transfer-set or --test-set; the flag is the one whose value it received.
_VALUE_ARGUMENTS = {"spec": lambda name, metavar: metavar == "SPEC",
                    "split": lambda name, metavar: name == "split" or name.endswith("_split")}


def _same_value(typed: Any, received: Any) -> bool:
    if not isinstance(typed, (str, os.PathLike)) or not isinstance(received, (str, os.PathLike)):
        return False
    typed, received = str(typed).strip(), str(received).strip()
    return typed == received or (typed.startswith("tfds:") and typed[5:].strip() == received)


def _flag_for(err: UsageError, parsed: _Parsed | None) -> str | None:
    """The flag the user typed that `err` is about, or None."""
    argument = getattr(err, "argument", None)
    if parsed is None or not argument:
        return None
    if argument in parsed.flags:
        if parsed.values.get(argument) is None and getattr(err, "received", None) is not None:
            return None  # the value came from elsewhere (a stored config), not from the flag
        return parsed.flags[argument]
    match = _VALUE_ARGUMENTS.get(argument)
    if match is None or not getattr(err, "has_received", False):
        return None
    flags = [parsed.flags[name] for name, value in parsed.values.items()
             if match(name, parsed.metavars.get(name, "")) and _same_value(value, err.received)]
    return flags[0] if len(set(flags)) == 1 else None


def _message(err: BaseException, parsed: _Parsed | None) -> str:
    flag = _flag_for(err, parsed) if isinstance(err, UsageError) else None
    if flag is not None and err.has_received and err.expected is not None:
        text = (f"Invalid value for argument `{flag}`. Received: {flag}={err.received!r}. "
                f"Expected {err.expected}.")
    else:
        text = str(err)
    return " ".join(text.split())


def report_usage_error(prog: str, err: BaseException) -> int:
    """Print `err` as one line ``prog: error: message`` on stderr and return exit code 2.

    Inside `run_cli`, an error about one argument names the flag the user typed for it.
    """
    print(f"{prog}: error: {_message(err, _PARSED.get())}", file=sys.stderr)
    return 2


# OSErrors a user fixes (another path, free space, permissions), not bugs: one line, exit 2.
_USER_OS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                   errno.ENOTDIR, errno.EISDIR}


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks and journals close."""


def _resume_command(prog: str, argv: Sequence[str], parsed: _Parsed | None,
                    hint: str | None) -> str:
    """What to tell the user after an interruption: how to continue, when the work can be."""
    if parsed is not None and "resume" in parsed.flags and parsed.values.get("out"):
        run_dir = Path(str(parsed.values["out"]))
        if (run_dir / "config.json").is_file():
            again = [a for a in argv if a not in ("--resume", "--no-resume")]
            return (f"the run in {run_dir} is kept; continue it with: "
                    f"{prog} {shlex.join([*again, '--resume'])}")
        return f"nothing was written to {run_dir}"
    return hint or ""


def run_cli(
    body: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    resume_hint: str | None = None,
) -> int:
    """Run ``body(argv)`` as a command and return its exit code, never raising for usage errors.

    A `UsageError` (or a permission, read-only or full-disk `OSError`) becomes one line on
    stderr and exit code 2; argparse's own exits (``--help``: 0, a bad flag: 2) become the
    returned code, so ``main(argv) -> int`` is testable directly. Ctrl-C and SIGTERM end in one
    line with how to continue (see the module docstring; `resume_hint` for commands without a
    ``--resume`` flag, e.g. "run the same command again to resume from the last epoch") and
    exit codes 130 and 143.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = _Parsed()
    token = _PARSED.set(parsed)
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            raise _Terminated()

        previous_term = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            code = body(argv)
        except UsageError as err:
            return report_usage_error(prog, err)
        except OSError as err:
            if err.errno not in _USER_OS_ERRNOS:
                raise
            where = f": {err.filename}" if err.filename else ""
            print(f"{prog}: error: {err.strerror or err}{where}", file=sys.stderr)
            return 2
        except SystemExit as exc:
            if exc.code is None:
                return 0
            if isinstance(exc.code, int):
                return exc.code
            print(exc.code, file=sys.stderr)
            return 1
        except (KeyboardInterrupt, _Terminated) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            how = _resume_command(prog, args, parsed, resume_hint)
            print(f"{prog}: {'interrupted' if interrupted else 'terminated (SIGTERM)'}"
                  f"{'; ' + how if how else ''}", file=sys.stderr)
            return 130 if interrupted else 143
        return 0 if code is None else int(code)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        _PARSED.reset(token)


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
