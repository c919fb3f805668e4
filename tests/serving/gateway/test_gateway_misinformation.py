"""The gateway's misinform and watermark actions, end to end through gRPC in front of the
embedded server: Adaptive Misinformation on every query or once flagged (probabilities and
label-only), DAWN watermarks answered, stored and kept across a restart."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector.misinformation import MisinformationModel, reverse_distribution
from serving import codec
from serving.gateway.config import (
    GatewayPolicy,
    MisinformationConfig,
    OODConfig,
    WatermarkConfig,
    policy_from_dict,
)
from serving.gateway.store import SQLiteStore
from tests.serving.gateway.conftest import BrightIsAttack, Target, add_client, bright, dark, images


def _ood():
    return OODConfig(path="injected", window=8, level=0.5, min_queries=4)


def _probs(answer) -> np.ndarray:
    return codec.to_ndarray(answer.outputs["probabilities"])


def test_on_query_misinform_blends_by_ood_score(gateway, server):
    policy = GatewayPolicy(ood=_ood(), on_query="misinform", on_flag_action="misinform",
                           on_flag_policy="identity",
                           misinformation=MisinformationConfig(tau=0.5, nu=50.0))
    gw = gateway(policy, ood_detector=BrightIsAttack())
    client = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "alice"))
    direct = Target(f"127.0.0.1:{server.port}")
    for x, expected in ((dark(4), "victim"), (bright(4, seed=1), "misinformation")):
        got, truth = _probs(client.predict(x)), _probs(direct.predict(x))
        want = truth if expected == "victim" else reverse_distribution(truth)
        np.testing.assert_allclose(got, want, atol=1e-4)
        logits = codec.to_ndarray(client.predict(x).outputs["logits"])
        np.testing.assert_array_equal(logits.argmax(1), want.argmax(1))
    records = [r for r in gw.store.audit_records() if r.client == "alice"]
    assert [r.action for r in records] == ["misinform"] * 2 + ["misinform:identity"] * 2
    assert records[0].verdicts["misinformation_weight"] < 0.01
    assert records[-1].verdicts["misinformation_weight"] > 0.99


def test_on_flag_misinform_label_only_gives_the_misinformation_top1(gateway, server):
    policy = GatewayPolicy(ood=_ood(), on_flag_action="misinform", on_flag_policy="label_only",
                           misinformation=MisinformationConfig(tau=0.5))
    gw = gateway(policy, ood_detector=BrightIsAttack())
    attacker = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "mallory"))
    direct = Target(f"127.0.0.1:{server.port}")
    first = bright(2)
    np.testing.assert_allclose(_probs(attacker.predict(first)), _probs(direct.predict(first)),
                               atol=1e-6)  # not flagged yet: the victim's answer
    x = bright(6, seed=3)
    got, truth = _probs(attacker.predict(x)), _probs(direct.predict(x))
    assert np.all(got.sum(1) == 1) and np.all(np.count_nonzero(got, axis=1) == 1)
    np.testing.assert_array_equal(got.argmax(1), reverse_distribution(truth).argmax(1))
    assert np.all(got.argmax(1) != truth.argmax(1))
    y = dark(5, seed=4)  # flagged, but in distribution: the victim's label
    got, truth = _probs(attacker.predict(y)), _probs(direct.predict(y))
    np.testing.assert_array_equal(got.argmax(1), truth.argmax(1))
    actions = [r.action for r in gw.store.audit_records() if r.client == "mallory"]
    assert actions == ["pass", "misinform:label_only", "misinform:label_only"]


def test_watermarks_are_answered_stored_and_survive_a_restart(gateway, server, tmp_path):
    key_file = tmp_path / "wm.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    policy = GatewayPolicy(watermark=WatermarkConfig(key_file=str(key_file), fraction=0.3))
    state = tmp_path / "wm.db"
    gw = gateway(policy, state=f"sqlite:{state}")
    target = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "mallory"))
    x = images(40, seed=7)
    got = _probs(target.predict(x))
    truth = _probs(Target(f"127.0.0.1:{server.port}").predict(x))
    changed = np.flatnonzero(got.argmax(1) != truth.argmax(1))
    assert 3 <= len(changed) <= 25
    unchanged = np.setdiff1d(np.arange(40), changed)
    np.testing.assert_allclose(got[unchanged], truth[unchanged], atol=1e-6)
    assert np.all(got[changed].max(1) >= 0.9 - 1e-6)  # a confident wrong answer
    np.testing.assert_allclose(got.sum(1), truth.sum(1), atol=1e-5)
    np.testing.assert_array_equal(_probs(target.predict(x)), got)  # asked again: same answer
    gw.stop()
    reopened = SQLiteStore(state)
    stored = reopened.watermarks("mallory")
    reopened.close()
    assert len(stored) == len(changed)  # once per image, not once per request
    by_image = {r.image.tobytes(): r for r in stored}
    for i in changed:
        record = by_image[x[i].tobytes()]
        assert record.label == got[i].argmax() and record.true_label == truth[i].argmax()
        assert record.model == "tiny"
    assert gw.store.audit_records()[-1].verdicts["watermarked"] == len(changed)


def test_policy_validation():
    with pytest.raises(UsageError, match="detectors.ood"):
        GatewayPolicy(on_query="misinform")
    with pytest.raises(UsageError, match="on_query"):
        policy_from_dict({"on_query": "lie"})
    with pytest.raises(UsageError, match="on_flag.action"):
        policy_from_dict({"on_flag": {"action": "confuse"}})
    with pytest.raises(UsageError, match="misinformation.path"):
        policy_from_dict({"misinformation": {"function": "model"}})
    with pytest.raises(UsageError, match="misinformation.nu"):
        policy_from_dict({"misinformation": {"nu": 0}})
    with pytest.raises(UsageError, match="watermark.key_file"):
        policy_from_dict({"watermark": {"fraction": 0.01}})
    with pytest.raises(UsageError, match="watermark.fraction"):
        policy_from_dict({"watermark": {"key_file": "k", "fraction": 0.9}})
    with pytest.raises(UsageError, match="watermark"):
        policy_from_dict({"watermark": {"key_file": "k", "secret": "x"}})
    p = policy_from_dict({"detectors": {"ood": {"path": "d"}}, "on_flag": {"action":
                          "misinform", "policy": "identity"},
                          "misinformation": {"tau": 0.7, "nu": 20},
                          "watermark": {"key_file": "k"}})
    assert p.misinforms and p.misinformation.tau == 0.7 and p.watermark.fraction == 0.005


def test_a_short_watermark_key_is_refused_before_start(gateway, tmp_path):
    key_file = tmp_path / "short.key"
    key_file.write_bytes(b"abc")
    with pytest.raises(UsageError, match="watermark.key_file"):
        gateway(GatewayPolicy(watermark=WatermarkConfig(key_file=str(key_file))))


def test_misinformation_model_loaded_in_process(gateway, server, model_base):
    """`function: model` with `path`: an exported classifier answers the OOD queries (here
    tiny version 1 misinforms for the served tiny version 2)."""
    path = str(model_base[0] / "tiny" / "1")
    policy = GatewayPolicy(ood=_ood(), on_query="misinform", on_flag_action="misinform",
                           on_flag_policy="identity",
                           misinformation=MisinformationConfig(tau=0.5, function="model",
                                                               path=path))
    gw = gateway(policy, ood_detector=BrightIsAttack())
    client = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "alice"))
    direct = Target(f"127.0.0.1:{server.port}")
    x, y = bright(4, seed=5), dark(4, seed=6)
    mis = MisinformationModel.load(path)(x)
    assert not np.allclose(mis, _probs(direct.predict(x)), atol=1e-3)
    np.testing.assert_allclose(_probs(client.predict(x)), mis, atol=1e-4)
    np.testing.assert_allclose(_probs(client.predict(y)), _probs(direct.predict(y)), atol=1e-4)
