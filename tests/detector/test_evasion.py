"""The evasion transforms: shapes, dtypes, what each one does, and their argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector import evasion


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 16, dtype=np.float64)
    base = (smooth[None, :, None] + smooth[:, None, None]) / 2
    imgs = np.repeat(base[None], 4, axis=0) + rng.normal(0, 20, (4, 16, 16, 3))
    return np.clip(imgs, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name, level", [("jpeg", 50), ("jpeg", 95), ("resize", 0.5),
                                         ("blur", 1.0), ("noise", 8.0)])
def test_transforms_keep_shape_and_dtype_and_change_pixels(images, name, level):
    out = evasion.apply(name, images, level, seed=1)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    assert np.abs(out.astype(int) - images).mean() < 40  # still the same picture


def test_jpeg_quality_orders_the_damage(images):
    low = np.abs(evasion.jpeg(images, 50).astype(int) - images).mean()
    high = np.abs(evasion.jpeg(images, 95).astype(int) - images).mean()
    assert low > high > 0


def test_blur_smooths_and_zero_is_identity(images):
    def roughness(x):
        return np.abs(np.diff(x.astype(int), axis=2)).mean()

    assert roughness(evasion.blur(images, 2.0)) < roughness(images) / 2
    np.testing.assert_array_equal(evasion.blur(images, 0.0), images)


def test_resize_loses_detail_and_factor_one_keeps_it(images):
    np.testing.assert_array_equal(evasion.resize(images, 1.0), images)
    small = evasion.resize(images, 0.25)
    assert np.abs(np.diff(small.astype(int), axis=2)).mean() < \
        np.abs(np.diff(images.astype(int), axis=2)).mean()


def test_noise_is_seeded_and_scaled(images):
    a = evasion.noise(images, 10.0, seed=3)
    np.testing.assert_array_equal(a, evasion.noise(images, 10.0, seed=3))
    assert not np.array_equal(a, evasion.noise(images, 10.0, seed=4))
    mid = images[:, 4:12, 4:12].astype(int)  # away from the clipped extremes
    assert np.std(a[:, 4:12, 4:12].astype(int) - mid) == pytest.approx(10.0, rel=0.15)


def test_camouflage_mixes_the_requested_share(images):
    benign = np.zeros((3, 16, 16, 3), np.uint8)
    stream, is_attack = evasion.camouflage(images, benign, 0.5, seed=0)
    assert stream.shape == (8, 16, 16, 3) and is_attack.sum() == 4
    assert np.all(stream[~is_attack] == 0)
    # every attack image is in the stream exactly once
    got = sorted(x.tobytes() for x in stream[is_attack])
    assert got == sorted(x.tobytes() for x in images)
    same, _ = evasion.camouflage(images, benign, 0.5, seed=0)
    np.testing.assert_array_equal(stream, same)
    alone, flags = evasion.camouflage(images, benign, 0.0)
    assert len(alone) == 4 and flags.all()


def test_bad_arguments(images):
    with pytest.raises(UsageError, match="`quality`"):
        evasion.jpeg(images, 0)
    with pytest.raises(UsageError, match="`quality`"):
        evasion.jpeg(images, 75.5)
    with pytest.raises(UsageError, match="`factor`"):
        evasion.resize(images, 1.5)
    with pytest.raises(UsageError, match="`images`"):
        evasion.blur(images.astype(np.float32), 1.0)
    with pytest.raises(UsageError, match="`share`"):
        evasion.camouflage(images, images, 1.0)
    with pytest.raises(UsageError, match="`benign`"):
        evasion.camouflage(images, images[:, :8], 0.5)
    with pytest.raises(UsageError, match="`evasion`"):
        evasion.apply("rotate", images, 1.0)


def test_augment_is_seeded_changes_the_share_asked_and_keeps_the_batch():
    rng = np.random.default_rng(5)
    batch = rng.integers(0, 256, (200, 16, 16, 3)).astype(np.uint8)
    out = evasion.augment(batch, seed=7, share=0.5)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, evasion.augment(batch, seed=7, share=0.5))
    changed = np.any(out != batch, axis=(1, 2, 3)).mean()
    assert 0.35 < changed < 0.65
    np.testing.assert_array_equal(evasion.augment(batch, seed=7, share=0.0), batch)
    assert not np.array_equal(evasion.augment(batch, seed=8, share=0.5), out)
    with pytest.raises(UsageError, match="`share`"):
        evasion.augment(batch, seed=0, share=1.5)
    with pytest.raises(UsageError, match="`images`"):
        evasion.augment(batch[0], seed=0)


def test_transformed_views_name_each_calibration_transform(images):
    views = evasion.transformed_views(images)
    assert list(views) == ["none", "jpeg:95", "jpeg:75", "jpeg:50", "resize:0.5", "blur:1",
                           "noise:8"]
    np.testing.assert_array_equal(views["none"], images)
    np.testing.assert_array_equal(views["jpeg:50"], evasion.jpeg(images, 50))
    np.testing.assert_array_equal(views["noise:8"], evasion.noise(images, 8.0, seed=0))
    assert all(v.shape == images.shape and v.dtype == np.uint8 for v in views.values())
    assert list(evasion.transformed_views(images, [("blur", 2.0)])) == ["none", "blur:2"]
