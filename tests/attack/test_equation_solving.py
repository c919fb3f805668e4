"""Equation solving (Tramèr et al. 2016) against softmax regressions served in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.attack.helpers import save_label_only

SHAPE = (6, 6, 1)
D = 36
K = 4


def _softmax_victim(base, name, scale=1.0, seed=0):
    from victim_export.dense import build_dense_classifier
    from victim_export.export import export_classifier
    from victim_export.models_config import write_models_config

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (D, K)) * scale
    b = rng.normal(0, 1, K) * scale
    model = build_dense_classifier("softmax", K, SHAPE, dtype="float64")
    model.set_weights([w, b])
    export_classifier(model, base, name, version=1, input_shape=SHAPE, input_dtype="float64",
                      export_logits=True)
    write_models_config(base, name, container_base_path="")
    return w, b


def _label_only_victim(path):
    """A float64 signature whose `probabilities` are one-hot rows (a label-only API)."""
    import tensorflow as tf

    w = tf.constant(np.random.default_rng(1).normal(size=(D, K)))
    save_label_only(path, SHAPE, lambda images: tf.reshape(images, [-1, D]) @ w, K)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serving import testing
    from victim_export.models_config import write_models_config

    base = tmp_path_factory.mktemp("linear_victims")
    params = _softmax_victim(base, "soft")
    _label_only_victim(base / "labels" / "1")
    write_models_config(base, "labels", container_base_path="")
    with testing.model_server(config_file=base / "models.config") as server:
        yield server.target, base, params


def _probs(w, b, x):
    z = x @ w + b
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("design", ["basis", "random"])
def test_recovers_softmax_regression_exactly(served, tmp_path, design):
    from attack.equation_solving import EquationSolvingConfig, run_equation_solving

    target, base, (w, b) = served
    config = EquationSolvingConfig(grpc=target, model="soft", design=design, noise=500,
                                   reference=str(base / "soft" / "1"),
                                   out=str(tmp_path / "run"))
    result = run_equation_solving(config)
    assert result.queries == D + 1 + 16
    # identifiable up to the shared shift: compare with class K as the reference
    assert np.abs(result.weights - (w - w[:, -1:])).max() < 1e-6
    assert np.abs(result.bias - (b - b[-1])).max() < 1e-6
    assert result.headline["max_abs_weight_error"] < 1e-6
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["extra"]["fidelity_noise"] == 1.0
    assert report["extra"]["queries"]["minimum_d_plus_1"] == D + 1
    # the exported model answers like the victim
    import tensorflow as tf

    loaded = tf.saved_model.load(report["extra"]["recovered_export"])
    x = np.random.default_rng(5).uniform(0, 1, (64, *SHAPE))
    got = loaded.signatures["serving_default"](images=tf.constant(x))["probabilities"].numpy()
    assert np.abs(got - _probs(w, b, x.reshape(64, -1))).max() < 1e-9


def test_budget_below_d_plus_1_exits_2(served, tmp_path, capsys):
    from attack.equation_solving import main

    target, _, _ = served
    code = main(["--grpc", target, "--model", "soft", "--budget", str(D),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--budget" in err and str(D + 1) in err
    assert not (tmp_path / "run").exists()  # refused before any side effect


def test_label_only_answers_are_refused(served, tmp_path, capsys):
    from attack.equation_solving import main

    target, _, _ = served
    code = main(["--grpc", target, "--model", "labels", "--noise", "0",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "label-only" in err


def test_rounded_answers_are_refused():
    from attack._linear import AnswerError, check_answers

    rng = np.random.default_rng(0)
    p = _probs(rng.normal(size=(D, K)), np.zeros(K), rng.uniform(size=(50, D)))
    check_answers(p, "probabilities", attack="t")  # real answers pass
    with pytest.raises(AnswerError, match="rounded"):
        check_answers(np.round(p, 2), "probabilities", attack="t")
    with pytest.raises(AnswerError, match="rounded"):
        check_answers(np.round(np.log(p), 3), "logits", attack="t")


def test_the_attack_object_solves_through_a_serving_victim(served, tmp_path, monkeypatch):
    import tempfile

    from attack import EquationSolving, KerasVictim, ServingVictim
    from common.errors import UsageError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # $TMPDIR, without leftovers
    target, base, (w, b) = served
    attack = EquationSolving(design="basis", verify=4, noise=0)
    with ServingVictim(target, "soft") as victim:
        result = attack.extract(victim)  # run_dir=None: a temporary run directory
    assert result.run_dir.name.startswith("mext-equation-solving-")
    assert result.queries == D + 1 + 4 and result.journal.is_file()
    assert np.abs(result.weights - (w - w[:, -1:])).max() < 1e-6
    assert result.victim["model"] == "soft"
    with pytest.raises(UsageError, match="surrogate"):
        attack.extract(None, surrogate={"backbone": "cnn"})
    with pytest.raises(UsageError, match="victim.*predict_raw"):
        attack.extract(KerasVictim(str(base / "soft" / "1")))
    assert [p.name for p in tmp_path.iterdir()] == [result.run_dir.name]  # refused: no folder
