"""The gateway's ``per_model`` policy in front of victims exported the outside world's ways.

Four victims of `tests/victim_matrix.py` (float [0, 1] scores + int64 class ids, float16
[-1, 1] of any size, logits, top-k pairs on a named signature) behind one in-process gateway,
each with its own detectors, misinformation, watermark or output policy. The answers keep the
victim's own output names, dtypes and kinds; the detectors and watermark records get the uint8
pixels the victim saw (not float pixels read as 0..255, which are black); class ids follow the
rewritten scores; and where an action cannot apply (top-k pairs, a float input of undeclared
range) the gateway says why with FAILED_PRECONDITION, charging nothing.

Fast: the pieces on hand-made answers and signatures (class ids, top-k pairs, the pixel mapping,
the policy key). Slow: the served matrix behind in-process gateways (one tiny CNN, four exports
and an embedded server, ~5 s quiet and ~20 s on a loaded 2-core machine, then well under a
second a test).

The gateway speaks gRPC only (TF Serving's REST port stays internal: `serving/deploy`), so
there is no REST path through it to test.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import detector.monitor
from common.errors import UsageError
from detector.watermark import Watermarker
from serving import codec, testing
from serving.gateway.config import policy_from_dict
from serving.gateway.outputs import class_outputs, degrade_predict_response, watched_probabilities
from serving.signature import Signature, TensorInfo
from tests import victim_matrix as vm
from tests.serving.gateway.conftest import add_client

MODELS = ("scores_ids", "variable", "keras_export", "named_topk")
INPUTS = {"scores_ids": "image", "variable": "x", "keras_export": "images",
          "named_topk": "image"}


class Recorder:
    """A stand-in OOD detector: an image is an attack query when its mean pixel is above 127;
    keeps every batch it scored (what the gateway handed it)."""

    threshold = 0.5
    input_shape = (vm.SIZE, vm.SIZE, 3)

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def score(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(x, copy=True))
        return (x.reshape(len(x), -1).mean(axis=1) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    base = tmp_path_factory.mktemp("matrix")
    vm.export_matrix(base, vm.train_core(n=300, epochs=2), names=MODELS)
    with testing.model_server(config_file=base / "models.config") as server:
        yield server


@pytest.fixture
def detectors(monkeypatch, tmp_path):
    """`per_model.<m>.detectors.ood.path` -> a `Recorder` per path (folders made here)."""
    made: dict[str, Recorder] = {}

    def load(path, *, threshold=None):
        return made.setdefault(str(path), Recorder())

    monkeypatch.setattr(detector.monitor.OODDetector, "load", staticmethod(load))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    return made


def _ood(path) -> dict:
    return {"ood": {"path": str(path), "window": 8, "level": 0.5, "min_queries": 4}}


def _predict(target: str, model: str, x: np.ndarray, key: str | None = None,
             signature: str = ""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[INPUTS[model]].CopyFrom(codec.from_ndarray(x))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, timeout=30,
                              metadata=(("x-api-key", key),) if key else ())
    return {k: codec.to_ndarray(v) for k, v in answer.outputs.items()}


def _pixels(n: int, low: int, high: int, size: int = vm.SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)


def _response(**outputs) -> predict_pb2.PredictResponse:
    resp = predict_pb2.PredictResponse()
    for name, value in outputs.items():
        resp.outputs[name].CopyFrom(codec.from_ndarray(value))
    return resp


def test_class_ids_follow_the_rewritten_scores_and_other_ints_stay():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float32)
    other = np.array([2, 2, 2], np.int64)  # not the scores' argmax: not a class-id output
    resp = _response(scores=scores, class_ids=scores.argmax(1), column=scores.argmax(1)[:, None],
                     other=other)
    answer = predict_pb2.PredictResponse.FromString(degrade_predict_response(
        resp, lambda p: Watermarker.relabel(p, np.array([0]), np.array([2]))))
    got = {k: codec.to_ndarray(v) for k, v in answer.outputs.items()}
    assert got["scores"].argmax(1).tolist() == [2, 1, 2]
    assert got["class_ids"].tolist() == [2, 1, 2] and got["class_ids"].dtype == np.int64
    assert got["column"].tolist() == [[2], [1], [2]]
    assert got["other"].tolist() == [2, 2, 2]


def test_top_k_pairs_are_not_class_scores_and_an_unnamed_watch_does_not_crash():
    def info(name, dtype, shape):
        return TensorInfo(name, np.dtype(dtype), shape, codec.numpy_to_tf_dtype(np.dtype(dtype)))

    sig = Signature("predict_images", "tensorflow/serving/predict", {}, {
        "top_scores": info("top_scores", "float32", (None, 2)),
        "top_classes": info("top_classes", "int64", (None, 2)),
        "logits": info("logits", "float32", (None, 5)),
        "scores": info("scores", "float32", (None, 5))})
    found = class_outputs(sig)
    assert found.rewritten == ("logits", "scores") and found.watched is None
    assert found.topk == (("top_scores", "top_classes"),)
    probs = np.full((2, 5), 0.2, np.float32)
    resp = _response(logits=np.zeros((2, 5), np.float32), scores=probs)
    np.testing.assert_array_equal(watched_probabilities(resp, found, 2), probs)


@pytest.mark.parametrize("dtype,scale,declared", [
    ("float32", lambda u: u / 255.0, "0,1"), ("float16", lambda u: u / 127.5 - 1.0, "-1,1"),
    ("float32", lambda u: u * 1.0, "0,255"), ("uint8", lambda u: u, None)])
def test_the_detectors_get_the_pixels_the_victim_saw(tmp_path, dtype, scale, declared):
    from serving.gateway.config import GatewayConfig
    from serving.gateway.server import Gateway

    policy = policy_from_dict({"per_model": {"m": {"input_range": declared}}})
    gw = Gateway(GatewayConfig(upstream="127.0.0.1:1", metrics_port=0,
                               state=f"sqlite:{tmp_path / 'gw.db'}"), policy=policy)
    try:
        u8 = _pixels(4, 0, 256, size=5)
        got = gw._pixels("m", scale(u8).astype(dtype), gw._rules_for("m"))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, u8)
    finally:
        gw.store.close()


def test_input_range_is_a_per_model_key_named_when_wrong():
    policy = policy_from_dict({"per_model": {"m": {"input_range": "-1,1"}}})
    assert policy.for_model("m").input_range == "-1,1" and policy.input_range is None
    with pytest.raises(UsageError) as err:
        policy_from_dict({"per_model": {"m": {"input_range": "0..1"}}})
    assert err.value.argument == "per_model.m.input_range"
    assert "'0,1', '-1,1' or '0,255'" in str(err.value)


@pytest.mark.slow  # the served matrix: ~5 s quiet, ~20 s loaded
def test_two_foreign_models_behind_one_gateway_keep_their_outputs(upstream, detectors,
                                                                   tmp_path):
    key_file = tmp_path / "wm.key"
    key_file.write_bytes(b"k" * 32)
    policy = {"models": list(MODELS), "per_model": {
        "scores_ids": {"detectors": _ood(tmp_path / "a"), "on_flag": {"action": "refuse"},
                       "watermark": {"key_file": str(key_file), "fraction": 0.5},
                       "input_range": "0,1"},
        "variable": {"detectors": _ood(tmp_path / "b"),
                     "on_flag": {"action": "misinform", "policy": "identity"},
                     "misinformation": {"tau": -1.0}, "input_range": "-1,1"},
        "keras_export": {"always": "label_only"}}}
    with testing.gateway(upstream.target, policy=policy, workdir=tmp_path / "gw",
                         wait=False) as running:
        gw = running.obj
        alice, bob = add_client(gw.store, "alice"), add_client(gw.store, "bob")
        carol = add_client(gw.store, "carol")
        target = running.target

        # float [0, 1] scores + int64 class ids, watermarked: the detector sees the pixels,
        # the marked rows' class ids follow their relabelled scores
        u8 = _pixels(16, 0, 100)
        x = u8.astype(np.float32) / 255.0
        got, truth = _predict(target, "scores_ids", x, alice), _predict(upstream.target,
                                                                         "scores_ids", x)
        assert {k: v.dtype for k, v in got.items()} == {"scores": np.float32,
                                                        "class_ids": np.int64}
        np.testing.assert_array_equal(detectors[str(tmp_path / "a")].seen[0], u8)
        np.testing.assert_array_equal(got["class_ids"], got["scores"].argmax(1))
        marked = np.flatnonzero(got["class_ids"] != truth["class_ids"])
        assert 0 < len(marked) < 16
        kept = np.setdiff1d(np.arange(16), marked)
        np.testing.assert_array_equal(got["scores"][kept], truth["scores"][kept])
        records = gw.store.watermarks("alice")
        assert sorted(r.label for r in records) == sorted(got["class_ids"][marked].tolist())
        stored = {r.digest: r.image for r in records}
        assert len(stored) == len(marked)
        assert all(any(np.array_equal(image, u8[i]) for i in marked) for image in
                   stored.values())  # the pixels the victim saw, not black images

        # float16 [-1, 1] at 24 px (any size): flagged on bright queries, then misinformed;
        # the answer stays float16 probabilities
        u8 = _pixels(8, 200, 256, size=24, seed=1)
        x = (u8.astype(np.float32) / 127.5 - 1.0).astype(np.float16)
        got, truth = _predict(target, "variable", x, bob), _predict(upstream.target,
                                                                     "variable", x)
        np.testing.assert_array_equal(detectors[str(tmp_path / "b")].seen[0], u8)
        assert gw.store.load_detectors("bob").flagged
        assert list(got) == ["probabilities"] and got["probabilities"].dtype == np.float16
        np.testing.assert_allclose(got["probabilities"].astype(np.float32).sum(1), 1.0,
                                   atol=5e-3)
        assert np.all(got["probabilities"].argmax(1) != truth["probabilities"].argmax(1))
        assert not gw.store.load_detectors("alice").flagged  # the flag is bob's only

        # logits under label_only stay logits: log of the one-hot answer, same top-1
        x = _pixels(6, 0, 256, seed=2).astype(np.float32) / 255.0
        got, truth = _predict(target, "keras_export", x, carol), _predict(upstream.target,
                                                                           "keras_export", x)
        logits = got["output_0"]
        assert logits.dtype == np.float32 and logits.shape == (6, vm.K)
        np.testing.assert_array_equal(logits.argmax(1), truth["output_0"].argmax(1))
        assert np.all(logits.max(1) == 0.0)
        assert np.all(np.sort(logits, axis=1)[:, -2] < -60.0)
        assert [r.action for r in gw.store.audit_records() if r.client == "carol"] == \
            ["always:label_only"]


@pytest.mark.slow  # the served matrix: ~5 s quiet, ~20 s loaded
@pytest.mark.parametrize("entry,passes", [
    ({"always": "round:1"}, False),
    ({"detectors": "B", "on_flag": {"action": "degrade", "policy": "label_only"},
      "input_range": "0,1"}, False),
    ({"detectors": "B", "on_flag": {"action": "refuse"}, "input_range": "0,1"}, True),
])
def test_top_k_pairs_pass_unchanged_or_the_gateway_says_why_it_cannot_rewrite_them(
        upstream, detectors, tmp_path, entry, passes):
    if entry.get("detectors") == "B":
        entry = {**entry, "detectors": _ood(tmp_path / "b")}
    policy = {"models": list(MODELS), "per_model": {"named_topk": entry}}
    x = _pixels(4, 0, 100, seed=3).astype(np.float32) / 255.0
    with testing.gateway(upstream.target, policy=policy, workdir=tmp_path / "gw",
                         wait=False) as running:
        key = add_client(running.obj.store, "dave")
        truth = _predict(upstream.target, "named_topk", x, signature="predict_images")
        if passes:
            got = _predict(running.target, "named_topk", x, key, signature="predict_images")
            assert {k: v.dtype for k, v in got.items()} == {"top_scores": np.float32,
                                                            "top_classes": np.int64}
            for name in got:
                np.testing.assert_array_equal(got[name], truth[name])
            assert running.obj.store.usage("dave") == 4
            return
        with pytest.raises(grpc.RpcError) as err:
            _predict(running.target, "named_topk", x, key, signature="predict_images")
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        message = err.value.details()
        assert "model 'named_topk'" in message and "'top_scores' with 'top_classes'" in message
        assert "per_model.named_topk.on_flag" in message
        assert running.obj.store.usage("dave") == 0


@pytest.mark.slow  # the served matrix: ~5 s quiet, ~20 s loaded
def test_a_float_input_of_undeclared_range_is_refused_with_the_key_named(upstream, detectors,
                                                                          tmp_path):
    policy = {"models": list(MODELS), "detectors": _ood(tmp_path / "a"),
              "on_flag": {"action": "refuse"}}
    x = _pixels(4, 0, 256, seed=4).astype(np.float32) / 255.0
    with testing.gateway(upstream.target, policy=policy, workdir=tmp_path / "gw",
                         wait=False) as running:
        key = add_client(running.obj.store, "erin")
        with pytest.raises(grpc.RpcError) as err:
            _predict(running.target, "scores_ids", x, key)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "set input_range" in err.value.details()
        assert "float32" in err.value.details()
        assert running.obj.store.usage("erin") == 0
        assert not detectors[str(tmp_path / "a")].seen  # no black images scored
