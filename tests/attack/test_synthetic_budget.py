"""Growing a paid run's budget on ``--resume`` (`attack.synthetic.check_resume`), and the one
declaration of what a resume may change (`attack.config.RESUME_CHANGES`, a config's
``resume_changes``).

Fast: the refusals (a smaller budget, a run whose last round was cut at its budget, the default
budget nobody typed) are one line and exit 2 before anything is written; `prepare_run_dir`
leaves the declared fields to the attack and still refuses the others, datafree's
``final_epochs`` included. Slow: a run of 200 queries grown to 300, then to 400 with a kill
during the extension, pays exactly the new queries and ends with the same query blocks and
answers as a fresh run of 400.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from attack.config import (
    REDO_EXTEND,
    REDO_FINAL_PASS,
    REDO_NOTHING,
    RESUME_CHANGES,
    KnockoffConfig,
    resume_fields,
)
from attack.datafree import DataFreeConfig
from attack.synthetic import (
    FINAL_PASS_FIELDS,
    SURROGATE_FIELDS,
    SyntheticConfig,
    check_resume,
    main,
)
from common.cli import save_config
from common.errors import UsageError
from serving.testing import colour_images
from tests.attack.helpers import assert_refused, colour_test, extract_synthetic, killed_keras_victim


def _saved_run(tmp_path, **values):
    """A run directory holding only the config.json of a `SyntheticConfig` with `values`."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(SyntheticConfig(out=str(run_dir), round_size=100, **values),
                run_dir / "config.json")
    return run_dir


def _snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("values,args,expected", [
    ({"budget": 300}, ["--budget", "200"], "at least 300, the budget of the run"),
    ({"budget": 300}, [], "give --budget 100000 to grow the run"),  # left at the default
    ({"budget": 250}, ["--budget", "400"], "last round (3) was cut to 50 queries"),
])
def test_a_budget_the_run_cannot_grow_to_is_refused_before_anything_is_written(
        tmp_path, capsys, values, args, expected):
    run_dir = _saved_run(tmp_path, **values)
    if values["budget"] == 250:  # round 3 of 100 was planned at the budget: cut to 50
        (run_dir / "queries").mkdir()
        np.savez(run_dir / "queries" / "r000003.npz", theta=np.zeros((50, 4), np.float16))
    before = _snapshot(run_dir)
    code = main(["--out", str(run_dir), "--resume", "--round-size", "100", *args])
    assert_refused(capsys, code, "--budget", expected)
    assert _snapshot(run_dir) == before


def test_a_budget_grows_when_asked_for(tmp_path, monkeypatch, capsys):
    run_dir = _saved_run(tmp_path, budget=250)  # cut at 250, but round 3 never planned
    grown = SyntheticConfig(out=str(run_dir), round_size=100, budget=400, resume=True)
    assert check_resume(grown) == {"budget": 250}
    assert check_resume(dataclasses.replace(grown, epochs=3)) == {"budget": 250, "epochs": 10}
    assert check_resume(dataclasses.replace(grown, budget=250)) == {}
    assert check_resume(dataclasses.replace(grown, resume=False)) == {}
    default = dataclasses.replace(grown, budget=100_000)
    with pytest.raises(UsageError, match="without --budget"):
        check_resume(default, budget_given=False)
    assert check_resume(default, budget_given=True) == {"budget": 250}

    import attack.synthetic as synthetic

    reached = []

    def stop(attack_class, config, **kwargs):  # past every check: the victim would be next
        reached.append(config.budget)
        raise UsageError("stopped before the victim")

    monkeypatch.setattr(synthetic, "run_generated", stop)
    for typed in (["--budget", "100000"], ["--budget=100000"], ["--bud", "100000"]):
        code = main(["--out", str(run_dir), "--resume", "--round-size", "100", *typed])
        assert_refused(capsys, code, "stopped before the victim")
    assert reached == [100_000] * 3


def test_one_declaration_of_what_a_resume_may_change(tmp_path):
    from attack.pipeline import prepare_run_dir

    assert RESUME_CHANGES["final_epochs"] == REDO_FINAL_PASS  # datafree's final pass
    assert RESUME_CHANGES["grpc"] == RESUME_CHANGES["output_kind"] == REDO_NOTHING
    assert resume_fields(DataFreeConfig, REDO_FINAL_PASS) == ("final_epochs",)
    assert FINAL_PASS_FIELDS == resume_fields(SyntheticConfig, REDO_FINAL_PASS) == (
        "epochs", "final_balance", *SURROGATE_FIELDS)
    assert resume_fields(SyntheticConfig, REDO_EXTEND) == ("budget",)
    assert resume_fields(KnockoffConfig, REDO_FINAL_PASS) == ()  # Knockoff's are compared
    with pytest.raises(TypeError):
        RESUME_CHANGES["budget"] = REDO_EXTEND  # read only: a config class extends a copy

    run_dir = _saved_run(tmp_path, budget=300)
    resumed = SyntheticConfig(out=str(run_dir), round_size=100, budget=300, resume=True)
    before = _snapshot(run_dir)
    prepare_run_dir(dataclasses.replace(resumed, budget=600, epochs=3, grpc="other:1"))
    with pytest.raises(UsageError, match="--round-size 100"):
        prepare_run_dir(dataclasses.replace(resumed, round_size=50))
    assert _snapshot(run_dir) == before
    other = tmp_path / "datafree"
    other.mkdir()
    config = DataFreeConfig(out=str(other), budget=500, backbone="cnn", weights="none")
    save_config(config, other / "config.json")
    prepare_run_dir(dataclasses.replace(config, resume=True, final_epochs=4))
    with pytest.raises(UsageError, match="--budget 500"):
        prepare_run_dir(dataclasses.replace(config, resume=True, budget=900))


def test_the_surrogate_changes_on_resume_only_where_no_query_depended_on_it(tmp_path, capsys,
                                                                           monkeypatch):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"")
    offline = _saved_run(tmp_path, budget=300, online_passes=0, backbone="mobilenet",
                         weights=str(weights), arch_args=("alpha=0.25",))
    resumed = SyntheticConfig(out=str(offline), round_size=100, budget=300, resume=True,
                              online_passes=0, backbone="mobilenet", weights=str(weights),
                              arch_args=("alpha=0.25",))
    assert check_resume(resumed) == {}  # the saved list, the same tuple
    monkeypatch.chdir(tmp_path)  # the same file spelled otherwise is the same setting
    assert check_resume(dataclasses.replace(resumed, weights="./w.h5")) == {}
    other = dataclasses.replace(resumed, mixup=0.2, backbone="resnet50",
                                arch_args=(), ema=0.99)
    assert check_resume(other) == {"mixup": 0.0, "backbone": "mobilenet",
                                   "arch_args": ["alpha=0.25"], "ema": 0.0}

    online = tmp_path / "online"
    online.mkdir()
    save_config(SyntheticConfig(out=str(online), round_size=100, budget=300),
                online / "config.json")
    again = SyntheticConfig(out=str(online), round_size=100, budget=300, resume=True)
    assert check_resume(dataclasses.replace(again, epochs=3)) == {"epochs": 10}
    before = _snapshot(online)
    with pytest.raises(UsageError, match="online surrogate") as err:
        check_resume(dataclasses.replace(again, mixup=0.2))
    assert err.value.argument == "mixup" and "0.0, the run's own" in err.value.expected
    code = main(["--out", str(online), "--resume", "--round-size", "100", "--budget", "300",
                 "--learning-rate", "0.01"])
    assert_refused(capsys, code, "--learning-rate=0.01", "Expected 0.001, the run's own")
    assert _snapshot(online) == before


@pytest.mark.slow  # ~30 s: five sessions, four final passes and exports
def test_a_grown_run_pays_only_the_new_queries_and_equals_a_fresh_run(tmp_path):
    from attack.journal import QueryJournal
    from serving.testing import colour_victim

    model = colour_victim()
    test = colour_test(model)
    hyper = dict(round_size=100, natural_share=0.3, natural=colour_images(150, seed=5),
                 curve_points=2, test=test, epochs=1, seed=1)
    grown = tmp_path / "grown"
    extract_synthetic(killed_keras_victim(model, calls=None), grown, budget=200, **hyper)
    assert [p["queries"] for p in json.loads((grown / "curve.json").read_text())] == [100, 200]

    victim = killed_keras_victim(model, calls=None)
    result = extract_synthetic(victim, grown, resume=True, budget=300, **hyper)
    assert victim.queries == 100 and result.queries == 300  # the 200 answers read back
    extra = json.loads((grown / "report.json").read_text())["extra"]
    assert extra["sent_this_session"] == 100 and extra["rounds"] == 3
    assert extra["budget_grown"] == {"from": 200, "to": 300}
    assert extra["final_pass"]["examples"] == 300
    assert extra["online_surrogate_at_budget"] is not None  # the online rounds went on
    assert json.loads((grown / "config.json").read_text())["budget"] == 300
    # the earlier budget's point (its final pass) left the curve: the online one's, then 300
    assert [p["queries"] for p in json.loads((grown / "curve.json").read_text())] == [100, 300]

    killed = killed_keras_victim(model, calls=3)  # 16 a call: dies early in round 4
    with pytest.raises(KeyboardInterrupt):
        extract_synthetic(killed, grown, resume=True, budget=400, **hyper)
    with QueryJournal.open(grown) as journal:
        answered = journal.num_answered
    assert 300 < answered < 400
    assert json.loads((grown / "config.json").read_text())["budget"] == 400
    with pytest.raises(UsageError, match="at least 400"):  # the grown budget is the run's now
        extract_synthetic(killed, grown, resume=True, budget=300, **hyper)

    victim = killed_keras_victim(model, calls=None)
    result = extract_synthetic(victim, grown, resume=True, budget=400, **hyper)
    assert victim.queries == 400 - answered and result.queries == 400
    extra = json.loads((grown / "report.json").read_text())["extra"]
    assert extra["sent_this_session"] == 400 - answered
    assert extra["budget_grown"] == {"from": 200, "to": 400}

    fresh = tmp_path / "fresh"
    extract_synthetic(killed_keras_victim(model, calls=None), fresh, budget=400, **hyper)
    for r in (1, 2, 3, 4):
        with np.load(grown / "queries" / f"r{r:06d}.npz") as a, \
                np.load(fresh / "queries" / f"r{r:06d}.npz") as b:
            assert a.files == b.files
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"round {r} {name}")
    answers = []
    for run_dir in (grown, fresh):
        with QueryJournal.open(run_dir) as journal:
            order = np.argsort(journal.answered_indices())
            assert journal.answered_indices()[order].tolist() == list(range(400))
            answers.append(journal.responses()[order].copy())
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-5)
