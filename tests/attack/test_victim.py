"""attack.victim: one interface over gRPC, REST and in-process victims, and understanding a
victim exported by somebody else (input range, output, output kind) before paying for it.

The fast tests use an untrained in-process Keras model. The matrix tests (marked slow: one tiny
CNN trained, nine exports and a server, ~1 min on 2 cores) serve the victims of
`tests/victim_matrix.py` and check, for each, that `ServingVictim`, `RestVictim` and
`KerasVictim` understand it right and answer the same.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from attack import victim as victim_module
from attack.victim import KerasVictim, RestVictim, ServingVictim, consistency, open_victim
from common.errors import UsageError


def tiny_model(*, softmax: bool = False, dtype: str = "float32", classes: int = 4):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3), dtype=dtype)
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"))(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, x)


def images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def logits_model():
    return tiny_model()


def test_keras_victim_counts_queries_and_calls_the_hooks(logits_model):
    v = KerasVictim(logits_model, input_range="0,1", batch_size=4)
    events = []
    raw = v.predict(images(10), on_send=lambda f, n: events.append(("send", f, n)),
                    on_result=lambda f, a: events.append(("result", f, a.shape)))
    # the kind was not given: 10 images answer the probe first (one request per <= 16)
    assert v.output_kind == "logits" and v.probe_queries == 10
    assert v.queries == 20 and raw.shape == (10, 4) and raw.dtype == np.float32
    assert [e[:2] for e in events] == [("send", 0), ("result", 0), ("send", 4), ("result", 4),
                                       ("send", 8), ("result", 8)]
    assert events[-1][2] == (2, 4)
    expected = np.asarray(logits_model(images(10).astype(np.float32) / 255.0))
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-6)
    probs = v.to_probabilities(raw)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    info = v.metadata()
    assert info.num_classes == 4 and info.probabilities == "output_0"
    d = v.describe()
    assert d["interface"] == "keras" and d["input_range"] == "0,1"
    assert d["input_range_decided_by"] == "--input-range" and d["output_kind"] == "logits"
    assert d["queries"] == 20 and d["probe_queries"] == 10


def test_wrong_output_kind_stops_at_check_answers(logits_model):
    v = KerasVictim(logits_model, input_range="0,1", output_kind="probabilities")
    raw = v.predict(images(6))
    assert v.queries == 6  # an explicit kind and range: no probe
    with pytest.raises(UsageError, match=r"`output_kind`.*--output-kind logits.*--resume"):
        v.check_answers(raw)
    softmax = KerasVictim(tiny_model(softmax=True), input_range="0,1", output_kind="logits")
    with pytest.raises(UsageError, match=r"--output-kind probabilities"):
        softmax.check_answers(softmax.predict(images(6)))


def test_uint8_input_is_0_255_without_queries_and_refuses_another_range():
    model = tiny_model(dtype="uint8", softmax=True)
    v = KerasVictim(model)
    assert v.input_range == "0,255" and v.queries == 0
    assert v.describe()["input_range_decided_by"] == "the input dtype is uint8"
    with pytest.raises(UsageError, match=r"`input_range`.*'0,1'.*uint8"):
        KerasVictim(model, input_range="0,1").metadata()


def test_understand_writes_evidence_and_a_resumed_run_reuses_it(logits_model, tmp_path):
    path = tmp_path / "victim.json"
    v = KerasVictim(logits_model)
    evidence = v.understand(images(40), path)
    assert evidence == json.loads(path.read_text())
    assert evidence["probe_queries"] == v.queries == 63
    assert set(evidence["input_range"]["candidates"]) == {"0,255", "0,1", "-1,1"}
    assert evidence["input_range"]["decided_by"].startswith("auto: ")
    assert v.understand(images(40)) is evidence and v.queries == 63  # idempotent
    again = KerasVictim(logits_model)
    again.understand(images(40), path)
    assert again.queries == 0 and again.input_range == v.input_range
    assert json.loads(path.read_text())["input_range"] == evidence["input_range"] | {
        "decided_by": evidence["input_range"]["decided_by"] + " (earlier run)"}
    assert "(earlier run)" in again.describe()["input_range_decided_by"]
    # --resume --output-kind logits: the range decided before is kept, nothing is spent
    other_kind = KerasVictim(logits_model, output_kind="logits")
    other_kind.understand(images(40), path)
    assert other_kind.queries == 0 and other_kind.output_kind == "logits"
    assert other_kind.input_range == v.input_range
    other_range = KerasVictim(logits_model, input_range="0,1")  # another flag: decided anew
    other_range.understand(images(40), path)
    assert other_range.queries == 16 and other_range.output_kind == "logits"


def test_class_ids_need_num_classes():
    import keras

    inputs = keras.Input((8, 8, 3))
    ids = keras.ops.cast(keras.ops.argmax(keras.ops.mean(inputs, axis=(1, 2)), axis=-1),
                         "int64")
    model = keras.Model(inputs, ids)
    with pytest.raises(UsageError, match=r"`num_classes`.*class ids.*--num-classes"):
        KerasVictim(model).metadata()
    v = KerasVictim(model, num_classes=3, input_range="0,255")
    raw = v.predict(images(5))
    assert v.output_kind == "labels"
    v.check_answers(raw)
    expected = np.eye(3)[images(5).astype(np.float32).mean(axis=(1, 2)).argmax(axis=1)]
    np.testing.assert_array_equal(raw, expected)


def test_open_victim_reads_the_endpoint_fields_with_defaults():
    old = types.SimpleNamespace(grpc="localhost:8500", model="m", version=None, api_key=None,
                                timeout=5.0, in_flight=2, query_batch=8)
    with open_victim(old) as v:
        assert isinstance(v, ServingVictim) and v.input_range_flag == "auto"
        assert v.client.batch_size == 8 and v.client.max_in_flight == 2
    new = types.SimpleNamespace(**vars(old), rest="http://localhost:8501", signature="s",
                                output="scores", output_kind="logits", input_range="-1,1")
    with open_victim(new) as v:
        assert isinstance(v, RestVictim) and v.client.signature_name == "s"
        assert (v.output, v.output_kind_flag, v.input_range_flag) == ("scores", "logits", "-1,1")
    with pytest.raises(UsageError, match="`rest`"):
        open_victim(types.SimpleNamespace(**{**vars(new), "rest": "localhost:8501"}))
    with pytest.raises(UsageError, match="`output_kind`"):
        open_victim(types.SimpleNamespace(**{**vars(new), "output_kind": "softmax"}))


def test_consistency_flags_saturated_and_near_chance_confident_answers():
    rng = np.random.default_rng(0)
    healthy = rng.dirichlet(np.ones(10) * 0.3, size=200)
    assert consistency(0.6, healthy) == []
    one_class = np.tile(np.eye(10)[3] * 0.9 + 0.01, (200, 1))
    notes = consistency(0.1, one_class)
    assert any("one class for 100%" in n for n in notes)
    assert any("near chance" in n for n in notes)
    saturated = np.eye(10)[rng.integers(0, 10, 200)] * (1 - 9e-30) + 1e-30
    assert any("saturated" in n for n in consistency(0.5, saturated))
    assert consistency(0.5, np.eye(10)[rng.integers(0, 10, 200)]) == []  # label-only answers


# -- the matrix: victims exported the outside world's ways ----------------------------------------
@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    from serving import testing
    from tests import victim_matrix as vm

    base = tmp_path_factory.mktemp("matrix")
    core = vm.train_core()
    paths, keras_models = vm.export_matrix(base, core)
    with testing.model_server(config_file=base / "models.config", rest=True) as server:
        yield types.SimpleNamespace(server=server, paths=paths, keras_models=keras_models,
                                    core=core, vm=vm)


def _victims(matrix, entry, **flags):
    kw = dict(signature=entry.signature, num_classes=entry.num_classes, **flags)
    server = matrix.server
    return {
        "grpc": ServingVictim(server.target, entry.name, **kw),
        "rest": RestVictim(f"http://127.0.0.1:{server.rest_port}", entry.name, **kw),
        "keras": KerasVictim(matrix.paths[entry.name], **kw),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", [e.name for e in __import__(
    "tests.victim_matrix", fromlist=["MATRIX"]).MATRIX])
def test_matrix_victims_are_understood_alike_through_every_interface(matrix, name):
    entry = next(e for e in matrix.vm.MATRIX if e.name == name)
    probe_images, _ = matrix.vm.pattern_images(64, seed=9)
    queries, _ = matrix.vm.pattern_images(50, seed=10)
    answers = {}
    for interface, v in _victims(matrix, entry).items():
        with v:
            evidence = v.understand(probe_images)
            assert (v.input_range, v.output_kind, v.output_choice.name) == (
                entry.input_range, entry.kind, entry.output), (interface, evidence)
            assert v.probe_queries <= 64
            raw = v.predict(queries)
            v.check_answers(raw)
            answers[interface] = v.to_probabilities(raw)
            assert v.queries == v.probe_queries + 50
            assert v.describe()["interface"] == interface
    tol = 2e-3 if name == "variable" else 1e-5  # float16 answers
    np.testing.assert_allclose(answers["grpc"], answers["keras"], atol=tol)
    np.testing.assert_allclose(answers["rest"], answers["keras"], atol=tol)


@pytest.mark.slow
def test_matrix_keras_model_in_process_answers_like_its_export(matrix):
    entry = next(e for e in matrix.vm.MATRIX if e.name == "keras_export")
    queries, _ = matrix.vm.pattern_images(30, seed=11)
    in_process = KerasVictim(matrix.keras_models["keras_export"])
    exported = KerasVictim(matrix.paths["keras_export"])
    probe_images, _ = matrix.vm.pattern_images(64, seed=9)
    for v in (in_process, exported):
        v.understand(probe_images)
        assert (v.input_range, v.output_kind) == (entry.input_range, entry.kind)
    np.testing.assert_allclose(in_process.predict(queries), exported.predict(queries),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,flag", [("keras_export", "probabilities"),
                                       ("float01", "logits"), ("scores_ids", "labels")])
def test_matrix_wrong_output_kind_stops_at_the_first_batch(matrix, name, flag):
    entry = next(e for e in matrix.vm.MATRIX if e.name == name)
    queries, _ = matrix.vm.pattern_images(16, seed=12)
    for v in _victims(matrix, entry, output_kind=flag, input_range=entry.input_range).values():
        with v:
            raw = v.predict(queries)
            assert v.queries == 16  # nothing spent on probes: the paid batch is all
            with pytest.raises(UsageError, match=r"`output_kind`.*--output-kind"):
                v.check_answers(raw)


@pytest.mark.slow
def test_matrix_reference_accuracy_and_consistency(matrix):
    """The victim accuracy through a wrongly-ranged path is flagged; the right one is not."""
    test_x, test_y = matrix.vm.pattern_images(300, seed=13)
    entry = next(e for e in matrix.vm.MATRIX if e.name == "scores_ids")
    right = KerasVictim(matrix.paths["scores_ids"], input_range=entry.input_range)
    wrong = KerasVictim(matrix.paths["scores_ids"], input_range="0,255")
    p_right = right.to_probabilities(right.predict(test_x))
    p_wrong = wrong.to_probabilities(wrong.predict(test_x))
    acc_right = float((p_right.argmax(1) == test_y).mean())
    acc_wrong = float((p_wrong.argmax(1) == test_y).mean())
    assert acc_right > acc_wrong
    assert consistency(acc_right, p_right) == []
    assert consistency(acc_wrong, p_wrong)  # saturated answers are named


def test_module_exports_the_contract_names():
    for name in ("Victim", "ServingVictim", "RestVictim", "KerasVictim", "open_victim",
                 "consistency"):
        assert name in victim_module.__all__


def test_consistency_of_top_k_rows_is_not_saturation():
    rng = np.random.default_rng(1)
    rows = np.zeros((100, 10))
    cls = rng.integers(0, 9, 100)
    rows[np.arange(100), cls] = 0.7
    rows[np.arange(100), cls + 1] = 0.3  # renormalised top-2 answers: zeros elsewhere
    assert consistency(0.5, rows) == []


# -- end to end: Knockoff through every victim of the matrix --------------------------------------
KNOCKOFF = dict(budget=400, heldout=0, noise=0, curve_points=1, seed=0)
SURROGATE = dict(backbone="cnn", weights="none", input_size=16, epochs=8, batch_size=32,
                 learning_rate=3e-3)


@pytest.fixture(scope="module")
def knockoff_data(matrix):
    from common.data import ImageDataset

    transfer, _ = matrix.vm.pattern_images(600, seed=20)
    images, labels = matrix.vm.pattern_images(200, seed=21)
    test = ImageDataset(images, labels, tuple(str(i) for i in range(matrix.vm.K)), "patterns")
    return transfer, test


def _knockoff(victim, knockoff_data, run_dir):
    from attack import Knockoff, Surrogate

    transfer, test = knockoff_data
    with victim:
        return Knockoff(**KNOCKOFF).extract(victim, transfer, surrogate=Surrogate(**SURROGATE),
                                            run_dir=run_dir, test=test)


@pytest.fixture(scope="module")
def reference_fidelity(matrix, knockoff_data, tmp_path_factory):
    from tests.victim_matrix import Entry

    entry = Entry("reference", "0,255", "probabilities", "probabilities")
    result = _knockoff(_victims(matrix, entry)["grpc"], knockoff_data,
                       tmp_path_factory.mktemp("ref") / "run")
    return result.headline


# every kind over gRPC; REST and in-process for the logits and top-k kinds (each run is ~1 min
# on a loaded 2-core machine; the three interfaces' answers are compared equal above)
_E2E = [(e.name, "grpc") for e in __import__("tests.victim_matrix", fromlist=["MATRIX"]).MATRIX]
_E2E += [(name, i) for name in ("keras_export", "named_topk") for i in ("rest", "keras")]


@pytest.mark.slow
@pytest.mark.parametrize("name,interface", _E2E)
def test_matrix_knockoff_through_each_victim_matches_the_reference(
        matrix, knockoff_data, reference_fidelity, name, interface, tmp_path):
    entry = next(e for e in matrix.vm.MATRIX if e.name == name)
    result = _knockoff(_victims(matrix, entry)[interface], knockoff_data, tmp_path / "run")
    assert result.victim["input_range"] == entry.input_range
    assert result.victim["output_kind"] == entry.kind
    assert result.queries == KNOCKOFF["budget"]
    head, ref = result.headline, reference_fidelity
    if name == "gray28":  # another function of the same weights: its own victim accuracy
        assert head["fidelity_test"] > 0.5
    else:
        assert abs(head["victim_acc"] - ref["victim_acc"]) < 1e-9  # the same victim, truly
        assert head["fidelity_test"] >= ref["fidelity_test"] - 0.1, (head, ref)
    assert not result.notes


def test_a_sequential_model_is_a_victim_and_an_unbuilt_one_is_refused_in_one_line():
    import keras

    built = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    v = KerasVictim(built, input_range="0,255")
    assert v.metadata().num_classes == 3
    raw = v.predict(images(4))
    assert raw.shape == (4, 3) and v.output_kind == "probabilities"
    assert v.queries == 4 + v.probe_queries  # kind decided from probes, counted apart
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(UsageError, match=r"`model`.*keras\.Input"):
        KerasVictim(unbuilt)


def test_num_classes_is_an_endpoint_flag_that_reaches_the_victim(tmp_path):
    from attack.config import KnockoffConfig

    config = KnockoffConfig(transfer_set="x.npz", weights="none", num_classes=43,
                            out=str(tmp_path / "run"))
    with open_victim(config) as v:
        assert v.num_classes_flag == 43
    with pytest.raises(UsageError, match="`num_classes`"):
        KnockoffConfig(transfer_set="x.npz", weights="none", num_classes=1)
