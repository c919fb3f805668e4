"""Plans of experiments: steps that run the toolkit's own commands from their config objects.

A plan (`benchmarks.reproduce`'s cpu plan, `benchmarks.full_scale`'s full one) is a list of
`Step`s; each step runs one or more `Command`s and reads its figures back from what they wrote.
A `Command` is a module (``attack.knockoff``) and the values of that module's frozen config
dataclass (`attack.config.KnockoffConfig`); it is rendered to a command line by the bridge the
CLIs parse with (`common.cli.as_flags` / `build_parser`), and when it is built the rendered line
is parsed back with the command's own parser and must give the same values: a renamed field, a
wrong type or an unknown choice fails when the plan is built, not hours later when the step
runs. The config object itself (with its checks of files that earlier steps write) is made just
before the command runs.

A step writes `<out>/<step>/` and, when it has finished, `<out>/<step>/done.json`; a step with
its `done.json` is not run again. The model server over the exported victims is started once
for the steps that need it, through `serving.testing`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.cli import as_flags, build_parser
from common.errors import UsageError
from common.fileio import write_json_atomic

if TYPE_CHECKING:  # grpc: imported when a server starts, so that --help answers fast
    from serving import testing

__all__ = ["SERVER", "Command", "Context", "Step", "StepUnavailable", "closure", "machine",
           "print_commands", "run_step", "shown", "versions"]

REPO = Path(__file__).resolve().parents[2]

SERVER = "dns:///plan-model-server:8500"
"""The `grpc` value of a command that queries the plan's model server (set when it runs)."""
_SERVER_SHOWN = "127.0.0.1:<port>"


class StepUnavailable(RuntimeError):
    """A step that cannot run on this machine (missing data); `str(err)` is the one-line reason."""


@functools.lru_cache(maxsize=None)
def _parser(cls: type, module: str) -> argparse.ArgumentParser:
    return build_parser(cls, prog=f"python -m {module}")


def _parsed_back(cls: type, argv: list[str], module: str) -> dict[str, Any]:
    """`argv` parsed by `cls`'s command-line parser (`common.cli.build_parser`) as field values;
    `ValueError` with argparse's one line when it does not parse."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            namespace = _parser(cls, module).parse_args(argv)
    except SystemExit:
        raise ValueError(" ".join(err.getvalue().split())) from None
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(namespace, f.name):
            value = getattr(namespace, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


@dataclass(frozen=True)
class Command:
    """``python -m <module>`` with `values` of the module's config dataclass `config_class`.

    `values` are rendered in their order as the command's flags. Checked when built: every name
    is a command-line field of `config_class`, and the rendered line parses back with the
    command's parser to the same values. `resume_in`: the run folder (its ``config.json`` adds
    ``resume=True``); `skip_if`: a file whose presence skips the command (a detector exported
    earlier).
    """

    module: str
    config_class: type
    values: Mapping[str, Any]
    resume_in: Path | None = None
    skip_if: Path | None = None

    def __post_init__(self) -> None:
        known = {f.name for f in dataclasses.fields(self.config_class)
                 if f.init and f.metadata.get("cli", True)}
        unknown = [name for name in self.values if name not in known]
        if unknown:
            raise TypeError(f"{self.module}: {self.config_class.__name__} has no command-line "
                            f"field {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.values.items()}
        object.__setattr__(self, "values", values)
        try:
            back = _parsed_back(self.config_class, self.argv()[2:], self.module)
        except ValueError as err:
            raise ValueError(f"{self.module}: the plan's values do not parse: {err}") from None
        differing = [k for k, v in values.items() if back[k] != v or type(back[k]) is not type(v)]
        if differing:
            raise ValueError(f"{self.module}: {', '.join(differing)} parse back as "
                             + ", ".join(f"{back[k]!r} (plan: {values[k]!r})" for k in differing))

    @property
    def queries_server(self) -> bool:
        return self.values.get("grpc") == SERVER

    def argv(self, **changes: Any) -> list[str]:
        """``["-m", module, *flags]`` of the values (with `changes`), rendered by `as_flags`."""
        values = {**self.values, **changes}
        return ["-m", self.module, *shlex.split(as_flags(self.config_class, values))]

    def config(self, **changes: Any) -> Any:
        """The config object (its own checks run now: files the earlier steps wrote)."""
        return self.config_class(**{**self.values, **changes})

    def runtime_changes(self, server: Callable[[], str]) -> dict[str, Any]:
        """What only the running plan knows: the server's address, whether to resume."""
        changes: dict[str, Any] = {}
        if self.queries_server:
            changes["grpc"] = server()
        if self.resume_in is not None and (self.resume_in / "config.json").is_file():
            changes["resume"] = True
        return changes

    def skipped(self) -> bool:
        return self.skip_if is not None and self.skip_if.is_file()


@dataclass(frozen=True)
class Step:
    """One experiment: its commands and how its figures are read back from what they wrote.

    `commands` are built with the plan; a step whose commands depend on this machine (a dataset
    resolved to a local copy or a download) gives `prepare`, called when the step runs or is
    shown, which returns them or raises `StepUnavailable`.
    """

    name: str
    title: str
    needs: tuple[str, ...]
    commands: tuple[Command, ...]
    summarize: Callable[[Context], dict[str, Any]]
    prepare: Callable[[], tuple[Command, ...]] | None = None

    def resolved(self) -> tuple[Command, ...]:
        return self.prepare() if self.prepare is not None else self.commands


@dataclass
class Context:
    """Where a plan reads and writes, and the model server started for its steps."""

    data: Path
    out: Path
    seed: int = 0
    servers: dict[str, testing.Running] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def file(self, name: str) -> str:
        return str(self.data / name)

    def server(self) -> str:
        """Start (once) the embedded model server over `<out>/victims/models.config`."""
        if "victims" not in self.servers:
            from serving import testing

            self.servers["victims"] = testing.model_server(
                config_file=self.path("victims", "models.config"), process=True)
        return self.servers["victims"].target

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


# -- running ---------------------------------------------------------------------------------------
def shown(argv: list[str]) -> str:
    return "python " + shlex.join(argv)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (a command's one-line error), shortened."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    last = next((line for line in reversed(lines) if line), "")
    return last if len(last) <= 300 else last[:297] + "..."


def run_step(ctx: Context, step: Step) -> dict[str, Any]:
    """Run one step unless its `done.json` exists; return its recorded result.

    Raises `RuntimeError`: `StepUnavailable` when the step cannot run here, otherwise a failed
    command (or a config its files do not satisfy), with its one-line error.
    """
    folder = ctx.path(step.name)
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / "log.txt"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    started = time.time()
    try:
        commands = step.resolved()
    except StepUnavailable as err:
        with open(log_file, "a") as logfile:
            logfile.write(f"unavailable: {err}\n")
        raise
    lines = []
    for command in commands:
        if command.skipped():
            continue
        changes = command.runtime_changes(ctx.server)
        try:
            command.config(**changes)
        except UsageError as err:
            raise RuntimeError(f"step {step.name}: {command.module}: {err}") from None
        argv = command.argv(**changes)
        lines.append(shown(argv))
        print(f"[{step.name}] $ {lines[-1]}", flush=True)
        with open(log_file, "a") as logfile:
            code = subprocess.run([sys.executable, *argv], env=env, cwd=REPO, stdout=logfile,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            last = _last_line(log_file)
            raise RuntimeError(f"step {step.name} failed (exit {code})"
                               + (f": {last}" if last else "") + f"; see {log_file}")
    result = {"name": step.name, "title": step.title, "commands": lines,
              "seconds": round(time.time() - started, 1), "figures": step.summarize(ctx)}
    write_json_atomic(done, result)
    return result


def print_commands(ctx: Context, plan: list[Step]) -> None:
    """Print each step's commands as `run_step` would run them (nothing is run or started)."""
    for step in plan:
        needs = f"  (after {', '.join(step.needs)})" if step.needs else ""
        print(f"# {step.name}: {step.title}{needs}")
        if ctx.path(step.name, "done.json").is_file():
            print("#   done: not run again")
            continue
        try:
            commands = step.resolved()
        except StepUnavailable as err:
            print(f"#   cannot run here: {err}")
            continue
        for command in commands:
            if not command.skipped():
                print(shown(command.argv(**command.runtime_changes(lambda: _SERVER_SHOWN))))


def closure(plan: list[Step], only: list[str]) -> list[Step]:
    """The steps `only` names and every step they need, in plan order."""
    by_name = {s.name: s for s in plan}
    wanted: set[str] = set()
    stack = list(only)
    while stack:
        name = stack.pop()
        if name in wanted:
            continue
        wanted.add(name)
        stack.extend(by_name[name].needs)
    return [s for s in plan if s.name in wanted]


def versions() -> dict[str, str]:
    """The versions the results page records."""
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "tensorflow-serving-api", "grpcio", "numpy", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def machine() -> str:
    """The machine in one line (TensorFlow is imported to count GPUs)."""
    gpus = "no GPU"
    try:
        import tensorflow as tf

        found = tf.config.list_physical_devices("GPU")
        if found:
            gpus = f"{len(found)} GPU(s)"
    except Exception:  # noqa: BLE001 - the page says what it could find
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpus}, {platform.platform()}"

