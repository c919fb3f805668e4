"""`attack.datafree` against victims exported the outside world's ways (tests/victim_matrix.py).

Fast: what a data-free run refuses before it pays (a float input whose range no synthetic image
can tell, a label-only victim for the methods that need scores), on tiny in-process models.
Slow (a trained matrix served in-process over gRPC and REST, 25-50 s a run on 2 shared
cores): every method end to end through a representative subset of the matrix (logits, top-k
on a named signature, class ids, grayscale 28x28, float16 of variable size, [0, 1] / [-1, 1] /
[0, 255] floats, uint8), each checked for the range and kind it used, the exact budget, the
victim accuracy the reference victim has (the range was respected) and agreement with the
victim well above what a constant surrogate gets (the victim's most common answer, ~0.47 on
this test set). The runs are hybrid (half of every surrogate batch natural images of the task):
at 640 queries a purely data-free surrogate of this pattern task still answers one class
(fidelity 0.44-0.48, measured), so only the hybrid tells a working pipeline from a broken one;
purely data-free learning is tested on the colour victim in tests/attack/test_datafree.py.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from attack.victim import KerasVictim, RestVictim, ServingVictim
from common.errors import UsageError
from tests import victim_matrix as vm

SMALL = dict(latent_dim=16, generator_width=8, curve_points=1, noise=0)
SURROGATE = dict(backbone="cnn", weights="none", input_size=16, batch_size=32)


def _datafree(victim, run_dir, transfer=None, test=None, **hyper):
    from attack import Surrogate
    from attack.datafree import DataFree

    with victim:
        return DataFree(**{**SMALL, **hyper}).extract(
            victim, transfer, surrogate=Surrogate(**SURROGATE), run_dir=run_dir, test=test)


# -- fast: refused before anything is paid or written ---------------------------------------------
def _tiny(output: str = "probabilities", dtype: str = "float32"):
    """An untrained 8x8 classifier in-process: softmax, class ids or one-hot answers."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3), dtype=dtype)
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, activation="softmax")(x)
    if output == "ids":
        x = keras.ops.cast(keras.ops.argmax(x, axis=-1), "int64")
    elif output == "onehot":
        x = keras.ops.one_hot(keras.ops.argmax(x, axis=-1), 3)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def float_model():
    return _tiny()


@pytest.mark.parametrize("method", ["dfme", "maze", "dfms-hl"])
def test_a_float_input_of_unknown_range_is_refused_without_natural_images(float_model, method,
                                                                          tmp_path):
    victim = KerasVictim(float_model)
    with pytest.raises(UsageError, match=r"`input_range`.*'auto'.*float input.*--input-range "
                                         r"0,1.*--natural-share"):
        _datafree(victim, tmp_path / "run", method=method, budget=64)
    assert victim.queries == 0 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["dfme", "maze"])
def test_class_ids_are_refused_for_the_methods_that_need_scores(method, tmp_path):
    victim = KerasVictim(_tiny("ids", "uint8"), num_classes=3)
    with pytest.raises(UsageError, match=rf"`method`.*'{method}'.*dfms-hl.*top-1 labels only"):
        _datafree(victim, tmp_path / "run", method=method, budget=64)
    assert victim.queries == 0 and not (tmp_path / "run").exists()


def test_one_hot_answers_are_refused_after_the_probe_before_a_paid_query(tmp_path):
    from attack.journal import QueryJournal

    victim = KerasVictim(_tiny("onehot", "uint8"))
    with pytest.raises(UsageError, match=r"`method`.*'dfme'.*dfms-hl"):
        _datafree(victim, tmp_path / "run", method="dfme", budget=64)
    assert victim.queries == victim.probe_queries == 16  # the kind probe only
    with QueryJournal.open(tmp_path / "run") as journal:
        assert journal.num_answered == 0


# -- slow: the matrix served in-process -----------------------------------------------------------
@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    from common.data import ImageDataset
    from serving import testing

    base = tmp_path_factory.mktemp("matrix")
    paths, _ = vm.export_matrix(base, vm.train_core())
    images, labels = vm.pattern_images(200, seed=21)
    test = ImageDataset(images, labels, tuple(str(i) for i in range(vm.K)), "patterns")
    natural, _ = vm.pattern_images(600, seed=20)
    with testing.model_server(config_file=base / "models.config", rest=True) as server:
        yield types.SimpleNamespace(server=server, paths=paths, test=test, natural=natural)


def _victim(matrix, name: str, interface: str, **flags):
    entry = next((e for e in vm.MATRIX if e.name == name), None)
    kw = {"num_classes": entry.num_classes, "signature": entry.signature} if entry else {}
    kw.update(flags)
    if interface == "grpc":
        return ServingVictim(matrix.server.target, name, **kw)
    if interface == "rest":
        return RestVictim(f"http://127.0.0.1:{matrix.server.rest_port}", name, **kw)
    return KerasVictim(matrix.paths[name], **kw)


@pytest.fixture(scope="module")
def reference_acc(matrix):
    """The victim's accuracy on the test set through the reference export (uint8)."""
    with _victim(matrix, "reference", "grpc") as v:
        answers = v.to_probabilities(v.predict(matrix.test.images))
    return float((answers.argmax(1) == matrix.test.labels).mean())


@pytest.fixture(scope="module")
def majority(matrix):
    """name -> the share of the victim's most common answer on the test set (what a surrogate
    answering one class agrees with)."""
    def share(name: str) -> float:
        entry = next(e for e in vm.MATRIX if e.name == name)
        with _victim(matrix, name, "keras", input_range=entry.input_range) as v:
            top = v.predict(matrix.test.images).argmax(1)
        return float(np.bincount(top).max() / len(top))

    return share


# (victim, interface, method, victim flags (none: the range probed), attack hyper-parameters,
# kind used); every run hybrid, half natural (see the module doc)
CASES = [
    ("float11", "grpc", "dfme", {}, {}, "probabilities"),
    ("keras_export", "rest", "maze", {"input_range": "0,1"}, {"directions": 2}, "logits"),
    ("named_topk", "grpc", "maze", {}, {"directions": 2}, "topk"),
    ("scores_ids", "keras", "dfms-hl", {"input_range": "0,1", "output": "class_ids",
                                        "num_classes": vm.K}, {}, "labels"),
    ("gray28", "grpc", "dfme", {}, {}, "probabilities"),
    ("variable", "rest", "dfms-hl", {"input_range": "-1,1"}, {"image_size": 24},
     "probabilities"),
    ("float255", "keras", "dfme", {"input_range": "0,255"}, {}, "logits"),
    ("uint8", "grpc", "dfms-hl", {}, {"natural_share": 0.25}, "probabilities"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,interface,method,flags,hyper,kind", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_each_method_steals_a_foreign_export(matrix, reference_acc, majority, name, interface,
                                             method, flags, hyper, kind, tmp_path):
    entry = next(e for e in vm.MATRIX if e.name == name)
    result = _datafree(_victim(matrix, name, interface, **flags), tmp_path / "run",
                       matrix.natural, matrix.test, method=method, budget=640,
                       **{"natural_share": 0.5, **hyper})
    assert result.queries == 640
    assert result.victim["input_range"] == entry.input_range, result.victim
    assert result.victim["output_kind"] == kind
    head = result.headline
    if name != "gray28":  # the same weights seen through the right range: the same accuracy
        assert abs(head["victim_acc"] - reference_acc) < 1e-9, (head, reference_acc)
    assert head["fidelity_test"] > majority(name) + 0.15, (head, majority(name))
    assert not result.notes, result.notes


# the data-free hybrid (--natural-source prior): no natural image at all, so a float victim's
# range must be given; (victim, interface, method, victim flags, hyper-parameters, kind used)
PRIOR_CASES = [
    ("float11", "grpc", "dfme", {"input_range": "-1,1"}, {}, "probabilities"),
    ("keras_export", "rest", "maze", {"input_range": "0,1"}, {"directions": 2}, "logits"),
    ("named_topk", "grpc", "dfms-hl", {"input_range": "0,1"}, {}, "topk"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,interface,method,flags,hyper,kind", PRIOR_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in PRIOR_CASES])
def test_the_prior_hybrid_steals_a_foreign_export_without_a_natural_image(
        matrix, reference_acc, majority, name, interface, method, flags, hyper, kind, tmp_path):
    entry = next(e for e in vm.MATRIX if e.name == name)
    result = _datafree(_victim(matrix, name, interface, **flags), tmp_path / "run", None,
                       matrix.test, method=method, budget=640, natural_share=0.5,
                       natural_source="prior", **hyper)
    assert result.queries == 640
    assert result.victim["input_range"] == entry.input_range, result.victim
    assert result.victim["output_kind"] == kind
    head = result.headline
    assert abs(head["victim_acc"] - reference_acc) < 1e-9, (head, reference_acc)
    assert head["fidelity_test"] > majority(name) + 0.15, (head, majority(name))
    assert not result.notes, result.notes


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["grpc", "rest"])
def test_dfme_on_class_ids_is_refused_over_the_wire_before_anything_is_written(
        matrix, interface, tmp_path):
    victim = _victim(matrix, "scores_ids", interface, input_range="0,1", output="class_ids",
                     num_classes=vm.K)
    with pytest.raises(UsageError, match=r"`method`.*'dfme'.*dfms-hl"):
        _datafree(victim, tmp_path / "run", method="dfme", budget=64)
    assert victim.queries == 0 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_variable_size_victim_needs_the_image_size(matrix, tmp_path):
    victim = _victim(matrix, "variable", "grpc", input_range="-1,1")
    with pytest.raises(UsageError, match=r"`image_size`.*no fixed size"):
        _datafree(victim, tmp_path / "run", method="dfms-hl", budget=64)
    assert victim.queries == 0 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_cli_refuses_an_unknown_float_range_in_one_line_before_writing(matrix, tmp_path,
                                                                          capsys):
    from attack.datafree import main

    out = tmp_path / "run"
    code = main(["--grpc", matrix.server.target, "--model", "float01", "--method", "maze",
                 "--budget", "64", "--backbone", "cnn", "--weights", "none",
                 "--input-size", "16", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "argument `--input-range`" in err[0] and "--input-range 0,1" in err[0]
    assert not out.exists()
