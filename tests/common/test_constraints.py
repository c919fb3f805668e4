"""Field rules declared in dataclass metadata (`common.constraints`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from common import cli
from common.constraints import (
    check_fields,
    check_host_port,
    check_int,
    check_number,
    check_target,
    check_url,
    describe,
)
from common.errors import UsageError


@dataclass(frozen=True)
class Job:
    batch_size: int = field(default=64, metadata={"help": "images per step", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed", "min": 0})
    rate: float = field(default=0.1, metadata={"help": "rate", "gt": 0, "max": 1})
    version: int | None = field(default=None, metadata={"help": "version", "min": 0})
    mode: str = field(default="a", metadata={"help": "mode", "choices": ("a", "b")})
    grpc: str = field(default="localhost:8500", metadata={"help": "target", "rule": "target"})
    sizes: tuple[int, ...] = field(default=(32,), metadata={"help": "sizes", "min": 8})
    free: int = field(default=3, metadata={"help": "not checked here"})

    def __post_init__(self) -> None:
        check_fields(self)


def test_defaults_pass_and_numpy_ints_count_as_ints() -> None:
    Job()
    Job(batch_size=np.int64(8), rate=np.float32(0.5), version=2, sizes=(8, 16))


@pytest.mark.parametrize(("kwargs", "argument", "expected"), [
    ({"batch_size": True}, "batch_size", "a positive integer"),
    ({"batch_size": 0}, "batch_size", "a positive integer"),
    ({"batch_size": 2.0}, "batch_size", "a positive integer"),
    ({"seed": -1}, "seed", "a non-negative integer"),
    ({"rate": 0}, "rate", "a number in (0, 1]"),
    ({"rate": float("nan")}, "rate", "a number in (0, 1]"),
    ({"rate": 1.5}, "rate", "a number in (0, 1]"),
    ({"rate": False}, "rate", "a number in (0, 1]"),
    ({"version": -2}, "version", "a non-negative integer or None"),
    ({"mode": "c"}, "mode", "one of 'a', 'b'"),
    ({"grpc": "localhost"}, "grpc", "HOST:PORT (port 1..65535) or unix:/path/to/socket"),
    ({"sizes": (32, 4)}, "sizes", "an integer >= 8"),
    ({"sizes": 32}, "sizes", "a sequence of values"),
])
def test_a_broken_rule_names_the_argument_the_value_and_the_expectation(
        kwargs, argument, expected) -> None:
    with pytest.raises(UsageError) as info:
        Job(**kwargs)
    err = info.value
    assert err.argument == argument
    assert err.expected == expected
    assert f"Received: {argument}=" in str(err)


def test_fields_without_rules_are_left_alone() -> None:
    assert Job(free=-5).free == -5


@dataclass(frozen=True)
class Typed:
    seed: int = field(default=0, metadata={"help": "any integer", "check": True})
    resume: bool = field(default=False, metadata={"help": "a flag", "check": True})

    def __post_init__(self) -> None:
        check_fields(self)


def test_check_true_checks_the_type_alone() -> None:
    assert Typed(seed=-3, resume=True).seed == -3
    with pytest.raises(UsageError, match=r"`seed`.*Expected an integer\."):
        Typed(seed=True)
    with pytest.raises(UsageError, match=r"`resume`.*Expected True or False\."):
        Typed(resume=1)


def test_the_command_line_reports_a_rule_under_its_flag(capsys) -> None:
    def main(argv=None) -> int:
        return cli.run_cli(lambda a: (cli.parse_config(Job, a, prog="job"), 0)[1], argv,
                           prog="job")

    assert main(["--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size" in err[0] and "a positive integer" in err[0]


@pytest.mark.parametrize(("kind", "bounds", "words"), [
    ("int", {"min": 1}, "a positive integer"),
    ("int", {"min": 0}, "a non-negative integer"),
    ("int", {"min": 2, "max": 9}, "an integer in [2, 9]"),
    ("int", {}, "an integer"),
    ("float", {"gt": 0}, "a positive number"),
    ("float", {"min": 0}, "a non-negative number"),
    ("float", {"min": 0, "lt": 1}, "a number in [0, 1)"),
    ("float", {"max": 0.5}, "a number <= 0.5"),
])
def test_describe(kind, bounds, words) -> None:
    assert describe(kind, **bounds) == words


def test_function_forms() -> None:
    assert check_int("k", 3, min=1) == 3
    assert check_int("k", None, min=1, optional=True) is None
    with pytest.raises(UsageError, match="an integer in"):
        check_int("k", 10, min=1, max=5)
    with pytest.raises(UsageError, match="a positive number"):
        check_number("t", float("inf"), gt=0)
    assert check_number("t", float("inf"), gt=0, finite=False) == float("inf")


@pytest.mark.parametrize("good", ["localhost:8500", "10.0.0.1:1", "[::1]:8500", "a.b-c:65535"])
def test_host_port_accepts(good) -> None:
    assert check_host_port("grpc", good) == good
    assert check_target("grpc", good) == good


@pytest.mark.parametrize("bad", ["localhost", "localhost:0", "localhost:65536", ":8500",
                                 "host name:1", "http://h:1", 8500, None, "h:1/x"])
def test_host_port_refuses(bad) -> None:
    with pytest.raises(UsageError):
        check_host_port("grpc", bad)
    with pytest.raises(UsageError):
        check_target("grpc", bad)


def test_target_accepts_grpc_schemes_and_url_rule() -> None:
    assert check_target("upstream", "unix:/sock/tfs.sock") == "unix:/sock/tfs.sock"
    with pytest.raises(UsageError):
        check_target("upstream", "unix:")
    assert check_url("rest", "http://localhost:8501") == "http://localhost:8501"
    for bad in ("localhost:8501", "ftp://h:1", "http://h:0", "http://user@h:1"):
        with pytest.raises(UsageError):
            check_url("rest", bad)
