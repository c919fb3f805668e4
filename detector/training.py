"""Training Atli et al.'s OOD query detector (`train_detector`, the API of
``python -m detector.train``): both sets are loaded at the victim's input size (the detector sees
exactly what the victim sees, e.g. 32x32 for CIFAR-10 or GTSRB; a `Resizing` layer inside the
model upsamples to the backbone's input size), a seeded, class-stratified fraction of each set is
held out (`detector.splits`), the network (`common.backbones.build_classifier`, e.g. a
pre-trained MobileNet) is trained with class-balanced loss weights, and the threshold on the
attack probability is calibrated on the held-out benign images for a target benign
false-positive rate (`detector.metrics`). Training resumes after a crash from its last finished
epoch (`keras.callbacks.BackupAndRestore` in a hidden work folder beside the output) and runs on
several devices or machines with ``distribute`` (`common.distribute`). The result is exported
like a victim with its calibration (`detector.export`) and wrapped as an `OODDetector`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.backbones import build_classifier, get_backbone
from common.cli import config_to_dict
from common.data import ImageDataset
from common.distribute import (
    check_global_batch,
    is_chief,
    make_strategy,
    scope,
    shard_by_data,
    synchronize_batch_norm,
    worker_suffix,
)
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic
from detector.config import DetectorConfig
from detector.evasion import augment
from detector.export import (
    ATTACK_CLASS,
    BENIGN_CLASS,
    CALIBRATION_RATES,
    CLASS_NAMES,
    check_new_version,
    export_detector,
)
from detector.metrics import calibrate_threshold, detection_metrics, roc_auc
from detector.ood import OODDetector
from detector.splits import jpeg_reencode, load_training_sets, training_split, with_images
from victim_export.train import make_dataset

__all__ = ["DetectorResult", "build_detector_model", "train_detector"]

logger = logging.getLogger(__name__)

_SCORE_BATCH = 256


@dataclass(frozen=True)
class DetectorResult:
    """What `train_detector` produced: the exported folder, the calibration, the live detector."""

    path: Path | None
    threshold: float
    calibration: dict[str, Any]
    detector: OODDetector
    model: Any
    history: dict[str, list[float]]
    training_seconds: float


def _resolve_sizes(config: DetectorConfig, benign: ImageDataset) -> tuple[int, int]:
    image_size = config.image_size
    if image_size is None:
        height, width = benign.image_shape[:2]
        if height != width:
            raise invalid("image_size", None, f"a size for non-square images ({height}x{width})")
        image_size = height
    backbone = get_backbone(config.backbone)
    input_size = config.input_size
    if input_size is None:
        input_size = 96 if backbone.pretrained else max(image_size, backbone.min_size)
    return int(image_size), int(input_size)



def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 2-D Gaussian ``[k, k]`` of `sigma` pixels, ``k = 2 ceil(2 sigma) + 1``."""
    radius = max(1, math.ceil(2 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


@keras.saving.register_keras_serializable(package="detector")
class GaussianSmoothing(keras.layers.Layer):
    """A fixed Gaussian blur per channel (reflected borders): the detector's input canonical
    form, so that JPEG blocks and pixel noise never reach the backbone."""

    def __init__(self, sigma: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sigma = float(sigma)
        self._kernel = gaussian_kernel(self.sigma)

    def call(self, images: Any) -> Any:
        radius = self._kernel.shape[0] // 2
        padded = keras.ops.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                               mode="reflect")
        channels = images.shape[-1]
        kernel = np.repeat(self._kernel[:, :, None, None], channels, axis=2)
        return keras.ops.depthwise_conv(padded, keras.ops.convert_to_tensor(kernel),
                                        strides=1, padding="valid")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sigma": self.sigma}


def build_detector_model(config: DetectorConfig, image_size: int, input_size: int) -> Any:
    """Raw float pixels [image_size, image_size, 3] -> (blur) -> upsample -> backbone ->
    2 logits."""
    classifier = build_classifier(config.backbone, 2, input_size=input_size,
                                  weights=config.weights, **config.arch_kwargs)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="images")
    x = inputs
    if config.smooth > 0:
        x = GaussianSmoothing(config.smooth, name="smooth")(x)
    if input_size != image_size:
        x = keras.layers.Resizing(input_size, input_size, interpolation="bilinear",
                                  name="to_backbone_size")(x)
    return keras.Model(inputs, classifier(x), name="ood_detector")


def _scores(model: Any, images: np.ndarray, batch_size: int = _SCORE_BATCH) -> np.ndarray:
    if len(images) == 0:
        return np.zeros((0,), np.float32)
    logits = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.softmax(logits, axis=-1))[:, ATTACK_CLASS].astype(np.float32)


def _prepare_work_dir(config: DetectorConfig, suffix: str = "") -> Path:
    """The checkpoint folder; a leftover from another config is cleared (never resumed from).
    A multi-worker task other than the chief keeps its own, `suffix`ed (`worker_suffix`)."""
    work = config.work_path.with_name(config.work_path.name + suffix)
    saved = work / "config.json"
    current = config_to_dict(config)
    if work.exists():
        try:
            previous = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != current:
            logger.warning("work folder %s belongs to another run: starting afresh", work)
            shutil.rmtree(work)
        else:
            logger.info("resuming from the checkpoints in %s", work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, current, sort_keys=True)
    return work


class _EpochLog:
    """Build a Keras callback logging each finished epoch (library code never prints)."""

    @staticmethod
    def make(epochs: int) -> Any:
        class EpochLog(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
                text = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
                logger.info("detector epoch %d/%d %s", epoch + 1, epochs, text)

        return EpochLog()



def train_detector(
    config: DetectorConfig,
    *,
    benign: ImageDataset | None = None,
    attack: ImageDataset | None = None,
    export: bool = True,
    callbacks: Sequence[Any] = (),
) -> DetectorResult:
    """Train, calibrate and (with `export`) export the detector of `config`.

    `benign`/`attack` replace loading the config's datasets (images at the victim's size);
    `callbacks` are extra Keras callbacks (run after the checkpointing one).
    Raises `UsageError` before any training or writing when the output exists or data is bad.
    """
    if export:
        check_new_version("out", config.out)
    strategy = make_strategy(config.distribute)  # a multi-worker one before any TF operation
    check_global_batch(config.batch_size, strategy)
    if (benign is None) != (attack is None):
        raise UsageError("Pass both `benign` and `attack` datasets, or neither.")
    if benign is None or attack is None:
        benign, attack = load_training_sets(config)
    image_size, input_size = _resolve_sizes(config, benign)
    for name, data in (("benign", benign), ("attack", attack)):
        if data.image_shape != (image_size, image_size, 3):
            raise invalid(name, f"images of shape {data.image_shape}",
                          f"RGB images of {image_size}x{image_size} (the victim's input size)")
        if len(data) < 4:
            raise invalid(name, f"{len(data)} images", "at least 4 images")

    benign_fit, benign_held = training_split(benign, "benign", config.holdout, config.seed)
    attack_fit, attack_held = training_split(attack, "attack", config.holdout, config.seed,
                                             config.jpeg_augment)
    if config.jpeg_augment > 0:
        benign_fit = with_images(benign_fit, jpeg_reencode(
            benign_fit.images, config.jpeg_augment, seed=config.seed + 2))
        attack_fit = with_images(attack_fit, jpeg_reencode(
            attack_fit.images, config.jpeg_augment, seed=config.seed + 3))
    if config.augment > 0:
        benign_fit = with_images(benign_fit, augment(benign_fit.images, seed=config.seed + 5,
                                                     share=config.augment,
                                                     then_jpeg=config.augment_jpeg))
        attack_fit = with_images(attack_fit, augment(attack_fit.images, seed=config.seed + 6,
                                                     share=config.augment,
                                                     then_jpeg=config.augment_jpeg))
    images = np.concatenate([benign_fit.images, attack_fit.images])
    labels = np.r_[np.full(len(benign_fit), BENIGN_CLASS), np.full(len(attack_fit),
                                                                    ATTACK_CLASS)]
    counts = np.bincount(labels, minlength=2)
    class_weight = {c: float(len(labels) / (2 * counts[c])) for c in range(2)}
    logger.info("detector: %d benign + %d attack training images (class weights %.3g/%.3g), "
                "%d + %d held out, %dx%d images upsampled to %d for %s",
                counts[0], counts[1], class_weight[0], class_weight[1], len(benign_held),
                len(attack_held), image_size, image_size, input_size, config.backbone)

    keras.utils.set_random_seed(config.seed)
    steps = math.ceil(len(labels) / config.batch_size)
    with scope(strategy):
        model = build_detector_model(config, image_size, input_size)
        if strategy is not None:
            synchronize_batch_norm(model)
        model.compile(
            optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                config.learning_rate, decay_steps=max(1, config.epochs * steps))),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    fit_ds = make_dataset(images, labels, size=image_size, num_classes=2,
                          batch_size=config.batch_size, shuffle_seed=config.seed)
    all_callbacks = [_EpochLog.make(config.epochs)]
    work = None
    if export:
        work = _prepare_work_dir(config, worker_suffix(strategy))
        all_callbacks.append(keras.callbacks.BackupAndRestore(str(work / "backup")))
    all_callbacks.extend(callbacks)
    started = time.monotonic()
    history = model.fit(shard_by_data(fit_ds, strategy), epochs=config.epochs,
                        class_weight=class_weight, callbacks=all_callbacks, shuffle=False,
                        verbose=0)
    seconds = time.monotonic() - started
    if strategy is not None:  # score, calibrate and export a plain single-device copy
        trained_weights = model.get_weights()
        model = build_detector_model(config, image_size, input_size)
        model.set_weights(trained_weights)

    benign_scores = _scores(model, benign_held.images)
    attack_scores = _scores(model, attack_held.images)
    threshold = calibrate_threshold(benign_scores, config.target_fpr)
    rates = sorted({*CALIBRATION_RATES, float(config.target_fpr)})
    thresholds = {f"{rate:g}": calibrate_threshold(benign_scores, rate) for rate in rates}
    calibration: dict[str, Any] = {
        "threshold": threshold,
        "target_fpr": float(config.target_fpr),
        "benign_class": BENIGN_CLASS,
        "attack_class": ATTACK_CLASS,
        "class_names": list(CLASS_NAMES),
        "input_shape": [image_size, image_size, 3],
        "backbone": config.backbone,
        "backbone_input_size": input_size,
        "benign": f"{config.benign}:{config.benign_split}",
        "attack": f"{config.attack}:{config.attack_split}",
        "exclude_classes": config.exclude_classes,
        "train_examples": {"benign": int(counts[0]), "attack": int(counts[1])},
        "heldout_examples": {"benign": len(benign_held), "attack": len(attack_held)},
        "thresholds": thresholds,
        "heldout_at_threshold": detection_metrics(benign_scores, attack_scores, threshold),
        "heldout_by_target_fpr": {rate: detection_metrics(benign_scores, attack_scores, t)
                                  for rate, t in thresholds.items()},
        "heldout_at_0.5": detection_metrics(benign_scores, attack_scores, 0.5),
        "heldout_roc_auc": roc_auc(benign_scores, attack_scores),
        "training_seconds": round(seconds, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config_to_dict(config),
    }
    held = calibration["heldout_at_threshold"]
    logger.info("calibrated threshold %.4g for benign FPR %.3g: held-out benign accuracy %.4f, "
                "anomalous accuracy %.4f, ROC AUC %.4f", threshold, config.target_fpr,
                held["benign_accuracy"], held["anomalous_accuracy"],
                calibration["heldout_roc_auc"])
    detector = OODDetector.from_model(model, threshold=threshold, calibration=calibration)
    path = None
    if export and not is_chief(strategy):
        logger.info("multi-worker: this worker trained; the chief exports the detector")
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    elif export:
        path = export_detector(model, config.out, calibration)
        detector.path = path
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return DetectorResult(
        path=path, threshold=threshold, calibration=calibration, detector=detector, model=model,
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        training_seconds=seconds,
    )
