"""Defences against model extraction, pure numpy/Keras (the gateway imports this, never the
other way round): Atli et al.'s OOD query detector (`train_detector`, `OODDetector`), per-client
aggregation of its verdicts (`SlidingWindow`), PRADA (Juuti et al. 2019, `Prada`) and output
policies (label only, top-k, rounding, Gaussian noise, Lee et al.'s reverse sigmoid), Kariyappa &
Qureshi's Adaptive Misinformation (`AdaptiveMisinformation`), DAWN answer watermarks
(`Watermarker`, verified by ``python -m detector.verify``) and cheap evasions of the detector
(`detector.evasion`)."""

from detector.aggregate import SlidingWindow
from detector.misinformation import AdaptiveMisinformation, reverse_distribution
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
from detector.watermark import Watermarker, WatermarkRecord, load_watermarks, save_watermarks

__all__ = [
    "AdaptiveMisinformation",
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
    "WatermarkRecord",
    "Watermarker",
    "calibrate_threshold",
    "detection_metrics",
    "load_watermarks",
    "parse_policy",
    "pixel_features",
    "reverse_distribution",
    "roc_auc",
    "roc_curve",
    "save_watermarks",
    "train_detector",
]
