"""The gateway's detectors and output policies: flagging, refusal, degradation, state kept."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2

from common.errors import UsageError
from detector.aggregate import SlidingWindow
from detector.export import export_detector
from detector.monitor import DetectorScore, Monitor, Watch
from detector.policies import LabelOnly
from serving import codec, testing
from serving.gateway.config import (
    GatewayConfig,
    GatewayPolicy,
    OODConfig,
    PradaConfig,
    policy_from_dict,
)
from serving.gateway.outputs import (
    ClassOutputs,
    class_outputs,
    degrade_predict_response,
    watched_probabilities,
)
from serving.gateway.server import Gateway
from serving.gateway.store import RedisStore, SQLiteStore
from serving.signature import Signature, TensorInfo
from tests.serving.gateway.conftest import BrightIsAttack, Target, add_client, bright, dark, images


def _ood_policy(**kwargs) -> GatewayPolicy:
    ood = OODConfig(path="injected", window=8, level=0.5, min_queries=4)
    return GatewayPolicy(ood=ood, **kwargs)


def _probs(answer) -> np.ndarray:
    return codec.to_ndarray(answer.outputs["probabilities"])


def _is_one_hot(p: np.ndarray) -> bool:
    return bool(np.all((p == 0) | (p == 1)) and np.all(p.sum(axis=1) == 1))


def test_always_label_only_answers_one_hot(gateway, server):
    gw = gateway(GatewayPolicy(always="label_only"))
    key = add_client(gw.store, "alice")
    x = images(5, seed=4)
    answer = Target(f"127.0.0.1:{gw.port}", key).predict(x)
    direct = Target(f"127.0.0.1:{server.port}").predict(x)
    p, d = _probs(answer), _probs(direct)
    assert p.shape == d.shape and p.dtype == np.float32 and _is_one_hot(p)
    np.testing.assert_array_equal(p.argmax(1), d.argmax(1))
    logits = codec.to_ndarray(answer.outputs["logits"])
    np.testing.assert_array_equal(logits.argmax(1), d.argmax(1))
    # the logits carry no more than the label: each row is {0, log(1e-30)}
    assert len(np.unique(np.round(logits, 3))) == 2
    assert gw.store.audit_records()[-1].action == "always:label_only"


def test_ood_flags_attacker_and_degrades_to_label_only(gateway, server):
    gw = gateway(_ood_policy(), ood_detector=BrightIsAttack())
    attacker = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "mallory"))
    benign = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "bob"))
    first = attacker.predict(bright(2))
    assert not _is_one_hot(_probs(first))  # 2 queries < min_queries: not flagged yet
    answer = attacker.predict(bright(3, seed=1))  # 5 queries, all flagged: share 1.0
    assert _is_one_hot(_probs(answer))
    later = attacker.predict(dark(4, seed=2))  # the flag sticks
    assert _is_one_hot(_probs(later))
    for seed in range(4):
        assert not _is_one_hot(_probs(benign.predict(dark(4, seed=seed))))
    records = [r for r in gw.store.audit_records() if r.client == "mallory"]
    assert [r.action for r in records] == ["pass", "degrade:label_only", "degrade:label_only"]
    assert records[1].verdicts["ood_attack_queries"] == 3 and records[1].verdicts["flagged"]
    assert gw.store.load_detectors("mallory").flagged_by == "ood"
    assert not gw.store.load_detectors("bob").flagged


def test_refuse_action_and_flag_survives_restart(gateway, tmp_path):
    state = f"sqlite:{tmp_path / 'flags.db'}"
    gw = gateway(_ood_policy(on_flag_action="refuse"), state=state,
                 ood_detector=BrightIsAttack())
    key = add_client(gw.store, "mallory")
    target = Target(f"127.0.0.1:{gw.port}", key)
    target.predict(bright(2))
    with pytest.raises(grpc.RpcError) as info:
        target.predict(bright(3))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "flagged" in info.value.details()
    used = gw.store.usage("mallory")
    assert used == 5  # the refused batch was answered upstream: charged, not shown
    gw.stop()
    gw.store.close()
    detector = BrightIsAttack()
    again = gateway(_ood_policy(on_flag_action="refuse"),
                    store=SQLiteStore(tmp_path / "flags.db"), state=state,
                    ood_detector=detector)
    target = Target(f"127.0.0.1:{again.port}", key)
    with pytest.raises(grpc.RpcError) as info:
        target.predict(dark(1))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert detector.calls == 0  # refused before any work
    assert again.store.usage("mallory") == used
    actions = [r.action for r in again.store.audit_records()]
    assert actions == ["pass", "refuse", "refuse"]


def test_ood_state_kept_in_redis(gateway):
    fakeredis = pytest.importorskip("fakeredis")

    shared = fakeredis.FakeServer()
    gw = gateway(_ood_policy(), store=RedisStore(client=fakeredis.FakeRedis(server=shared)),
                 ood_detector=BrightIsAttack())
    key = add_client(gw.store, "mallory")
    Target(f"127.0.0.1:{gw.port}", key).predict(bright(3))
    gw.stop()
    again = gateway(_ood_policy(), store=RedisStore(client=fakeredis.FakeRedis(server=shared)),
                    ood_detector=BrightIsAttack())
    # 3 remembered + 1 = 4 = min_queries, all flagged: degraded now
    answer = Target(f"127.0.0.1:{again.port}", key).predict(bright(1, seed=5))
    assert _is_one_hot(_probs(answer))
    state = again.store.load_detectors("mallory")
    assert state.flagged and state.ood["queries"] == 4


def test_examples_rpcs_refused_when_detectors_watch(gateway):
    gw = gateway(_ood_policy(), ood_detector=BrightIsAttack())
    target = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "alice"))
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(
        [1.0, 2.0])
    with pytest.raises(grpc.RpcError) as info:
        target.predict_stub.Classify(request, metadata=target.metadata, timeout=10)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def _export_tiny_detector(path):
    """A tiny exported OOD detector (uint8 8x8 -> 2 logits) that calls bright images attacks."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True))(x)
    outputs = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(
        [[-0.1, 0.1]]), bias_initializer=keras.initializers.Constant([12.7, -12.7]))(x)
    model = keras.Model(inputs, outputs)
    return export_detector(model, path, {"threshold": 0.5, "target_fpr": 0.01,
                                         "benign_class": 0})


def test_exported_detector_loaded_from_path(gateway, tmp_path):
    path = _export_tiny_detector(tmp_path / "detectors" / "tiny_ood" / "1")
    policy = GatewayPolicy(ood=OODConfig(path=str(path), window=8, level=0.5, min_queries=4))
    gw = gateway(policy)
    target = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "mallory"))
    assert not _is_one_hot(_probs(target.predict(dark(4))))
    target.predict(bright(8))
    assert _is_one_hot(_probs(target.predict(bright(1))))
    assert gw.store.load_detectors("mallory").flagged


def test_detector_served_by_upstream(gateway, server, tmp_path):
    _export_tiny_detector(tmp_path / "models" / "tiny_ood" / "1")
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "tiny" base_path: "{server.base / "tiny"}" '
        'model_platform: "tensorflow" }\n'
        f'  config {{ name: "tiny_ood" base_path: "{tmp_path / "models" / "tiny_ood"}" '
        'model_platform: "tensorflow" }\n}\n')
    with testing.model_server(config_file=config) as upstream:
        policy = GatewayPolicy(ood=OODConfig(upstream_model="tiny_ood", threshold=0.5,
                                             window=8, level=0.5, min_queries=4))
        gw = gateway(policy, upstream=f"127.0.0.1:{upstream.port}")
        target = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "mallory"))
        target.predict(dark(4))
        assert not gw.store.load_detectors("mallory").flagged
        target.predict(bright(8))
        assert gw.store.load_detectors("mallory").flagged
        assert _is_one_hot(_probs(target.predict(dark(1))))


def test_prada_flags_synthetic_stream_not_natural(gateway):
    policy = GatewayPolicy(prada=PradaConfig(delta=0.95, min_samples=20, max_set=500),
                           budget=None, rate_per_second=1e6, burst=1e6)
    gw = gateway(policy)
    attacker = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "jbda"))
    benign = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "natural"))
    rng = np.random.default_rng(0)
    seed_image = rng.integers(60, 200, (1, 8, 8, 3))
    # JBDA-like: tiny steps around one image (distances all near one small value)
    for step in range(12):
        noise = rng.choice([-2, 2], size=(16, 8, 8, 3))
        synthetic = np.clip(seed_image + noise * (1 + step % 2), 0, 255).astype(np.uint8)
        attacker.predict(synthetic)
    for step in range(12):
        benign.predict(images(16, seed=100 + step))
    assert gw.store.load_detectors("jbda").flagged
    assert not gw.store.load_detectors("natural").flagged
    verdicts = gw.store.audit_records()[-1].verdicts
    assert "prada_statistic" in verdicts


def test_policy_sections_are_the_detectors_own_configs():
    policy = policy_from_dict({"detectors": {
        "prada": {"delta": 0.9, "max_distances": 300, "outlier_std": None},
        "ood": {"path": "d", "window": 8, "min_queries": 4}}, "output": "logits"})
    assert policy.prada == PradaConfig(delta=0.9, max_distances=300, outlier_std=None)
    assert policy.ood == OODConfig(path="d", window=8, min_queries=4)
    assert policy.output == "logits"
    with pytest.raises(UsageError, match="argument `detectors.prada.max_distances`"):
        policy_from_dict({"detectors": {"prada": {"min_samples": 50, "max_distances": 10}}})
    with pytest.raises(UsageError, match="argument `detectors.prada.outlier_std`"):
        policy_from_dict({"detectors": {"prada": {"outlier_std": -1}}})
    with pytest.raises(UsageError, match="argument `output`"):
        policy_from_dict({"output": ""})


def _signature(**outputs) -> Signature:
    return Signature("serving_default", "tensorflow/serving/predict",
                     {"images": TensorInfo("images", np.dtype(np.uint8), (None, 8, 8, 3))},
                     {name: TensorInfo(name, np.dtype(dtype), shape, tf_dtype)
                      for name, (dtype, shape, tf_dtype) in outputs.items()})


def test_the_watched_output_comes_from_the_signature_not_its_name():
    floats = (np.float32, (None, 10), types_pb2.DT_FLOAT)
    ids = (np.int64, (None,), types_pb2.DT_INT64)
    # one float [batch, K] output, whatever its name, is the one watched and rewritten
    assert class_outputs(_signature(zzz=floats, classes=ids)) == ClassOutputs(("zzz",), "zzz")
    both = _signature(logits=floats, probabilities=floats, classes=ids)
    assert class_outputs(both) == ClassOutputs(("logits", "probabilities"), "probabilities")
    assert class_outputs(both, "logits").watched == "logits"
    # several and none named probabilities: decided from the answer's rows
    assert class_outputs(_signature(a=floats, b=floats)).watched is None
    with pytest.raises(UsageError, match="`output`.*float \\[batch, K\\] output"):
        class_outputs(both, "classes")


def test_policy_output_reads_the_named_output_and_a_wrong_one_is_refused(gateway):
    policy = GatewayPolicy(prada=PradaConfig(min_samples=3), output="logits")
    gw = gateway(policy)
    target = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "alice"))
    target.predict(images(16))
    assert gw.store.audit_records()[-1].verdicts["prada_statistic"] is not None
    wrong = gateway(GatewayPolicy(prada=PradaConfig(min_samples=3), output="scores"))
    target = Target(f"127.0.0.1:{wrong.port}", add_client(wrong.store, "bob"))
    with pytest.raises(grpc.RpcError) as info:
        target.predict(images(4))
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "`output`" in info.value.details() and "'tiny'" in info.value.details()
    assert wrong.store.usage("bob") == 0  # refused before the victim answered: not charged


class Everything:
    """A plugged-in scorer that finds every query out of distribution."""

    threshold = 0.5

    def score(self, images, probabilities):
        assert probabilities.shape == (len(images), 3)  # the victim's answer rows
        return np.ones(len(images))


def test_a_monitor_with_more_watches_is_plugged_in(server, tmp_path):
    monitor = Monitor([Watch("ood", DetectorScore(BrightIsAttack()), SlidingWindow(8, 0.5, 4)),
                       Watch("everything", Everything(), SlidingWindow(8, 0.5, 2))])
    store = SQLiteStore(tmp_path / "gw.db")
    config = GatewayConfig(upstream=f"127.0.0.1:{server.port}", host="127.0.0.1", port=0,
                           metrics_port=0, state=f"sqlite:{tmp_path / 'gw.db'}")
    try:
        with Gateway(config, policy=GatewayPolicy(), store=store, monitor=monitor) as gw:
            target = Target(f"127.0.0.1:{gw.port}", add_client(store, "eve"))
            assert not _is_one_hot(_probs(target.predict(dark(1))))
            assert _is_one_hot(_probs(target.predict(dark(1))))  # 2 queries: flagged
            state = store.load_detectors("eve")
            assert state.flagged_by == "everything" and state.ood["watches"]["everything"]
            verdicts = store.audit_records()[-1].verdicts
            assert verdicts["everything_attack_queries"] == 1
            assert verdicts["ood_attack_queries"] == 0
    finally:
        store.close()


def test_rewriting_fails_closed_on_outputs_the_signature_did_not_list():
    answer = predict_pb2.PredictResponse()
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    answer.outputs["probabilities"].CopyFrom(codec.from_ndarray(probs))
    answer.outputs["new_logits"].CopyFrom(codec.from_ndarray(np.log(probs)))
    out = predict_pb2.PredictResponse.FromString(degrade_predict_response(
        answer, LabelOnly(), ClassOutputs(("probabilities",), "probabilities")))
    assert _is_one_hot(_probs(out))
    logits = codec.to_ndarray(out.outputs["new_logits"])
    assert logits.argmax() == 0 and len(np.unique(np.round(logits, 3))) == 2
    # a watched output missing from the answer: the answer's own class scores are read
    assert watched_probabilities(answer, ClassOutputs(("gone",), "gone"), 1).shape == (1, 3)
