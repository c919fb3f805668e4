"""benchmarks.evasion_bench: one-line bad input before anything is loaded or written, and the
per-seed summary (mean ± std, per-seed flag queries where a seed never flagged)."""

from __future__ import annotations

import pytest

from benchmarks.evasion_bench import main, summarise, tables


@pytest.mark.parametrize("extra, argument", [
    (["--fpr", "0"], "--fpr"),
    (["--seeds"], "--seeds"),
    (["--window", "16", "--min-queries", "32"], "--min-queries"),
    (["--benign-clients", "10", "--client-queries", "900"], "--client-queries"),
    (["--gateway-only"], "--gateway-only"),
    (["--gateway-detector", "missing"], "--gateway-detector"),
    (["--augment", "0"], "--augment"),
])
def test_bad_input_is_one_line(layout, one_line_error, extra, argument):
    argv = ["--victim", str(layout / "victims" / "cifar10_cnn"),
            "--data-dir", str(layout / "data"), *extra]
    one_line_error(main, argv, argument)


def test_a_missing_data_file_names_the_folder(layout, one_line_error):
    (layout / "data" / "cifar10_jpeg_q75.zip").unlink()
    one_line_error(main, ["--victim", str(layout / "victims" / "cifar10_cnn"),
                          "--data-dir", str(layout / "data")], "--data-dir")


def test_summary_over_seeds():
    def seed(value, flag):
        row = {"evasion": "jpeg:75", "old_anomalous": value, "old_benign": 0.98,
               "old_flagged_at": flag, "old_level_flagged_at": None}
        camo = {"evasion": "camouflage:0.5", "old_stream_share": 0.3, "old_flagged_at": 40,
                "old_level_flagged_at": None}
        clients = {"clients": "none", "old_flagged": 0, "old_query_fpr": 0.02,
                   "old_level_flagged": 0}
        return {"evasion": [row, camo], "clients": [clients]}

    summary = summarise([seed(0.2, 32), seed(0.4, None)])
    jpeg = summary["evasion"][0]
    assert jpeg["old_anomalous"]["mean"] == pytest.approx(0.3)
    assert jpeg["old_anomalous"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert jpeg["old_flagged_at"] == {"values": [32, None]}
    text = tables(summary, scores=("old",))
    assert "| jpeg:75 | 0.300 ± 0.141 |" in text and "32/never" in text
