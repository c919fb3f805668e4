"""Functionally-equivalent extraction (Jagielski et al. 2020) of a 20-8-3 ReLU network served
in-process with float64 logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.attack.helpers import save_label_only

D, H, K = 20, 8, 3


def _network(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1 / np.sqrt(D), (D, H)), rng.normal(0, 0.5, H),
            rng.normal(0, 1, (H, K)), rng.normal(0, 1, K))


def _logits(params, x):
    w1, b1, w2, b2 = params
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def _label_only(path, params):
    import tensorflow as tf

    w1, b1, w2, b2 = (tf.constant(p) for p in params)
    save_label_only(path, (D,), lambda images: tf.nn.relu(images @ w1 + b1) @ w2 + b2, K)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serving import testing
    from victim_export.dense import build_dense_classifier
    from victim_export.export import export_classifier
    from victim_export.models_config import write_models_config

    base = tmp_path_factory.mktemp("fee_victims")
    params = _network()
    model = build_dense_classifier("mlp", K, (D,), dtype="float64", hidden=H)
    model.set_weights(list(params))
    export_classifier(model, base, "mlp", version=1, input_shape=(D,), input_dtype="float64",
                      export_logits=True)
    write_models_config(base, "mlp", container_base_path="")
    _label_only(base / "labels" / "1", params)
    write_models_config(base, "labels", container_base_path="")
    with testing.model_server(config_file=base / "models.config") as server:
        yield server.target, base, params


def test_recovers_the_function_to_1e6(served, tmp_path):
    from attack.fee import FeeConfig, run_fee

    target, base, params = served
    result = run_fee(FeeConfig(grpc=target, model="mlp", noise=200,
                               reference=str(base / "mlp" / "1"), out=str(tmp_path / "run")))
    x = np.random.default_rng(7).uniform(0, 1, (10_000, D))
    assert np.abs(result.network(x) - _logits(params, x)).max() < 1e-6
    far = np.random.default_rng(8).normal(0, 10, (1_000, D))  # off the domain too
    assert np.abs(result.network(far) - _logits(params, far)).max() < 1e-6
    assert result.headline["hidden_found"] == H
    assert result.headline["max_param_error"] < 1e-6
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["extra"]["fidelity_noise"] == 1.0
    assert report["extra"]["queries"]["attack"] == result.queries > 0


def test_resume_replays_the_journal(served, tmp_path):
    from attack.fee import FeeConfig, run_fee

    target, _, _ = served
    config = FeeConfig(grpc=target, model="mlp", noise=0, hidden=H, out=str(tmp_path / "run"))
    first = run_fee(config)
    (tmp_path / "run" / "report.json").unlink()
    again = run_fee(FeeConfig(**{**config.__dict__, "resume": True}))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["extra"]["queries"]["replayed_from_journal"] == first.queries
    assert np.array_equal(again.network.w1, first.network.w1)


def test_probabilities_only_recovers_the_same_probabilities(served, tmp_path):
    from attack.fee import FeeConfig, run_fee

    target, _, params = served
    result = run_fee(FeeConfig(grpc=target, model="mlp", output="probabilities", hidden=H,
                               noise=0, out=str(tmp_path / "run")))
    x = np.random.default_rng(9).uniform(0, 1, (2_000, D))

    def probs(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    assert np.abs(probs(result.network(x)) - probs(_logits(params, x))).max() < 1e-6


def test_label_only_answers_are_refused(served, tmp_path, capsys):
    from attack.fee import main

    target, _, _ = served
    code = main(["--grpc", target, "--model", "labels", "--noise", "0",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "label-only" in capsys.readouterr().err


def test_budget_too_small_exits_2(served, tmp_path, capsys):
    from attack.fee import main

    target, _, _ = served
    code = main(["--grpc", target, "--model", "mlp", "--budget", "50", "--noise", "0",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--budget" in capsys.readouterr().err


def test_hybrid_fills_a_missing_unit():
    """Exact recovery that misses units is repaired by fine-tuning (pure numpy, no server)."""
    from attack.fee import FeeConfig, Network, fine_tune

    params = _network(3)
    true = Network(*params)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (800, D))
    start = Network(params[0][:, :-1], params[1][:-1], params[2][:-1], params[3])
    _, before, after = fine_tune(start, x, true(x), steps=400, seed=0)
    assert after < before
    assert FeeConfig(hybrid=True).hybrid


@pytest.mark.slow
def test_the_attack_object_recovers_and_resumes_through_a_serving_victim(served, tmp_path):
    from attack import FEE, ServingVictim

    target, _, params = served
    attack = FEE(hidden=H, noise=0)
    with ServingVictim(target, "mlp") as victim:
        first = attack.extract(victim, run_dir=tmp_path / "run")
    x = np.random.default_rng(9).uniform(0, 1, (1_000, D))
    assert np.abs(first.network(x) - _logits(params, x)).max() < 1e-6
    assert first.journal.is_file() and first.report.is_file()
    with ServingVictim(target, "mlp") as victim:
        again = attack.extract(victim, run_dir=tmp_path / "run", resume=True)
        assert victim.queries == 0  # every answer replayed from the journal
    assert np.array_equal(again.network.w1, first.network.w1)
