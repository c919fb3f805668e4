"""Train the victim classifier of a model-extraction experiment and export it for TF Serving.

The victims of Knockoff Nets (Orekondy et al. 2019) and of Atli et al. 2020 ("Extraction of
Complex DNN Models: Real Threat or Boogeyman?") are ordinary image classifiers trained on the
task's own data: a small CNN or ResNet-34 on CIFAR-10 or GTSRB, or a fine-tuned ImageNet
backbone. `train_victim` trains one from a `VictimConfig` with a seeded `tf.data` pipeline
(shuffle, on-the-fly random crop / flip, prefetch), early stopping on a held-out validation
split (best weights restored) and a cosine or reduce-on-plateau learning-rate schedule, then
measures test accuracy overall and per class. `run_victim_export` checks the output location,
trains, and exports the model, its card and the ``models.config`` entry.

``distribute`` (`common.distribute`) builds and compiles the network under a mirrored or
multi-worker strategy with ``batch_size`` as the global batch; the trained weights are copied
into a plain model for evaluation and export, and in a multi-worker run only the chief journals
and exports. Every epoch's global batches come from ``(seed, epoch)`` on one device or many, so
a distributed run resumes like a single-device one (`victim_export.training_state`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common.backbones import build_classifier, get_backbone
from common.cli import config_to_dict
from common.data import ImageDataset, load_dataset
from common.distribute import (
    check_global_batch,
    is_chief,
    make_strategy,
    scope,
    shard_by_data,
    synchronize_batch_norm,
)
from common.errors import UsageError, invalid
from common.fileio import check_writable
from common.progress import keras_verbose
from victim_export.config import VictimConfig, augmentation_parts
from victim_export.dense import cast_dense_classifier, is_dense_arch, train_dense_victim
from victim_export.export import export_classifier, next_version, read_card
from victim_export.fitting import (
    TrainedVictim,
    epoch_callbacks,
    epoch_stream,
    optimizer_for,
    split_off,
    split_validation,
)
from victim_export.models_config import MODELS_CONFIG_NAME, read_models_config, write_models_config
from victim_export.training_state import (
    TrainingState,
    agree_on_resume,
    check_state,
    discard_state,
    fit_resumably,
    load_state,
    state_dir,
)

__all__ = [
    "TrainedVictim",
    "evaluate_classifier",
    "make_dataset",
    "preflight",
    "run_victim_export",
    "save_trained_victim",
    "split_holdout",
    "train_victim",
    "training_batches",
]

logger = logging.getLogger(__name__)

# Resized training images are cached in memory by tf.data only below this many bytes.
_CACHE_LIMIT_BYTES = 2 << 30
# The "rotate" and "color" augmentations' ranges (small: a sign's class survives them).
_MAX_ROTATION_DEGREES = 15.0
_MAX_BRIGHTNESS = 0.25
_CONTRAST_RANGE = (0.6, 1.4)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    size: int,
    num_classes: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: str = "none",
) -> tf.data.Dataset:
    """Batches of (float32 raw pixels [B, size, size, 3], one-hot labels) from uint8 images.

    `labels` are class indices ``[N]`` (one-hot encoded here) or soft targets ``[N, num_classes]``
    (probability rows, passed through as float32: surrogate training on a victim's answers).

    Images of another size are resized (bilinear, antialiased) and rounded back to uint8 pixel
    values, as a client would send them. With `shuffle_seed`, examples are reshuffled every
    epoch and `augment` (`AUGMENTATIONS`: "none" or "+"-joined parts, applied in this order:
    "rotate" (up to +/-15 degrees about the centre, edges reflected), "crop" (zero-pad by size/8
    then random crop), "flip" (horizontal), "color" (brightness +/-25% of full scale and contrast
    x0.6-1.4, clipped and rounded back to whole pixel values)) draws its randomness from
    per-example stateless seeds derived from `shuffle_seed`. Traffic signs: "rotate+crop+color"
    (no flip: a mirrored sign is another sign).
    """
    parts = augmentation_parts(augment)
    if parts and shuffle_seed is None:
        raise invalid("augment", augment, "'none' when not shuffling (evaluation data)")
    labels = np.asarray(labels)
    soft = labels.ndim == 2
    if soft and labels.shape[1] != num_classes:
        raise invalid("labels", f"shape {labels.shape}",
                      f"class indices [N] or soft targets [N, {num_classes}]")
    if soft:
        labels = labels.astype(np.float32, copy=False)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if tuple(images.shape[1:3]) != (size, size):

        def resize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return _resize_uint8(image, size), label

        ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
        if len(images) * size * size * 3 <= _CACHE_LIMIT_BYTES:
            ds = ds.cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    finish = _finisher(parts, size=size, num_classes=num_classes, soft=soft)
    if parts:
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True)
        seeds = seeds.batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, seed: finish(pair[0], pair[1], seed),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _finisher(parts: frozenset[str], *, size: int, num_classes: int, soft: bool):
    """``finish(image, label, seed=None) -> (float32 pixels, target)``: one example augmented
    by `parts` (in `AUGMENTATION_PARTS`' order, randomness from the stateless `seed`), cast to
    float32, its label one-hot encoded unless `soft`."""
    pad = max(1, size // 8)

    def finish(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor | None = None):
        if seed is not None:
            crop_seed, flip_seed, rotate_seed, color_seed = tf.unstack(
                tf.random.experimental.stateless_split(seed, 4))
            if "rotate" in parts:
                image = _random_rotate(image, rotate_seed, _MAX_ROTATION_DEGREES)
            if "crop" in parts:
                image = tf.image.pad_to_bounding_box(image, pad, pad, size + 2 * pad,
                                                     size + 2 * pad)
                image = tf.image.stateless_random_crop(image, (size, size, 3), seed=crop_seed)
            if "flip" in parts:
                image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
            if "color" in parts:
                image = _random_color(image, color_seed)
        target = label if soft else tf.one_hot(label, num_classes)
        return tf.cast(image, tf.float32), target

    return finish


def _resize_uint8(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 images resized to `size` x `size` (bilinear, antialiased), rounded to uint8."""
    resized = tf.image.resize(images, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def training_batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    size: int,
    num_classes: int,
    batch_size: int,
    seed: int,
    augment: str = "none",
    first_epoch: int = 0,
    epochs: int = 1,
) -> tf.data.Dataset:
    """The training batches of epochs `first_epoch` .. `epochs` - 1, one after the other, for
    ``model.fit(..., steps_per_epoch=ceil(N / batch_size), initial_epoch=first_epoch)``.

    Epoch ``e``'s order (a stateless shuffle) and augmentation (per-example stateless seeds, as
    in `make_dataset`) are drawn from ``(seed, e)`` alone, so a run resumed at epoch ``e`` sees
    exactly the batches the uninterrupted run saw (`make_dataset` reshuffles with the
    iteration count of one dataset object: a new object starts again at epoch 0's order). Each
    epoch ends with its own partial batch. Images of another size are resized once up front
    when they fit in memory, otherwise as they are drawn.
    """
    parts = augmentation_parts(augment)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise invalid("labels", f"shape {labels.shape}", "class indices [N]")
    count = len(images)
    resize_late = False
    if tuple(images.shape[1:3]) == (size, size):
        source = tf.constant(images)
    elif count * size * size * 3 <= _CACHE_LIMIT_BYTES:
        resized = np.empty((count, size, size, images.shape[-1]), np.uint8)
        chunks = tf.data.Dataset.from_tensor_slices(images).batch(256).map(
            lambda batch: _resize_uint8(batch, size), num_parallel_calls=tf.data.AUTOTUNE)
        for start, chunk in zip(range(0, count, 256), chunks.prefetch(2)):
            resized[start:start + len(chunk)] = chunk.numpy()
        source = tf.constant(resized)
        del resized
    else:
        source, resize_late = tf.constant(images), True
    targets = tf.constant(labels)
    finish = _finisher(parts, size=size, num_classes=num_classes, soft=False)

    def example(index: tf.Tensor, seed: tf.Tensor | None = None):
        image = tf.gather(source, index)
        if resize_late:
            image = _resize_uint8(image, size)
        return finish(image, tf.gather(targets, index), seed)

    return epoch_stream(count, example, seed=seed, batch_size=batch_size,
                        first_epoch=first_epoch, epochs=epochs, seeded=bool(parts))


def _random_rotate(image: tf.Tensor, seed: tf.Tensor, max_degrees: float) -> tf.Tensor:
    """`image` (uint8 [H, W, C]) rotated by a seeded uniform angle in +/-`max_degrees` about its
    centre (bilinear, edges reflected, rounded back to uint8), as Keras' RandomRotation does."""
    angle = tf.random.stateless_uniform((), seed, -1.0, 1.0) * (max_degrees * math.pi / 180.0)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    transform = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])[tf.newaxis]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[tf.newaxis], transforms=transform,
        output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT")[0]
    return tf.cast(tf.clip_by_value(tf.round(rotated), 0, 255), tf.uint8)


def _random_color(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """`image` (uint8) with seeded random brightness (+/-`_MAX_BRIGHTNESS` of 255) and contrast
    (`_CONTRAST_RANGE`), clipped and rounded back to uint8 pixel values."""
    brightness_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    pixels = tf.cast(image, tf.float32)
    pixels = tf.image.stateless_random_brightness(pixels, _MAX_BRIGHTNESS * 255.0,
                                                  seed=brightness_seed)
    pixels = tf.image.stateless_random_contrast(pixels, *_CONTRAST_RANGE, seed=contrast_seed)
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def evaluate_classifier(
    model: keras.Model, dataset: ImageDataset, *, size: int, batch_size: int = 256
) -> tuple[float, dict[str, float | None]]:
    """Accuracy of `model` on `dataset`, overall and per class name (None: no test image)."""
    ds = make_dataset(dataset.images, dataset.labels, size=size,
                      num_classes=dataset.num_classes, batch_size=batch_size)
    logits = model.predict(ds.map(lambda x, y: x), verbose=0)
    predicted = np.argmax(logits, axis=-1)
    correct = predicted == dataset.labels
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(dataset.class_names):
        mask = dataset.labels == index
        per_class[name] = float(correct[mask].mean()) if mask.any() else None
    return float(correct.mean()) if len(correct) else math.nan, per_class


def _resolve_input_size(config: VictimConfig, train: ImageDataset) -> int:
    if config.input_size is not None:
        return config.input_size
    backbone = get_backbone(config.arch)
    if backbone.pretrained:
        return backbone.default_size
    height, width = train.image_shape[:2]
    if height != width:
        raise invalid("input_size", None,
                      f"a size for non-square images ({height}x{width}); pass --input-size")
    if height < backbone.min_size:
        raise invalid("input_size", None,
                      f"a size of at least {backbone.min_size} for {backbone.name} (the images "
                      f"are {height}x{width}); pass --input-size")
    return height


def split_holdout(dataset: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset,
                                                                              ImageDataset]:
    """(train, test): a seeded `fraction` of `dataset` held out as the test set.

    Used when a dataset has one split only (``../shared/data/mnist_test10k_uint8.npz`` holds the
    10,000 MNIST test digits: 8,000 train / 2,000 test with the default fraction 0.2).
    """
    return split_off(dataset, fraction, seed, "test_fraction", "test")


def load_splits(config: VictimConfig) -> tuple[ImageDataset, ImageDataset]:
    """Load the training (at most `limit` images) and test splits of `config.dataset`.

    Image backbones get RGB images; dense archs the dataset's own channels (MNIST: 1). When the
    two splits are the same and `test_fraction` > 0, a seeded fraction of it is held out as the
    test set (`split_holdout`) and `limit` applies to the rest.
    """
    channels = None if is_dense_arch(config.arch) else 3
    if config.train_split == config.test_split and config.test_fraction > 0:
        whole = load_dataset(config.dataset, config.train_split, channels=channels,
                             seed=config.seed, data_dir=config.data_dir)
        train, test = split_holdout(whole, config.test_fraction, config.seed)
        if config.limit is not None and config.limit < len(train):
            keep = np.random.default_rng(config.seed + 1).permutation(len(train))[:config.limit]
            train = train.subset(np.sort(keep))
        return train, test
    train = load_dataset(config.dataset, config.train_split, channels=channels,
                         limit=config.limit, seed=config.seed, data_dir=config.data_dir)
    test = load_dataset(config.dataset, config.test_split, channels=channels, seed=config.seed,
                        data_dir=config.data_dir)
    return train, test


def train_victim(
    config: VictimConfig,
    *,
    train: ImageDataset | None = None,
    test: ImageDataset | None = None,
    journal: Path | None = None,
    resume: TrainingState | None = None,
) -> TrainedVictim:
    """Train the victim described by `config`; `train`/`test` replace loading its dataset.

    With `journal` (a folder, `victim_export.training_state`), the training state is written
    there after every epoch; with `resume` (a state read from it and checked against `config`
    by `check_state`), training continues after the state's epoch exactly as the uninterrupted
    run would have (the data are checked against the state's fingerprint first). Under
    ``distribute`` the global batches are the single-device run's (each epoch's order drawn
    from ``(seed, epoch)``, split over the replicas), so a distributed run resumes too; in a
    multi-worker run every worker must pass the same `resume` (`agree_on_resume`).
    """
    if (train is None) != (test is None):
        raise UsageError("Pass both `train` and `test` datasets, or neither.")
    strategy = make_strategy(config.distribute)  # a multi-worker one before any TF operation
    check_global_batch(config.batch_size, strategy)
    agree_on_resume(strategy, resume, config)  # before any worker loads or builds anything
    if train is None or test is None:
        train, test = load_splits(config)
    if is_dense_arch(config.arch):
        return train_dense_victim(config, train, test, journal=journal, resume=resume)
    if train.image_shape[-1] != 3 or test.image_shape[-1] != 3:
        raise invalid("dataset", config.dataset, "RGB images (3 channels)")
    if train.class_names != test.class_names:
        raise invalid("test_split", config.test_split,
                      f"a split with the training classes ({train.num_classes} classes)")
    if train.num_classes < 2:
        raise invalid("dataset", config.dataset, "at least 2 classes")
    size = _resolve_input_size(config, train)
    keras.utils.set_random_seed(config.seed)
    fit_set, val_set = split_validation(train, config.val_split, config.seed)
    logger.info(
        "training %s on %d images (%d validation, %d test), %d classes, input %dx%d",
        config.arch, len(fit_set), 0 if val_set is None else len(val_set), len(test),
        train.num_classes, size, size,
    )
    def build() -> keras.Model:
        return build_classifier(config.arch, train.num_classes, input_size=size,
                                weights=config.weights, dropout=config.dropout,
                                **config.arch_kwargs)

    steps = math.ceil(len(fit_set) / config.batch_size)
    with scope(strategy):
        model = build()
        if strategy is not None:
            synchronize_batch_norm(model)
        model.compile(
            optimizer=optimizer_for(config, steps),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                      label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    val_ds = None
    if val_set is not None:
        val_ds = make_dataset(val_set.images, val_set.labels, size=size,
                              num_classes=train.num_classes, batch_size=config.batch_size)
    callbacks, early, plateau = epoch_callbacks(config, val_set is not None)

    def fit(first_epoch: int, callbacks: list[keras.callbacks.Callback]):
        # Each epoch's global batches a function of (seed, epoch), on one device or many:
        # resumable, and the same batches whatever the strategy.
        fit_ds = training_batches(fit_set.images, fit_set.labels, size=size,
                                  num_classes=train.num_classes, batch_size=config.batch_size,
                                  seed=config.seed, augment=config.augment,
                                  first_epoch=first_epoch, epochs=config.epochs)
        return model.fit(shard_by_data(fit_ds, strategy),
                         validation_data=shard_by_data(val_ds, strategy), epochs=config.epochs,
                         steps_per_epoch=steps, initial_epoch=first_epoch, callbacks=callbacks,
                         shuffle=False, verbose=keras_verbose())

    history, seconds = fit_resumably(
        model, fit, config=config, journal=journal, resume=resume,
        size=size, fit_set=fit_set, val_set=val_set, callbacks=callbacks, early=early,
        plateau=plateau)
    if strategy is not None:  # evaluate and export a plain single-device copy
        trained_weights = model.get_weights()
        model = build()
        model.set_weights(trained_weights)
    epochs_run = len(history.get("loss", ()))
    best_epoch = None if early is None or early.best_weights is None else early.best_epoch + 1
    accuracy, per_class = evaluate_classifier(model, test, size=size)
    logger.info("trained %d epochs in %.1fs (%.1fs/epoch); test accuracy %.4f",
                epochs_run, seconds, seconds / max(1, epochs_run), accuracy)
    return TrainedVictim(
        model=model,
        class_names=train.class_names,
        input_size=size,
        test_accuracy=accuracy,
        per_class_accuracy=per_class,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        training_seconds=seconds,
        history={key: [float(v) for v in values] for key, values in history.items()},
        train_examples=len(fit_set),
        val_examples=0 if val_set is None else len(val_set),
        test_examples=len(test),
    )


def preflight(config: VictimConfig) -> None:
    """Fail before training when the export could not be written (`UsageError`)."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise invalid("out", config.out, "a directory (or a path where one can be created)")
    model_dir = config.model_dir
    if model_dir.exists() and not model_dir.is_dir():
        raise invalid("name", config.model_name, f"a name that is not a file in {config.out!r}")
    if config.version is not None and (model_dir / str(config.version)).exists():
        raise invalid("version", config.version,
                      f"a version not yet in {str(model_dir)!r} (next free: "
                      f"{next_version(model_dir)})")
    read_card(model_dir)
    read_models_config(out / MODELS_CONFIG_NAME)
    # version folder, card.json and models.config: each place takes new files (a permission, a
    # read-only mount, a full disk or a path through a file fail here, not after training)
    check_writable(model_dir, "out")
    check_writable(out / MODELS_CONFIG_NAME, "out", kind="file")


def save_or_keep(config: VictimConfig, trained: TrainedVictim) -> Path:
    """`save_trained_victim`, and when that fails the trained model is never lost: it is
    exported the same way into a new folder of the temporary directory (or, failing that, saved
    as a ``.keras`` file there), and the `UsageError` says where to copy it from."""
    try:
        return save_trained_victim(config, trained)
    except Exception as err:
        kept = _keep_trained(config, trained)
        if kept is None or not isinstance(err, (OSError, UsageError)):
            if kept is not None:
                logger.error("export failed; the trained model is kept in %s", kept)
            raise
        reason = " ".join(str(err).split())
        if kept.suffix == ".keras":
            where = f"saved as {kept} (load it with keras.models.load_model)"
        else:
            where = (f"exported to {kept} instead, servable as it is: move {kept.parent} into "
                     f"{config.out} once that can be written")
        raise UsageError(
            f"Could not export the trained victim to {config.out} ({reason}). Nothing is lost "
            f"(test accuracy {trained.test_accuracy:.4f}): it was {where}."
        ) from err


def _keep_trained(config: VictimConfig, trained: TrainedVictim) -> Path | None:
    """Where the trained model went when its export failed, or None if it could not be kept."""
    for parent in (None, Path.cwd(), Path.home()):
        try:
            base = Path(tempfile.mkdtemp(prefix=f"victim_export-{config.model_name}-",
                                         dir=parent))
        except OSError:
            continue
        fallback = dataclasses.replace(config, out=str(base), container_base_path="")
        try:
            return save_trained_victim(fallback, trained)
        except Exception as err:  # the export itself failed: keep the weights at least
            logger.warning("exporting into %s failed too (%s); saving the Keras model", base, err)
        try:
            path = base / f"{config.model_name}.keras"
            trained.model.save(path)
            return path
        except Exception as err:  # try the next place
            logger.warning("saving the Keras model into %s failed (%s)", base, err)
    return None


def save_trained_victim(config: VictimConfig, trained: TrainedVictim) -> Path:
    """Export `trained` as ``<out>/<name>/<version>/``, its card entry and models.config."""
    card = {
        "dataset": config.dataset,
        "train_split": config.train_split,
        "test_split": config.test_split,
        "architecture": config.arch,
        "weights": config.weights,
        "test_accuracy": trained.test_accuracy,
        "per_class_accuracy": trained.per_class_accuracy,
        "train_examples": trained.train_examples,
        "val_examples": trained.val_examples,
        "test_examples": trained.test_examples,
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "training_seconds": round(trained.training_seconds, 2),
        "seed": config.seed,
        "history": trained.history,
        "config": config_to_dict(config),
    }
    size = trained.input_size
    model, shape = trained.model, (size, size, 3)
    if is_dense_arch(config.arch):
        shape = tuple(model.input_shape[1:])
        if config.input_dtype == "float64":
            model = cast_dense_classifier(model, "float64")
        card["input_scale"] = "pixels / 255, in [0, 1]"
    else:
        card["input_scale"] = "raw pixels 0..255"
    path = export_classifier(
        model, config.out, config.model_name, version=config.version,
        input_shape=shape, class_names=trained.class_names,
        export_logits=config.export_logits, card=card, input_dtype=config.input_dtype,
        flatten=config.flatten,
    )
    write_models_config(config.out, config.model_name,
                        container_base_path=config.container_base_path)
    return path


def run_victim_export(
    config: VictimConfig,
    *,
    train: ImageDataset | None = None,
    test: ImageDataset | None = None,
) -> tuple[Path | None, TrainedVictim]:
    """Check the output location, train the victim, export it; return (version dir, result).

    The same call resumes an interrupted one: its training state, journaled after every epoch
    in ``<out>/<name>/.training`` (`victim_export.training_state`), is continued when it was
    written under the same config (else `UsageError`, before anything is loaded), discarded
    first with ``fresh``, and removed after the export. In a multi-worker run only the chief
    exports; another worker returns (None, result). Only the chief journals; every worker
    reads the state from the same ``<out>`` (a folder they share, as for the export).
    """
    preflight(config)
    resume = resumable_state(config)
    if config.fresh:
        discard_state(config)
    chief = is_chief(make_strategy(config.distribute))
    trained = train_victim(config, train=train, test=test,
                           journal=state_dir(config) if chief else None, resume=resume)
    if not chief:
        logger.info("multi-worker: this worker trained; the chief exports the victim")
        return None, trained
    path = save_or_keep(config, trained)  # on failure the state stays: the same command exports
    discard_state(config)
    return path, trained


def resumable_state(config: VictimConfig) -> TrainingState | None:
    """The training state an interrupted run of `config` left (None: none, or ``--fresh``);
    `UsageError` when it was written under another config (`check_state`)."""
    if config.fresh:
        return None
    state = load_state(state_dir(config))
    if state is None:
        return None
    check_state(state, config)
    logger.info("resuming %s after epoch %d of %d from the training state in %s",
                config.model_name, state.epoch, config.epochs, state.path)
    return state
