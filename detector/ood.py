"""The OOD query detector of Atli et al. 2020 ("Extraction of Complex DNN Models: Real Threat or
Boogeyman?") in use: a binary classifier that tells the victim's own data distribution (benign,
class 0) from natural images outside the task (attack, class 1), as a Knockoff Nets adversary
queries them. `OODDetector.load` reads an export of ``python -m detector.train`` back for
in-process use (the serving gateway's monitor, ``detector.evaluate``): ``score`` (attack
probability), ``threshold`` (calibrated for a benign false-positive rate), ``predict``.

The rest of the detector lives by concept: `detector.metrics` (threshold calibration, ROC, the
accuracy table), `detector.config` (`DetectorConfig`), `detector.splits` (the seeded held-out
splits and JPEG re-encoding), `detector.training` (`train_detector`) and `detector.export` (the
exported version and its ``assets.extra/calibration.json``). Their public names are still
importable from here (`detector.training`'s on first use, since it needs TensorFlow).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.constraints import check_fields
from common.errors import invalid
from common.lazy import lazy_exports
from detector.export import (
    ATTACK_CLASS,
    fit_size,
    load_probabilities,
    read_calibration,
    resolve_version_dir,
)

__all__ = ["OODConfig", "OODDetector", "read_calibration", "resolve_version_dir"]

logger = logging.getLogger(__name__)

_SCORE_BATCH = 256

# Names that moved to their own modules, still importable from here (loaded on first use).
_MOVED = {
    **dict.fromkeys(("BENIGN_CLASS", "CALIBRATION_NAME", "CALIBRATION_RATES", "CLASS_NAMES",
                     "export_detector"), "detector.export"),
    **dict.fromkeys(("calibrate_threshold", "detection_metrics", "roc_auc", "roc_curve"),
                    "detector.metrics"),
    **dict.fromkeys(("DetectorConfig",), "detector.config"),
    **dict.fromkeys(("jpeg_reencode", "load_training_sets", "training_split"),
                    "detector.splits"),
    **dict.fromkeys(("DetectorResult", "build_detector_model", "train_detector"),
                    "detector.training"),
}
__getattr__, __dir__ = lazy_exports(__name__, _MOVED, globals(), [*__all__, *_MOVED])


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
        version_dir = resolve_version_dir(path)
        calibration = read_calibration(version_dir)
        probabilities, shape = load_probabilities(version_dir, argument="detector",
                                                  shown=str(path))
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

    def score(self, images: Any) -> np.ndarray:
        """Probability that each image is an attack query, float32 ``[N]``."""
        array = fit_size(_check_images(images), self.input_shape)
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


@dataclass(frozen=True)
class OODConfig:
    """The OOD detector watching a live stream (the gateway policy's ``detectors.ood`` section):
    which detector scores each query, at which threshold, and the per-client window its verdicts
    are aggregated over (`detector.aggregate.SlidingWindow`: flag a client once the share of
    flagged queries among its last `window` reaches `level`, after `min_queries`).

    `path`: the exported detector (`detectors/<name>/<version>`) loaded in process, or
    `upstream_model`: the name of the same SavedModel served by the upstream TF Serving.
    `threshold` None: the detector's calibrated one (`path` only: with `upstream_model` its
    ``calibration.json`` cannot be read, so the threshold must be given; a silent 0.5 would move
    the operating point far from calibration).
    """

    path: str | None = field(default=None, metadata={
        "help": "exported detector folder loaded in process", "rule": "nonempty"})
    upstream_model: str | None = field(default=None, metadata={
        "help": "name of the detector's SavedModel served by the upstream", "rule": "nonempty"})
    threshold: float | None = field(default=None, metadata={
        "help": "attack-probability threshold; default the calibrated one", "min": 0, "max": 1})
    window: int = field(default=256, metadata={
        "help": "per-client window of the last queries' verdicts", "min": 1})
    level: float = field(default=0.5, metadata={
        "help": "share of flagged queries in the window that flags the client", "gt": 0,
        "max": 1})
    min_queries: int = field(default=64, metadata={
        "help": "queries a client must have sent before it can be flagged", "min": 1})
    aggregate: str = field(default="level", metadata={
        "help": "level: flag at a share of `level`; binomial: flag when the flagged queries "
                "exceed what a benign client at false-positive rate `fpr` reaches with "
                "probability `alpha` (detector.aggregate.BinomialWindow; survives JPEG and "
                "camouflage, docs/defence.md)", "choices": ("level", "binomial")})
    fpr: float | None = field(default=None, metadata={
        "help": "binomial: the detector's benign per-query false-positive rate; default its "
                "calibrated target_fpr (`path` only)", "gt": 0, "lt": 1})
    alpha: float = field(default=1e-6, metadata={
        "help": "binomial: significance of each test", "gt": 0, "lt": 1})

    def __post_init__(self) -> None:
        if (self.path is None) == (self.upstream_model is None):
            raise invalid("path", self.path, "exactly one of `path` (a detector folder) and "
                          f"`upstream_model` (received upstream_model={self.upstream_model!r})")
        check_fields(self)
        if self.upstream_model is not None and self.threshold is None:
            raise invalid("threshold", None, "the detector's calibrated threshold (`threshold` "
                          "in its assets.extra/calibration.json) when `upstream_model` serves it")
        if self.min_queries > self.window:
            raise invalid("min_queries", self.min_queries,
                          f"an integer in [1, window={self.window}]")
        if self.aggregate == "binomial" and self.upstream_model is not None and self.fpr is None:
            raise invalid("fpr", None, "the detector's benign false-positive rate (`target_fpr` "
                          "in its calibration.json) when `upstream_model` serves it")
