"""Defences against model extraction, pure numpy/Keras (the gateway imports this, never the
other way round): Atli et al.'s OOD query detector (`train_detector`, `OODDetector`), per-client
aggregation of its verdicts (`SlidingWindow`), PRADA (Juuti et al. 2019, `Prada`) and output
policies (label only, top-k, rounding, Gaussian noise, Lee et al.'s reverse sigmoid), Kariyappa &
Qureshi's Adaptive Misinformation (`AdaptiveMisinformation`), DAWN answer watermarks
(`Watermarker`, verified by ``python -m detector.verify``) and cheap evasions of the detector
(`detector.evasion`)."""

from __future__ import annotations

from common.lazy import lazy_exports

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

# Loaded on first use (PEP 562): ``python -m detector.<cli> --help`` imports this package first,
# and a package that imports its CLI modules makes runpy warn that the module was imported twice.
_WHERE = {
    "AdaptiveMisinformation": "detector.misinformation",
    "DetectorConfig": "detector.config",
    "DetectorResult": "detector.training",
    "GaussianNoise": "detector.policies",
    "Identity": "detector.policies",
    "LabelOnly": "detector.policies",
    "OODDetector": "detector.ood",
    "OutputPolicy": "detector.policies",
    "Prada": "detector.prada",
    "PradaVerdict": "detector.prada",
    "ReverseSigmoid": "detector.policies",
    "Rounding": "detector.policies",
    "SlidingWindow": "detector.aggregate",
    "TopK": "detector.policies",
    "WatermarkRecord": "detector.watermark",
    "Watermarker": "detector.watermark",
    "calibrate_threshold": "detector.metrics",
    "detection_metrics": "detector.metrics",
    "load_watermarks": "detector.watermark",
    "parse_policy": "detector.policies",
    "pixel_features": "detector.prada",
    "reverse_distribution": "detector.misinformation",
    "roc_auc": "detector.metrics",
    "roc_curve": "detector.metrics",
    "save_watermarks": "detector.watermark",
    "train_detector": "detector.training",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals(), __all__)
