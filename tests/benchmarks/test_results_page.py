"""The results page's headline: each paper finding beside the figure measured here, a verdict
(beats / matches / misses) that follows the numbers, and the steps' summed time."""

from __future__ import annotations

from attack.papers import PAPER_DETECTOR, PAPER_KNOCKOFF
from benchmarks.results_page import _gtsrb_rows, _headline_rows, _verdict, write_results_page

CMD = ("python -m attack.knockoff --backbone mobilenet --arch-args alpha=0.25 --input-size 96 "
       "--epochs 8 --budget 8000")


def _entry(name: str, figures: dict, seconds: float = 60.0) -> dict:
    return {"name": name, "title": name, "commands": [CMD], "seconds": seconds,
            "figures": figures}


def _results(cnn_ratio: float, top1_ratio: float, detector: tuple[float, float]) -> dict:
    return {
        "knockoff_cifar10_cnn_probs": _entry("knockoff_cifar10_cnn_probs", {
            "ratio": cnn_ratio, "victim_acc": 0.73, "n_queries": 8000}),
        "knockoff_cifar10_cnn_top1": _entry("knockoff_cifar10_cnn_top1", {
            "ratio": top1_ratio, "victim_acc": 0.73, "n_queries": 8000}),
        "detector_cifar10": _entry("detector_cifar10", {
            "target_fpr": 0.04, "roc_auc": 0.99,
            "rows": {"calibrated": {"benign_accuracy": detector[0],
                                    "anomalous_accuracy": detector[1]}}}),
    }


def _row(rows: list[str], start: str) -> list[str]:
    line = next(r for r in rows if r.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_verdict_bands():
    assert _verdict(0.93, 0.81) == "beats"
    assert _verdict(0.84, 0.81) == "matches"
    assert _verdict(0.70, 0.81) == "misses"


def test_headline_follows_the_numbers():
    rows = _headline_rows(_results(0.93, 0.90, (0.9535, 0.9595)), PAPER_KNOCKOFF, PAPER_DETECTOR)
    knock = _row(rows, "| Knockoff, CIFAR10 (CNN)")
    assert knock[1:4] == ["0.81x", "0.93x", "beats"]
    assert "8000 Tiny-ImageNet queries" in knock[4] and "96 px" in knock[4]
    assert "weaker victim" in knock[4]
    assert _row(rows, "| top-1 answers hurt")[3] == "matches"
    assert _row(rows, "| OOD detector, CIFAR10")[3] == "matches"

    rows = _headline_rows(_results(0.88, 0.875, (0.99, 0.73)), PAPER_KNOCKOFF, PAPER_DETECTOR)
    assert _row(rows, "| top-1 answers hurt")[3] == "misses"  # a 0.005 gap is no finding

    rows = _headline_rows(_results(0.60, 0.65, (0.99, 0.73)), PAPER_KNOCKOFF, PAPER_DETECTOR)
    assert _row(rows, "| Knockoff, CIFAR10 (CNN)")[3] == "misses"
    assert _row(rows, "| top-1 answers hurt")[3] == "misses"
    assert _row(rows, "| OOD detector, CIFAR10")[3] == "misses"


def test_page_has_headline_and_summed_time(tmp_path):
    results = _results(0.93, 0.90, (0.9535, 0.9595))
    page = write_results_page(tmp_path, "cpu", results, [], versions={}, machine="m",
                              wall_seconds=5.0, paper_knockoff=PAPER_KNOCKOFF,
                              paper_detector=PAPER_DETECTOR)
    text = page.read_text()
    assert "## Headline" in text
    assert "add up to 3.0 min" in text  # three steps of 60 s
    assert text.index("## Headline") < text.index("## Model extraction")


GTSRB_VICTIM = {"1": 0.99, "21": 0.40, "39": 0.95, "40": 0.90, "41": None}


def _gtsrb(agreement: dict | None) -> dict:
    figures = {"ratio": 0.6, "victim_acc": 0.97, "n_queries": 8000,
               "per_class_victim": GTSRB_VICTIM,
               "per_class_surrogate": {"1": 0.9, "21": 0.1, "39": 0.0, "40": 0.6, "41": None}}
    if agreement is not None:
        figures["per_class_agreement"] = agreement
    return {"knockoff_gtsrb_resnet34_probs": _entry("knockoff_gtsrb_resnet34_probs", figures)}


def test_gtsrb_rows_name_the_poor_classes_by_accuracy_by_agreement_and_victim_too():
    results = _gtsrb({"1": 0.9, "21": 0.7, "39": 0.0, "40": 0.4, "41": None})
    rows = _gtsrb_rows(results)
    # 21: the victim is below 50% itself, and the surrogate copies it (agreement 70%)
    assert rows[0] == ("2 of 4 GTSRB classes below 50% surrogate accuracy (Atli et al.: "
                       "classes 21 and 39 at 0%), 1 of them where the victim itself is below "
                       "50% too; 2 below 50% agreement with the victim on their test images. "
                       "Classes 21 and 39 here: 10.0% (agreement 70.0%) and 0.0% "
                       "(agreement 0.0%).")
    assert "| class | victim | surrogate | surrogate agreement |" in rows
    assert "| 21 | 0.40 | 0.10* | 0.70 |" in rows
    assert "| 40 | 0.90 | 0.60 | 0.40* |" in rows  # below by agreement only
    assert not any(r.startswith("| 41 |") for r in rows)  # no test image: no row, no figure
    assert rows[-1] == "- surrogate: 2 (21, 39); 2 (39, 40); 1 (21)"
    headline = _row(_headline_rows(results, PAPER_KNOCKOFF, PAPER_DETECTOR),
                    "| rare GTSRB classes collapse")
    assert headline[2:4] == ["classes 21 / 39 at 10.0% / 0.0%; 2 of 4 classes below 50% (2 by "
                             "agreement with the victim)", "matches"]


def test_gtsrb_rows_of_a_run_before_agreement_say_not_measured(tmp_path):
    results = _gtsrb(None)  # figures read from a report written before agreement existed
    rows = _gtsrb_rows(results)
    assert "below 50% agreement" not in rows[0]
    assert "; agreement with the victim not measured (a run made before it was)." in rows[0]
    assert rows[0].endswith("Classes 21 and 39 here: 10.0% and 0.0%.")
    assert "| class | victim | surrogate |" in rows and "| 21 | 0.40 | 0.10* |" in rows
    assert rows[-1] == "- surrogate: 2 (21, 39); -; 1 (21)"
    headline = _row(_headline_rows(results, PAPER_KNOCKOFF, PAPER_DETECTOR),
                    "| rare GTSRB classes collapse")
    assert headline[2].endswith("2 of 4 classes below 50% (not measured by agreement with the "
                                "victim)")
    page = write_results_page(tmp_path, "cpu", results, [], versions={}, machine="m",
                              wall_seconds=5.0, paper_knockoff=PAPER_KNOCKOFF,
                              paper_detector=PAPER_DETECTOR).read_text()
    assert "## GTSRB per class (rare classes)" in page and rows[-1] in page
