"""Scores against a threshold, as Atli et al. 2020 report their OOD query detector: the threshold
calibrated for a target benign false-positive rate (`calibrate_threshold`), the ROC curve and its
area (`roc_curve`, `roc_auc`), and the table of benign and anomalous accuracy at a threshold
(`detection_metrics`). Pure numpy (scipy for the rank-sum AUC); a score is "higher = more likely
an attack query", as the detector's attack probability and every other OOD score of `detector/`.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from common.constraints import check_number

__all__ = ["calibrate_threshold", "detection_metrics", "roc_auc", "roc_curve"]

logger = logging.getLogger(__name__)


def calibrate_threshold(benign_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold t with ``mean(benign_scores >= t) <= target_fpr``.

    At most ``floor(target_fpr * n)`` benign scores reach t: t sits just above the
    ``(k+1)``-th highest benign score (``np.nextafter``), so ties never push the rate above the
    target. With no benign score the threshold is 0.5.
    """
    scores = np.sort(np.asarray(benign_scores, dtype=np.float64).ravel())[::-1]
    check_number("target_fpr", target_fpr, min=0.0, lt=1.0)
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
    from scipy.stats import rankdata  # 1.4 s to import: only here

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
