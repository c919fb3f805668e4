"""benchmarks.evasion_bench: one-line bad input before anything is loaded or written, and the
per-seed summary (mean ± std, per-seed flag queries where a seed never flagged)."""

from __future__ import annotations

import pytest

from benchmarks.evasion_bench import EXPORTED_SCORES, main, summarise, tables


@pytest.mark.parametrize("extra, argument", [
    (["--fpr", "0"], "--fpr"),
    (["--seeds"], "--seeds"),
    (["--window", "16", "--min-queries", "32"], "--min-queries"),
    (["--benign-clients", "10", "--client-queries", "900"], "--client-queries"),
    (["--gateway-only"], "--gateway-only"),
    (["--gateway-detector", "missing"], "--gateway-detector"),
    (["--augment", "0"], "--augment"),
    (["--detectors", "missing"], "--detectors"),
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


def test_tables_of_an_exported_detector_at_its_two_thresholds():
    row = {"evasion": "blur:1"}
    camo = {"evasion": "camouflage:0.5"}
    clients = {"clients": "blur:1 (4 clients)", "old_level_flagged": 0}
    figures = ((0.6, 40, 0.2), (0.3, 90, 0.01), (0.4, 60, 0.02))
    for score, (anomalous, flag, fpr) in zip(EXPORTED_SCORES, figures):
        row.update({f"{score}_anomalous": anomalous, f"{score}_benign": 1 - fpr,
                    f"{score}_flagged_at": flag})
        camo.update({f"{score}_stream_share": anomalous / 2, f"{score}_flagged_at": flag})
        clients.update({f"{score}_flagged": int(fpr > 0.1) * 4, f"{score}_query_fpr": fpr})
    row["old_level_flagged_at"] = camo["old_level_flagged_at"] = None
    text = tables(summarise([{"evasion": [row, camo], "clients": [clients]}]), EXPORTED_SCORES,
                  "clean + level 0.5")
    assert "| evasion | clean | transformed | own |" in text
    assert "| blur:1 | 0.600 ± 0.000 | 0.300 ± 0.000 | 0.400 ± 0.000 |" in text
    assert "clean + level 0.5" in text and "old +" not in text
    assert "| blur:1 (4 clients) | 0.000 ± 0.000 | 4.0 ± 0.0 (FPR 0.200 ± 0.000) | 0.0 ± 0.0 " \
           "(FPR 0.010 ± 0.000) | 0.0 ± 0.0 (FPR 0.020 ± 0.000) |" in text
