"""`python -m benchmarks.realistic_adversary`: arguments, audit-log summary, and end to end.

The end-to-end test serves a tiny 16x16 "dominant colour" victim, puts the gateway with a tiny
exported OOD detector ("bright images are attack queries") in front of it, and checks that the
naive attacker (bright images) is flagged and degraded to labels while the realistic one (images
of the victim's own domain) is not, then that a second run reuses both finished attacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import realistic_adversary as ra
from benchmarks.harness import defended
from serving.gateway.store import AuditRecord


def _record(client, rows, *, attack=0, share=0.0, flagged=False, action="pass", code="OK",
            method="Predict"):
    verdicts = {"ood_attack_queries": attack, "ood_share": share, "flagged": flagged}
    return AuditRecord(0.0, client, method, "m", rows, verdicts, action, code, "")


def test_audit_summary_counts_flags_and_degraded_answers():
    records = [
        _record("naive", 32, attack=30, share=0.9),
        _record("realistic", 32, attack=1, share=0.03),
        _record("naive", 32, attack=31, share=0.95, flagged=True, action="degrade:label_only"),
        _record("naive", 0, method="GetModelMetadata"),
        _record("naive", 16, attack=16, share=0.96, flagged=True, action="degrade:label_only"),
        _record("naive", 16, code="RESOURCE_EXHAUSTED", action="refuse"),
    ]
    naive = defended.audit_summary(records, "naive")
    assert naive["queries"] == 80
    assert naive["ood_flagged_queries"] == 77
    assert naive["ood_flag_rate"] == pytest.approx(77 / 80)
    assert naive["first_degraded_query"] == 33
    assert naive["degraded_queries"] == 48
    assert naive["flagged_after_request_ending_at"] == 64
    assert naive["ood_max_window_share"] == pytest.approx(0.96)
    assert naive["refused_requests"] == 1
    realistic = defended.audit_summary(records, "realistic")
    assert realistic["queries"] == 32 and realistic["ood_flag_rate"] == pytest.approx(1 / 32)
    assert realistic["first_degraded_query"] is None
    assert realistic["flagged_after_request_ending_at"] is None
    nobody = defended.audit_summary(records, "nobody")
    assert nobody["queries"] == 0 and nobody["ood_flag_rate"] is None


def test_audit_summary_without_detector_verdicts():
    record = AuditRecord(0.0, "c", "Predict", "m", 10, {}, "always:round:1", "OK", "")
    summary = defended.audit_summary([record], "c")
    assert summary["queries"] == 10
    assert summary["ood_flag_rate"] is None and summary["degraded_queries"] == 0


def test_answer_summary_counts_only_exact_one_hot_rows():
    softmax = np.array([[0.999999, 1e-7, 9e-7], [0.2, 0.3, 0.5]], np.float32)
    one_hot = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
    summary = defended.answer_summary(np.concatenate([softmax, one_hot]))
    assert summary == {"answers": 4, "label_only_answers": 2, "label_only_share": 0.5}
    assert defended.answer_summary(np.zeros((0, 3)))["label_only_answers"] == 0


def test_split_pool_is_disjoint_seeded_and_complete():
    a, b = defended.split_pool(10, 0.5, seed=0)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert sorted(np.concatenate([a, b])) == list(range(10))
    again, _ = defended.split_pool(10, 0.5, seed=0)
    other, _ = defended.split_pool(10, 0.5, seed=1)
    assert list(a) == list(again) and list(a) != list(other)
    with pytest.raises(Exception, match="pool_fraction"):
        defended.split_pool(1, 0.5, seed=0)


def test_markdown_table_formats_cells():
    table = defended.markdown_table([{"a": 0.123456, "b": None, "c": True}, {"a": 3, "c": False}],
                              [("a", "A"), ("b", "B"), ("c", "C")])
    assert table.splitlines() == ["| A | B | C |", "|---|---|---|", "| 0.1235 | - | yes |",
                                  "| 3 | - | no |"]


@pytest.mark.parametrize("extra, argument", [  # the flag typed (issue 17)
    (["--budget", "0"], "`--budget`"),
    (["--detector", "/no/such/detector"], "`--detector`"),
    (["--model", "gtsrb_resnet34"], "`--model`"),
    (["--pool-fraction", "1.5"], "`--pool-fraction`"),
    (["--level", "2"], "detectors.ood.level"),
    (["--min-queries", "999"], "detectors.ood.min_queries"),
    (["--data-dir", "/no/such/data"], "`--data-dir`"),
    (["--weights", "/no/such.h5"], "`--weights`"),
])
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(layout, extra, argument,
                                                               one_line_error):
    one_line_error(ra.main, ["--victims", str(layout / "victims"), "--detector",
                             str(layout / "det" / "1"), "--data-dir", str(layout / "data"),
                             *extra], argument)


def test_unparsable_number_exits_2_naming_the_flag(layout, capsys):
    assert ra.main(["--detector", str(layout / "det/1"), "--epochs", "x"]) == 2
    assert "--epochs" in capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_data_file_is_named(layout, capsys):
    (layout / "data" / defended.TRANSFER).unlink()
    assert ra.main(["--victims", str(layout / "victims"), "--detector", str(layout / "det/1"),
                    "--data-dir", str(layout / "data"), "--out", str(layout / "o")]) == 2
    assert defended.TRANSFER in capsys.readouterr().err


def test_run_dir_refuses_other_settings(layout):
    config = ra.RealisticConfig(victims=str(layout / "victims"), detector=str(layout / "det/1"),
                                data_dir=str(layout / "data"), out=str(layout / "o"))
    defended.check_run_dir(config)
    defended.check_run_dir(config)  # same settings: fine
    from dataclasses import replace

    with pytest.raises(Exception, match="`out`.*budget"):
        defended.check_run_dir(replace(config, budget=5))
    saved = json.loads((layout / "o" / "config.json").read_text())
    del saved["window"]  # a field added after the run started counts as its default
    (layout / "o" / "config.json").write_text(json.dumps(saved))
    defended.check_run_dir(config)
    with pytest.raises(Exception, match="`out`.*window"):
        defended.check_run_dir(replace(config, window=128))


def test_registry_defaults_resolve_in_data_dir(layout):
    config = ra.RealisticConfig(victims=str(layout / "victims"), detector=str(layout / "det/1"),
                                data_dir=str(layout / "data"))
    assert config.benign_spec.endswith("cifar10_jpeg_q75.zip")
    assert config.exclude_spec.endswith("tinyimagenet_cifar10_overlap_wnids.txt")
    assert config.weights_spec.endswith(defended.WEIGHTS)
    assert config.policy().ood.window == 256 and config.policy().on_flag_policy == "label_only"


# -- end to end on a tiny victim (tests/benchmarks/conftest.py) -------------------------------
def tiny_argv(base: Path, detector: Path, out: Path) -> list[str]:
    return ["--victims", str(base / "victims"), "--model", "colours", "--detector", str(detector),
            "--benign-set", str(base / "benign.npz"), "--transfer-set",
            str(base / "transfer.npz"), "--data-dir", str(base), "--weights", "none",
            "--backbone", "cnn", "--arch-args", "--input-size", "16", "--epochs", "6",
            "--batch-size", "32", "--query-batch", "16", "--budget", "160", "--noise", "100",
            "--window", "32", "--min-queries", "16", "--out", str(out)]


@pytest.mark.slow
def test_end_to_end_naive_flagged_realistic_not_and_resume_reuses(tiny_world, tmp_path, capsys):
    base, detector = tiny_world
    out = tmp_path / "bench"
    assert ra.main(tiny_argv(base, detector, out)) == 0
    stdout = capsys.readouterr().out
    assert "| naive |" in stdout and "| realistic |" in stdout
    results = json.loads((out / "results.json").read_text())
    rows = {r["attacker"]: r for r in results["rows"]}
    naive, realistic = rows["naive"], rows["realistic"]
    # The gateway audits every query a client sent: the 160 of the budget (journaled) and the
    # attack's output-kind probe before them (attack.victim.Victim.understand: 16 images, not
    # journaled, counted in report.json's victim.probe_queries).
    for name, row in rows.items():
        probes = json.loads((out / name / "report.json").read_text())["extra"]["victim"][
            "probe_queries"]
        assert probes == 16
        assert row["n_queries"] == 160 and row["queries"] == 160 + probes, name
    # naive: every query looks like an attack, flagged as soon as min_queries allows
    assert naive["flagged"] and naive["flagged_by"] == "ood"
    assert naive["flagged_at"] == 16
    assert naive["ood_flag_rate"] > 0.9
    assert naive["first_degraded_query"] <= 17
    assert naive["label_only_share"] >= (160 - 16) / 160
    # realistic: never flagged, full probability vectors all along
    assert not realistic["flagged"] and realistic["flagged_at"] is None
    assert realistic["ood_flag_rate"] < 0.05
    assert realistic["label_only_answers"] == 0 and realistic["degraded_queries"] == 0
    # both evaluated on the victim-domain half neither queried, against the undefended victim
    assert naive["n_test"] == realistic["n_test"] == 200
    assert realistic["fidelity_test"] > 0.6  # chance is 1/3
    assert (out / "results.md").read_text().startswith("# Realistic adversary: colours")
    # a second run reuses both finished attacks (no new query reaches the gateway)
    before = (out / "naive" / "report.json").stat().st_mtime_ns
    assert ra.main(tiny_argv(base, detector, out)) == 0
    assert (out / "naive" / "report.json").stat().st_mtime_ns == before
    again = json.loads((out / "results.json").read_text())
    assert [r["queries"] for r in again["rows"]] == [176, 176]
