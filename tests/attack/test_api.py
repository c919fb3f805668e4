"""The attacks as objects (`attack.Knockoff(...).extract(victim, transfer)`) through an
in-process `KerasVictim`: they learn, they run in a temporary or a given run directory and
resume there, a first batch that does not fit the output kind stops the run with the paid
answers kept (and `--resume` with the right kind uses them), and a granularity the victim cannot
give is refused before any query.

The colour victim of conftest answers logits (its Dense layer has no softmax) from float32
pixels at 0..255: the attack learns from logits through `Victim.to_probabilities`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import UsageError
from serving.testing import COLOUR_CLASSES as CLASSES
from serving.testing import colour_images, colour_victim

SURROGATE = dict(backbone="cnn", weights="none", input_size=16, epochs=8, batch_size=32,
                 learning_rate=3e-3)


@pytest.fixture(scope="module")
def model():
    return colour_victim()


@pytest.fixture(scope="module")
def transfer():
    return colour_images(500, seed=1)


@pytest.fixture(scope="module")
def test_set(model):
    from common.data import ImageDataset

    images = colour_images(200, seed=2)
    labels = np.argmax(np.asarray(model(images.astype(np.float32))), axis=1)
    return ImageDataset(images, labels, CLASSES, "colours-test")


def keras_victim(model, **kwargs):
    from attack import KerasVictim

    return KerasVictim(model, input_range="0,255", batch_size=32, **kwargs)


def test_public_names_import_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys, attack; names = attack.__all__; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10


def test_hyper_parameters_are_keyword_only_and_validated():
    import inspect

    from attack import Copycat, Knockoff

    params = inspect.signature(Knockoff).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert "budget" in params and "grpc" not in params and "backbone" not in params
    with pytest.raises(TypeError):
        Knockoff(2000)  # positional: refused
    with pytest.raises(UsageError, match="budget"):
        Knockoff(budget=0)
    with pytest.raises(UsageError, match="grpc.*hyper-parameter"):
        Knockoff(grpc="x:1")  # the victim is given to extract, not to the attack
    with pytest.raises(UsageError, match="granularity"):
        Knockoff(granularity="top2")
    assert repr(Copycat(budget=5)) == "Copycat(budget=5)"


def test_topk_above_the_number_of_classes_is_refused_before_any_query(model, transfer,
                                                                       tmp_path):
    from attack import Knockoff, Surrogate

    victim = keras_victim(model)
    with pytest.raises(UsageError, match=r"granularity.*topk:5.*at most 3"):
        Knockoff(budget=50, heldout=0, granularity="topk:5").extract(
            victim, transfer, surrogate=Surrogate(**SURROGATE), run_dir=tmp_path / "run")
    assert victim.queries == 0
    assert not (tmp_path / "run").exists()


def test_transfer_must_be_uint8_images(model):
    from attack import Knockoff, Surrogate

    with pytest.raises(UsageError, match="transfer.*uint8"):
        Knockoff(budget=10).extract(keras_victim(model), np.zeros((4, 16, 16, 3), np.float32),
                                    surrogate=Surrogate(**SURROGATE))


def _stopped_after_the_first_batch(model, transfer, run_dir):
    """--output-kind probabilities against a logits output: one batch is paid, checked and
    refused naming the flag; the answers stay in the journal."""
    from attack import Knockoff, Surrogate
    from attack.journal import QueryJournal

    attack = Knockoff(budget=96, heldout=0, noise=0, curve_points=1)
    surrogate = Surrogate(**{**SURROGATE, "epochs": 1})
    wrong = keras_victim(model, output_kind="probabilities")
    with pytest.raises(UsageError, match=r"(?s)output.kind.*32 answers paid.*--resume"):
        attack.extract(wrong, transfer, surrogate=surrogate, run_dir=run_dir)
    assert wrong.queries == 32  # the first batch only, no probe (range and kind were given)
    with QueryJournal.open(run_dir) as journal:
        assert journal.num_answered == 32
        kept = journal.answered_indices().copy()
    return attack, surrogate, kept


def test_first_batch_that_does_not_fit_stops_with_the_answers_kept(model, transfer, tmp_path):
    attack, surrogate, _ = _stopped_after_the_first_batch(model, transfer, tmp_path / "run")
    again = keras_victim(model, output_kind="probabilities")
    with pytest.raises(UsageError, match="32 answers paid"):  # the journal is checked first
        attack.extract(again, transfer, surrogate=surrogate, run_dir=tmp_path / "run",
                       resume=True)
    assert again.queries == 0


@pytest.mark.slow
def test_resume_with_the_right_output_kind_learns_from_the_kept_answers(model, transfer,
                                                                        tmp_path):
    from attack.journal import QueryJournal

    attack, surrogate, kept = _stopped_after_the_first_batch(model, transfer, tmp_path / "run")
    right = keras_victim(model, output_kind="logits")
    result = attack.extract(right, transfer, surrogate=surrogate, run_dir=tmp_path / "run",
                            resume=True)
    assert right.queries == 96 - 32  # the kept answers were not asked again
    with QueryJournal.open(tmp_path / "run") as journal:
        assert np.array_equal(journal.answered_indices()[:32], kept)
        assert len(np.unique(journal.answered_indices())) == 96
    assert result.queries == 96
    assert result.victim["output_kind"] == "logits"


@pytest.mark.slow
def test_knockoff_object_learns_in_a_temporary_run_dir(model, transfer, test_set, tmp_path,
                                                       monkeypatch):
    """The low-bar end to end: agreement with the victim well above chance (1/3)."""
    import tempfile

    import keras

    from attack import Knockoff, Surrogate

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # $TMPDIR, without leftovers
    victim = keras_victim(model)
    result = Knockoff(budget=300, heldout=50, noise=50, curve_points=1, seed=0).extract(
        victim, transfer, surrogate=Surrogate(**SURROGATE), test=test_set)
    assert result.run_dir.parent == tmp_path  # a new temporary run directory
    assert result.run_dir.name.startswith("mext-knockoff-")
    assert result.queries == 300
    assert result.headline["fidelity_test"] > 0.8
    assert isinstance(result.surrogate, keras.Model)
    assert result.journal.is_file() and result.report.is_file() and result.figures
    assert result.victim["interface"] == "keras" and result.victim["output_kind"] == "logits"
    assert result.victim["accuracy_measured"] == pytest.approx(1.0)  # labels are its answers
    report = result.report.read_text()
    assert "## Victim" in report and "victim accuracy measured through this path" in report
    assert (result.run_dir / "victim.json").is_file()
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["budget"] == 300 and config["input_range"] == "0,255"


@pytest.mark.slow
def test_knockoff_object_resumes_in_its_run_dir(model, transfer, test_set, tmp_path):
    from attack import Knockoff, Surrogate
    from attack.journal import QueryJournal

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done >= 64:
            raise Stop

    attack = Knockoff(budget=200, heldout=0, noise=0, curve_points=1)
    surrogate = Surrogate(**{**SURROGATE, "epochs": 2})
    first = keras_victim(model)
    with pytest.raises(Stop):
        attack.extract(first, transfer, surrogate=surrogate, run_dir=tmp_path / "run",
                       on_progress=interrupt)
    with QueryJournal.open(tmp_path / "run") as journal:
        before = journal.answered_indices().copy()
    assert len(before) >= 64
    with pytest.raises(UsageError, match="out.*--resume"):  # a run is there: not restarted
        attack.extract(keras_victim(model), transfer, surrogate=surrogate,
                       run_dir=tmp_path / "run")
    second = keras_victim(model)
    result = attack.extract(second, transfer, surrogate=surrogate, run_dir=tmp_path / "run",
                            resume=True, test=None)
    assert second.queries - second.probe_queries == 200 - len(before)
    assert result.queries == 200 and result.headline == {}
    with QueryJournal.open(tmp_path / "run") as journal:
        assert np.array_equal(journal.answered_indices()[:len(before)], before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Copycat", "JBDA", "SemiSupervisedKnockoff"])
def test_other_attack_objects_learn(model, transfer, test_set, tmp_path, name):
    import attack
    from attack import Surrogate

    hyper = {"Copycat": dict(budget=300, heldout=50, pd_budget=60, curve_points=1),
             "JBDA": dict(seeds=60, rounds=2, per_round=60, budget=180),
             "SemiSupervisedKnockoff": dict(budget=200, heldout=50, unlabelled=200,
                                            curve_points=1)}[name]
    data = {"problem_domain": test_set.images[:100]} if name == "Copycat" else {}
    result = getattr(attack, name)(**hyper, noise=50).extract(
        keras_victim(model), transfer, surrogate=Surrogate(**SURROGATE), test=test_set,
        run_dir=tmp_path / name, **data)
    assert result.headline["fidelity_test"] > 0.6, result.headline  # chance: 1/3
