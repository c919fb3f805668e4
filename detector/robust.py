"""Per-query OOD scores that survive cheap evasion, and how to combine them.

Atli et al.'s binary detector (`detector.ood`) learns whatever separates the victim's data from
the thief's: a JPEG re-encoding at quality 75 took the CIFAR-10 detector from 92% to 50%
anomalous accuracy. This module adds scores that look at other evidence, each an object with
``score(images, probabilities) -> float64 [N]`` (higher = more out of distribution) and a
``threshold`` calibrated at a benign false-positive rate, so a per-client window
(`detector.aggregate.BinomialWindow`) can consume their verdicts:

* `DetectorScore`: the binary detector's attack probability (train it with
  `detector.evasion.augment` applied to both sets, so the transform is never the signal);
* `MaxSoftmaxScore`: ``1 - max_k p_k`` of the victim's own answer (Hendrycks & Gimpel 2017),
  which the gateway has for free (the upstream's probabilities); `EnergyScore` is the energy
  score of Liu et al. (NeurIPS 2020), ``-T logsumexp(logits / T)``, for victims that answer
  logits (from probabilities alone it is a constant: ``logsumexp(log p) = 0``);
* `MahalanobisScore`: Lee et al. (NeurIPS 2018): the smallest Mahalanobis distance from a
  query's features to the victim's class means under one shared covariance, fitted on benign
  images only. The features are the detector's penultimate layer, not the victim's: the gateway
  runs the detector in-process and sees only the upstream's probabilities, never the victim's
  hidden layers, and a one-class score on them does not depend on what attack data the
  detector was trained against;
* `CombinedScore`: several scores as one, by their benign tail probabilities: each component's
  p-value is its share of benign calibration scores at least as high, and the combined score is
  ``-log`` of the smallest (a query is as suspicious as its most suspicious view).

`threshold_at_fpr` calibrates any score on benign images (the same rule as
`detector.ood.calibrate_threshold`, for scores that are not probabilities);
`threshold_over_views` calibrates on several views of them (clean and each evasion transform,
`detector.evasion.CALIBRATION_TRANSFORMS`) so that none exceeds the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from common.constraints import check_number
from common.errors import invalid

__all__ = [
    "CombinedScore",
    "DetectorScore",
    "EnergyScore",
    "MahalanobisScore",
    "MaxSoftmaxScore",
    "Scorer",
    "calibrate",
    "threshold_at_fpr",
    "threshold_over_views",
]


class Scorer(Protocol):
    """What a per-client monitor needs from a score."""

    name: str
    threshold: float

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        """float64 ``[N]``, higher = more out of distribution."""


def threshold_at_fpr(benign_scores: Any, fpr: float) -> float:
    """The lowest threshold t with ``mean(benign_scores >= t) <= fpr`` (ties never push the
    rate above `fpr`); +inf when there are no benign scores."""
    check_number("fpr", fpr, min=0.0, lt=1.0)
    scores = np.sort(np.asarray(benign_scores, dtype=np.float64).ravel())[::-1]
    if scores.size == 0:
        return math.inf
    if not np.all(np.isfinite(scores)):
        raise invalid("benign_scores", "non-finite values", "finite scores")
    allowed = int(math.floor(float(fpr) * scores.size + 1e-9))
    return float(np.nextafter(scores[allowed], np.inf))


def threshold_over_views(benign_scores: Mapping[str, Any], fpr: float
                         ) -> tuple[float, dict[str, float]]:
    """The lowest threshold at which EVERY view of the benign images (clean, JPEG-encoded,
    blurred, ...: name -> scores) keeps its false-positive rate at most `fpr`, and each view's
    rate at it. A benign client who always sends one kind of transformed image then stays at
    the rate a per-client window (`detector.aggregate.BinomialWindow`) assumes."""
    if not benign_scores:
        raise invalid("benign_scores", "no views", "benign scores under at least one view")
    arrays = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in benign_scores.items()}
    threshold = max(threshold_at_fpr(v, fpr) for v in arrays.values())
    return threshold, {name: float(np.mean(v >= threshold)) if v.size else 0.0
                       for name, v in arrays.items()}


def calibrate(scorer: Any, benign_images: Any, benign_probabilities: Any, fpr: float) -> float:
    """Set ``scorer.threshold`` for benign false-positive rate `fpr` on held-out benign
    queries; returns it."""
    scorer.threshold = threshold_at_fpr(scorer.score(benign_images, benign_probabilities), fpr)
    return scorer.threshold


def _probabilities(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2 or not np.all(np.isfinite(array)):
        raise invalid("probabilities", f"array of shape {array.shape}",
                      "finite class scores [N, K] with K >= 2")
    return array


class MaxSoftmaxScore:
    """``1 - max_k p_k`` of the victim's answer: an in-distribution query usually gets a
    confident answer (images are not needed)."""

    name = "max_softmax"

    def __init__(self, threshold: float = math.inf) -> None:
        self.threshold = float(threshold)

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        return 1.0 - _probabilities(probabilities).max(axis=1)


class EnergyScore:
    """Liu et al.'s energy ``-T logsumexp(logits / T)`` of a victim that answers logits."""

    name = "energy"

    def __init__(self, temperature: float = 1.0, threshold: float = math.inf) -> None:
        self.temperature = float(check_number("temperature", temperature, gt=0.0))
        self.threshold = float(threshold)

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        scaled = _probabilities(probabilities) / self.temperature
        top = scaled.max(axis=1)
        log_sum = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return -self.temperature * log_sum


class DetectorScore:
    """The binary detector's attack probability (anything with ``score(images)``, e.g.
    `detector.ood.OODDetector`), with its own threshold unless one is given."""

    name = "detector"

    def __init__(self, detector: Any, threshold: float | None = None) -> None:
        self.detector = detector
        self.threshold = float(detector.threshold if threshold is None else threshold)

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        return np.asarray(self.detector.score(images), dtype=np.float64)


class MahalanobisScore:
    """Smallest Mahalanobis distance of a query's features to the benign class means (one
    shared covariance, Lee et al. 2018), fitted on benign images only.

    `features` maps uint8 images ``[N, H, W, 3]`` to ``[N, D]`` (None: only `fit_features` and
    `distances` on features computed elsewhere). `fit` takes benign images and
    their classes (the victim's labels, or its top-1 answers); `shrinkage` in [0, 1) mixes the
    covariance with its scaled identity so that D close to the number of images stays
    invertible.
    """

    name = "mahalanobis"

    def __init__(self, features: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 shrinkage: float = 0.1, threshold: float = math.inf) -> None:
        self.features = features
        self.shrinkage = float(check_number("shrinkage", shrinkage, min=0.0, lt=1.0))
        self.threshold = float(threshold)
        self.means: np.ndarray | None = None
        self.precision: np.ndarray | None = None

    def fit_features(self, features: Any, labels: Any) -> MahalanobisScore:
        """Fit class means and the shared precision from benign features ``[N, D]``."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).ravel()
        if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
            raise invalid("features", f"array of shape {x.shape} with {len(y)} labels",
                          "benign features [N, D] (N >= 2) and one label per row")
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        covariance = centred.T @ centred / len(x)
        scale = np.trace(covariance) / covariance.shape[0]
        covariance = (1.0 - self.shrinkage) * covariance \
            + self.shrinkage * scale * np.eye(covariance.shape[0])
        self.means = means
        self.precision = np.linalg.pinv(covariance, hermitian=True)
        return self

    def fit(self, images: Any, labels: Any) -> MahalanobisScore:
        """Fit on benign images and their classes."""
        if self.features is None:
            raise invalid("features", None, "a feature function to fit on images")
        return self.fit_features(self.features(np.asarray(images)), labels)

    def distances(self, features: Any) -> np.ndarray:
        """Smallest squared Mahalanobis distance of each row of `features` to a class mean."""
        if self.means is None or self.precision is None:
            raise invalid("MahalanobisScore", "an unfitted score", "fit() on benign images first")
        x = np.asarray(features, dtype=np.float64)
        projected = x @ self.precision
        # (x - m)^T P (x - m) = x^T P x - 2 m^T P x + m^T P m, for every class mean at once.
        own = np.einsum("nd,nd->n", projected, x)
        cross = projected @ self.means.T
        means = np.einsum("kd,kd->k", self.means @ self.precision, self.means)
        return np.maximum(own[:, None] - 2.0 * cross + means[None, :], 0.0).min(axis=1)

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        if self.features is None:
            raise invalid("features", None, "a feature function to score images")
        return self.distances(self.features(np.asarray(images)))


class CombinedScore:
    """Several scores as one: ``-log`` of the smallest benign tail probability among them.

    Each component's tail probability for a query is ``(1 + #benign >= s) / (n + 1)`` over the
    benign reference scores given to `fit` (held-out benign queries); calibrate the combined
    threshold on other benign queries, or on the same ones (then the rate is slightly
    optimistic).
    """

    name = "combined"

    def __init__(self, scorers: Sequence[Any], threshold: float = math.inf) -> None:
        if not scorers:
            raise invalid("scorers", list(scorers), "at least one scorer")
        self.scorers = list(scorers)
        self.name = "combined(" + "+".join(s.name for s in self.scorers) + ")"
        self.threshold = float(threshold)
        self.reference: list[np.ndarray] | None = None

    def fit(self, benign_images: Any, benign_probabilities: Any) -> CombinedScore:
        """Score held-out benign queries with every component: the reference tails."""
        return self.fit_scores(self.components(benign_images, benign_probabilities))

    def fit_scores(self, benign_components: Sequence[Any]) -> CombinedScore:
        """The reference tails from precomputed benign component scores (scorers' order)."""
        if len(benign_components) != len(self.scorers):
            raise invalid("benign_components", f"{len(benign_components)} score arrays",
                          f"one per scorer ({len(self.scorers)})")
        self.reference = [np.sort(np.asarray(s, dtype=np.float64).ravel())
                          for s in benign_components]
        return self

    def components(self, images: Any, probabilities: Any) -> list[np.ndarray]:
        return [np.asarray(s.score(images, probabilities), dtype=np.float64)
                for s in self.scorers]

    def combine(self, components: Sequence[np.ndarray]) -> np.ndarray:
        """The combined score of precomputed component scores (in the scorers' order)."""
        if self.reference is None:
            raise invalid("CombinedScore", "an unfitted score", "fit() on benign images first")
        tails = []
        for reference, values in zip(self.reference, components):
            at_least = reference.size - np.searchsorted(reference, values, side="left")
            tails.append((1.0 + at_least) / (reference.size + 1.0))
        return -np.log(np.min(np.stack(tails), axis=0))

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        return self.combine(self.components(images, probabilities))
