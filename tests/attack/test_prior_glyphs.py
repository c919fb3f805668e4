"""The prior's glyph styles (`attack.prior.GLYPH_STYLES`, ``--glyphs``): "fill" texts fill their
square, every other drawing and the default stream are unchanged, and a run's style is replayed.

The atlas and the renderer are checked on hand-made theta (no TensorFlow); end to end, a run with
``glyphs="fill"`` against the in-process colour victim is killed in its second round (no
surrogate trained) and its stream is drawn again from the run folder alone (`sent_queries`):
the victim's journaled answers to the replayed images equal those it gave.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from attack.prior import DIM, GLYPH_STYLES, LAYOUT, ImagePrior, glyph_atlas
from tests.attack.helpers import extract_synthetic, killed_keras_victim

TEXTS = 36 + 100  # the atlas's digits and letters, then its two-digit numbers
TWENTY = 36 + 20


def _ink_box(mask: np.ndarray) -> tuple[int, int]:
    """(height, width) of the pixels above half ink."""
    rows, cols = np.nonzero(mask > 0.5)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_fill_texts_fill_their_square_and_the_symbols_stay():
    default, fill = glyph_atlas(32), glyph_atlas(32, style="fill")
    assert fill.shape == default.shape and fill.dtype == np.float32
    assert fill.min() >= 0 and fill.max() <= 1
    np.testing.assert_array_equal(fill[TEXTS:], default[TEXTS:])  # arrows, bars, blobs
    longest = np.array([max(_ink_box(m)) for m in fill[:TEXTS]])
    assert longest.min() >= 28, longest.min()  # 0.95 of 32 px, give or take the anti-aliasing
    assert max(_ink_box(default[TWENTY])) <= 22  # two-digit numbers were 2/3 of it
    assert fill[TWENTY].sum() > 1.5 * default[TWENTY].sum()
    with pytest.raises(ValueError, match=r"glyphs.*bold.*default or fill"):
        glyph_atlas(32, style="bold")
    assert GLYPH_STYLES == ("default", "fill")


def _theta(n: int, glyph_on: bool) -> np.ndarray:
    theta = np.random.default_rng(3).random((n, DIM), dtype=np.float32)
    theta[:, LAYOUT["g0_on"]] = 0.1 if glyph_on else 0.9
    theta[:, LAYOUT["g0_index"]] = (TWENTY + 0.5) / len(glyph_atlas(32))
    theta[:, LAYOUT["g0_size"]] = 1.0
    theta[:, LAYOUT["g1_on"]] = 0.9
    return theta


def test_only_a_drawn_text_differs_between_the_styles():
    default, fill = ImagePrior((32, 32)), ImagePrior((32, 32), glyphs="fill")
    assert repr(default) == "ImagePrior(size=(32, 32), dim=%d, natural=0)" % DIM
    assert repr(fill).endswith("glyphs='fill')")
    plain = _theta(16, glyph_on=False)
    np.testing.assert_array_equal(fill.render(plain), default.render(plain))
    number = _theta(16, glyph_on=True)
    changed = (fill.render(number) != default.render(number)).any(axis=(1, 2, 3))
    assert changed.mean() > 0.8, changed  # the glyph may be hidden under a later shape
    np.testing.assert_array_equal(ImagePrior((32, 32), glyphs="default").render(number),
                                  default.render(number))


def test_a_fill_run_is_replayed_with_its_style(colour_model, tmp_path):
    from attack.journal import QueryJournal
    from attack.synthetic import sent_queries

    run_dir = tmp_path / "run"
    victim = killed_keras_victim(colour_model, calls=6)  # 4 calls a round: dies in round 2
    with pytest.raises(KeyboardInterrupt):
        extract_synthetic(victim, run_dir, budget=192, round_size=64, online_passes=0, seed=2,
                          glyphs="fill")
    assert json.loads((run_dir / "config.json").read_text())["glyphs"] == "fill"
    with QueryJournal.open(run_dir) as journal:
        answered, answers = journal.answered_indices(), np.array(journal.responses())
    assert 64 < len(answered) < 128
    replayed = np.concatenate([images for _, images in sent_queries(run_dir)])
    again = killed_keras_victim(colour_model, calls=None).predict(replayed[answered])
    np.testing.assert_allclose(again, answers, atol=1e-5)
    with np.load(run_dir / "queries" / "r000001.npz") as block:
        theta = block["theta"].astype(np.float32)
    np.testing.assert_array_equal(replayed[:64],
                                  ImagePrior((16, 16), seed=2, glyphs="fill").render(theta))
    assert (replayed[:64] != ImagePrior((16, 16), seed=2).render(theta)).any()
