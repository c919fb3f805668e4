"""`benchmarks.active_curves`: bad input refused before anything runs, the summary's figures,
and one strategy's run resumed after a stop without paying for an answered query twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import active_curves
from benchmarks.active_curves import CurvesConfig, Setting, run_curve, summarise
from common.errors import UsageError
from serving.testing import colour_images, colour_victim


@pytest.fixture
def victim_dir(tmp_path):
    """A model base path as the config checks it (a version folder with saved_model.pb); the
    runs below query an in-process victim, never this folder."""
    (tmp_path / "models" / "v" / "1").mkdir(parents=True)
    (tmp_path / "models" / "v" / "1" / "saved_model.pb").write_bytes(b"")
    return tmp_path / "models" / "v"


def _argv(victim_dir, out, *flags):
    return ["--victim", str(victim_dir), "--test-set", "x.npz", "--transfer-set", "y.npz",
            "--out", str(out), *flags]


@pytest.mark.parametrize(("flags", "flag", "words"), [
    (["--checkpoints", "4000", "2000"], "--checkpoints", "distinct increasing"),
    (["--checkpoints", "0"], "--checkpoints", "a positive integer"),
    (["--strategies", "bald"], "--strategies", "invalid choice"),
    (["--strategies", "random", "random"], "--strategies", "distinct strategies"),
    (["--seeds", "1", "1"], "--seeds", "distinct seeds"),
    (["--surrogate", "linear"], "--surrogate", "invalid choice"),
    (["--round-size", "-1"], "--round-size", "non-negative"),
])
def test_bad_flags_are_one_line_and_exit_2(victim_dir, tmp_path, capsys, flags, flag, words):
    assert active_curves.main(_argv(victim_dir, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_savedmodel_is_refused(tmp_path, capsys):
    assert active_curves.main(_argv(tmp_path, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "--victim" in err and "saved_model.pb" in err


def test_checkpoints_beyond_the_transfer_set_are_refused_before_anything_is_written(
        victim_dir, tmp_path, capsys):
    images = np.zeros((30, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "test.npz", x_test=images, y_test=np.arange(30) % 3)
    np.savez(tmp_path / "pool.npz", x_train=images, y_train=np.arange(30) % 2)
    argv = ["--victim", str(victim_dir), "--test-set", str(tmp_path / "test.npz"),
            "--transfer-set", str(tmp_path / "pool.npz"), "--transfer-split", "train",
            "--checkpoints", "20", "40", "--out", str(tmp_path / "out")]
    assert active_curves.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--checkpoints" in err and "at most 30" in err and "40" in err
    assert not (tmp_path / "out").exists()


def test_round_ends_hold_every_checkpoint_and_multiple_of_the_round_size(victim_dir):
    config = CurvesConfig(victim=str(victim_dir), test_set="t", transfer_set="p",
                          checkpoints=(2000, 4000, 8000))
    assert config.round_ends() == [2000, 4000, 8000]
    sized = CurvesConfig(victim=str(victim_dir), test_set="t", transfer_set="p",
                         checkpoints=(2000, 5000), round_size=1500)
    assert sized.round_ends() == [1500, 2000, 3000, 4500, 5000]
    assert sized.pool_cap("dfal") is None
    capped = CurvesConfig(victim=str(victim_dir), test_set="t", transfer_set="p",
                          active_pool=900, dfal_pool=300)
    assert (capped.pool_cap("kcenter"), capped.pool_cap("dfal")) == (900, 300)


def _rows(name, by_count):
    return [{"strategy": name, "seed": seed, "queries": count, "accuracy": acc}
            for count, accs in by_count.items() for seed, acc in enumerate(accs)]


def test_summary_mean_spread_and_queries_to_reach_random_at_the_largest_budget():
    rows = (_rows("random", {10: [0.30, 0.40, 0.50], 20: [0.50, 0.60, 0.70]})
            + _rows("kcenter", {10: [0.60, 0.65, 0.70], 20: [0.70, 0.70, 0.70]})
            + _rows("uncertainty", {10: [0.20, 0.30, 0.40], 20: [0.55, 0.59, 0.59]}))
    summary = summarise(rows, ("random", "uncertainty", "kcenter", "dfal"), (10, 20))
    cell = summary["table"]["random"]["10"]
    assert cell["seeds"] == 3
    assert cell["mean"] == pytest.approx(0.40) and cell["sd"] == pytest.approx(0.10)
    assert summary["target"] == {"strategy": "random", "queries": 20,
                                 "mean": pytest.approx(0.60)}
    # kcenter's mean at 10 (0.65) is above random's at 20 (0.60); uncertainty's 0.5767 is not
    assert summary["reach"] == {"random": 20, "kcenter": 10, "uncertainty": None}
    assert "dfal" not in summary["table"]
    result = {"summary": summary, "checkpoints": [10, 20], "surrogate_kind": "frozen",
              "victim": "v", "victim_accuracy": 0.7, "test_images": 5, "pool_images": 9,
              "training": {}, "round_ends": [10, 20], "machine": "m", "seconds": 60}
    table = active_curves.markdown(result)
    assert "| kcenter | 65.0 +/- 5.0 (n=3) | 70.0 +/- 0.0 (n=3) | 10 |" in table
    assert "| uncertainty |" in table and "not within 20 |" in table


def test_one_seed_gives_no_spread_and_no_random_gives_no_target():
    summary = summarise(_rows("kcenter", {10: [0.5]}), ("random", "kcenter"), (10,))
    assert summary["table"]["kcenter"]["10"]["sd"] is None
    assert summary["target"] is None and summary["reach"] == {}


# -- one run, against an in-process victim, on features the head can learn --------------------


class _Stop(Exception):
    pass


class _Victim:
    """The colour victim in-process, counting every image it answers; `stop_after` raises
    once that many answers have been handed back (a killed benchmark)."""

    def __init__(self, stop_after: int | None = None):
        from attack import KerasVictim

        self.inner = KerasVictim(colour_victim(), input_range="0,255", batch_size=10)
        self.stop_after = stop_after
        self.answered = 0

    def predict(self, images, *, on_send=None, on_result=None):
        def result(first, answers):
            on_result(first, answers)
            self.answered += len(answers)
            if self.stop_after is not None and self.answered >= self.stop_after:
                raise _Stop

        return self.inner.predict(images, on_send=on_send, on_result=result)

    def to_probabilities(self, raw):
        return self.inner.to_probabilities(raw)


def _features(images):
    return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32) / 40.0


@pytest.fixture(scope="module")
def world():
    pool = colour_images(240, seed=1)
    test = colour_images(90, seed=2)
    labels = np.argmax(np.asarray(colour_victim()(test.astype(np.float32))), axis=1)
    return pool, test, labels


def _setting(config, victim, world):
    pool, test, labels = world
    return Setting(config, victim, pool, _features(pool), _features(test), labels, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kcenter", "random"])
def test_a_run_stopped_mid_round_resumes_without_paying_twice(victim_dir, tmp_path, world,
                                                               name):
    config = CurvesConfig(victim=str(victim_dir), test_set="t", transfer_set="p",
                          checkpoints=(40, 80, 120), head_epochs=40, batch_size=16, lr=0.05,
                          query_batch=10)
    run_dir = tmp_path / "run"
    first = _Victim(stop_after=60)  # inside the second round (40..80)
    with pytest.raises(_Stop):
        run_curve(_setting(config, first, world), name, 0, run_dir)
    assert [p["queries"] for p in json.loads((run_dir / "curve.json").read_text())] == [40]
    second = _Victim()
    points = run_curve(_setting(config, second, world), name, 0, run_dir)
    assert first.answered + second.answered == 120  # no answered image asked again
    from attack.journal import QueryJournal

    with QueryJournal.open(run_dir) as journal:
        answered = journal.answered_indices()
        assert len(answered) == len(np.unique(answered)) == 120
    assert [p["queries"] for p in points] == [40, 80, 120]
    assert all(p["accuracy"] > 0.6 for p in points)  # chance is 1/3
    again = _Victim()
    assert run_curve(_setting(config, again, world), name, 0, run_dir) == points
    assert again.answered == 0
    changed = CurvesConfig(victim=str(victim_dir), test_set="t", transfer_set="p",
                           checkpoints=(40, 80, 120), head_epochs=41)
    with pytest.raises(UsageError, match="training"):
        run_curve(_setting(changed, _Victim(), world), name, 0, run_dir)


@pytest.mark.slow
def test_active_rounds_plan_with_the_surrogate_of_every_answer_so_far(victim_dir, tmp_path,
                                                                      world):
    """Uncertainty's second and third rounds come from the head trained on the answers before
    them: the images the surrogate is least sure of, not a random draw."""
    config = CurvesConfig(victim=str(victim_dir), test_set="t", transfer_set="p",
                          checkpoints=(30, 60), round_size=15, head_epochs=40, batch_size=16,
                          lr=0.05, query_batch=10)
    run_curve(_setting(config, _Victim(), world), "uncertainty", 0, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "strategy.json").read_text())
    assert state["rounds"] == 4 and state["queue"] == []
    saved = sorted(p.name for p in (tmp_path / "run" / "surrogates").iterdir())
    assert saved == ["q15.npz", "q30.npz", "q45.npz", "q60.npz"]
