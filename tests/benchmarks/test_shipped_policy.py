"""`python -m benchmarks.shipped_policy`: its arguments checked before anything starts, the
shipped policy file valid for both deployed models, and one tiny run end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import shipped_policy as sp
from common.errors import UsageError
from serving.gateway.config import load_policy
from tests.benchmarks.colours import CLASSES, colour_images, colour_labels

# The tiny policy of the argument checks and the end-to-end run: the shipped policy's shape
# (binomial window, misinformation for a flagged client) with tiny numbers.
TINY_POLICY = {
    "auth": {"required": True},
    "limits": {"budget": 100000, "rate_per_second": 1000, "burst": 4000},
    "on_flag": {"action": "degrade", "policy": "label_only"},
    "models": ["cifar10_cnn", "colours"],
    "per_model": {"colours": {
        "detectors": {"ood": {"path": "/container/det", "aggregate": "binomial", "fpr": 0.02,
                              "alpha": 1e-6, "window": 64, "min_queries": 16}},
        "on_flag": {"action": "misinform", "policy": "identity"},
        "misinformation": {"tau": -1, "function": "reverse"}}},
}


# The argument checks' victim is called cifar10_cnn (the registry's data): the same section.
LAYOUT_POLICY = {**TINY_POLICY, "per_model": {
    name: TINY_POLICY["per_model"]["colours"] for name in ("cifar10_cnn", "colours")}}


def _policy_file(base: Path, data: dict = LAYOUT_POLICY) -> Path:
    path = base / "policy.json"
    path.write_text(json.dumps(data))
    return path


def _argv(layout: Path, *extra: str) -> list[str]:
    return ["--victims", str(layout / "victims"), "--data-dir", str(layout / "data"),
            "--detector", str(layout / "det" / "1"), *extra]


@pytest.mark.parametrize("extra, argument", [
    (["--budget", "0"], "`--budget`"),
    (["--seeds", "1", "1"], "`--seeds`"),
    (["--thieves", "knockoff_probs", "knockoff_probs"], "`--thieves`"),
    (["--undefended-seeds", "-1"], "`--undefended-seeds`"),
    (["--pool-fraction", "1"], "`--pool-fraction`"),
    (["--misinformation-model", "/no/such/model"], "`--misinformation-model`"),
    (["--detector", "/no/such/detector"], "`--detector`"),
    (["--policy", "/no/such/policy.json"], "`--policy`"),
    (["--data-dir", "/no/such/data"], "`--data-dir`"),
])
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(layout, extra, argument,
                                                               one_line_error):
    one_line_error(sp.main, _argv(layout, "--policy", str(_policy_file(layout)), *extra),
                   argument)


def test_the_policy_must_expose_the_model_and_name_its_detector(layout, one_line_error):
    policy = _policy_file(layout, {**TINY_POLICY, "models": ["colours"]})  # no cifar10_cnn
    one_line_error(sp.main, _argv(layout, "--policy", str(policy)), "`--model`")
    # without --detector, the policy's own (container) path must exist
    argv = [a for a in _argv(layout, "--policy", str(_policy_file(layout)), "--model",
                             "colours") if a not in ("--detector", str(layout / "det" / "1"))]
    (layout / "victims" / "colours" / "1").mkdir(parents=True)
    one_line_error(sp.main, [*argv, "--benign-set", str(layout / "data" / "x.npz")],
                   "detectors.ood.path")
    broken = layout / "broken.json"
    broken.write_text('{"detectors": {"ood": {"path": "x"}}, "on_flag": {"action": "explode"}}')
    one_line_error(sp.main, _argv(layout, "--policy", str(broken)), "on_flag.action")


def test_resolve_policy_fills_this_runs_paths_in_the_models_section(tmp_path):
    (tmp_path / "det").mkdir()
    (tmp_path / "mis").mkdir()
    data = {**TINY_POLICY, "per_model": {"colours": {
        **TINY_POLICY["per_model"]["colours"],
        "misinformation": {"function": "model", "path": "/container/mis", "tau": -1},
        "watermark": {"key_file": "/secrets/wm.key", "fraction": 0.01}}}}
    got = sp.resolve_policy(_policy_file(tmp_path, data), "colours",
                            detector=str(tmp_path / "det"),
                            misinformation_model=str(tmp_path / "mis"),
                            key_file=tmp_path / "wm.key")
    section = got["per_model"]["colours"]
    assert section["detectors"]["ood"]["path"] == str(tmp_path / "det")
    assert section["misinformation"]["path"] == str(tmp_path / "mis")
    assert section["watermark"]["key_file"] == str(tmp_path / "wm.key")
    assert data["per_model"]["colours"]["detectors"]["ood"]["path"] == "/container/det"


def test_the_shipped_policy_decides_both_models_with_their_own_detectors():
    policy = load_policy(sp.SHIPPED_POLICY)
    assert set(policy.models) == {"cifar10_cnn", "gtsrb_resnet34"}
    detectors = set()
    for model in policy.models:
        rules = policy.for_model(model)
        assert rules is not policy, model
        assert rules.ood is not None and rules.ood.aggregate == "binomial", model
        assert rules.on_flag_action == "misinform" and rules.misinformation.function == "model"
        assert rules.misinformation.tau is not None and rules.misinformation.tau < 0  # all
        assert rules.watermark is not None and rules.watermark.fraction <= 0.005
        detectors.add(rules.ood.path)
        assert model.split("_")[0] in rules.ood.path and model.split("_")[0] in \
            rules.misinformation.path
    assert len(detectors) == 2


def test_the_shipped_policy_names_container_paths_a_run_must_replace(tmp_path):
    with pytest.raises(UsageError, match="detectors.ood.path.*--detector"):
        sp.resolve_policy(sp.SHIPPED_POLICY, "gtsrb_resnet34")
    (tmp_path / "det").mkdir()
    (tmp_path / "mis").mkdir()
    got = sp.resolve_policy(sp.SHIPPED_POLICY, "gtsrb_resnet34", detector=str(tmp_path / "det"),
                            misinformation_model=str(tmp_path / "mis"),
                            key_file=tmp_path / "wm.key")
    assert list(got["per_model"]) == got["models"] == ["gtsrb_resnet34"]  # one victim served
    assert got["per_model"]["gtsrb_resnet34"]["detectors"]["ood"]["path"] == str(tmp_path / "det")


# -- end to end on the tiny colour world (tests/benchmarks/conftest.py) ---------------------------
@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    base, detector = tiny_world
    here = tmp_path_factory.mktemp("shipped")
    train, test = colour_images(300, seed=5), colour_images(400, seed=2)
    np.savez(here / "benign.npz", x_train=train, y_train=colour_labels(train), x_test=test,
             y_test=colour_labels(test), class_names=np.array(CLASSES))
    return base, detector, here


@pytest.mark.slow
def test_end_to_end_thieves_benign_clients_and_latency(world, capsys):
    base, detector, here = world
    out = here / "run"
    argv = ["--victims", str(base / "victims"), "--model", "colours", "--policy",
            str(_policy_file(here, TINY_POLICY)), "--detector", str(detector), "--benign-set",
            str(here / "benign.npz"), "--transfer-set", str(base / "transfer.npz"),
            "--data-dir", str(base), "--weights", "none", "--backbone", "cnn", "--arch-args",
            "--input-size", "16", "--epochs", "4", "--batch-size", "32", "--query-batch", "16",
            "--budget", "120", "--pool-size", "300", "--seeds", "0", "--benign-clients", "4",
            "--latency-requests", "3", "--out", str(out)]
    assert sp.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "| realistic |" in stdout and "Benign:" in stdout
    results = json.loads((out / "results.json").read_text())
    rows = {(r["thief"], r["gateway"]): r for r in results["rows"]}
    assert len(rows) == 12
    for thief in sp.THIEVES:
        row = rows[(thief, True)]
        assert row["n_test"] == 200 and row["n_queries"] == 120, thief
        # every out-of-task thief (bright images, JPEG or camouflaged) is flagged; the realistic
        # adversary (dark, in-domain) never is
        assert row["flagged"] == (thief != "realistic"), thief
    probs, undefended = rows[("knockoff_probs", True)], rows[("knockoff_probs", False)]
    assert probs["flagged_at"] <= 32 and probs["misinformed_requests"] >= 5
    assert probs["ratio"] < undefended["ratio"]
    benign = results["benign"]
    assert benign["flagged_clients"] == 0 and benign["n"] == 400
    assert benign["top1_changed"] == 0.0 and benign["accuracy_change"] == 0.0
    latency = results["latency"]
    assert latency["batch_64"]["requests"] == 3 and latency["batch_1"]["p50_gateway_ms"] > 0
    assert results["policy"]["per_model"]["colours"]["detectors"]["ood"]["path"] == \
        str(detector)
    summary = {s["thief"]: s for s in results["summary"]}
    assert summary["realistic"]["flagged"] == "0/1" and summary["copycat"]["flagged"] == "1/1"
    md = (out / "results.md").read_text()
    assert md.startswith("# Shipped policy: colours") and "ratio, undefended" in md
    # a re-run with fewer seeds of the same thieves reuses every finished one
    before = (out / "defended" / "copycat_s0" / "report.json").stat().st_mtime_ns
    assert sp.main([*argv, "--undefended-seeds"]) == 0
    assert (out / "defended" / "copycat_s0" / "report.json").stat().st_mtime_ns == before
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 6


def test_results_name_the_policy_file_without_a_machine_path(tmp_path):
    assert sp._shown(str(sp.SHIPPED_POLICY)) == "serving/deploy/config/policy.json"
    assert sp._shown(str(tmp_path / "p.json")) == str(tmp_path / "p.json")
