"""The policy's ``per_model`` section: each model its own detectors, actions and output policies,
validated with the model named, and applied by the gateway to that model's Predict calls only."""

from __future__ import annotations

import numpy as np
import pytest

import detector.monitor
from common.errors import UsageError
from serving import codec
from serving.gateway.config import policy_from_dict
from tests.serving.gateway.conftest import BrightIsAttack, Target, add_client, bright, dark


def _probs(answer) -> np.ndarray:
    return codec.to_ndarray(answer.outputs["probabilities"])


BASE = {"models": ["tiny", "other"], "always": "identity"}


def test_per_model_entries_replace_the_policy_keys_for_their_model():
    policy = policy_from_dict({**BASE, "on_flag": {"action": "refuse"}, "per_model": {
        "tiny": {"always": "label_only", "detectors": {"ood": {"path": "d", "window": 8,
                                                                     "min_queries": 4}},
                 "on_flag": {"action": "misinform", "policy": "identity"}}}})
    tiny, other = policy.for_model("tiny"), policy.for_model("other")
    assert tiny.always == "label_only" and tiny.ood.window == 8
    assert tiny.on_flag_action == "misinform" and tiny.models == ("tiny", "other")
    assert other is policy and other.ood is None and other.on_flag_action == "refuse"
    assert policy.for_model("unlisted") is policy


@pytest.mark.parametrize("per_model, argument", [
    ({"nope": {"always": "identity"}}, "per_model"),
    ({"tiny": {"limits": {"budget": 3}}}, "per_model.tiny"),
    ({"tiny": {"always": "explode"}}, "per_model.tiny.always"),
    ({"tiny": {"detectors": {"ood": {"path": "d", "window": 0}}}},
     "per_model.tiny.detectors.ood.window"),
    ({"tiny": {"on_query": "misinform"}}, "per_model.tiny.detectors.ood"),
    ({"tiny": "label_only"}, "per_model.tiny"),
    ([], "per_model"),
])
def test_bad_per_model_entries_are_named(per_model, argument):
    with pytest.raises(UsageError) as err:
        policy_from_dict({**BASE, "per_model": per_model})
    assert err.value.argument == argument, str(err.value)


def test_a_models_detector_watches_that_model_only(gateway, server, monkeypatch, tmp_path):
    """`tiny` gets its own detector (loaded from its path) and misinformation once flagged;
    the policy's own rules (no detector) answer every other model unchanged."""
    (tmp_path / "det").mkdir()
    loaded = []

    def load(path, *, threshold=None):
        loaded.append(path)
        return BrightIsAttack()

    monkeypatch.setattr(detector.monitor.OODDetector, "load", staticmethod(load))
    policy = policy_from_dict({**BASE, "per_model": {"tiny": {
        "detectors": {"ood": {"path": str(tmp_path / "det"), "window": 8, "level": 0.5,
                              "min_queries": 4}},
        "on_flag": {"action": "misinform", "policy": "label_only"},
        "misinformation": {"tau": -1.0}}}})
    gw = gateway(policy)
    assert loaded == [str(tmp_path / "det")]
    mallory = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "mallory"))
    direct = Target(f"127.0.0.1:{server.port}")
    mallory.predict(bright(8))
    assert gw.store.load_detectors("mallory").flagged
    x = dark(6, seed=2)  # flagged: even in-distribution queries are misinformed (tau -1)
    got, truth = _probs(mallory.predict(x)), _probs(direct.predict(x))
    assert np.all(np.count_nonzero(got, axis=1) == 1)
    assert np.all(got.argmax(1) != truth.argmax(1))
    actions = [r.action for r in gw.store.audit_records() if r.client == "mallory"]
    assert actions == ["misinform:label_only"] * 2  # flagged within the first request


def test_a_model_without_an_entry_keeps_the_policys_rules(gateway, server):
    """The policy's detector (injected) watches the default rules; an entry for `tiny` that
    sets no detector answers `tiny` unwatched, with its own output policy."""
    policy = policy_from_dict({**BASE, "detectors": {"ood": {"path": "injected", "window": 8,
                                                              "min_queries": 4}},
                               "per_model": {"tiny": {"detectors": None,
                                                      "always": "label_only"}}})
    gw = gateway(policy, ood_detector=BrightIsAttack())
    alice = Target(f"127.0.0.1:{gw.port}", add_client(gw.store, "alice"))
    x = bright(8, seed=5)
    got = _probs(alice.predict(x))
    truth = _probs(Target(f"127.0.0.1:{server.port}").predict(x))
    assert np.all(np.count_nonzero(got, axis=1) == 1)
    np.testing.assert_array_equal(got.argmax(1), truth.argmax(1))
    assert not gw.store.load_detectors("alice").flagged
    assert [r.action for r in gw.store.audit_records() if r.client == "alice"] == \
        ["always:label_only"]


def test_a_missing_per_model_detector_is_named_before_the_gateway_starts(gateway, tmp_path):
    policy = policy_from_dict({**BASE, "per_model": {"tiny": {
        "detectors": {"ood": {"path": str(tmp_path / "absent")}}}}})
    with pytest.raises(UsageError) as err:
        gateway(policy)
    assert err.value.argument == "per_model.tiny.detectors.ood.path"
