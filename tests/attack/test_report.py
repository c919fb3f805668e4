"""Tests of the run report: JSON content, Markdown tables, valid PNG plots, atomic writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from attack.evaluate import Evaluation
from attack.report import (
    CURVE_PLOT_NAME,
    PER_CLASS_PLOT_NAME,
    REPORT_JSON_NAME,
    REPORT_MD_NAME,
    write_report,
)
from common.errors import UsageError

EVALUATION = Evaluation(
    victim_acc=0.9, surrogate_acc=0.72, ratio=0.8, fidelity_test=0.75,
    fidelity_transfer_heldout=0.6, fidelity_noise=0.3,
    per_class_victim={"cat": 0.95, "dog": 0.85, "frog|toad": 0.9, "owl": 0.4},
    per_class_surrogate={"cat": 0.9, "dog": 0.4, "frog|toad": None, "owl": 0.35},
    per_class_agreement={"cat": 0.92, "dog": 0.45, "frog|toad": None, "owl": 0.9},
    n_queries=1000, n_test=300, n_transfer_heldout=200, n_noise=100,
)
CURVE = [
    {"queries": 100, "victim_acc": 0.9, "surrogate_acc": 0.3, "ratio": 0.333,
     "fidelity_test": 0.32, "fidelity_transfer_heldout": 0.2, "fidelity_noise": None,
     "seconds": 1.5},
    {"queries": 1000, "victim_acc": 0.9, "surrogate_acc": 0.72, "ratio": 0.8,
     "fidelity_test": 0.75, "fidelity_transfer_heldout": 0.6, "fidelity_noise": 0.3,
     "seconds": 9.25},
]
ANCHORS = {"CIFAR10 (CNN)": {"victim": 0.87, "surrogate": 0.71, "ratio": 0.81}}


@dataclass(frozen=True)
class Config:
    budget: int
    out: Path


def section(markdown: str, heading: str) -> str:
    return markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_report_files_json_markdown_and_plots(tmp_path):
    run_dir = tmp_path / "run"
    paths = write_report(run_dir, config={"budget": 1000, "out": run_dir, "nan": float("nan")},
                         evaluation=EVALUATION, curve=CURVE,
                         extra={"anchors": ANCHORS, "anchors_source": "Atli et al. 2020",
                                "query_stats": {"sent": 1000, "paid_twice": 0}})
    assert paths == {"json": run_dir / REPORT_JSON_NAME, "markdown": run_dir / REPORT_MD_NAME,
                     "curve_plot": run_dir / CURVE_PLOT_NAME,
                     "per_class_plot": run_dir / PER_CLASS_PLOT_NAME}
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in paths.values())

    report = json.loads(paths["json"].read_text())
    assert report["evaluation"] == json.loads(json.dumps(EVALUATION.to_dict()))
    assert report["curve"] == CURVE
    assert report["config"] == {"budget": 1000, "out": str(run_dir), "nan": None}
    assert report["extra"]["anchors"] == ANCHORS
    assert report["files"]["curve_plot"] == CURVE_PLOT_NAME

    md = paths["markdown"].read_text()
    headline = section(md, "Headline")
    for row in ("| victim accuracy (test set) | 90.0% |",
                "| surrogate accuracy (test set) | 72.0% |",
                "| accuracy ratio (surrogate / victim) | 0.800x |",
                "| fidelity on the test set (300 images) | 75.0% |",
                "| fidelity on held-out transfer images (200) | 60.0% |",
                "| fidelity on uniform noise (100) | 30.0% |", "| queries used | 1,000 |"):
        assert row in headline
    reference = section(md, "Reference numbers")
    assert "Atli et al. 2020" in reference
    assert "| setting | victim | surrogate | ratio |" in reference
    assert "| CIFAR10 (CNN) | 0.87 | 0.71 | 0.81 |" in reference
    curve = section(md, "Accuracy and fidelity against queries")
    assert "| 100 | 90.0% | 30.0% | 0.333x | 32.0% | 20.0% | n/a | 1.5 |" in curve
    assert "| 1,000 | 90.0% | 72.0% | 0.800x | 75.0% | 60.0% | 30.0% | 9.2 |" in curve
    assert f"]({CURVE_PLOT_NAME})" in curve
    per_class = section(md, "Per-class accuracy")
    rows = [line for line in per_class.splitlines() if line.startswith("| ")][1:]
    assert rows == ["| owl | 40.0% | 35.0% | 90.0% | below 50% (the victim too) |",
                    "| dog | 85.0% | 40.0% | 45.0% | below 50% |",
                    "| cat | 95.0% | 90.0% | 92.0% |  |",
                    "| frog\\|toad | 90.0% | n/a | n/a |  |"]  # worst first, unknown last
    assert "2 of 4 classes are below 50%" in per_class
    assert ("Below 50%: surrogate accuracy 2 (owl, dog); agreement with the victim 1 (dog); "
            "surrogate accuracy where the victim's own accuracy is below 50% too 1 (owl)."
            ) in per_class
    assert "| query_stats | " in section(md, "Notes")
    assert "| budget | 1000 |" in section(md, "Configuration")

    for name in (CURVE_PLOT_NAME, PER_CLASS_PLOT_NAME):
        with Image.open(run_dir / name) as image:
            image.verify()
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_an_evaluation_without_per_class_agreement_shows_a_dash(tmp_path):
    from dataclasses import replace

    paths = write_report(tmp_path, config={}, evaluation=replace(EVALUATION,
                                                                 per_class_agreement={}))
    per_class = section(paths["markdown"].read_text(), "Per-class accuracy")
    assert "| dog | 85.0% | 40.0% | - | below 50% |" in per_class
    assert "agreement with the victim not measured;" in per_class
    assert "per_class_plot" in paths


def test_report_rewrites_atomically_and_accepts_dataclass_config(tmp_path):
    run_dir = tmp_path / "run"
    write_report(run_dir, config=Config(5, tmp_path), evaluation=EVALUATION, curve=CURVE)
    paths = write_report(run_dir, config=Config(7, tmp_path), evaluation=EVALUATION, curve=[])
    assert "curve_plot" not in paths
    assert json.loads(paths["json"].read_text())["config"] == {"budget": 7, "out": str(tmp_path)}
    assert "No curve was computed" in paths["markdown"].read_text()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_report_without_a_test_set(tmp_path):
    paths = write_report(tmp_path, config={}, evaluation=None, curve=[],
                         extra={"anchors": [{"paper": "Atli", "ratio": 0.77}]})
    md = paths["markdown"].read_text()
    assert "No test set was given" in md and "| paper | ratio |" in md
    assert set(paths) == {"json", "markdown"}
    assert json.loads(paths["json"].read_text())["evaluation"] is None


def test_report_rejects_bad_arguments_before_writing(tmp_path):
    with pytest.raises(UsageError, match="`evaluation`"):
        write_report(tmp_path / "a", config={}, evaluation={"victim_acc": 1}, curve=[])
    with pytest.raises(UsageError, match="`curve`"):
        write_report(tmp_path / "b", config={}, evaluation=EVALUATION, curve=[{"x": 1}])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="`run_dir`"):
        write_report(tmp_path / "file", config={}, evaluation=EVALUATION, curve=[])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


VICTIM = {"interface": "rest", "target": "http://localhost:8501", "model": "cifar",
          "signature": "serving_default", "input": "image: float32[-1,32,32,3]",
          "input_range": "0,1", "input_range_decided_by": "auto: answers vary most",
          "output": "scores", "output_kind": "probabilities",
          "output_decided_by": "rows sum to 1", "num_classes": 10, "probe_queries": 63,
          "accuracy_measured": 0.479, "accuracy_test_images": 1000,
          "consistency_warnings": []}


def test_report_states_how_the_victim_was_queried(tmp_path):
    write_report(tmp_path, config={}, evaluation=EVALUATION, extra={"victim": VICTIM})
    markdown = (tmp_path / REPORT_MD_NAME).read_text()
    victim = section(markdown, "Victim")
    for text in ("| interface | rest |", "| input range sent | 0,1 |",
                 "| input range decided by | auto: answers vary most |",
                 "| output learnt from | scores |", "| probe queries (not journaled) | 63 |",
                 "| victim accuracy measured through this path (1,000 test images) | 47.9% |",
                 "fit the measured accuracy"):
        assert text in victim, text
    assert "## Notes" not in markdown  # the victim is its own section, not a JSON note
    report = json.loads((tmp_path / REPORT_JSON_NAME).read_text())
    assert report["extra"]["victim"]["probe_queries"] == 63


def test_report_warns_when_the_victim_accuracy_looks_wrong(tmp_path):
    warning = "the victim answered one class for 97% of the test images"
    write_report(tmp_path, config={}, evaluation=EVALUATION,
                 extra={"victim": {**VICTIM, "consistency_warnings": [warning]}})
    victim = section((tmp_path / REPORT_MD_NAME).read_text(), "Victim")
    assert "**Warning: the measured victim accuracy may not be the model's.**" in victim
    assert f"- {warning}" in victim and "fit the measured accuracy" not in victim


def test_report_claims_no_consistency_check_that_did_not_run(tmp_path):
    victim = {k: v for k, v in VICTIM.items() if k != "consistency_warnings"}
    write_report(tmp_path, config={}, evaluation=EVALUATION, extra={"victim": victim})
    victim_md = section((tmp_path / REPORT_MD_NAME).read_text(), "Victim")
    assert "47.9%" in victim_md and "fit the measured accuracy" not in victim_md
