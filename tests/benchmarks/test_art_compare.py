"""`benchmarks.art_compare`: its command line refuses bad input before serving or training."""

from __future__ import annotations

import pytest

from benchmarks import art_compare
from serving.testing import export_tiny_classifier


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory):
    return export_tiny_classifier(tmp_path_factory.mktemp("models"), "tiny")


@pytest.mark.parametrize(("flags", "flag", "words"), [
    (["--budgets", "0"], "--budgets", "a positive integer"),
    (["--methods", "art-jbda"], "--methods", "invalid choice"),
    (["--seeds", "1", "1"], "--seeds", "distinct seeds"),
    (["--epochs", "0"], "--epochs", "a positive integer"),
])
def test_bad_flags_are_one_line_and_exit_2(victim_dir, tmp_path, capsys, flags, flag,
                                           words) -> None:
    argv = ["--victim", str(victim_dir), "--test-set", "x.npz", "--transfer-set", "y.npz",
            "--out", str(tmp_path / "out"), *flags]
    assert art_compare.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and words in err[0]
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_savedmodel_is_refused(tmp_path, capsys) -> None:
    argv = ["--victim", str(tmp_path), "--test-set", "x.npz", "--transfer-set", "y.npz",
            "--out", str(tmp_path / "out")]
    assert art_compare.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--victim" in err and "saved_model.pb" in err


def test_summary_reports_mean_and_spread_per_method_and_budget() -> None:
    rows = [{"method": "ours-knockoff", "budget": 10, "seed": s, "accuracy": a, "ratio": a / 0.5}
            for s, a in enumerate((0.30, 0.40, 0.50))]
    summary = art_compare._summary(rows, (10,), ("ours-knockoff", "art-knockoff"))
    assert list(summary) == ["ours-knockoff@10"]
    s = summary["ours-knockoff@10"]
    assert s["seeds"] == 3
    assert s["accuracy_mean"] == pytest.approx(0.40)
    assert s["accuracy_sd"] == pytest.approx(0.10)
    assert s["ratio_mean"] == pytest.approx(0.80)
