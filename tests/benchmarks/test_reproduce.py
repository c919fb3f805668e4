"""`python -m benchmarks.reproduce`: the plan, its resumability and its results page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import reproduce
from benchmarks.results_page import write_results_page

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_list_prints_every_step_in_dependency_order(capsys):
    assert reproduce.main(["--list", "--scale", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names[0].startswith("victim_")
    for i, name in enumerate(names):
        step = next(s for s in reproduce.build_plan(reproduce.SCALES["cpu"]) if s.name == name)
        assert all(need in names[:i] for need in step.needs), name


def test_only_pulls_in_what_a_step_needs(capsys):
    assert reproduce.main(["--list", "--only", "knockoff_gtsrb_resnet34_probs"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["victim_gtsrb_resnet34", "knockoff_gtsrb_resnet34_probs"]


@pytest.mark.parametrize("argv, argument", [
    (["--scale", "huge", "--list"], "scale"),
    (["--only", "nope", "--list"], "only"),
    (["--data-dir", "/no/such/folder"], "data-dir"),
])
def test_bad_arguments_exit_2_with_one_line(argv, argument, capsys):
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and argument in err[0]


def test_a_finished_step_is_not_run_again(tmp_path):
    calls = []

    def commands(ctx):
        calls.append(1)
        return [["-c", "print('ran')"]]

    step = reproduce.Step("probe", "probe", (), commands, lambda ctx: {"value": 1})
    ctx = reproduce.Context(data=tmp_path, out=tmp_path, scale=reproduce.SCALES["smoke"], seed=0)
    first = reproduce.run_step(ctx, step)
    second = reproduce.run_step(ctx, step)
    assert first == second and len(calls) == 1
    assert json.loads((tmp_path / "probe" / "done.json").read_text())["figures"] == {"value": 1}


def test_a_failing_step_raises_and_leaves_no_done_file(tmp_path):
    step = reproduce.Step("bad", "bad", (), lambda ctx: [["-c", "raise SystemExit(3)"]],
                          lambda ctx: {})
    ctx = reproduce.Context(data=tmp_path, out=tmp_path, scale=reproduce.SCALES["smoke"], seed=0)
    with pytest.raises(RuntimeError, match="exit 3"):
        reproduce.run_step(ctx, step)
    assert not (tmp_path / "bad" / "done.json").exists()


def test_results_page_puts_the_paper_beside_the_measurement(tmp_path):
    results = {
        "victim_cifar10_cnn": {"title": "victim cifar10_cnn", "seconds": 1, "commands": ["x"],
                               "figures": {"test_accuracy": 0.8, "epochs": 3, "seconds": 9}},
        "knockoff_cifar10_cnn_probs": {
            "title": "Knockoff, CIFAR-10 CNN, probabilities", "seconds": 2, "commands": ["y"],
            "figures": {"victim_acc": 0.8, "surrogate_acc": 0.6, "ratio": 0.75,
                        "fidelity_test": 0.7, "n_queries": 100,
                        "curve": [{"queries": 50, "surrogate_acc": 0.5},
                                  {"queries": 100, "surrogate_acc": 0.6}]}},
    }
    page = write_results_page(tmp_path, "smoke", results, ["knockoff_x"], versions={"a": "1"},
                              machine="m", wall_seconds=60,
                              paper_knockoff=reproduce.PAPER_KNOCKOFF,
                              paper_detector=reproduce.PAPER_DETECTOR)
    text = page.read_text()
    assert "| Knockoff, CIFAR-10 CNN, probabilities | 80.0% | 60.0% | 0.75x |" in text
    assert "0.81x (100,000 ImageNet queries)" in text
    assert "knockoff_x" in text and (tmp_path / "curves.png").is_file()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_smoke_scale_runs_end_to_end(tmp_path):
    code = reproduce.main(["--scale", "smoke", "--data-dir", str(DATA), "--out", str(tmp_path),
                           "--only", "knockoff_cifar10_cnn_probs"])
    assert code == 0
    figures = json.loads((tmp_path / "knockoff_cifar10_cnn_probs" / "done.json").read_text())
    assert figures["figures"]["n_queries"] == reproduce.SCALES["smoke"].budget


def test_results_page_renders_detector_exact_and_defended_tables(tmp_path):
    results = {
        "detector_cifar10": {"title": "OOD query detector, cifar10", "seconds": 1,
                             "commands": ["d"], "figures": {
                                 "rows": {"calibrated": {"benign_accuracy": 0.99,
                                                         "anomalous_accuracy": 0.875}},
                                 "roc_auc": 0.99, "target_fpr": 0.01}},
        "fee_mnist_mlp16": {"title": "Functionally-equivalent extraction, mnist_mlp16",
                            "seconds": 1, "commands": ["f"],
                            "figures": {"queries": 30669, "fidelity_test": 1.0,
                                        "fidelity_noise": 1.0, "max_parameter_error": 1.1e-8}},
        "realistic_cifar10_cnn": {"title": "Realistic adversary", "seconds": 1, "commands": ["r"],
                                  "figures": {"rows": [
                                      {"attacker": "naive", "flagged_at": 64,
                                       "ood_flag_rate": 0.93, "label_only_answers": 3000,
                                       "ratio": 0.65, "fidelity_test": 0.57},
                                      {"attacker": "realistic", "flagged_at": None,
                                       "ood_flag_rate": 0.008, "label_only_answers": 0,
                                       "ratio": 0.79, "fidelity_test": 0.69}]}},
    }
    text = write_results_page(tmp_path, "smoke", results, [], versions={}, machine="m",
                              wall_seconds=1, paper_knockoff=reproduce.PAPER_KNOCKOFF,
                              paper_detector=reproduce.PAPER_DETECTOR).read_text()
    assert "| cifar10 | calibrated (benign FPR 0.01) | 99.0% | 87.5% | 0.9900 | 96.0% / 96.0% |" \
        in text
    assert ("| Functionally-equivalent extraction, mnist_mlp16 | 30669 | 100.0% | 100.0% "
            "| 1.1e-08 |") in text
    assert "| realistic | never | 0.8% | 0 | 0.79x | 69.0% |" in text


def test_prada_step_needs_the_victim_and_follows_the_scale(tmp_path):
    plan = {s.name: s for s in reproduce.build_plan(reproduce.SCALES["smoke"])}
    step = plan["prada_cifar10_cnn"]
    assert step.needs == ("victim_cifar10_cnn",)
    names = list(plan)
    assert names.index("prada_cifar10_cnn") > names.index("detector_gtsrb")
    ctx = reproduce.Context(data=tmp_path, out=tmp_path, scale=reproduce.SCALES["smoke"], seed=3)
    (cmd,) = step.commands(ctx)
    assert cmd[:2] == ["-m", "benchmarks.prada_bench"]
    assert cmd[cmd.index("--max-queries") + 1] == "300"
    assert cmd[cmd.index("--victims") + 1] == str(tmp_path / "victims")
    assert cmd[cmd.index("--seed") + 1] == "3"
    run = tmp_path / "prada_cifar10_cnn" / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "rows": [{"stream": "jbda", "flagged": True, "flagged_at": 130}],
        "config": {"delta": 0.9, "min_samples": 100, "batch": 10, "max_queries": 300}}))
    figures = step.summarize(ctx)
    assert figures["rows"][0]["flagged_at"] == 130 and figures["delta"] == 0.9
    assert reproduce.SCALES["cpu"].prada_queries == 2000


def test_results_page_renders_prada_streams_and_the_papers_claims(tmp_path):
    results = {"prada_cifar10_cnn": {
        "title": "PRADA against JBDA and natural-image streams, cifar10_cnn", "seconds": 1,
        "commands": ["p"], "figures": {"delta": 0.9, "min_samples": 100, "batch": 10, "rows": [
            {"stream": "jbda", "source": "50 seeds", "answered": 120, "flagged": True,
             "flagged_at": 130, "statistic": 0.71234, "min_statistic": 0.71234},
            {"stream": "knockoff", "source": "tiny", "answered": 2000, "flagged": False,
             "flagged_at": None, "statistic": 0.97, "min_statistic": 0.93}]}}}
    text = write_results_page(tmp_path, "smoke", results, [], versions={}, machine="m",
                              wall_seconds=1, paper_knockoff=reproduce.PAPER_KNOCKOFF,
                              paper_detector=reproduce.PAPER_DETECTOR).read_text()
    assert "| jbda | 50 seeds | 120 | 130 | 0.712 | 0.712 |" in text
    assert "| knockoff | tiny | 2000 | never | 0.970 | 0.930 |" in text
    assert "delta 0.9" in text and "Atli et al. (2020) note that PRADA does not flag" in text
