"""`python -m benchmarks.prada_bench`: arguments, the PRADA summary, and end to end.

The end-to-end test serves the tiny 16x16 "dominant colour" victim of the realistic-adversary
test, puts the PRADA-only gateway in front of it, and checks that the JBDA stream is refused as
soon as PRADA has its distances while natural-looking streams are answered to the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import prada_bench as pb
from benchmarks.harness.defended import TRANSFER
from serving.gateway.store import AuditRecord, DetectorState

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize("extra, argument", [  # the flag typed (issue 17)
    (["--delta", "1.5"], "`--delta`"),
    (["--delta", "0"], "`--delta`"),
    (["--min-samples", "2"], "`--min-samples`"),
    (["--max-set", "0"], "`--max-set`"),
    (["--batch", "0"], "`--batch`"),
    (["--max-queries", "0"], "`--max-queries`"),
    (["--max-queries", "10", "--jbda-seeds", "20"], "`--max-queries`"),
    (["--jbda-lambda", "0.001"], "`--jbda-lambda`"),
    (["--benign-clients", "0"], "`--benign-clients`"),
    (["--model", "gtsrb_resnet34"], "`--model`"),
    (["--data-dir", "/no/such/data"], "`--data-dir`"),
    (["--exclude-classes", "/no/such.txt"], "`--exclude-classes`"),
])
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(layout, extra, argument,
                                                               one_line_error):
    one_line_error(pb.main, ["--victims", str(layout / "victims"), "--data-dir",
                             str(layout / "data"), *extra], argument)


def test_unparsable_number_exits_2_naming_the_flag(layout, capsys):
    assert pb.main(["--victims", str(layout / "victims"), "--batch", "x"]) == 2
    assert "--batch" in capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_data_file_is_named(layout, capsys):
    (layout / "data" / TRANSFER).unlink()
    assert pb.main(["--victims", str(layout / "victims"), "--data-dir", str(layout / "data"),
                    "--out", str(layout / "o")]) == 2
    assert TRANSFER in capsys.readouterr().err


def test_policy_is_prada_only_and_refuses(layout):
    from serving.gateway.config import policy_from_dict

    config = pb.PradaBenchConfig(victims=str(layout / "victims"), data_dir=str(layout / "data"),
                                 delta=0.8, min_samples=50, max_set=300)
    policy = policy_from_dict(config.policy_dict())
    assert policy.ood is None and policy.prada.delta == 0.8
    assert policy.prada.min_samples == 50 and policy.prada.max_set == 300
    assert policy.on_flag_action == "refuse" and policy.budget is None
    assert config.exclude_spec.endswith("tinyimagenet_cifar10_overlap_wnids.txt")


def test_prada_summary_reads_the_state_and_the_audit_log():
    from detector.prada import Prada

    prada = Prada(delta=0.9, min_samples=5)
    state = prada.new_state(2, 4)
    rng = np.random.default_rng(0)
    prada.update(state, rng.random((6, 4)), np.array([0, 1, 0, 1, 0, 1]))
    prada.update(state, rng.random((4, 4)), np.array([0, 1, 0, 1]))
    state["flagged_at"] = 10
    stored = DetectorState(prada=Prada.dumps(state), flagged=True, flagged_by="prada")

    def record(client, w, code="OK"):
        return AuditRecord(0.0, client, "Predict", "m", 5, {"prada_statistic": w}, "pass",
                           code, "")

    records = [record("a", None), record("a", 0.95), record("b", 0.1),
               record("a", 0.85, "PERMISSION_DENIED")]
    summary = pb.prada_summary(records, stored, "a")
    assert summary["flagged"] and summary["flagged_by"] == "prada"
    assert summary["flagged_at"] == 10 and summary["prada_queries"] == 10
    assert summary["distances"] == 8  # the first member of each class has no distance
    assert summary["statistic"] == pytest.approx(state["statistic"])
    assert summary["min_statistic"] == pytest.approx(0.85)
    assert summary["refused_requests"] == 1
    fresh = pb.prada_summary([], DetectorState(), "a")
    assert not fresh["flagged"] and fresh["statistic"] is None and fresh["distances"] == 0


# -- end to end on a tiny victim (tests/benchmarks/conftest.py) -------------------------------
@pytest.mark.slow
def test_end_to_end_jbda_refused_natural_streams_answered(prada_world, tmp_path, capsys):
    base = prada_world
    out = tmp_path / "bench"
    argv = ["--victims", str(base / "victims"), "--model", "colours",
            "--benign-set", str(base / "benign.npz"), "--transfer-set",
            str(base / "transfer.npz"), "--data-dir", str(base), "--min-samples", "40",
            "--max-queries", "160", "--jbda-seeds", "30", "--jbda-rounds", "3",
            "--jbda-epochs", "2", "--batch", "10", "--out", str(out)]
    assert pb.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "| jbda |" in stdout and "| knockoff |" in stdout and "| benign_2 |" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["policy"]["detectors"]["prada"]["min_samples"] == 40
    rows = {r["stream"]: r for r in results["rows"]}
    assert set(rows) == {"jbda", "knockoff", "benign_1", "benign_2"}
    jbda = rows["jbda"]
    # flagged by the first test after the seeds' and round 1's distances reach min_samples;
    # the request that crossed delta is refused, the ones before it answered
    assert jbda["flagged"] and jbda["flagged_by"] == "prada"
    assert 40 <= jbda["flagged_at"] <= 70 and jbda["answered"] == jbda["flagged_at"] - 10
    assert jbda["refused_requests"] == 1 and jbda["statistic"] < 0.9
    assert jbda["rounds"] >= 1 and jbda["pixel_step"] == 26
    for name in ("knockoff", "benign_1", "benign_2"):
        row = rows[name]
        assert not row["flagged"] and row["flagged_at"] is None, row
        assert row["statistic"] >= 0.9 and row["refused_requests"] == 0
        assert row["until_flagged"] == f"never (within {row['answered']})"
    assert rows["knockoff"]["answered"] == 160
    assert rows["benign_1"]["answered"] == rows["benign_2"]["answered"] == 160
    assert (out / "results.md").read_text().startswith("# PRADA through the gateway: colours")
    # a second run starts a fresh gateway state: the same streams, the same verdicts
    assert pb.main(argv) == 0
    again = {r["stream"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert again["jbda"]["flagged_at"] == jbda["flagged_at"]
    assert not again["knockoff"]["flagged"]


@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_registry_defaults_resolve_to_the_real_files(tmp_path):
    """The registry's defaults resolve to the real files and validate."""
    (tmp_path / "victims" / "cifar10_cnn").mkdir(parents=True)
    config = pb.PradaBenchConfig(victims=str(tmp_path / "victims"), data_dir=str(DATA))
    assert Path(config.transfer_spec).is_file() and Path(config.exclude_spec).is_file()
    assert Path(config.benign_spec).name == "cifar10_jpeg_q75.zip"
