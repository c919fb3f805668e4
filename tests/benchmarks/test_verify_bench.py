"""`python -m benchmarks.verify_bench`: bad arguments, what each thief sends and trains on, and
the results table. (The run itself needs the real data and minutes of training: it is the
benchmark, measured in docs/defence.md, not a unit test.)"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import verify_bench as vb
from common.errors import UsageError


@pytest.mark.parametrize("extra, argument", [
    (["--thief-budget", "0"], "`--thief-budget`"),
    (["--watermark-fraction", "0.7"], "`--watermark-fraction`"),
    (["--finetune-fraction", "0"], "`--finetune-fraction`"),
    (["--jpeg-quality", "101"], "`--jpeg-quality`"),
    (["--thieves", "knockoff-probs", "ransom"], "`--thieves`"),
    (["--victim-model", "no_such_model"], "`--victims`"),
    (["--data-dir", "/no/such/data"], "`--data-dir`"),
])
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(layout, extra, argument,
                                                               one_line_error):
    one_line_error(vb.main, ["--victims", str(layout / "victims"), "--data-dir",
                             str(layout / "data"), *extra], argument)


@pytest.fixture(scope="module")
def pools():
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 128, (300, 8, 8, 3), dtype=np.uint8)      # dark: out of domain
    in_domain = rng.integers(128, 256, (200, 8, 8, 3), dtype=np.uint8)  # bright: the victim's
    return tiny, in_domain


def _bright(images):
    return images.reshape(len(images), -1).min(1) >= 128


def test_each_thief_sends_its_own_mix_of_images(pools):
    tiny, in_domain = pools
    sent = {kind: vb.thief_queries(kind, tiny=tiny, in_domain=in_domain, budget=100, seed=3)
            for kind in vb.THIEVES}
    assert all(len(x) == 100 and x.dtype == np.uint8 for x in sent.values())
    assert _bright(sent["realistic"]).all() and not _bright(sent["knockoff-probs"]).any()
    assert _bright(sent["copycat"]).sum() == 10  # a tenth from the problem domain
    assert _bright(sent["camouflage"]).sum() == 50  # half camouflage
    np.testing.assert_array_equal(sent["knockoff-probs"], sent["knockoff-top1"])
    # the jpeg thief sends the Knockoff images JPEG-encoded: close, not equal
    diff = np.abs(sent["jpeg"].astype(int) - sent["knockoff-probs"].astype(int))
    assert 0 < diff.mean() < 40
    again = vb.thief_queries("camouflage", tiny=tiny, in_domain=in_domain, budget=100, seed=3)
    np.testing.assert_array_equal(again, sent["camouflage"])  # seeded
    other = vb.thief_queries("camouflage", tiny=tiny, in_domain=in_domain, budget=100, seed=4)
    assert not np.array_equal(other, again)
    with pytest.raises(UsageError, match="`thief`"):
        vb.thief_queries("ransom", tiny=tiny, in_domain=in_domain, budget=10, seed=0)


def test_top1_thieves_train_on_one_hots_the_others_on_the_answers():
    answers = np.array([[0.1, 0.9, 0.0], [0.6, 0.1, 0.3]], np.float32)
    for kind in ("knockoff-top1", "copycat"):
        np.testing.assert_array_equal(vb.thief_targets(kind, answers), [[0, 1, 0], [1, 0, 0]])
    for kind in ("knockoff-probs", "jpeg", "camouflage", "realistic"):
        np.testing.assert_array_equal(vb.thief_targets(kind, answers), answers)


def test_markdown_reports_queries_p_values_and_decisions():
    dawn = {"agreeing": 9, "compared": 97, "queries": 97, "mean_rank": 3.1, "p": 1e-8,
            "top1_p": 0.02, "identified": True, "watermarks_of": "copycat-0"}
    results = {
        "rows": [{"model": "copycat-0", "kind": "stolen", "accuracy": 0.5, "fidelity": 0.6,
                  "dawn": [dawn, dawn, {**dawn, "watermarks_of": "jpeg-0", "p": 0.3,
                                        "identified": False}]},
                 {"model": "independent-0-cnn8", "kind": "independent", "accuracy": 0.4,
                  "fidelity": 0.5, "dawn": [{**dawn, "p": 0.4, "top1_p": 0.7,
                                             "identified": False}] * 2}],
        "victim": "victims/cifar10_cnn", "victim_accuracy": 0.68,
        "config": {"watermark_fraction": 0.02}, "watermarks_per_thief": {"copycat-0": 97},
        "seconds": 12.0, "load": (1.0, 1.0, 1.0)}
    text = vb._markdown(results)
    assert "| copycat-0 | stolen | 0.5000 | 0.6000 | 97 | 9/97 | 3.10 | 1e-08 | 0.02 | STOLEN |" \
        in text
    assert "| 97 per set x 2 sets | - | - | min 0.4 of 2 | min 0.7 | 0 of 2 sets STOLEN |" in text
    assert "stolen identified at p < 0.01: 1 of 1" in text
    assert "independent tests with p > 0.05: 2 of 2 (1 models)" in text
    assert "other thieves' watermark sets (answers it never received): p > 0.05 in 1 of 1 " \
        "tests, identified (p < 0.01) in 0" in text
    assert "fingerprint" not in text
