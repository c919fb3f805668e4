"""Tests of the dataclass -> argparse bridge, the exit-code contract and the JSON round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.cli import (
    build_parser,
    config_to_dict,
    load_config,
    parse_config,
    report_usage_error,
    run_cli,
    save_config,
)
from common.errors import UsageError, invalid

PROG = "python -m sample"


@dataclass(frozen=True)
class SampleConfig:
    """Run the sample job.

    Second paragraph, not part of the description.
    """

    dataset: str = field(metadata={"help": "where the images are", "metavar": "SPEC"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    rate: float = field(default=0.5, metadata={"help": "a rate"})
    augment: bool = field(default=True, metadata={"help": "augment the images"})
    limit: int | None = field(default=None, metadata={"help": "at most this many"})
    mode: str = field(default="fast", metadata={"help": "how", "choices": ("fast", "slow")})
    classes: tuple[str, ...] = field(default=(), metadata={"help": "class names"})
    out: Path = field(default=Path("runs"), metadata={"help": "output directory"})
    secret: str = field(default="hidden", metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise invalid("batch_size", self.batch_size, "an integer of at least 1")


def sample_main(argv=None) -> int:
    def body(args):
        config = parse_config(SampleConfig, args, prog=PROG, epilog="example: sample --dataset x")
        print(json.dumps(config_to_dict(config), sort_keys=True))
        return 0

    return run_cli(body, argv, prog=PROG)


def test_flags_come_from_fields_with_their_defaults():
    config = parse_config(SampleConfig, ["--dataset", "cifar10"])
    assert config == SampleConfig(dataset="cifar10")
    assert config.limit is None and config.augment is True and config.out == Path("runs")


def test_every_kind_of_field_parses():
    config = parse_config(SampleConfig, [
        "--dataset", "d", "--batch-size", "8", "--rate", "0.25", "--no-augment", "--limit", "7",
        "--mode", "slow", "--classes", "cat", "dog", "--out", "elsewhere",
    ])
    assert config == SampleConfig(dataset="d", batch_size=8, rate=0.25, augment=False, limit=7,
                                  mode="slow", classes=("cat", "dog"), out=Path("elsewhere"))
    assert parse_config(SampleConfig, ["--dataset", "d", "--augment"]).augment is True
    assert parse_config(SampleConfig, ["--dataset", "d", "--limit", "none"]).limit is None


def test_help_shows_help_text_defaults_description_and_epilog(capsys):
    assert sample_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {PROG}")
    assert "Run the sample job." in text and "Second paragraph" not in text
    assert "--batch-size BATCH_SIZE" in text and "images per step (default: 32)" in text
    assert "--augment, --no-augment" in text
    assert "{fast,slow}" in text
    assert "--secret" not in text
    assert "example: sample --dataset x" in text


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--batch-size", "8"], "the following arguments are required: --dataset"),
        (["--dataset", "d", "--batch-size", "many"], "expected an integer, got 'many'"),
        (["--dataset", "d", "--limit", "x"], "expected an integer or 'none', got 'x'"),
        (["--dataset", "d", "--mode", "medium"], "invalid choice: 'medium'"),
        (["--dataset", "d", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argparse_errors_exit_2(argv, fragment, capsys):
    assert sample_main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and f"{PROG}: error:" in err


def test_validation_error_is_one_line_on_stderr_and_exit_2(capsys):
    assert sample_main(["--dataset", "d", "--batch-size", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{PROG}: error: Invalid value for argument `--batch-size`. Received: --batch-size=0. "
        "Expected an integer of at least 1.\n"
    )


def test_run_cli_passes_the_exit_code_and_flattens_multiline_messages(capsys):
    assert run_cli(lambda argv: 3, [], prog=PROG) == 3
    assert run_cli(lambda argv: None, [], prog=PROG) == 0

    def fail(argv):
        raise UsageError("first line\n  second line")

    assert run_cli(fail, None, prog=PROG) == 2
    assert capsys.readouterr().err == f"{PROG}: error: first line second line\n"
    assert report_usage_error("p", UsageError("x")) == 2


def test_other_exceptions_are_not_swallowed():
    def crash(argv):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_cli(crash, [], prog=PROG)


def test_config_json_round_trip(tmp_path):
    config = SampleConfig(dataset="d", classes=("a", "b"), limit=3, out=Path("x/y"))
    path = save_config(config, tmp_path / "run" / "config.json")
    data = json.loads(path.read_text())
    assert data["classes"] == ["a", "b"] and data["out"] == "x/y" and data["limit"] == 3
    assert load_config(SampleConfig, path) == config
    assert not [p for p in path.parent.iterdir() if p.name != "config.json"]  # no temp files


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"dataset": "d", "colour": 1}', "unknown: colour"),
        ('{"dataset": "d", "batch_size": 0}', "batch_size"),
        ('{"batch_size": 4}', "required fields"),
        ("[1, 2]", "a JSON object"),
        ("{not json", "readable JSON"),
    ],
)
def test_bad_config_files_are_usage_errors(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=match):
        load_config(SampleConfig, path)
    with pytest.raises(UsageError, match="existing JSON config"):
        load_config(SampleConfig, tmp_path / "absent.json")


def test_unsupported_field_types_are_rejected_when_building_the_parser():
    @dataclass(frozen=True)
    class Bad:
        mapping: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="mapping"):
        build_parser(Bad)
