"""The OOD query detector of Atli et al. 2020 ("Extraction of Complex DNN Models: Real Threat or
Boogeyman?"): a binary classifier that tells the victim's own data distribution (benign, class 0)
from natural images outside the task (attack, class 1), as a Knockoff Nets adversary queries them.

`train_detector` trains it from a `DetectorConfig`: both sets are loaded through
`common.data.load_dataset` at the victim's input size (the detector sees exactly what the victim
sees, e.g. 32x32 for CIFAR-10 or GTSRB; a `Resizing` layer inside the model upsamples to the
backbone's input size), a seeded, class-stratified fraction of each set is held out, the network
(`common.backbones.build_classifier`, e.g. a pre-trained MobileNet) is trained with class-balanced
loss weights, and the threshold on the attack probability is calibrated on the held-out benign
images for a target benign false-positive rate. Training resumes after a crash from its last
finished epoch (`keras.callbacks.BackupAndRestore` in a hidden work folder beside the output).
The result is exported like a victim (`victim_export.export_classifier`: a SavedModel with
``serving_default``: uint8 ``images`` [batch, H, W, 3] -> float32 ``probabilities`` [batch, 2],
column 1 = attack), so TF Serving can serve it as a second model, with the calibration in
``<version>/assets.extra/calibration.json``. `OODDetector.load` reads it back for in-process use
(the serving gateway): ``score`` (attack probability), ``threshold``, ``predict``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import config_to_dict
from common.data import ImageDataset, load_dataset
from common.distribute import (
    check_distribute,
    check_global_batch,
    distribute_field,
    is_chief,
    make_strategy,
    scope,
    shard_by_data,
    synchronize_batch_norm,
    worker_suffix,
)
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic

__all__ = [
    "ATTACK_CLASS",
    "BENIGN_CLASS",
    "CALIBRATION_NAME",
    "DetectorConfig",
    "DetectorResult",
    "OODDetector",
    "calibrate_threshold",
    "detection_metrics",
    "training_split",
    "roc_auc",
    "roc_curve",
    "train_detector",
]

logger = logging.getLogger(__name__)

BENIGN_CLASS = 0
ATTACK_CLASS = 1
CLASS_NAMES = ("benign", "attack")
CALIBRATION_NAME = "assets.extra/calibration.json"
_SCORE_BATCH = 256
# Benign false-positive rates whose thresholds are also recorded in the calibration (the
# gateway's policy may pick another than the default without retraining).
CALIBRATION_RATES = (0.001, 0.01, 0.05)


# --------------------------------------------------------------------------------------------
# Metrics: threshold calibration, ROC.


def calibrate_threshold(benign_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold t with ``mean(benign_scores >= t) <= target_fpr``.

    At most ``floor(target_fpr * n)`` benign scores reach t: t sits just above the
    ``(k+1)``-th highest benign score (``np.nextafter``), so ties never push the rate above the
    target. With no benign score the threshold is 0.5.
    """
    scores = np.sort(np.asarray(benign_scores, dtype=np.float64).ravel())[::-1]
    if not 0.0 <= float(target_fpr) < 1.0:
        raise invalid("target_fpr", target_fpr, "a rate in [0, 1)")
    if scores.size == 0:
        return 0.5
    allowed = int(math.floor(float(target_fpr) * scores.size + 1e-9))
    threshold = float(np.nextafter(scores[allowed], np.inf))
    if threshold > 1.0:
        logger.warning("benign calibration scores saturate at 1.0: the threshold (%r) flags "
                       "nothing", threshold)
    return threshold


def roc_curve(benign_scores: np.ndarray, attack_scores: np.ndarray) -> dict[str, list[float]]:
    """ROC points (attack = positive): false-positive rate, true-positive rate, thresholds."""
    benign = np.asarray(benign_scores, dtype=np.float64).ravel()
    attack = np.asarray(attack_scores, dtype=np.float64).ravel()
    scores = np.concatenate([benign, attack])
    positive = np.concatenate([np.zeros(benign.size, bool), np.ones(attack.size, bool)])
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    # The last position of each run of equal scores: one ROC point per distinct threshold.
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1].astype(int) if scores.size \
        else np.zeros(0, int)
    tps = np.cumsum(positive)[last]
    fps = np.cumsum(~positive)[last]
    tpr = np.r_[0.0, tps / max(1, attack.size)]
    fpr = np.r_[0.0, fps / max(1, benign.size)]
    # The first point (nothing flagged) gets a threshold above every score (JSON has no inf).
    thresholds = np.r_[(scores[0] + 1.0) if scores.size else 1.0, scores[last]]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def roc_auc(benign_scores: np.ndarray, attack_scores: np.ndarray) -> float:
    """Area under the ROC curve: P(attack score > benign score), ties counting one half."""
    from scipy.stats import rankdata

    benign = np.asarray(benign_scores, dtype=np.float64).ravel()
    attack = np.asarray(attack_scores, dtype=np.float64).ravel()
    if benign.size == 0 or attack.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([benign, attack]))
    attack_rank_sum = ranks[benign.size:].sum()
    return float((attack_rank_sum - attack.size * (attack.size + 1) / 2)
                 / (attack.size * benign.size))


def detection_metrics(
    benign_scores: np.ndarray, attack_scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """Atli et al.'s table at `threshold`: benign accuracy (share of benign images below it),
    anomalous accuracy (share of attack images at or above it), and the balanced accuracy."""
    benign = np.asarray(benign_scores, dtype=np.float64).ravel()
    attack = np.asarray(attack_scores, dtype=np.float64).ravel()
    benign_acc = float(np.mean(benign < threshold)) if benign.size else math.nan
    attack_acc = float(np.mean(attack >= threshold)) if attack.size else math.nan
    return {
        "threshold": float(threshold),
        "benign_accuracy": benign_acc,
        "anomalous_accuracy": attack_acc,
        "balanced_accuracy": (benign_acc + attack_acc) / 2,
        "benign_fpr": 1.0 - benign_acc,
    }


# --------------------------------------------------------------------------------------------
# The detector in use.


def _check_images(images: Any) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise invalid("images", f"array of shape {array.shape}", "images [N, H, W, 3] (or 1 "
                      "channel), uint8 pixels 0..255")
    if array.dtype != np.uint8:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise invalid("images", f"{array.dtype} array", "uint8 pixels 0..255")
        array = np.clip(np.round(array.astype(np.float32)), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


class OODDetector:
    """A trained OOD query detector: attack probability per image, and its calibrated threshold.

    Build it with `OODDetector.load(path)` (an exported version folder, or the model folder
    holding integer versions: the highest is taken), or from an in-memory Keras model with
    `OODDetector.from_model`. Images of another size than `input_shape` are resized (bilinear,
    antialiased, rounded to uint8) as a client adapting to the victim's signature would.
    """

    def __init__(
        self,
        probabilities: Callable[[np.ndarray], np.ndarray],
        *,
        threshold: float,
        input_shape: tuple[int, int, int],
        calibration: Mapping[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise invalid("threshold", threshold, "a finite number")
        self._probabilities = probabilities
        self.threshold = threshold
        self.input_shape = tuple(int(v) for v in input_shape)
        self.calibration = dict(calibration or {})
        self.path = path

    def __repr__(self) -> str:
        return (f"OODDetector(path={str(self.path) if self.path else None!r}, "
                f"input_shape={self.input_shape}, threshold={self.threshold:.4g})")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threshold: float | None = None) -> OODDetector:
        """Load an exported detector; `threshold` overrides the calibrated one."""
        import tensorflow as tf

        version_dir = resolve_version_dir(path)
        calibration = read_calibration(version_dir)
        try:
            loaded = tf.saved_model.load(str(version_dir))
            signature = loaded.signatures["serving_default"]
        except (OSError, KeyError, ValueError) as err:
            raise invalid("detector", str(path),
                          f"a SavedModel with a serving_default signature ({err})") from err
        spec = signature.structured_input_signature[1].get("images")
        if spec is None or spec.shape.rank != 4:
            raise invalid("detector", str(path), "a signature with an `images` [batch, H, W, 3] "
                          "input")
        shape = tuple(int(v) for v in spec.shape[1:])

        def probabilities(images: np.ndarray) -> np.ndarray:
            out = signature(images=tf.constant(images, dtype=tf.uint8))
            return np.asarray(out["probabilities"], dtype=np.float32)

        probabilities.keepalive = loaded  # type: ignore[attr-defined]
        chosen = calibration["threshold"] if threshold is None else threshold
        logger.info("loaded OOD detector %s (input %s, threshold %.4g)", version_dir, shape,
                    float(chosen))
        return cls(probabilities, threshold=chosen, input_shape=shape,
                   calibration=calibration, path=version_dir)

    @classmethod
    def from_model(
        cls, model: Any, *, threshold: float, calibration: Mapping[str, Any] | None = None
    ) -> OODDetector:
        """Wrap an in-memory Keras detector (raw float pixels in, 2 logits out)."""
        import tensorflow as tf

        shape = tuple(int(v) for v in model.input_shape[1:])

        @tf.function(reduce_retracing=True)
        def forward(images: tf.Tensor) -> tf.Tensor:
            return tf.nn.softmax(model(tf.cast(images, tf.float32), training=False), axis=-1)

        def probabilities(images: np.ndarray) -> np.ndarray:
            return np.asarray(forward(tf.constant(images, dtype=tf.uint8)), dtype=np.float32)

        return cls(probabilities, threshold=threshold, input_shape=shape,
                   calibration=calibration)

    def _fit_size(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] == self.input_shape[:2]:
            return images
        import tensorflow as tf

        resized = tf.image.resize(images, self.input_shape[:2], antialias=True)
        return np.asarray(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8))

    def score(self, images: Any) -> np.ndarray:
        """Probability that each image is an attack query, float32 ``[N]``."""
        array = self._fit_size(_check_images(images))
        if len(array) == 0:
            return np.zeros((0,), np.float32)
        parts = [self._probabilities(array[start:start + _SCORE_BATCH])[:, ATTACK_CLASS]
                 for start in range(0, len(array), _SCORE_BATCH)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def predict(self, images: Any, threshold: float | None = None) -> np.ndarray:
        """Whether each image is flagged (``score >= threshold``), bool ``[N]``."""
        limit = self.threshold if threshold is None else float(threshold)
        # In float64: NumPy 2 would round the threshold (just above a float32 score) to float32.
        return self.score(images).astype(np.float64) >= limit


def resolve_version_dir(path: str | os.PathLike[str]) -> Path:
    """`path` itself when it holds ``saved_model.pb``, else its highest integer version."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name) for p in path.iterdir() if p.name.isdigit()
                       and (p / "saved_model.pb").is_file())) if path.is_dir() else []
    if not versions:
        raise invalid("detector", str(path), "an exported detector version folder (with "
                      "saved_model.pb) or a model folder holding integer versions")
    return path / str(versions[-1])


def read_calibration(version_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The calibration of an exported detector (``assets.extra/calibration.json``)."""
    path = Path(version_dir) / CALIBRATION_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise invalid("detector", str(version_dir), f"a detector export with {CALIBRATION_NAME} "
                      "(written by python -m detector.train)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise invalid("detector", str(version_dir), f"a readable {CALIBRATION_NAME} ({err})") \
            from err
    if not isinstance(data, dict) or not isinstance(data.get("threshold"), (int, float)):
        raise invalid("detector", str(version_dir), f"a {CALIBRATION_NAME} with a numeric "
                      "`threshold`")
    return data


# --------------------------------------------------------------------------------------------
# Training.


def _check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(name, value, f"an integer of at least {low}" + (" or none" if optional
                                                                       else ""))


def _check_rate(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise invalid(name, value, f"a number in [{low}, {high})")


def _check_text(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, "a non-empty string")


@dataclass(frozen=True)
class DetectorConfig:
    """Train Atli et al.'s OOD query detector (benign = the victim's data, attack = natural
    images outside the task), calibrate its threshold and export it like a victim."""

    benign: str = field(metadata={
        "help": "dataset spec of the victim's training distribution (benign queries)",
        "metavar": "SPEC"})
    attack: str = field(metadata={
        "help": "dataset spec of natural images outside the task (the attacker's transfer set)",
        "metavar": "SPEC"})
    out: str = field(metadata={
        "help": "export folder <base>/<name>/<version>, e.g. detectors/cifar10_ood/1 (must not "
                "exist yet)", "metavar": "DIR"})
    benign_split: str = field(default="train", metadata={"help": "split(s) of --benign"})
    attack_split: str = field(default="train", metadata={
        "help": "split(s) of --attack, e.g. train (keep val for python -m detector.evaluate)"})
    exclude_classes: str | None = field(default=None, metadata={
        "help": "file of --attack class names to drop (classes that overlap the victim's task)",
        "metavar": "FILE"})
    benign_limit: int | None = field(default=None, metadata={
        "help": "use at most this many benign images (seeded, class-stratified)", "metavar": "N"})
    attack_limit: int | None = field(default=None, metadata={
        "help": "use at most this many attack images (seeded, class-stratified)", "metavar": "N"})
    image_size: int | None = field(default=None, metadata={
        "help": "the victim's input side: every image is resized to it first (the detector sees "
                "what the victim sees); default the benign images' size", "metavar": "PX"})
    backbone: str = field(default="cnn", metadata={
        "help": "backbone: cnn, resnet34 or a Keras Applications name (MobileNet, ...)"})
    arch_args: tuple[str, ...] = field(default=(), metadata={
        "help": "backbone constructor arguments KEY=VALUE, e.g. alpha=0.25 for MobileNet",
        "metavar": "KEY=VALUE"})
    weights: str = field(default="none", metadata={
        "help": "backbone weights: none, imagenet (needs internet) or a weights file",
        "metavar": "none|imagenet|PATH"})
    input_size: int | None = field(default=None, metadata={
        "help": "backbone input side (images are upsampled to it inside the model); default "
                "--image-size for cnn/resnet34, 96 for pre-trained backbones", "metavar": "PX"})
    epochs: int = field(default=5, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate (cosine "
                                                                 "decay)"})
    holdout: float = field(default=0.15, metadata={
        "help": "fraction of each set held out: benign for the threshold, attack for the "
                "reported validation accuracy"})
    target_fpr: float = field(default=0.01, metadata={
        "help": "benign false-positive rate the threshold is calibrated for (held-out benign "
                "images); the thresholds for 0.001, 0.01 and 0.05 are recorded as well"})
    jpeg_augment: float = field(default=0.5, metadata={
        "help": "share of the training images (both sets, and the held-out attack images) "
                "re-encoded as JPEG at a random quality in [50, 95], so the detector cannot tell "
                "the sets apart by their codec (0: off)"})
    seed: int = field(default=0, metadata={"help": "random seed (subsets, split, shuffling, "
                                                   "init)"})
    work_dir: str | None = field(default=None, metadata={
        "help": "checkpoint folder to resume from after a crash; default <out>/../.train-<version>",
        "metavar": "DIR"})
    distribute: str = distribute_field()

    def __post_init__(self) -> None:
        from common.backbones import get_backbone, parse_arch_args, resolve_weights

        for name in ("benign", "attack", "out", "benign_split", "attack_split"):
            _check_text(name, getattr(self, name))
        _check_text("exclude_classes", self.exclude_classes, optional=True)
        if self.exclude_classes is not None and not Path(self.exclude_classes).is_file():
            raise invalid("exclude_classes", self.exclude_classes, "an existing file with one "
                          "class name per line")
        _check_int("benign_limit", self.benign_limit, 4, optional=True)
        _check_int("attack_limit", self.attack_limit, 4, optional=True)
        backbone = get_backbone(self.backbone)
        object.__setattr__(self, "backbone", backbone.name)
        if not isinstance(self.arch_args, tuple):
            raise invalid("arch_args", self.arch_args, "a tuple of KEY=VALUE strings")
        parse_arch_args(self.arch_args)
        if not isinstance(self.weights, str):
            raise invalid("weights", self.weights, "'none', 'imagenet' or a weights file")
        resolve_weights(self.weights, backbone=backbone)
        _check_int("image_size", self.image_size, 8, optional=True)
        _check_int("input_size", self.input_size, backbone.min_size, optional=True)
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate,
                                                                  (int, float)) \
                or not 0 < self.learning_rate < math.inf:
            raise invalid("learning_rate", self.learning_rate, "a positive number")
        _check_rate("holdout", self.holdout, 0.01, 0.9)
        _check_rate("target_fpr", self.target_fpr, 0.0, 1.0)
        if isinstance(self.jpeg_augment, bool) or not isinstance(self.jpeg_augment,
                                                                 (int, float)) \
                or not 0.0 <= self.jpeg_augment <= 1.0:
            raise invalid("jpeg_augment", self.jpeg_augment, "a share in [0, 1]")
        _check_int("seed", self.seed, 0)
        _check_text("work_dir", self.work_dir, optional=True)
        check_distribute(self.distribute)
        out = Path(self.out)
        if not out.name.isdigit() or int(out.name) < 1:
            raise invalid("out", self.out, "a version folder <base>/<name>/<positive integer>, "
                          "e.g. detectors/cifar10_ood/1")
        if not out.parent.name or out.parent.name in (".", ".."):
            raise invalid("out", self.out, "a version folder <base>/<name>/<version>")

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        from common.backbones import parse_arch_args

        return parse_arch_args(self.arch_args)

    @property
    def work_path(self) -> Path:
        out = Path(self.out)
        return Path(self.work_dir) if self.work_dir else out.parent / f".train-{out.name}"


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


def _holdout_split(dataset: ImageDataset, fraction: float, seed: int
                   ) -> tuple[ImageDataset, ImageDataset]:
    """Per-class seeded split: (fit, held out), at least one of each where possible."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(dataset.labels):
        members = np.flatnonzero(dataset.labels == label)
        count = int(round(len(members) * fraction))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        held.append(rng.permutation(members)[:count])
    mask = np.zeros(len(dataset), bool)
    if held:
        mask[np.concatenate(held)] = True
    return dataset.subset(~mask), dataset.subset(mask)


def jpeg_reencode(images: np.ndarray, share: float, *, seed: int,
                  qualities: tuple[int, int] = (50, 95)) -> np.ndarray:
    """A copy of `images` where a seeded random `share` went through JPEG (Pillow) at a random
    quality in `qualities`: the codec is a free choice of the attacker and a property of how the
    victim's data was stored, never a signal the detector may learn (a CIFAR-10 copy stored as
    JPEG against downsampled Tiny-ImageNet photos is separable by its 8x8 block artefacts alone).
    """
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(len(images)) < share)
    quality = rng.integers(qualities[0], qualities[1] + 1, len(chosen))
    out = np.array(images, copy=True)
    for index, q in zip(chosen, quality):
        buffer = io.BytesIO()
        Image.fromarray(out[index]).save(buffer, format="JPEG", quality=int(q))
        out[index] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def _with_images(dataset: ImageDataset, images: np.ndarray) -> ImageDataset:
    return ImageDataset(images, dataset.labels, dataset.class_names, dataset.source,
                        dataset.class_descriptions)


def _resolve_sizes(config: DetectorConfig, benign: ImageDataset) -> tuple[int, int]:
    image_size = config.image_size
    if image_size is None:
        height, width = benign.image_shape[:2]
        if height != width:
            raise invalid("image_size", None, f"a size for non-square images ({height}x{width})")
        image_size = height
    from common.backbones import get_backbone

    backbone = get_backbone(config.backbone)
    input_size = config.input_size
    if input_size is None:
        input_size = 96 if backbone.pretrained else max(image_size, backbone.min_size)
    return int(image_size), int(input_size)


def load_training_sets(config: DetectorConfig) -> tuple[ImageDataset, ImageDataset]:
    """The benign and attack sets of `config` as RGB at the victim's input size."""
    size = config.image_size
    benign = load_dataset(config.benign, config.benign_split, image_size=size, channels=3,
                          limit=config.benign_limit, seed=config.seed)
    if size is None:
        size = benign.image_shape[0]
    attack = load_dataset(config.attack, config.attack_split, image_size=size, channels=3,
                          exclude_classes=config.exclude_classes, limit=config.attack_limit,
                          seed=config.seed)
    return benign, attack


def build_detector_model(config: DetectorConfig, image_size: int, input_size: int) -> Any:
    """Raw float pixels [image_size, image_size, 3] -> upsample -> backbone -> 2 logits."""
    import keras

    from common.backbones import build_classifier

    classifier = build_classifier(config.backbone, 2, input_size=input_size,
                                  weights=config.weights, **config.arch_kwargs)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="images")
    x = inputs
    if input_size != image_size:
        x = keras.layers.Resizing(input_size, input_size, interpolation="bilinear",
                                  name="to_backbone_size")(x)
    return keras.Model(inputs, classifier(x), name="ood_detector")


def _scores(model: Any, images: np.ndarray, batch_size: int = _SCORE_BATCH) -> np.ndarray:
    import keras

    if len(images) == 0:
        return np.zeros((0,), np.float32)
    logits = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.softmax(logits, axis=-1))[:, ATTACK_CLASS].astype(np.float32)


def _preflight(config: DetectorConfig) -> None:
    out = Path(config.out)
    if out.exists():
        raise invalid("out", config.out, "a version folder that does not exist yet (versions are "
                      "never overwritten)")
    for parent in (out.parent, out.parent.parent):
        if parent.exists() and not parent.is_dir():
            raise invalid("out", config.out, f"a path under directories ({parent} is a file)")


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
        import keras

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
                text = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
                logger.info("detector epoch %d/%d %s", epoch + 1, epochs, text)

        return EpochLog()


def training_split(data: ImageDataset, role: str, holdout: float, seed: int,
                   jpeg_augment: float = 0.0) -> tuple[ImageDataset, ImageDataset]:
    """The seeded (fit, held-out) split `train_detector` makes of its `role` ("benign" or
    "attack") set; the held-out attack images are JPEG re-encoded as training's are, so the
    calibration (`detector.calibrate` too) sees exactly what training scored."""
    fit, held = _holdout_split(data, holdout, seed if role == "benign" else seed + 1)
    if role == "attack" and jpeg_augment > 0:
        held = _with_images(held, jpeg_reencode(held.images, jpeg_augment, seed=seed + 4))
    return fit, held

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
    import keras

    from victim_export.train import make_dataset

    if export:
        _preflight(config)
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
        benign_fit = _with_images(benign_fit, jpeg_reencode(
            benign_fit.images, config.jpeg_augment, seed=config.seed + 2))
        attack_fit = _with_images(attack_fit, jpeg_reencode(
            attack_fit.images, config.jpeg_augment, seed=config.seed + 3))
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


def export_detector(model: Any, out: str | os.PathLike[str], calibration: Mapping[str, Any]
                    ) -> Path:
    """Export `model` to the version folder `out` (victim layout) with its calibration."""
    from victim_export.export import export_classifier

    out = Path(out)
    card = {key: calibration[key] for key in ("threshold", "target_fpr", "benign", "attack",
                                               "heldout_at_threshold", "heldout_roc_auc")
            if key in calibration}
    card["kind"] = "ood_query_detector"
    path = export_classifier(model, out.parent.parent, out.parent.name, version=int(out.name),
                             class_names=CLASS_NAMES, card=card)
    target = path / CALIBRATION_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, dict(calibration))
    return path
