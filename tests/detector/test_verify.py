"""DAWN verification on tiny numpy models: a surrogate fitted to the watermarked answers is
identified, independently trained models are not; bad input is one line and exit code 2."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector.verify import main, rank_sum_p_value, verify_watermarks, watermark_ranks
from detector.watermark import Watermarker, save_watermarks

K = 5
SHAPE = (8, 8, 3)  # 192 pixels: a linear model can fit the thief's 150 answers exactly
D = int(np.prod(SHAPE))


def _features(images):
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0 - 0.5
    return np.c_[x, np.ones(len(x))]


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _linear(weights):
    return lambda images: _softmax(_features(images) @ weights)


def _fit(images, targets):
    """Least squares on the targets' log-probabilities: a linear 'distillation'."""
    logits = np.log(np.clip(targets, 1e-4, 1.0))
    return np.linalg.lstsq(_features(images), logits, rcond=None)[0]


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    victim_w = rng.normal(0, 3.0, (D + 1, K))
    victim = _linear(victim_w)
    thief_images = rng.integers(0, 256, (150, *SHAPE), dtype=np.uint8)
    answers, records = Watermarker(b"s" * 32, 0.2).apply("mallory", thief_images,
                                                         victim(thief_images))
    surrogate = _linear(_fit(thief_images, answers))
    independents = []
    for seed in range(1, 4):  # other data, other seeds, the victim's labels
        other = np.random.default_rng(seed).integers(0, 256, (150, *SHAPE), dtype=np.uint8)
        independents.append(_linear(_fit(other, victim(other))))
    return victim, surrogate, independents, records


def test_distilled_surrogate_is_identified(world):
    victim, surrogate, _, records = world
    assert len(records) >= 20
    result = verify_watermarks(surrogate, records, victim=victim, max_queries=100)
    assert result.stolen and result.p_value < 1e-6
    assert result.agreeing == result.compared == len(records)
    assert result.victim_agreeing == 0 and result.chance == pytest.approx(0.25)
    assert "STOLEN" in result.line() and f"{result.compared} queries" in result.line()


def test_independent_models_are_not_identified(world):
    victim, _, independents, records = world
    for model in independents + [victim]:
        result = verify_watermarks(model, records, victim=victim)
        assert not result.stolen and result.p_value > 0.05
        assert result.agreeing <= result.compared * 0.25


def test_runner_up_watermarks_are_identified_by_the_rank_test(world):
    """A thief's surrogate that keeps the victim's top-1 but learnt the watermark's wrong label
    as its second choice (what training on swapped probabilities tends to give): the top-1
    test sees nothing, the rank test identifies it."""
    victim, _, _, records = world
    table = {r.digest: r for r in records}
    from detector.watermark import image_digest

    def runner_up(images):
        out = np.full((len(images), K), 0.05)
        for i, image in enumerate(images):
            r = table[image_digest(image)]
            out[i, r.true_label], out[i, r.label] = 0.6, 0.2
        return out

    result = verify_watermarks(runner_up, records, victim=victim)
    assert result.agreeing == 0 and result.top1_p_value == 1.0
    assert result.mean_rank == 1.0 and result.stolen and result.p_value < 1e-6
    assert "ranks 1.00 on average" in result.line()


def test_rank_test_is_calibrated_and_ties_count_against():
    rng = np.random.default_rng(0)
    p = np.array([rank_sum_p_value(rng.integers(1, 10, 60), 10)[0] for _ in range(400)])
    assert 0.02 <= np.mean(p < 0.05) <= 0.09 and np.mean(p < 0.01) <= 0.03
    assert rank_sum_p_value(np.ones(5, int), 3) == (pytest.approx(0.5 ** 5), "exact")
    assert rank_sum_p_value(np.full(20, 1), 1001)[1] == "Hoeffding bound"
    scores = np.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.7, 0.1, 0.1]])
    # row 0: wrong label 2 ties with class 1 -> rank 2; row 1: victim answered 1, label 0
    # ties with 2 and 3 -> rank 3
    assert watermark_ranks(scores, np.array([2, 0]), np.array([0, 1])).tolist() == [2, 3]


def test_query_budget_is_respected(world):
    victim, surrogate, _, records = world
    calls = []

    def counted(images):
        calls.append(len(images))
        return surrogate(images)

    result = verify_watermarks(counted, records, max_queries=10)
    assert sum(calls) == 10 == result.suspect_queries == result.compared


def test_a_suspect_of_another_task_is_refused(world):
    victim, _, _, records = world
    with pytest.raises(UsageError, match="`suspect`.*3 classes.*5 classes"):
        verify_watermarks(lambda x: np.full((len(x), 3), 1 / 3), records, victim=victim)


def test_cli_unreachable_suspect_is_one_line(world, tmp_path, capsys):
    _, _, _, records = world
    path = save_watermarks(tmp_path / "wm.npz", records)
    code = main(["--suspect", "127.0.0.1:1", "--suspect-model", "stolen", "--victim",
                 str(tmp_path), "--watermarks", str(path), "--timeout", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "suspect`" in err and "127.0.0.1:1" in err


def test_cli_checks_arguments_before_any_query(tmp_path, capsys):
    assert main(["--suspect", "127.0.0.1:1", "--victim", str(tmp_path), "--watermarks",
                 str(tmp_path / "none.npz"), "--suspect-model", "m"]) == 2
    assert "watermarks`" in capsys.readouterr().err
    assert main(["--suspect", "nowhere", "--victim", str(tmp_path), "--watermarks",
                 str(tmp_path)]) == 2
    assert "suspect`" in capsys.readouterr().err
    assert main(["--suspect", str(tmp_path), "--victim", str(tmp_path), "--watermarks",
                 f"sqlite:{tmp_path / 'gw.db'}"]) == 2
    assert "client`" in capsys.readouterr().err
