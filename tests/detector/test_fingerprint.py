"""Conferrable fingerprints (detector.fingerprint): the file round trip, the binomial test on
hand-made suspects, bad input through ``python -m detector.verify --method fingerprint``, and on
tiny Keras models a surrogate distilled from the victim identified while an independently
trained model is not."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector.fingerprint import (
    FingerprintSet,
    agreement_rate_bound,
    load_fingerprints,
    save_fingerprints,
    verify_fingerprints,
)
from detector.verify import main

K = 4
SHAPE = (8, 8, 3)


def _onehot_model(labels_for):
    """A hand-made suspect: answers the one-hot of `labels_for(images)`."""
    return lambda images: np.eye(K, dtype=np.float32)[labels_for(images)]


@pytest.fixture(scope="module")
def fingerprints():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, K, 60)
    return FingerprintSet(images=images, labels=labels, classes=K, null_rate=0.2,
                          info={"method": "test", "calibration_agreeing": [3, 4]})


def test_file_round_trip(fingerprints, tmp_path):
    path = save_fingerprints(tmp_path / "fp.npz", fingerprints)
    loaded = load_fingerprints(path)
    assert np.array_equal(loaded.images, fingerprints.images)
    assert np.array_equal(loaded.labels, fingerprints.labels)
    assert (loaded.classes, loaded.null_rate, loaded.info) == (K, 0.2, fingerprints.info)
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_file_that_is_not_a_fingerprint_set_is_named(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(UsageError, match="`fingerprints`.*KeyError"):
        load_fingerprints(bad)


def test_invalid_sets_are_refused():
    images = np.zeros((2, *SHAPE), np.uint8)
    with pytest.raises(UsageError, match="null rate"):
        FingerprintSet(images=images, labels=np.array([0, 1]), classes=K, null_rate=0.0)
    with pytest.raises(UsageError, match="labels in"):
        FingerprintSet(images=images, labels=np.array([0, K]), classes=K, null_rate=0.1)


def test_agreeing_suspect_is_identified_and_the_budget_respected(fingerprints):
    table = {fp.tobytes(): int(lab) for fp, lab in zip(fingerprints.images,
                                                       fingerprints.labels)}
    calls = []

    def copy(images):
        calls.append(len(images))
        return _onehot_model(lambda x: np.array([table[i.tobytes()] for i in x]))(images)

    result = verify_fingerprints(copy, fingerprints, max_queries=40)
    assert sum(calls) == 40 == result.compared == result.suspect_queries == result.agreeing
    assert result.stolen and result.p_value == pytest.approx(0.2 ** 40)
    assert "STOLEN" in result.line() and "40 queries" in result.line()


def test_suspect_at_the_null_rate_is_not_identified(fingerprints):
    # agrees on exactly 20% of the 60: the binomial tail at the null rate is large
    labels = fingerprints.labels.copy()
    wrong = (labels + 1) % K
    answers = np.where(np.arange(60) % 5 == 0, labels, wrong)
    result = verify_fingerprints(_onehot_model(lambda x: answers[: len(x)]), fingerprints)
    assert result.agreeing == 12 and not result.stolen and result.p_value > 0.4
    assert "not identified" in result.line()


def test_other_class_count_is_refused(fingerprints):
    with pytest.raises(UsageError, match="`suspect`.*3 classes.*4 classes"):
        verify_fingerprints(lambda x: np.full((len(x), 3), 1 / 3), fingerprints)


def test_calibration_bound_is_clopper_pearson():
    assert agreement_rate_bound(0, 100) == pytest.approx(1 - 0.01 ** (1 / 100))
    assert agreement_rate_bound(100, 100) == 1.0
    assert 0.10 < agreement_rate_bound(5, 100) < 0.13


def test_cli_bad_input_is_one_line(fingerprints, tmp_path, capsys):
    path = save_fingerprints(tmp_path / "fp.npz", fingerprints)
    code = main(["--method", "fingerprint", "--suspect", "127.0.0.1:1", "--suspect-model",
                 "stolen", "--fingerprints", str(path), "--timeout", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "suspect`" in err and "127.0.0.1:1" in err
    assert main(["--method", "fingerprint", "--suspect", str(tmp_path),
                 "--fingerprints", str(tmp_path / "none.npz")]) == 2
    assert "fingerprints`" in capsys.readouterr().err
    assert main(["--method", "fingerprint", "--suspect", str(tmp_path), "--fingerprints",
                 str(path), "--watermarks", str(path)]) == 2
    assert "watermarks`" in capsys.readouterr().err
    assert main(["--suspect", str(tmp_path), "--watermarks", str(path)]) == 2
    assert "victim`" in capsys.readouterr().err


# -- on tiny Keras models -----------------------------------------------------------------------

def _tiny(seed, width):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 127.5, -1),
                             keras.layers.Flatten(), keras.layers.Dense(width, "relu"),
                             keras.layers.Dense(K)])


def _fit(model, images, targets, epochs=25):
    import keras

    soft = targets.ndim == 2
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.CategoricalCrossentropy(from_logits=True) if soft
                  else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images.astype(np.float32), targets, batch_size=64, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def tiny_world():
    """A tiny task whose answers are arbitrary (random labels of random images), so that what
    a model does away from its training images is its own: a victim, a thief's surrogate
    distilled from the victim's answers on the thief's own images, the defender's ensemble
    and calibration models, and an independently trained suspect (same data, other seed)."""
    from detector.fingerprint import build_fingerprints, keras_predict

    def images(n, seed):
        return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)

    x, y = images(300, 1), np.random.default_rng(1).integers(0, K, 300)
    victim = keras_predict(_fit(_tiny(0, 32), x, y))
    thief_x = images(1000, 2)  # the thief's own images, answered by the victim
    thief = keras_predict(_fit(_tiny(1, 32), thief_x, victim(thief_x)))
    defender_x = images(1000, 3)
    surrogates = [_fit(_tiny(10 + i, 32), defender_x, victim(defender_x)) for i in range(2)]
    references = [_fit(_tiny(20, 32), x, y)]
    calibration = [keras_predict(_fit(_tiny(30 + i, 32), x, y)) for i in range(2)]
    independent = keras_predict(_fit(_tiny(40, 48), x, y))
    fingerprints = build_fingerprints(victim, images(200, 4), surrogates, references,
                                      calibration, count=60, eps=16.0, steps=10,
                                      step_size=3.2, weight=4.0)
    return victim, thief, independent, fingerprints


@pytest.mark.slow
def test_distilled_surrogate_is_identified_and_independent_model_is_not(tiny_world):
    victim, thief, independent, fingerprints = tiny_world
    assert len(fingerprints) == 60 and fingerprints.null_rate < 0.7
    stolen = verify_fingerprints(thief, fingerprints, victim=victim)
    assert stolen.victim_agreeing == stolen.compared
    assert stolen.stolen and stolen.p_value < 0.01, stolen.line()
    innocent = verify_fingerprints(independent, fingerprints, victim=victim)
    assert not innocent.stolen and innocent.p_value > 0.05, innocent.line()


# -- python -m detector.fingerprint build ---------------------------------------------------------

def _colour_task(base):
    """An .npz dataset of the "dominant colour" task (labels: the dominant channel)."""
    from serving import testing

    data = base / "task.npz"
    x = testing.colour_images(160, seed=1)
    y = x.reshape(160, -1, 3).mean(1).argmax(1)
    np.savez(data, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:])
    return data


@pytest.fixture
def build_layout(tmp_path):
    """A victim folder (its contents are checked only when the build starts) and a task."""
    (tmp_path / "victim" / "1").mkdir(parents=True)
    return tmp_path / "victim", _colour_task(tmp_path)


@pytest.mark.parametrize("argv, argument", [
    ([], "`command`"),
    (["make"], "`command`"),
    (["build", "--victim", "{base}/none", "--data", "{data}", "--out", "{base}/fp.npz"],
     "`--victim`"),
    (["build", "--victim", "127.0.0.1:8500", "--data", "{data}", "--out", "{base}/fp.npz"],
     "`--victim-model`"),
    (["build", "--victim", "{victim}", "--data", "{base}/none.npz", "--out", "{base}/fp.npz"],
     "`--data`"),
    (["build", "--victim", "{victim}", "--data", "{data}", "--out", "{base}/no/fp.npz"],
     "`--out`"),
    (["build", "--victim", "{victim}", "--data", "{data}", "--out", "{base}/fp.npz",
      "--limit", "0"], "`--limit`"),
    (["build", "--victim", "{victim}", "--data", "{data}", "--out", "{base}/fp.npz",
      "--eps", "0"], "`--eps`"),
])
def test_build_bad_input_is_one_line_and_writes_nothing(build_layout, argv, argument, capsys):
    from detector.fingerprint import main as build_main

    victim, data = build_layout
    base = data.parent
    argv = [a.format(base=base, data=data, victim=victim) for a in argv]
    assert build_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and argument in err[0], err
    assert not (base / "fp.npz").exists()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_names_the_build_command(flag, capsys):
    from detector.fingerprint import main as build_main

    assert build_main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m detector.fingerprint build") and "--help" in out
