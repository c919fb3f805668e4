"""Defences against model extraction, pure numpy/Keras (the gateway imports this, never the
other way round): Atli et al.'s OOD query detector (`train_detector`, `OODDetector`), per-client
aggregation of its verdicts (`SlidingWindow`), PRADA (Juuti et al. 2019, `Prada`) and output
policies (label only, top-k, rounding, Gaussian noise, Lee et al.'s reverse sigmoid)."""

from detector.aggregate import SlidingWindow
from detector.ood import (
    DetectorConfig,
    DetectorResult,
    OODDetector,
    calibrate_threshold,
    detection_metrics,
    roc_auc,
    roc_curve,
    train_detector,
)
from detector.policies import (
    GaussianNoise,
    Identity,
    LabelOnly,
    OutputPolicy,
    ReverseSigmoid,
    Rounding,
    TopK,
    parse_policy,
)
from detector.prada import Prada, PradaVerdict, pixel_features

__all__ = [
    "DetectorConfig",
    "DetectorResult",
    "GaussianNoise",
    "Identity",
    "LabelOnly",
    "OODDetector",
    "OutputPolicy",
    "Prada",
    "PradaVerdict",
    "ReverseSigmoid",
    "Rounding",
    "SlidingWindow",
    "TopK",
    "calibrate_threshold",
    "detection_metrics",
    "parse_policy",
    "pixel_features",
    "roc_auc",
    "roc_curve",
    "train_detector",
]
