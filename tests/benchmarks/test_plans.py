"""The plans of `benchmarks.reproduce` (smoke, cpu, full) built without running anything: every
command is its module's own config, and its command line parses back to an equal config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from attack.config import KnockoffConfig
from benchmarks import reproduce
from benchmarks.full_data import DATASETS
from benchmarks.harness import SERVER, Command, Context
from benchmarks.study import SCALES, attack_figures
from common.cli import build_parser, config_from_args
from detector.ood import DetectorConfig

# Configs whose own checks build the Keras backbone registry (TensorFlow, ~10 s): compared field
# by field in the default suite, constructed in the slow test.
HEAVY = (DetectorConfig,)
# Fields that name a folder an earlier step writes (or the data folder); other paths are files.
FOLDERS = {"reference", "detector", "victims", "data_dir", "source"}
OUTPUTS = {"out", "work_dir"}


def _world(tmp_path: Path) -> Context:
    """A data folder with a local copy of every dataset the full plan resolves."""
    data = tmp_path / "data"
    for ds in DATASETS.values():
        (data / ds.local[0]).mkdir(parents=True)
    return Context(data=data, out=tmp_path / "out", seed=7)


def _materialize(command: Command, root: Path) -> None:
    """Create what the command reads (as the earlier steps would have), so its config's own
    checks of files and folders pass."""
    for name, value in command.values.items():
        if name in OUTPUTS or not isinstance(value, str) or not value.startswith(str(root)):
            continue
        path = Path(value)
        if name in FOLDERS:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    if "victims" in command.values:  # the defended benchmarks check <victims>/<model>
        (Path(command.values["victims"]) / command.values["model"]).mkdir(parents=True,
                                                                          exist_ok=True)


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec.submodule_search_locations:  # a package: its __main__ is the command
        spec = importlib.util.find_spec(f"{module}.__main__")
    return Path(spec.origin).read_text()


def _check_plan(scale: str, tmp_path: Path, *, construct_heavy: bool) -> set[str]:
    ctx = _world(tmp_path)
    plan = reproduce.build_plan(SCALES[scale], ctx)
    commands = [command for step in plan for command in step.resolved()]
    for command in commands:
        # the module's command line is parsed from this class (read, not imported: some
        # modules import TensorFlow)
        assert command.config_class.__name__ in _source(command.module), command.module
        argv = command.argv()
        assert argv[:2] == ["-m", command.module]
        parser = build_parser(command.config_class, prog=f"python -m {command.module}")
        namespace = parser.parse_args(argv[2:])
        if command.config_class in HEAVY and not construct_heavy:
            parsed = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in vars(namespace).items() if k in command.values}
            assert parsed == dict(command.values), command.module
            continue
        _materialize(command, tmp_path)
        parsed = config_from_args(command.config_class, namespace)
        assert parsed == command.config(), command.module
        if command.queries_server:
            assert parsed.grpc == SERVER
        if "seed" in command.values:
            assert parsed.seed == 7
    return {command.module for command in commands}


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_command_of_the_plan_parses_back_to_an_equal_config(scale, tmp_path):
    modules = _check_plan(scale, tmp_path, construct_heavy=False)
    assert {"victim_export", "attack.knockoff", "attack.copycat", "attack.jbda",
            "attack.equation_solving", "attack.fee", "detector.train", "detector.evaluate",
            "benchmarks.prada_bench", "benchmarks.realistic_adversary",
            "benchmarks.output_policies"} <= modules
    assert ("benchmarks.full_data" in modules) == (scale == "full")


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_the_detector_configs_of_the_plan_construct_equal(scale, tmp_path):
    _check_plan(scale, tmp_path, construct_heavy=True)


def test_a_wrong_field_fails_when_the_plan_is_built():
    values = {"grpc": SERVER, "model": "m", "transfer_set": "t.zip", "test_set": "c.zip"}
    Command("attack.knockoff", KnockoffConfig, values)
    with pytest.raises(TypeError, match="KnockoffConfig has no command-line field budgett"):
        Command("attack.knockoff", KnockoffConfig, {**values, "budgett": 100})
    with pytest.raises(ValueError, match="budget parse back as 100"):
        Command("attack.knockoff", KnockoffConfig, {**values, "budget": "100"})
    with pytest.raises(ValueError, match="do not parse: .*--epochs"):
        Command("attack.knockoff", KnockoffConfig, {**values, "epochs": 2.5})
    with pytest.raises(ValueError, match="arch_args parse back"):
        Command("attack.knockoff", KnockoffConfig, {**values, "arch_args": "alpha=0.25"})


def test_a_command_resumes_its_run_and_skips_what_is_done(tmp_path):
    run = tmp_path / "run"
    done = tmp_path / "saved_model.pb"
    command = Command("attack.knockoff", KnockoffConfig, {
        "grpc": SERVER, "model": "m", "transfer_set": "t.zip", "test_set": "c.zip",
        "out": str(run)}, resume_in=run, skip_if=done)
    assert command.runtime_changes(lambda: "127.0.0.1:8500") == {"grpc": "127.0.0.1:8500"}
    run.mkdir()
    (run / "config.json").write_text("{}")
    changes = command.runtime_changes(lambda: "127.0.0.1:8500")
    assert changes == {"grpc": "127.0.0.1:8500", "resume": True}
    argv = command.argv(**changes)
    assert argv[argv.index("--grpc") + 1] == "127.0.0.1:8500" and "--resume" in argv
    assert not command.skipped()
    done.write_bytes(b"")
    assert command.skipped()


@pytest.mark.parametrize("agreement, read", [
    ({"0": 0.75, "1": None}, {"0": 0.75, "1": None}),
    ({}, None),  # an evaluation made before agreement existed: an empty table
    (None, None),  # a report without the key
])
def test_attack_figures_read_the_per_class_tables_of_the_report(tmp_path, agreement, read):
    evaluation = {"victim_acc": 0.9, "surrogate_acc": 0.6, "ratio": 0.667, "n_queries": 100,
                  "per_class_victim": {"0": 1.0, "1": None},
                  "per_class_surrogate": {"0": 0.5, "1": None}}
    if agreement is not None:
        evaluation["per_class_agreement"] = agreement
    (tmp_path / "step" / "run").mkdir(parents=True)
    (tmp_path / "step" / "run" / "report.json").write_text(json.dumps({"evaluation": evaluation}))
    figures = attack_figures(Context(data=tmp_path, out=tmp_path), "step")
    assert figures["per_class_surrogate"] == {"0": 0.5, "1": None}
    assert figures["per_class_victim"] == {"0": 1.0, "1": None}
    assert figures["per_class_agreement"] == read
    assert figures["ratio"] == 0.667 and "curve" not in figures
