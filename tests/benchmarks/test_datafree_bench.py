"""benchmarks.datafree_bench: one-line bad input before the server starts or anything is written,
and the per-class counts and table of its results (hand-made rows: no attack is run here)."""

from __future__ import annotations

import json

import pytest

from benchmarks.datafree_bench import (
    _markdown,
    class_counts,
    curve_means,
    main,
    pace,
    per_class_table,
    variants,
)


@pytest.fixture
def victims(layout):
    (layout / "victims" / "models.config").write_text("model_config_list {}\n")
    return layout / "victims"


@pytest.mark.parametrize("extra, argument", [
    (["--budget", "999"], "--budget"),
    (["--test-set", "missing.tar.xz"], "--test-set"),
    (["--natural-share", "0"], "--natural-share"),
    (["--natural-share", "1.5"], "--natural-share"),
    (["--replay-steps", "0", "-1"], "--replay-steps"),
    (["--diversity", "-0.5"], "--diversity"),
    (["--replay-size", "0"], "--replay-size"),
    (["--final-epochs", "-1"], "--final-epochs"),
])
def test_bad_input_is_one_line(layout, victims, one_line_error, extra, argument):
    one_line_error(main, ["--victims", str(victims), "--data", str(layout / "data"), *extra],
                   argument)


def test_a_folder_without_models_config_or_the_transfer_set_is_named(layout, victims,
                                                                     one_line_error):
    one_line_error(main, ["--victims", str(layout), "--data", str(layout / "data")],
                   "--victims")
    (layout / "data" / "tinyimagenet200_val10k_train50pc.zip").unlink()
    one_line_error(main, ["--victims", str(victims), "--data", str(layout / "data"),
                          "--test-set", str(layout / "data" / "cifar10_jpeg_q75.zip")], "--data")


def test_class_counts_skip_classes_without_test_images():
    counts = class_counts({"a": 0.0, "b": 0.49, "c": 0.5, "d": None, "e": 1.0})
    assert counts == {"classes": 4, "classes_below_50": 2, "classes_at_0": 1}


def _row(method, seed, surrogate, victim_acc=0.9, acc=0.5, agreement=None,
         victim=(1.0, 0.8, 0.5)):
    victim = dict(zip(("stop", "yield", "rare"), victim, strict=True))
    return {"method": method, "seed": seed, "budget": 5000, "wall_seconds": 50.0,
            "victim_acc": victim_acc, "surrogate_acc": acc, "fidelity_test": acc,
            "first_flagged": None, **class_counts(surrogate),
            "per_class_victim": victim, "per_class_surrogate": surrogate,
            **({} if agreement is None else {"per_class_agreement": agreement}),
            "curve": [{"queries": 5000, "surrogate_acc": acc, "fidelity_test": acc}],
            "seconds_per_1000": {}, "cpu_seconds_per_1000": {}}


def test_per_class_table_means_over_seeds_and_marks_poor_classes():
    rows = [_row("knockoff", 0, {"stop": 0.9, "yield": 0.2, "rare": 0.0}),
            _row("knockoff", 1, {"stop": 0.7, "yield": 0.6, "rare": None}),
            _row("dfme", 0, {"stop": 0.1, "yield": 0.0, "rare": 0.0})]
    lines = per_class_table(rows)
    assert lines[0] == "| class | victim | knockoff | dfme |"
    assert lines[2] == "| stop | 1.00 | 0.80 | 0.10* |"
    assert lines[3] == "| yield | 0.80 | 0.40* | 0.00* |"
    assert lines[4] == "| rare | 0.50 | 0.00* | 0.00* |"  # seed 1 drew no image of it
    assert lines[-2:] == ["- knockoff: 2 (yield, rare); -; 0",  # rows made before agreement
                          "- dfme: 3 (stop, yield, rare); -; 0"]


def test_per_class_table_puts_agreement_beside_accuracy_and_names_the_poor_classes():
    victim = (1.0, 0.4, 0.3)  # the victim itself wrong on most yield and rare signs
    rows = [_row("synthetic", 0, {"stop": 0.9, "yield": 0.3, "rare": 0.3},
                 agreement={"stop": 0.9, "yield": 0.9, "rare": 0.4}, victim=victim),
            _row("synthetic", 1, {"stop": 0.7, "yield": 0.5, "rare": 0.1},
                 agreement={"stop": 0.7, "yield": 0.7, "rare": 0.2}, victim=victim),
            _row("knockoff", 0, {"stop": 0.4, "yield": 0.6, "rare": None}, victim=victim)]
    lines = per_class_table(rows)
    assert lines[0] == ("| class | victim | synthetic | synthetic agreement | knockoff "
                        "| knockoff agreement |")
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| stop | 1.00 | 0.80 | 0.80 | 0.40* | - |"  # knockoff: an old row
    assert lines[3] == "| yield | 0.40 | 0.40* | 0.80 | 0.60 | - |"
    assert lines[4] == "| rare | 0.30 | 0.20* | 0.30* | n/a | - |"  # knockoff drew none
    # yield: below by accuracy only, the surrogate copies the victim (who is below too)
    assert lines[-2:] == ["- synthetic: 2 (yield, rare); 1 (rare); 2 (yield, rare)",
                          "- knockoff: 1 (stop); -; 0"]


def test_markdown_states_ratio_and_poor_classes_per_seed():
    class Args:
        budget, model, test_limit, test_set, data = 5000, "gtsrb_cnn", 2000, "x/gtsrb.npz", "d"

    rows = [_row("knockoff", 0, {"stop": 0.9, "yield": 0.2, "rare": 0.0}, acc=0.45),
            _row("knockoff", 1, {"stop": 0.7, "yield": 0.6, "rare": 0.6}, acc=0.36)]
    text = _markdown(rows, Args, "load average 1.00")
    assert "2000 images of `gtsrb.npz` (victim 0.9000" in text
    assert "| knockoff | 2 | 0.4050 ± 0.0450 | 0.450x |" in text
    assert "| 2/0 of 3 | 1/0 |" in text
    assert "| yield | 0.80 | 0.40* |" in text


def test_reuse_reads_a_finished_run_back_and_mobilenet_needs_its_weights(layout, victims,
                                                                         one_line_error):
    from types import SimpleNamespace

    from benchmarks.datafree_bench import ROW_NAME, run_one

    row = _row("dfme", 3, {"stop": 0.5, "yield": 0.5, "rare": 0.5})
    (layout / "b" / "dfme_s3").mkdir(parents=True)
    (layout / "b" / "dfme_s3" / ROW_NAME).write_text(json.dumps(row))
    ns = SimpleNamespace(out=str(layout / "b"), reuse=True)
    assert run_one(ns, "dfme", "unused:1", 3) == row  # nothing sent, nothing trained
    (layout / "data" / "mobilenet_2_5_224_tf_no_top.h5").unlink()
    one_line_error(main, ["--victims", str(victims), "--data", str(layout / "data"),
                          "--methods", "knockoff-mobilenet"], "--data")


def test_variants_cross_replay_and_diversity_for_the_data_free_methods_only():
    from types import SimpleNamespace

    ns = SimpleNamespace(methods=["dfme", "knockoff"], replay_steps=[0, 5], diversity=[0.0])
    assert variants(ns) == [("dfme", 0, 0.0), ("dfme", 5, 0.0), ("knockoff", 0, None)]
    ns.diversity = None
    assert variants(ns)[:2] == [("dfme", 0, None), ("dfme", 5, None)]


def test_curve_means_and_the_pace_between_points():
    rows = [_row("dfme", 0, {"a": 0.1}), _row("dfme", 1, {"a": 0.1}, acc=0.3)]
    assert curve_means(rows) == [(5000, [0.5, 0.3])]
    row = _row("dfme", 0, {"a": 0.1})
    row["curve"] = [
        {"queries": 1000, "parts": {"generator": 8.0, "victim": 2.0, "evaluation": 5.0}},
        {"queries": 3000, "parts": {"generator": 28.0, "victim": 6.0, "evaluation": 9.0}},
        {"queries": 5000}]  # the final point records no parts: the report's split does
    row["seconds_per_1000"] = {"generator": 9.0, "victim": 2.0, "evaluation": 3.0}
    assert pace(row) == [(0, 1000, 10.0), (1000, 3000, 12.0), (3000, 5000, 10.5)]


def _capturing(layout, monkeypatch, **fields):
    """The bench's namespace (`fields` added) and the list of the data-free configs its rows
    pass to `run_datafree`, which stops each run before anything is sent."""
    from types import SimpleNamespace

    import attack.datafree

    seen = []

    def capture(config, **_):
        seen.append(config)
        raise KeyboardInterrupt  # stop before any report is read

    monkeypatch.setattr(attack.datafree, "run_datafree", capture)
    return SimpleNamespace(out=str(layout / "b"), model="m", budget=1000, arch_args=[],
                           test_set=None, data=str(layout / "data"), test_limit=10,
                           curve_points=1, natural_share=0.5, flags=False, **fields), seen


def test_prior_hybrids_are_data_free_and_need_no_tiny_imagenet(layout, victims, one_line_error,
                                                               monkeypatch):
    from benchmarks.datafree_bench import run_one

    (layout / "data" / "tinyimagenet200_val10k_train50pc.zip").unlink()
    # the data check passes without Tiny-ImageNet: the next check (--test-set) is the one named
    one_line_error(main, ["--victims", str(victims), "--data", str(layout / "data"),
                          "--methods", "hybrid-prior", "hybrid-prior-hl",
                          "--test-set", str(layout / "missing.zip")], "--test-set")
    one_line_error(main, ["--victims", str(victims), "--data", str(layout / "data"),
                          "--methods", "hybrid-prior", "hybrid"], "--data")
    ns, seen = _capturing(layout, monkeypatch, reuse=False)
    for method in ("hybrid-prior", "hybrid-prior-hl"):
        with pytest.raises(KeyboardInterrupt):
            run_one(ns, method, "localhost:1", 0, replay=20)
    assert [(c.method, c.natural_source, c.natural_share, c.transfer_set, c.replay_steps)
            for c in seen] == [("dfme", "prior", 0.5, None, 20),
                               ("dfms-hl", "prior", 0.5, None, 20)]


def test_reuse_resumes_a_finished_run_for_another_final_pass(layout, monkeypatch):
    """--reuse reads a row back when its final pass is the one asked for; a data-free run
    made with another is resumed (its journal pays nothing again), a folder without a run
    started afresh, and a Knockoff row is read back whatever the flag."""
    from benchmarks.datafree_bench import ROW_NAME, run_one

    ns, seen = _capturing(layout, monkeypatch, reuse=True, final_epochs=10)
    for name, final in (("dfme_s0", 10), ("dfme_s1", None), ("knockoff_s0", None)):
        row = _row(name.split("_")[0], 0, {"stop": 0.5})
        if final is not None:
            row["final_epochs"] = final
        (layout / "b" / name).mkdir(parents=True)
        (layout / "b" / name / ROW_NAME).write_text(json.dumps(row))
    assert run_one(ns, "dfme", "unused:1", 0)["final_epochs"] == 10  # read back
    assert run_one(ns, "knockoff", "unused:1", 0)["method"] == "knockoff"  # read back
    (layout / "b" / "dfme_s1" / "config.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        run_one(ns, "dfme", "localhost:1", 1)  # its row was made without a final pass
    with pytest.raises(KeyboardInterrupt):
        run_one(ns, "dfme", "localhost:1", 2)  # no run there: a new one
    assert [(c.resume, c.final_epochs, c.out.rsplit("/", 1)[1]) for c in seen] == [
        (True, 10, "dfme_s1"), (False, 10, "dfme_s2")]


def test_markdown_puts_the_online_surrogate_beside_the_final_pass():
    class Args:
        budget, model, test_limit, test_set, data = 5000, "cifar10_cnn", 1000, "x/c.zip", "d"

    rows = []
    for seed, (online, final) in enumerate(((0.30, 0.40), (0.34, 0.42))):
        row = _row("dfme replay 20", seed, {"stop": 0.5}, acc=final)
        row.update(final_epochs=10, online_acc=online,
                   seconds_per_1000={"final_pass": 12.0, "victim": 1.0})
        rows.append(row)
    text = _markdown(rows, Args, "load average 1.00")
    assert "| dfme replay 20 final 10 | 2 | 0.4100 ± 0.0100 |" in text
    assert "| 0.3200 ± 0.0200 | 1.00 (nan) |" in text  # online, then the victim's seconds
    assert "- dfme replay 20 s0: 0.3000 -> 0.4000 (+0.1000; final pass 60 s)" in text
