"""Tests of the surrogate trainer: soft cross-entropy, resume, online updates, export."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from attack.surrogate import (
    BACKUP_DIR_NAME,
    FINAL_WEIGHTS_NAME,
    SurrogateTrainer,
    _mixup,
    color_jitter,
    ema_momentum,
    export_surrogate,
    log_softmax,
    sharpen,
)
from common.errors import UsageError
from victim_export.train import make_dataset

SHARED_DATA = Path(os.environ.get(
    "MEXT_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
MOBILENET_WEIGHTS = SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"

TINY_CNN = {"filters": [8, 16], "block_dropout": [0.0, 0.0], "dense_units": 16,
            "dense_dropout": 0.0}
CLASSES = ["red", "green", "blue"]


def toy_task(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose dominant colour channel is the class; soft targets 0.8 / 0.1 / 0.1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 70, (n, size, size, 3)).astype(np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 160
    targets = np.full((n, 3), 0.1, np.float32)
    targets[np.arange(n), labels] = 0.8
    return images, targets, labels


def trainer(**kwargs) -> SurrogateTrainer:
    settings = dict(epochs=3, batch_size=32, lr=3e-3, seed=1, augment="flip",
                    arch_kwargs=TINY_CNN)
    settings.update(kwargs)
    return SurrogateTrainer("cnn", "none", 16, 3, **settings)


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.epochs: list[int] = []
        self.fail_at = fail_at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.fail_at:
            raise RuntimeError(f"interrupted before epoch {epoch}")
        self.epochs.append(epoch)


def test_make_dataset_passes_soft_targets_through():
    images, targets, _ = toy_task(10, seed=0)
    (x, y), = [(x.numpy(), y.numpy()) for x, y in
               make_dataset(images, targets, size=16, num_classes=3, batch_size=16)]
    np.testing.assert_array_equal(y, targets)
    np.testing.assert_array_equal(x, images.astype(np.float32))
    with pytest.raises(UsageError, match="labels"):
        make_dataset(images, targets, size=16, num_classes=4, batch_size=16)


def test_log_softmax_is_stable_and_normalised():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    out = log_softmax(logits)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], np.log(np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()),
                               rtol=1e-6)


def test_soft_cross_entropy_training_learns_the_victim():
    images, targets, _ = toy_task(192, seed=0)
    held_images, held_targets, held_labels = toy_task(60, seed=1)
    t = trainer(epochs=4)
    before = (t.predict_log_probs(held_images).argmax(1) == held_labels).mean()
    model = t.fit(images, targets)
    assert model is t.model and t.epochs_run == 4 and t.initial_epoch == 0
    losses = t.history["loss"]
    assert losses[-1] < losses[0]
    # The soft targets' entropy (0.64 nats) bounds the loss from below.
    assert min(losses) > -np.sum([0.8, 0.1, 0.1] * np.log([0.8, 0.1, 0.1])) - 1e-3
    log_probs = t.predict_log_probs(held_images)
    assert log_probs.shape == (60, 3) and log_probs.dtype == np.float32
    assert np.all(log_probs <= 0)
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, rtol=1e-5)
    agreement = (log_probs.argmax(1) == held_targets.argmax(1)).mean()
    assert agreement > 0.8 > before + 0.2  # chance is 1/3
    np.testing.assert_allclose(t.predict_probs(held_images), np.exp(log_probs), rtol=1e-6)


def test_sharpen_raises_rows_to_one_over_t_and_keeps_one_hot_rows():
    rows = np.array([[0.6, 0.3, 0.1], [0.0, 1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(sharpen(rows, 1.0), rows)
    sharp = sharpen(rows, 0.5)
    np.testing.assert_allclose(sharp[0], np.array([36, 9, 1]) / 46, rtol=1e-6)
    np.testing.assert_array_equal(sharp[1], rows[1])
    soft = sharpen(rows[:1], 2.0)[0]
    np.testing.assert_allclose(soft, np.sqrt(rows[0]) / np.sqrt(rows[0]).sum(), rtol=1e-6)
    tiny = sharpen(np.array([[1 - 1e-30, 1e-30, 0.0]], np.float32), 0.1)
    assert np.all(np.isfinite(tiny)) and tiny[0, 0] == 1.0


def test_mixup_mixes_images_and_targets_with_one_weight_per_batch():
    images, targets, _ = toy_task(8, seed=0)
    plain = make_dataset(images, targets, size=16, num_classes=3, batch_size=8)
    (x0, y0), = [(x.numpy(), y.numpy()) for x, y in plain]
    (x, y), = [(x.numpy(), y.numpy()) for x, y in _mixup(plain, 0.4, seed=3)]
    # the weight is read off the targets (rows 0 and 7 differ), then checked on every pixel
    col = int(np.argmax(np.abs(y0[0] - y0[7])))
    weight = (y[0, col] - y0[7, col]) / (y0[0, col] - y0[7, col])
    assert 0 <= weight <= 1 and not np.allclose(x, x0)
    np.testing.assert_allclose(x, weight * x0 + (1 - weight) * x0[::-1], atol=1e-3)
    np.testing.assert_allclose(y, weight * y0 + (1 - weight) * y0[::-1], atol=1e-5)
    again, = [x.numpy() for x, _ in _mixup(plain, 0.4, seed=3)]
    np.testing.assert_array_equal(again, x)  # seeded: the same stream on every run


def test_color_jitter_changes_colour_per_image_reproducibly_and_is_off_at_zero():
    images, targets, _ = toy_task(16, seed=0)
    plain = make_dataset(images, targets, size=16, num_classes=3, batch_size=8)
    assert color_jitter(plain, 0.0, seed=3) is plain  # off: the very same pipeline
    batches = [(x.numpy(), y.numpy()) for x, y in color_jitter(plain, 0.2, seed=3)]
    assert [b[0].shape for b in batches] == [(8, 16, 16, 3)] * 2
    x = np.concatenate([b[0] for b in batches])
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 255
    np.testing.assert_array_equal(x, np.round(x))  # whole pixel values, like the victim's input
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), targets)
    changed = np.abs(x - images.astype(np.float32)).mean(axis=(1, 2, 3))
    assert np.all(changed > 0.5) and changed.mean() < 40  # every image, lightly
    # each image gets its own change: the per-image mean shifts are not one constant
    shift = (x - images).mean(axis=(1, 2, 3))
    assert np.std(shift) > 1
    again = np.concatenate([x.numpy() for x, _ in color_jitter(plain, 0.2, seed=3)])
    np.testing.assert_array_equal(again, x)  # seeded: the same stream on every run
    other = np.concatenate([x.numpy() for x, _ in color_jitter(plain, 0.2, seed=4)])
    assert not np.array_equal(other, x)
    # the colour jitter leaves the class evident: the dominant channel of these toy images
    assert (x.mean(axis=(1, 2)).argmax(1) == images.mean(axis=(1, 2)).argmax(1)).mean() > 0.9


def test_fit_applies_color_jitter_only_when_asked(monkeypatch):
    images, targets, _ = toy_task(16, seed=0)
    import attack.surrogate as surrogate

    seen = []

    def spy(dataset, strength, seed):
        seen.append(strength)
        return color_jitter(dataset, strength, seed)

    monkeypatch.setattr(surrogate, "color_jitter", spy)
    t = trainer(epochs=1, color_jitter=0.1, fit_batch_size=8)
    t.fit(images, targets)  # (strength 0 returns the pipeline itself: tested above)
    assert seen == [0.1] and int(t.model.optimizer.iterations) == 2


def test_warmup_rises_to_the_peak_then_the_cosine_decays_and_ema_is_on():
    t = trainer(epochs=4, warmup=0.25, ema=0.9)
    model = t._compile("fit", steps_per_epoch=6)  # 24 steps: 6 warm-up, 18 decay
    rates = [float(model.optimizer._learning_rate(step)) for step in (0, 3, 6, 23)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1.5e-3)
    assert rates[2] == pytest.approx(3e-3) and 0 < rates[3] < 1e-4
    assert model.optimizer.use_ema  # capped for these 24 steps: the last fifth at most
    assert model.optimizer.ema_momentum == pytest.approx(1 - 5 / 24)
    legacy = trainer(epochs=4)._compile("fit", steps_per_epoch=6)
    assert float(legacy.optimizer._learning_rate(0)) == pytest.approx(3e-3)
    assert not legacy.optimizer.use_ema


def test_only_a_changed_recipe_changes_the_fingerprint():
    images, targets, _ = toy_task(8, seed=0)
    legacy = trainer()
    assert legacy.recipe == {"target_temperature": 1.0, "mixup": 0.0, "label_smoothing": 0.0,
                             "warmup": 0.0, "ema": 0.0, "color_jitter": 0.0}
    same = trainer(target_temperature=1.0, mixup=0.0, color_jitter=0.0)
    assert legacy._fingerprint(images, targets) == same._fingerprint(images, targets)
    for other in (trainer(target_temperature=0.5), trainer(fit_batch_size=16),
                  trainer(color_jitter=0.1)):
        assert legacy._fingerprint(images, targets) != other._fingerprint(images, targets)
    # a recipe option added later is named only when set: a T=0.5 run trained before
    # color_jitter existed keeps its fingerprint (and resumes instead of training again)
    before = trainer(target_temperature=0.5)
    before.recipe = {"target_temperature": 0.5, "mixup": 0.0, "label_smoothing": 0.0,
                     "warmup": 0.0, "ema": 0.0}  # the recipe as it was before color_jitter
    assert before._fingerprint(images, targets) == trainer(
        target_temperature=0.5)._fingerprint(images, targets)
    # the test trainers' batch is 32: a fit batch of 32 is the same run
    assert trainer(fit_batch_size=32)._fingerprint(images, targets) == \
        legacy._fingerprint(images, targets)


def test_the_weight_average_of_a_short_fit_spans_its_last_fifth_at_most(monkeypatch):
    assert ema_momentum(0.99, 500) == 0.99 and ema_momentum(0.99, 785) == 0.99  # 5,000 queries
    assert ema_momentum(0.99, 80) == pytest.approx(1 - 5 / 80)
    assert ema_momentum(0.99, 5) == 0.0 and ema_momentum(0.0, 10_000) == 0.0
    images, targets, _ = toy_task(64, seed=0)
    short = trainer(epochs=2, ema=0.99)._compile("fit", steps_per_epoch=2)
    assert not short.optimizer.use_ema  # 4 steps: no average at all
    # the cap enters the fingerprint only where it bites: a long fit trained before the cap
    # existed keeps its fingerprint (and is loaded on resume), a short one trains again
    long_fit, short_fit = trainer(epochs=250, ema=0.99), trainer(epochs=20, ema=0.99)
    now = [t._fingerprint(images, targets) for t in (long_fit, short_fit)]
    monkeypatch.setattr("attack.surrogate.ema_momentum", lambda ema, steps: ema)
    before = [t._fingerprint(images, targets) for t in (long_fit, short_fit)]
    assert now[0] == before[0] and now[1] != before[1]


def test_fit_batch_size_sets_the_steps_of_fit_and_leaves_partial_fit_alone():
    images, targets, _ = toy_task(24, seed=0)
    t = trainer(epochs=1, fit_batch_size=8)
    t.fit(images, targets)
    assert int(t.model.optimizer.iterations) == 3  # 24 images in batches of 8
    t.partial_fit(images, targets)
    assert int(t.model.optimizer.iterations) == 1  # the online batch stays 32: one step


@pytest.mark.slow
def test_every_recipe_option_at_once_still_learns_the_victim():
    images, targets, _ = toy_task(192, seed=0)
    held_images, _, held_labels = toy_task(60, seed=1)
    t = trainer(epochs=4, target_temperature=0.5, mixup=0.4, label_smoothing=0.1,
                warmup=0.25, ema=0.9)
    t.fit(images, targets)
    assert (t.predict_probs(held_images).argmax(1) == held_labels).mean() > 0.8  # chance 1/3


def test_interrupted_fit_resumes_from_the_last_finished_epoch(tmp_path):
    images, targets, _ = toy_task(64, seed=0)
    checkpoints = tmp_path / "checkpoints"
    first = EpochRecorder(fail_at=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer(checkpoint_dir=checkpoints).fit(images, targets, callbacks=[first])
    assert first.epochs == [0]
    assert (checkpoints / BACKUP_DIR_NAME).is_dir()
    assert not (checkpoints / FINAL_WEIGHTS_NAME).exists()

    resumed = trainer(checkpoint_dir=checkpoints)  # a new process: a new trainer
    second = EpochRecorder()
    resumed.fit(images, targets, callbacks=[second])
    assert second.epochs == [1, 2]
    assert resumed.initial_epoch == 1 and resumed.epochs_run == 2
    assert not (checkpoints / BACKUP_DIR_NAME).exists()  # done: the backup is gone
    assert (checkpoints / FINAL_WEIGHTS_NAME).is_file()

    # A finished run on the same data is loaded, not trained again.
    again = trainer(checkpoint_dir=checkpoints)
    third = EpochRecorder()
    again.fit(images, targets, callbacks=[third])
    assert again.restored_final and third.epochs == [] and again.epochs_run == 0
    np.testing.assert_allclose(again.predict_logits(images), resumed.predict_logits(images),
                               rtol=1e-5, atol=1e-5)
    assert again.history == resumed.history


def test_torn_backup_falls_back_to_the_previous_one_or_starts_over(tmp_path):
    images, targets, _ = toy_task(32, seed=0)
    checkpoints = tmp_path / "checkpoints"
    backup = checkpoints / BACKUP_DIR_NAME
    with pytest.raises(RuntimeError):  # two epochs backed up: latest and previous
        trainer(checkpoint_dir=checkpoints).fit(images, targets,
                                                callbacks=[EpochRecorder(fail_at=2)])
    (backup / "training_metadata.json").write_text("")  # killed while Keras wrote it
    recorder = EpochRecorder()
    trainer(checkpoint_dir=checkpoints).fit(images, targets, callbacks=[recorder])
    assert recorder.epochs == [1, 2]  # the previous backup (after epoch 1)

    other = targets[:, ::-1].copy()
    with pytest.raises(RuntimeError):  # one epoch backed up: no previous backup
        trainer(checkpoint_dir=checkpoints).fit(images, other,
                                                callbacks=[EpochRecorder(fail_at=1)])
    (backup / "latest.weights.h5").write_bytes(b"torn")
    with pytest.raises(RuntimeError):
        trainer(checkpoint_dir=checkpoints).fit(images, other,
                                                callbacks=[EpochRecorder(fail_at=1)])
    # The unreadable backup was dropped: training started over and made a new one.
    assert (backup / "latest.weights.h5").read_bytes() != b"torn"

    # A backup of other data (or settings) is never resumed: `targets` start from epoch 0.
    recorder = EpochRecorder()
    trainer(checkpoint_dir=checkpoints).fit(images, targets, callbacks=[recorder])
    assert recorder.epochs == [0, 1, 2]


def test_partial_fit_updates_weights_and_fit_starts_from_initial_weights():
    images, targets, _ = toy_task(40, seed=0)
    t = trainer(epochs=1)
    initial = [w.copy() for w in t.model.get_weights()]
    loss = t.partial_fit(images[:8], targets[:8])
    assert np.isfinite(loss) and loss > 0
    after_one = t.model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(initial, after_one))
    t.partial_fit(images[:8], targets[:8], steps=3)
    assert any(not np.array_equal(a, b) for a, b in zip(after_one, t.model.get_weights()))
    # Unnormalised rows (rounded answers) are accepted and renormalised.
    assert np.isfinite(t.partial_fit(images[:4], targets[:4] * 2))

    # fit starts from the initial weights, not from the online updates: the same model as a
    # trainer that never saw partial_fit.
    t.fit(images, targets)
    fresh = trainer(epochs=1)
    fresh.fit(images, targets)
    np.testing.assert_allclose(t.predict_logits(images), fresh.predict_logits(images),
                               rtol=1e-4, atol=1e-4)


def test_images_of_another_size_are_resized_like_the_pipeline():
    images, targets, _ = toy_task(12, seed=3, size=24)
    t = trainer(epochs=1)
    t.fit(images, targets)  # 24x24 in, 16x16 model
    resized = tf.clip_by_value(tf.round(tf.image.resize(images, (16, 16), antialias=True)),
                               0, 255).numpy()
    np.testing.assert_allclose(t.predict_logits(images),
                               t.model.predict_on_batch(resized.astype(np.float32)),
                               rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_usage_errors_naming_them():
    images, targets, _ = toy_task(4, seed=0)
    for kwargs, argument in [({"epochs": 0}, "epochs"), ({"batch_size": 1.5}, "batch_size"),
                             ({"lr": -1.0}, "lr"), ({"augment": "rotate"}, "augment"),
                             ({"seed": -2}, "seed"), ({"online_lr": 0.0}, "online_lr"),
                             ({"target_temperature": 0}, "target_temperature"),
                             ({"mixup": -0.1}, "mixup"),
                             ({"label_smoothing": 1}, "label_smoothing"),
                             ({"warmup": 1.0}, "warmup"), ({"ema": 1}, "ema"),
                             ({"color_jitter": -0.1}, "color_jitter"),
                             ({"color_jitter": 1}, "color_jitter"),
                             ({"fit_batch_size": 0}, "fit_batch_size")]:
        with pytest.raises(UsageError, match=f"`{argument}`"):
            trainer(**kwargs)
    with pytest.raises(UsageError, match="backbone"):
        SurrogateTrainer("nope", "none", 16, 3)
    t = trainer()
    with pytest.raises(UsageError, match="`images`.*uint8"):
        t.predict_log_probs(images.astype(np.float32))
    with pytest.raises(UsageError, match="`images`"):
        t.predict_log_probs(images[0])  # one image without the batch axis: never fed to Conv2D
    with pytest.raises(UsageError, match="`targets`"):
        t.fit(images, targets[:, :2])
    for bad in (-targets, targets * np.nan, np.zeros_like(targets)):
        with pytest.raises(UsageError, match="`targets`"):
            t.partial_fit(images, bad)
    with pytest.raises(UsageError, match="`steps`"):
        t.partial_fit(images, targets, steps=0)
    assert t.predict_log_probs(images[:0]).shape == (0, 3)


def test_export_round_trip_serves_the_same_probabilities(tmp_path):
    images, targets, _ = toy_task(32, seed=0)
    t = trainer(epochs=1)
    t.fit(images, targets)
    path = export_surrogate(t.model, tmp_path / "run", CLASSES, (16, 16, 3))
    assert path == tmp_path / "run" / "surrogate" / "surrogate" / "1"
    assert (path / "saved_model.pb").is_file()
    assert (tmp_path / "run" / "surrogate" / "models.config").is_file()
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(served.numpy(), t.predict_probs(images), rtol=1e-4, atol=1e-5)
    second = export_surrogate(t.model, tmp_path / "run", CLASSES)
    assert second.name == "2"


@pytest.mark.realdata
@pytest.mark.skipif(not MOBILENET_WEIGHTS.is_file(),
                    reason=f"real ImageNet weights not found at {MOBILENET_WEIGHTS}")
def test_mobilenet_surrogate_on_real_imagenet_weights():
    t = SurrogateTrainer("MobileNet", MOBILENET_WEIGHTS, 96, 3, epochs=1, batch_size=16,
                         seed=0, arch_kwargs={"alpha": 0.25})
    with h5py.File(MOBILENET_WEIGHTS, "r") as weights:
        reference = weights["conv1"]["conv1"]["kernel:0"][()]
    backbone = next(layer for layer in t.model.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(backbone.get_layer("conv1").get_weights()[0], reference)
    images, targets, _ = toy_task(32, seed=0)
    t.fit(images, targets)  # 16x16 in, resized to 96x96
    log_probs = t.predict_log_probs(images)
    assert log_probs.shape == (32, 3) and np.all(np.isfinite(log_probs))


def test_export_at_the_victims_input_size_resizes_inside(tmp_path):
    """A surrogate trained at 24 px exported for 16 px victim images: same answers as
    resizing the way training does, then the surrogate."""
    import tensorflow as tf

    from attack.surrogate import SurrogateTrainer, export_surrogate

    trainer = SurrogateTrainer("cnn", "none", 24, 3, epochs=1, batch_size=8, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    path = export_surrogate(trainer.model, tmp_path, input_shape=(16, 16, 3))
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = served(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(got, trainer.predict_probs(images), atol=1e-5)
