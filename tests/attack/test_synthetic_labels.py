"""The label-only variant of the procedural-prior thief (`attack.synthetic`, ``granularity``).

A thief facing a probability API measures what it would steal from a top-1 API: every answer is
cut to its top-1 before the search or the surrogate reads it. Checked on the state and on what
the surrogate is given (the final pass is intercepted: its targets recorded, nothing trained):
elite scores and targets are one-hot, a killed run resumes applying the cut again to the
journal's raw answers, and the stream against a victim that itself answers one-hot is the same
query for query (byte-identical blocks) as against the same victim answering probabilities cut
by ``granularity="top1"``, while ``"probs"`` steers elsewhere. Refused before any query: topk:K
above the victim's classes, and a resume with another granularity. Slow: a victim exported by
``model.export()`` (logits, float input in [0, 1]) stolen end to end with top-1 answers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from attack.journal import QueryJournal
from common.errors import UsageError
from tests.attack.helpers import assert_refused, extract_synthetic, killed_keras_victim


class _FinalPass(Exception):
    """Raised in place of the final pass (its targets recorded, no surrogate trained)."""


@pytest.fixture
def recorded(monkeypatch):
    """[(kind, targets)] of every surrogate update: "online" ones run as ever, the "final"
    pass raises `_FinalPass` instead of training."""
    from attack.surrogate import SurrogateTrainer

    seen = []
    partial = SurrogateTrainer.partial_fit

    def partial_fit(self, images, targets, steps=1):
        seen.append(("online", np.array(targets)))
        return partial(self, images, targets, steps)

    def fit(self, images, targets, *args, **kwargs):
        seen.append(("final", np.array(targets)))
        raise _FinalPass

    monkeypatch.setattr(SurrogateTrainer, "partial_fit", partial_fit)
    monkeypatch.setattr(SurrogateTrainer, "fit", fit)
    return seen


def _one_hot(rows: np.ndarray) -> bool:
    return bool(np.isin(rows, (0.0, 1.0)).all() and (rows.sum(axis=1) == 1).all())


def _state(run_dir) -> dict:
    with np.load(run_dir / "synthetic_state.npz") as state:
        return {k: state[k].copy() for k in ("elite_score", "elite_seen")}


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_top1_learns_one_hot_everywhere_and_a_resume_cuts_the_journal_again(
        colour_model, recorded, tmp_path):
    run_dir = tmp_path / "run"
    hyper = dict(budget=200, round_size=100, online_passes=0, granularity="top1")
    first = killed_keras_victim(colour_model, calls=9)  # 16 per call: dies in round 2
    with pytest.raises(KeyboardInterrupt):
        extract_synthetic(first, run_dir, **hyper)
    state = _state(run_dir)  # after round 1
    assert np.isin(state["elite_score"], (0.0, 1.0)).all() and state["elite_score"].any()
    assert state["elite_seen"].sum() == 100
    assert not recorded  # no surrogate update (online ones: the slow test below)
    answered = first.queries
    assert 100 < answered < 200

    other = killed_keras_victim(colour_model, calls=None)
    with pytest.raises(UsageError, match=r"`--resume`.*--granularity top1 \(now "
                                         r"--granularity probs\)"):
        extract_synthetic(other, run_dir, resume=True, **{**hyper, "granularity": "probs"})
    assert other.queries == 0

    second = killed_keras_victim(colour_model, calls=None)
    with pytest.raises(_FinalPass):
        extract_synthetic(second, run_dir, resume=True, **hyper)
    assert second.queries == 200 - answered  # the answered queries were read back
    assert [kind for kind, _ in recorded] == ["final"]
    final = recorded[-1][1]
    assert final.shape == (200, 3) and _one_hot(final)
    with QueryJournal.open(run_dir) as journal:  # raw answers kept: the victim's logits
        raw = np.empty((200, 3), np.float32)
        raw[journal.answered_indices()] = journal.responses()
    assert not _one_hot(raw)
    np.testing.assert_array_equal(final.argmax(axis=1), _softmax(raw).argmax(axis=1))
    state = _state(run_dir)
    assert np.isin(state["elite_score"], (0.0, 1.0)).all()
    assert state["elite_seen"].tolist() == np.bincount(final.argmax(axis=1), minlength=3).tolist()


def _blocks(run_dir) -> list[bytes]:
    out = []
    for path in sorted((run_dir / "queries").glob("r*.npz")):
        with np.load(path) as block:
            out.append(block["theta"].tobytes() + block["target"].tobytes())
    return out


def test_a_top1_victim_and_top1_of_a_probability_victim_get_the_same_stream(
        colour_model, recorded, tmp_path):
    import keras

    from attack.victim import KerasVictim

    inputs = keras.Input(colour_model.input_shape[1:])
    label_only = keras.Model(inputs, keras.ops.one_hot(keras.ops.argmax(colour_model(inputs),
                                                                         axis=-1), 3))
    hyper = dict(budget=300, round_size=100, online_passes=0, seed=2)
    streams, finals = {}, {}
    for name, model, granularity in (("one-hot victim", label_only, "probs"),
                                     ("probabilities cut", colour_model, "top1"),
                                     ("probabilities", colour_model, "probs")):
        victim = KerasVictim(model, input_range="0,255", batch_size=50)
        with pytest.raises(_FinalPass):
            extract_synthetic(victim, tmp_path / name, granularity=granularity, **hyper)
        streams[name], finals[name] = _blocks(tmp_path / name), recorded[-1][1]
        assert len(streams[name]) == 3 and victim.queries - victim.probe_queries == 300
    assert streams["one-hot victim"] == streams["probabilities cut"]  # the simulation is faithful
    np.testing.assert_array_equal(finals["one-hot victim"], finals["probabilities cut"])
    assert _one_hot(finals["probabilities cut"]) and not _one_hot(finals["probabilities"])
    # the first round is all fresh theta either way; the elites steer the next ones elsewhere
    assert streams["probabilities"][0] == streams["probabilities cut"][0]
    assert streams["probabilities"][1:] != streams["probabilities cut"][1:]


def test_topk_above_the_victims_classes_is_refused_before_any_query(colour_model,
                                                                    tmp_path):
    victim = killed_keras_victim(colour_model, calls=None)
    with pytest.raises(UsageError, match=r"`granularity`.*'topk:4'.*K at most 3"):
        extract_synthetic(victim, tmp_path / "run", budget=100, round_size=100,
                          granularity="topk:4")
    assert victim.queries == victim.probe_queries == 0
    assert not (tmp_path / "run").exists()


def test_the_command_line_refuses_topk_above_the_classes_in_one_line(served_victim, capsys,
                                                                     tmp_path):
    from attack.synthetic import main

    out = tmp_path / "run"
    code = main(["--grpc", served_victim, "--model", "colours", "--budget", "100",
                 "--granularity", "topk:9", "--out", str(out)])
    assert_refused(capsys, code, "--granularity", "topk:9", "at most 3", unwritten=out)


@pytest.mark.slow  # ~15 s alone: the pattern victim trained and exported, a run with its final pass
def test_a_keras_export_answering_logits_stolen_from_top1_answers(monkeypatch, tmp_path):
    from attack.surrogate import SurrogateTrainer
    from attack.victim import KerasVictim
    from common.data import ImageDataset
    from tests import victim_matrix as vm

    paths, _ = vm.export_matrix(tmp_path / "victims", vm.train_core(), names=["keras_export"])
    images, labels = vm.pattern_images(200, seed=21)
    test = ImageDataset(images, labels, tuple(str(i) for i in range(vm.K)), "patterns")
    online, partial = [], SurrogateTrainer.partial_fit

    def partial_fit(self, images, targets, steps=1):  # recorded, then run as ever
        online.append(np.array(targets))
        return partial(self, images, targets, steps)

    monkeypatch.setattr(SurrogateTrainer, "partial_fit", partial_fit)
    run_dir = tmp_path / "run"
    with KerasVictim(paths["keras_export"], input_range="0,1") as victim:
        result = extract_synthetic(victim, run_dir, budget=900, round_size=300, test=test,
                                   granularity="top1", epochs=4)
    assert result.victim["output_kind"] == "logits" and result.queries == 900
    extra = json.loads((run_dir / "report.json").read_text())["extra"]
    assert extra["granularity"] == "top1"
    assert extra["trained_on"].startswith("top1 (one-hot)")
    assert set(extra["highest_probability_per_class"].values()) <= {0.0, 1.0}
    assert np.isin(_state(run_dir)["elite_score"], (0.0, 1.0)).all()
    assert len(online) == 3 and all(_one_hot(targets) for targets in online)  # one a round
    # a surrogate answering one class agrees ~0.47 on these images (the victim's most common
    # answer); measured 0.805 (accuracy 0.555 against the victim's 0.71)
    assert result.headline["fidelity_test"] > 0.65, result.headline
