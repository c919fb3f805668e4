"""Config composition and the run directory contract of the attack base: parts declared once,
flat config.json as before the parts, old run directories still resume, the new endpoint flags
validated before any side effect."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from attack.config import (
    RESUME_NEUTRAL_FIELDS,
    AttackConfig,
    CopycatConfig,
    EndpointPart,
    EvaluationPart,
    JBDAConfig,
    KnockoffConfig,
    RunPart,
    ServerPart,
    SurrogatePart,
    keep_run_settings,
)
from common.errors import UsageError
from tests.attack.helpers import assert_refused

# config.json keys of a KnockoffConfig before the endpoint part existed (the flat layout)
OLD_KNOCKOFF_KEYS = {
    "api_key", "arch_args", "backbone", "batch_size", "budget", "confidence",
    "consistency_weight", "curve_points", "epochs", "exclude_classes", "granularity", "grpc",
    "heldout", "in_flight", "input_size", "learning_rate", "model", "noise", "out",
    "query_batch", "resume", "reward", "seed", "semi_supervised", "strategy", "test_limit",
    "test_set", "test_split", "timeout", "transfer_set", "transfer_split", "unlabelled",
    "version", "weights"}
NEW_ENDPOINT_KEYS = {"rest", "signature", "output", "output_kind", "input_range", "num_classes"}


def knockoff(tmp_path, **changes) -> KnockoffConfig:
    return KnockoffConfig(transfer_set="unused.npz", weights="none", backbone="cnn",
                          out=str(tmp_path / "run"), **changes)


def test_each_field_is_declared_in_one_part():
    owners: dict[str, list[str]] = {}
    for part in (ServerPart, SurrogatePart, EvaluationPart, RunPart):
        for f in dataclasses.fields(part):
            owners.setdefault(f.name, []).append(part.__name__)
    extra = {f.name for f in dataclasses.fields(EndpointPart)} - {
        f.name for f in dataclasses.fields(ServerPart)}
    assert extra == NEW_ENDPOINT_KEYS | {"in_flight"}
    assert all(len(parts) == 1 for parts in owners.values()), owners
    assert issubclass(KnockoffConfig, EndpointPart) and issubclass(AttackConfig, SurrogatePart)
    from attack.equation_solving import EquationSolvingConfig
    from attack.fee import FeeConfig

    for exact in (EquationSolvingConfig, FeeConfig):  # no REST/range flags they cannot honour
        assert issubclass(exact, ServerPart) and not issubclass(exact, EndpointPart)
        assert issubclass(exact, EvaluationPart) and issubclass(exact, RunPart)


def test_config_json_keeps_the_flat_layout(tmp_path):
    from common.cli import config_to_dict

    keys = set(config_to_dict(knockoff(tmp_path)))
    recipe = {"target_temperature", "mixup", "label_smoothing", "warmup", "ema",
              "color_jitter", "augment",
              "fit_batch_size"}  # surrogate recipe options: absent from old runs = defaults
    assert keys - OLD_KNOCKOFF_KEYS - {"distribute", "active_rounds", "active_pool"} - recipe \
        == NEW_ENDPOINT_KEYS
    assert OLD_KNOCKOFF_KEYS <= keys


def test_an_old_config_json_still_resumes(tmp_path):
    from attack.pipeline import prepare_run_dir

    config = knockoff(tmp_path)
    prepare_run_dir(config)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    old = {k: v for k, v in saved.items() if k in OLD_KNOCKOFF_KEYS}
    path.write_text(json.dumps(old, sort_keys=True, indent=2))
    # the new fields at defaults, the surrogate's as the run trained (what the attacks resume)
    prepare_run_dir(keep_run_settings(dataclasses.replace(config, resume=True)))
    with pytest.raises(UsageError, match="input.range"):
        prepare_run_dir(keep_run_settings(dataclasses.replace(config, resume=True,
                                                              input_range="0,1")))


def test_output_kind_and_interface_are_resume_neutral(tmp_path):
    from attack.pipeline import prepare_run_dir

    assert {"output_kind", "rest", "grpc"} <= set(RESUME_NEUTRAL_FIELDS)
    config = knockoff(tmp_path)
    prepare_run_dir(config)
    prepare_run_dir(dataclasses.replace(config, resume=True, output_kind="logits",
                                        rest="http://localhost:8501"))
    with pytest.raises(UsageError, match="signature"):
        prepare_run_dir(dataclasses.replace(config, resume=True, signature="other"))


@pytest.mark.parametrize("changes, fragment", [
    ({"rest": "localhost:8501"}, "rest"),
    ({"rest": "ftp://host:8501"}, "rest"),
    ({"output_kind": "softmax"}, "output_kind"),
    ({"input_range": "0,2"}, "input_range"),
    ({"signature": ""}, "signature"),
    ({"output": ""}, "output"),
])
def test_new_endpoint_fields_are_validated(tmp_path, changes, fragment):
    with pytest.raises(UsageError, match=fragment):
        knockoff(tmp_path, **changes)
    assert not (tmp_path / "run").exists()


def test_endpoint_fields_accept_what_the_contract_names(tmp_path):
    config = knockoff(tmp_path, rest="https://[::1]:8501/", signature="serving_default",
                      output="scores", output_kind="topk", input_range="-1,1")
    assert config.rest == "https://[::1]:8501/"
    for cls, required in ((CopycatConfig, {"transfer_set": "x"}),
                          (JBDAConfig, {"seed_set": "x"})):
        assert cls(**required, weights="none", output_kind="labels").output_kind == "labels"


@pytest.mark.parametrize("argv, fragment", [
    (["--rest", "nope"], "rest"),
    (["--output-kind", "scores"], "output-kind"),
    (["--input-range", "0,2"], "input-range"),
])
def test_cli_refuses_bad_endpoint_flags_with_one_line(capsys, tmp_path, argv, fragment):
    from attack.knockoff import main

    code = main(["--transfer-set", "x.npz", "--out", str(tmp_path / "r"), *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(fragment in line for line in err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("attack, argv, fragment", [
    ("knockoff", ["--backbone", "nope"], "`--backbone`"),
    ("knockoff", ["--budget", "0"], "`--budget`"),
    ("knockoff", ["--granularity", "top2"], "`--granularity`"),
    ("knockoff", ["--grpc", "no-port"], "`--grpc`"),
    ("copycat", ["--pd-budget", "10"], "`--pd-set`"),
    ("copycat", ["--budget", "0"], "`--budget`"),
    ("copycat", ["--backbone", "nope"], "`--backbone`"),
    ("jbda", ["--lambda", "0"], "`--lambda`"),
    ("jbda", ["--per-round", "0"], "`--per-round`"),
    ("jbda", ["--tau", "0"], "`--tau`"),
])
def test_cli_bad_input_is_one_line_exit_2_before_any_file(capsys, tmp_path, attack, argv,
                                                          fragment):
    main = importlib.import_module(f"attack.{attack}").main
    data = ["--seed-set", "x.npz"] if attack == "jbda" else ["--transfer-set", "x.npz"]
    code = main([*data, "--weights", "none", "--out", str(tmp_path / "r"), *argv])
    assert_refused(capsys, code, fragment, unwritten=tmp_path / "r")
