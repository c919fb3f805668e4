"""`benchmarks.synthetic_bench`: its refusals (one line, exit 2, nothing written; those of
``--refit-from`` too) and its page.

No server, no TensorFlow: the flags are checked before anything starts, and the Markdown page
is built from hand-made rows (a synthetic variant under its own label keeps its renderer and
search columns; a Knockoff row has none).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.synthetic_bench import _markdown, main


@pytest.fixture()
def victims(tmp_path):
    folder = tmp_path / "victims"
    folder.mkdir()
    (folder / "models.config").write_text("model_config_list {}\n")
    test = tmp_path / "test.npz"
    test.write_bytes(b"")
    return folder, test


@pytest.mark.parametrize("args,named,expected", [
    (["--knockoff-split", "test"], "--knockoff-split", "train+val, train, val"),
    (["--budget", "0"], "--budget", "at least 1"),
    (["--set", "screen=0"], "--set", "SyntheticConfig"),
    (["--set", "screen=2", "online_passes=0"], "--set", "online"),
])
def test_bad_flags_are_one_line_exit_2_and_nothing_written(victims, tmp_path, capsys, args,
                                                           named, expected):
    folder, test = victims
    out = tmp_path / "out"
    code = main(["--victims", str(folder), "--test-set", str(test), "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and named in err[0] and expected in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("args,named,expected", [
    (["--set", "round_size=5"], "--set", "only the final pass's epochs"),
    (["--set", "epochs=10", "--methods", "synthetic", "knockoff"], "--methods", "synthetic"),
    (["--set", "epochs=10", "--seeds", "0", "1"], "--refit-from", "finished runs"),
    (["--set", "epochs=10", "--budget", "500"], "--budget", "the runs' budget (1000)"),
    ([], "--set", "NAME=VALUE of the final pass's epochs, final_balance"),  # no change
    (["--budget", "1000"], "--set", "NAME=VALUE of the final pass's epochs, final_balance"),
    # the surrogate of a run with online updates chose its queries: kept
    (["--set", "mixup=0.2"], "--set", "mixup=0.0, the run's own: its online surrogate"),
    (["--budget", "2000", "--set", "epochs=0"], "--set", "SyntheticConfig"),
])
def test_refit_refusals_name_the_argument_before_anything_is_copied(victims, tmp_path, capsys,
                                                                    args, named, expected):
    folder, test = victims
    _finished(tmp_path, '{"budget": 1000}')  # seed 0 finished, seed 1 absent
    out = tmp_path / "out"
    code = main(["--victims", str(folder), "--test-set", str(test), "--out", str(out),
                 "--refit-from", str(tmp_path / "runs"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and named in err[0] and expected in err[0], err
    assert not out.exists()


def _finished(tmp_path, config: str):
    finished = tmp_path / "runs" / "synthetic_s0"
    finished.mkdir(parents=True)
    (finished / "config.json").write_text(config)
    (finished / "report.json").write_text("{}")
    return finished


def test_refit_grows_runs_to_a_larger_budget_unless_their_last_round_was_cut(victims,
                                                                              tmp_path, capsys):
    from benchmarks.synthetic_bench import _refit_error

    finished = _finished(tmp_path, '{"budget": 1050, "round_size": 100}')
    ns = SimpleNamespace(methods=["synthetic"], set=[], seeds=[0], budget=2000,
                         refit_from=str(tmp_path / "runs"))
    assert _refit_error(ns) is None and ns.budget == 2000  # round 11 (of 50) never planned
    (finished / "queries").mkdir()
    (finished / "queries" / "r000011.npz").write_bytes(b"")
    folder, test = victims
    out = tmp_path / "out"
    code = main(["--victims", str(folder), "--test-set", str(test), "--out", str(out),
                 "--refit-from", str(tmp_path / "runs"), "--budget", "2000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--budget" in err[0], err
    assert "last round (11) was cut to 50" in err[0] and not out.exists()


def _row(method, seed, acc, **extra):
    per_class = {"0": acc, "1": 0.0}
    return {"method": method, "seed": seed, "budget": 1000, "wall_seconds": 10.0,
            "victim_acc": 1.0, "surrogate_acc": acc, "fidelity_test": acc, "classes": 2,
            "classes_below_50": int(acc < 0.5) + 1, "classes_at_0": 1,
            "per_class_victim": {"0": 1.0, "1": 1.0}, "per_class_surrogate": per_class,
            "curve": [{"queries": 1000, "surrogate_acc": acc}], **extra}


def test_page_keeps_a_variants_renderer_columns_and_puts_methods_side_by_side():
    synthetic = {"classes_never_answered": [], "seconds_per_1000": {
        "victim": 1.0, "render": 2.0, "search": 0.5, "surrogate": 30.0}}
    rows = [_row("screen 4", 0, 0.6, **synthetic), _row("screen 4", 1, 0.4, **synthetic),
            _row("knockoff-mobilenet", 0, 0.3, seconds_per_1000={})]
    ns = SimpleNamespace(budget=1000, model="m", test_limit=None, test_set="t.npz", set=[])
    page = _markdown(rows, ns, "load average 1 on 2 cores")
    lines = page.splitlines()
    variant = next(line for line in lines if line.startswith("| screen 4 | 2 |"))
    assert "0.5000 ± 0.1000" in variant and "| 2.00 | 0.50 | 30.00 |" in variant
    assert "| 0/0 |" in variant  # classes never answered, per seed
    knockoff = next(line for line in lines if line.startswith("| knockoff-mobilenet | 1 |"))
    assert knockoff.count("n/a") == 5  # never answered; victim, renderer, search, surrogate
    assert "| class | victim | screen 4 | knockoff-mobilenet |" in lines
    assert "| 0 | 1.00 | 0.50 | 0.30* |" in lines


def test_page_says_how_many_queries_a_grown_run_paid_this_session():
    grown = _row("synthetic, grown from 500", 0, 0.7, classes_never_answered=[],
                 seconds_per_1000={}, refit_of="synthetic_s0", sent_this_session=500)
    ns = SimpleNamespace(budget=1000, model="m", test_limit=None, test_set="t.npz", set=[])
    lines = _markdown([grown], ns, "load 1").splitlines()
    assert "- synthetic, grown from 500 s0: 500 of 1,000" in lines
