"""Tests of the dataclass -> argparse bridge, the exit-code contract and the JSON round trip."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.cli import (
    ArgumentParser,
    add_dataclass_arguments,
    as_flags,
    build_parser,
    config_to_dict,
    load_config,
    parse_config,
    report_usage_error,
    run_cli,
    save_config,
    typed_fields,
    typed_in,
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
    # one line and a pointer to --help, not the whole usage first (issue 17, case 9)
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.endswith(f"(see {PROG} --help)\n")


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


# -- issue 17: flags in messages, outputs checked first, interruptions ------------------------


@dataclass(frozen=True)
class JobConfig:
    """A job with data specs, a resumable run folder and a report file."""

    transfer_set: str = field(metadata={"metavar": "SPEC"})
    test_set: str | None = field(default=None, metadata={"metavar": "SPEC"})
    test_split: str = "test"
    target_fpr: float = 0.01
    step: float = field(default=0.1, metadata={"flag": "--lambda"})
    report: str | None = field(default=None, metadata={"output": "file"})
    cache: str | None = field(default=None, metadata={"output": False})
    out: str = "runs/job"
    resume: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.target_fpr < 1:
            raise invalid("target_fpr", self.target_fpr, "a rate in [0, 1)")
        if not 0 < self.step <= 1:
            raise invalid("step", self.step, "lambda in (0, 1]")


def job_main(argv, work=None, **kwargs) -> int:
    def body(args):
        config = parse_config(JobConfig, args, prog=PROG)
        if work is not None:
            work(config)
        return 0

    return run_cli(body, argv, prog=PROG, **kwargs)


@pytest.mark.parametrize("argv, shown", [
    (["--target-fpr", "1.5"], "argument `--target-fpr`. Received: --target-fpr=1.5."),
    (["--lambda", "0"], "argument `--lambda`. Received: --lambda=0.0."),
])
def test_validation_errors_name_the_flag_typed(tmp_path, capsys, argv, shown):
    assert job_main(["--transfer-set", "t", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and shown in err
    assert "target_fpr" not in err and "`step`" not in err


def test_a_data_layer_spec_error_names_the_flag_that_held_the_value(tmp_path, capsys):
    def load(config):  # what common.data raises, about its parameter `spec`
        raise invalid("spec", str(config.test_set).strip(), "an existing file")

    argv = ["--transfer-set", "a.zip", "--test-set", " b.zip", "--out", str(tmp_path / "r")]
    assert job_main(argv, load) == 2
    err = capsys.readouterr().err
    assert "argument `--test-set`. Received: --test-set='b.zip'. Expected an existing file." in err
    assert "spec" not in err

    def split(config):
        raise invalid("split", config.test_split, "splits of b among 'train'")

    assert job_main([*argv, "--test-split", "val"], split) == 2
    assert "argument `--test-split`. Received: --test-split='val'" in capsys.readouterr().err

    def ambiguous(config):  # both specs hold the value: the message stays as it was
        raise invalid("spec", "a.zip", "an existing file")

    assert job_main(["--transfer-set", "a.zip", "--test-set", "a.zip", "--out",
                     str(tmp_path / "r")], ambiguous) == 2
    assert "argument `spec`" in capsys.readouterr().err


def test_outputs_are_checked_writable_before_the_job_runs(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    ran = []
    for flag, expected in (("--out", "`--out`"), ("--report", "`--report`")):
        argv = ["--transfer-set", "t", "--out", str(tmp_path / "ok"), flag,
                str(blocker / "inside")]
        assert job_main(argv, ran.append) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "is a file, not a folder" in err
    assert not ran and not (tmp_path / "ok").exists()  # nothing created by the check
    argv = ["--transfer-set", "t", "--out", str(tmp_path / "ok"), "--cache", str(blocker / "x")]
    assert job_main(argv, ran.append) == 0 and len(ran) == 1  # output: False is not checked


def test_a_user_fixable_oserror_is_one_line_exit_2(tmp_path, capsys):
    def full(config):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f"))

    assert job_main(["--transfer-set", "t", "--out", str(tmp_path / "r")], full) == 2
    assert capsys.readouterr().err == (f"{PROG}: error: No space left on device: "
                                       f"{tmp_path / 'f'}\n")


def _interrupt(config):
    Path(config.out).mkdir(parents=True)
    (Path(config.out) / "config.json").write_text("{}")
    raise KeyboardInterrupt


def test_ctrl_c_is_one_line_with_the_resume_command_and_exit_130(tmp_path, capsys):
    out = tmp_path / "my runs" / "r1"
    argv = ["--transfer-set", "t", "--out", str(out)]
    assert job_main(argv, _interrupt) == 130
    err = capsys.readouterr().err
    assert err == (f"{PROG}: interrupted; the run in {out} is kept; continue it with: {PROG} "
                   f"--transfer-set t --out '{out}' --resume\n")


def test_ctrl_c_before_the_run_exists_says_nothing_was_written(tmp_path, capsys):
    def stop(config):
        raise KeyboardInterrupt

    assert job_main(["--transfer-set", "t", "--out", str(tmp_path / "r")], stop) == 130
    assert capsys.readouterr().err == f"{PROG}: interrupted; nothing was written to " \
                                      f"{tmp_path / 'r'}\n"


def test_sigterm_is_one_line_exit_143_and_the_handler_is_restored(tmp_path, capsys):
    def term(config):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives first; this never finishes
        raise AssertionError("SIGTERM did not stop the job")

    previous = signal.getsignal(signal.SIGTERM)
    code = run_cli(lambda argv: term(None), [], prog=PROG, resume_hint="run it again")
    assert code == 143
    assert capsys.readouterr().err == f"{PROG}: terminated (SIGTERM); run it again\n"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_as_flags_writes_what_the_user_types():
    config = JobConfig(transfer_set="t")
    assert as_flags(config, {"target_fpr": 0.5, "step": 0.2, "resume": False,
                             "test_set": None, "transfer_set": "my file"}) == \
        "--target-fpr 0.5 --lambda 0.2 --no-resume --test-set none --transfer-set 'my file'"


def test_an_out_file_that_exists_may_be_overwritten(tmp_path):
    @dataclass(frozen=True)
    class FileJob:
        out: str = field(metadata={"metavar": "FILE"})

    (tmp_path / "samples.npz").write_bytes(b"old")
    assert parse_config(FileJob, ["--out", str(tmp_path / "samples.npz")]).out.endswith("npz")
    with pytest.raises(UsageError, match="is a folder"):
        parse_config(FileJob, ["--out", str(tmp_path)])


@pytest.mark.parametrize("value", ["-1,1", "-0.5,0.5", "-1", "-.5"])
def test_a_value_of_negative_numbers_is_a_value_not_a_flag(value, capsys):
    """``--input-range -1,1`` (the form every attack's help shows) reached argparse as an
    unknown flag: "expected one argument", exit 2, on every attack command line."""
    assert sample_main(["--dataset", "d", "--mode", value]) == 2  # a value, refused as a choice
    assert f"invalid choice: '{value}'" in capsys.readouterr().err


def test_an_attack_takes_input_range_minus_one_one_as_typed():
    from attack.knockoff import KnockoffConfig

    config = parse_config(KnockoffConfig, ["--grpc", "localhost:8500", "--model", "m",
                                           "--transfer-set", "x", "--input-range", "-1,1"],
                          prog="python -m attack")
    assert config.input_range == "-1,1"


# -- the parser's record of the flags typed (typed_fields / typed_in) --------------------------


@dataclass(frozen=True)
class TypedConfig:
    """Every kind of field, each with a default the user may or may not type."""

    budget: int = 100_000
    input_range: str = "0,255"
    step: float = field(default=0.1, metadata={"flag": "--lambda"})
    augment: bool = True
    limit: int | None = None
    classes: tuple[str, ...] = ()
    secret: str = field(default="hidden", metadata={"cli": False})


@pytest.mark.parametrize("argv, typed", [
    ([], set()),  # every field at its default: none typed
    (["--budget", "100000"], {"budget"}),  # the default's value, typed: typed
    (["--budget=100000"], {"budget"}),
    (["--bud", "5"], {"budget"}),  # argparse's abbreviation
    (["--bud=5", "--inp", "-1,1"], {"budget", "input_range"}),
    (["--input-range", "-1,1"], {"input_range"}),  # negative numbers: a value, not a flag
    (["--input-range=-1,1"], {"input_range"}),
    (["--lambda", "-0.5"], {"step"}),  # a flag named in metadata, a negative number
    (["--no-augment"], {"augment"}),
    (["--augment"], {"augment"}),  # typed even where it repeats the default
    (["--no-aug"], {"augment"}),
    (["--augment", "--no-augment"], {"augment"}),
    (["--limit", "none"], {"limit"}),  # typed although the value is None
    (["--classes"], {"classes"}),  # no values: the empty tuple, typed
    (["--classes", "cat", "dog", "--budget", "7"], {"classes", "budget"}),
])
def test_typed_fields_are_the_flags_on_the_command_line_in_any_spelling(argv, typed):
    assert typed_fields(TypedConfig, argv) == typed


def test_typed_fields_reads_sys_argv_by_default_and_exits_on_a_bad_command_line(monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--lam", "0.5"])
    assert typed_fields(TypedConfig) == {"step"}
    with pytest.raises(SystemExit) as exc:  # as parse_config does
        typed_fields(TypedConfig, ["--secret", "x"])  # a field off the command line
    assert exc.value.code == 2


def test_the_record_is_kept_by_any_parser_of_the_fields_and_never_reaches_the_config(tmp_path):
    parser = ArgumentParser(fromfile_prefix_chars="@")  # a parser that reads @file arguments
    add_dataclass_arguments(parser, TypedConfig)
    (tmp_path / "args.txt").write_text("--budget\n600\n--no-augment\n")
    namespace = parser.parse_args([f"@{tmp_path / 'args.txt'}", "--input-range", "-1,1"])
    assert typed_in(namespace) == {"budget", "augment", "input_range"}
    assert (namespace.budget, namespace.augment, namespace.step) == (600, False, 0.1)
    assert typed_in(argparse.Namespace(budget=5)) == frozenset()  # parsed by nobody's actions
    config = parse_config(SampleConfig, ["--dataset", "d", "--batch-size", "8"])
    assert config == SampleConfig(dataset="d", batch_size=8)  # parse_config is unchanged
