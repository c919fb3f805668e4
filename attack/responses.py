"""Response granularity: what the victim returned and what the surrogate trains on.

Knockoff Nets (Orekondy et al., CVPR 2019, Sec. 6) studies attackers that see the victim's full
probability vector, only its top-k classes, or only its top-1 label. This module parses the
``--granularity probs|top1|topk:K`` flag, truncates received probabilities to that granularity
(`apply_granularity`: the training targets, rows summing to 1) and tells from a batch of answers
what the victim actually returns (`detect_granularity`), e.g. one-hot rows from a label-only
defence or a gateway's top-k policy. Pure numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from common.constraints import check_int
from common.errors import invalid

__all__ = ["Granularity", "apply_granularity", "check_granularity", "detect_granularity",
           "parse_granularity"]

_EXPECTED = "probs, top1 or topk:K with an integer K >= 1"
_TOPK = re.compile(r"topk:(\d+)")


@dataclass(frozen=True)
class Granularity:
    """`kind` is "probs", "top1" or "topk"; `k` is the number of classes kept (None for probs).

    `str(g)` is the flag text again ("probs", "top1", "topk:5").
    """

    kind: Literal["probs", "top1", "topk"]
    k: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "probs":
            if self.k is not None:
                raise invalid("k", self.k, "None for granularity probs")
        elif self.kind == "top1":
            if self.k not in (None, 1):
                raise invalid("k", self.k, "1 (or None) for granularity top1")
            object.__setattr__(self, "k", 1)
        elif self.kind == "topk":
            check_int("k", self.k, min=1, expected="an integer >= 1 for granularity topk")
            object.__setattr__(self, "k", int(self.k))
        else:
            raise invalid("kind", self.kind, '"probs", "top1" or "topk"')

    def __str__(self) -> str:
        return self.kind if self.kind != "topk" else f"topk:{self.k}"


def parse_granularity(text: str) -> Granularity:
    """Parse ``probs``, ``top1`` or ``topk:K`` (K >= 1); `UsageError` naming `granularity`."""
    if not isinstance(text, str):
        raise invalid("granularity", text, _EXPECTED)
    cleaned = text.strip().lower()
    if cleaned in ("probs", "top1"):
        return Granularity(cleaned)  # type: ignore[arg-type]
    match = _TOPK.fullmatch(cleaned)
    if match is None or int(match.group(1)) < 1:
        raise invalid("granularity", text, _EXPECTED)
    return Granularity("topk", int(match.group(1)))


def _check_probs(probs: np.ndarray, argument: str) -> np.ndarray:
    array = np.asarray(probs)
    if array.ndim != 2 or array.shape[1] < 1 or not (
        array.size == 0 or np.issubdtype(array.dtype, np.number)
    ):
        raise invalid(
            argument, f"array of dtype {array.dtype} and shape {array.shape}",
            "a numeric array [n, K] of class probabilities",
        )
    array = array.astype(np.float32, copy=False)
    if array.size:
        if not np.isfinite(array).all():
            raise invalid(argument, "an array with NaN or infinite values", "finite probabilities")
        if array.min() < 0:
            raise invalid(
                argument, f"an array with minimum {float(array.min()):.4g}",
                "non-negative probabilities (did the model return logits?)",
            )
        zero_rows = np.flatnonzero(array.sum(axis=1) <= 0)
        if zero_rows.size:
            raise invalid(
                argument, f"{zero_rows.size} all-zero row(s) (first: row {zero_rows[0]})",
                "every row to have some probability mass",
            )
    return array


def check_granularity(granularity: str, num_classes: int) -> None:
    """`UsageError` naming ``--granularity`` when topk:K asks for more classes than the victim
    has (checked after GetModelMetadata, before any query)."""
    parsed = parse_granularity(granularity)
    if parsed.kind == "topk" and parsed.k > num_classes:
        raise invalid("granularity", granularity,
                      f"probs, top1 or topk:K with K at most {num_classes}, the victim's "
                      "number of classes")


def apply_granularity(probs: np.ndarray, granularity: Granularity) -> np.ndarray:
    """Training targets float32 [n, K] at `granularity`, each row summing to 1.

    probs: the received rows renormalised (unchanged when they already sum to 1, as a victim's
    softmax does; a defence that zeroes classes without renormalising is made whole).
    top1: one-hot at the arg-max. topk: the k largest kept, the rest zeroed, renormalised
    (k >= K is probs). Ties go to the lower class index, so the result is deterministic.
    """
    if not isinstance(granularity, Granularity):
        raise invalid("granularity", granularity, "a Granularity (see parse_granularity)")
    array = _check_probs(probs, "probs")
    n, width = array.shape
    if granularity.kind == "top1":
        targets = np.zeros((n, width), dtype=np.float32)
        targets[np.arange(n), np.argmax(array, axis=1)] = 1.0  # argmax: first of equal maxima
        return targets
    if granularity.kind == "topk" and granularity.k is not None and granularity.k < width:
        order = np.argsort(-array, axis=1, kind="stable")[:, : granularity.k]
        kept = np.zeros_like(array)
        rows = np.arange(n)[:, None]
        kept[rows, order] = array[rows, order]
        array = kept
    return (array / array.sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)


def detect_granularity(responses: np.ndarray) -> str:
    """What the victim returns: "top1", "topk:K" or "probs" (a flag `parse_granularity` reads).

    Counts the non-zero entries of each row. "top1" when every row has exactly one (a label,
    possibly with its probability); "topk:m" when no row has more than m < K non-zeros and at
    least half of the rows have exactly m (a top-k policy fills m every time, while a full
    softmax whose tiny entries underflowed to zero varies from row to row); "probs" otherwise.
    """
    array = _check_probs(responses, "responses")
    if array.shape[0] == 0:
        raise invalid("responses", "an empty batch", "at least one answered row")
    nonzero = np.count_nonzero(array > 0, axis=1)
    if (nonzero == 1).all():
        return "top1"
    most = int(nonzero.max())
    if most < array.shape[1] and np.mean(nonzero == most) >= 0.5:
        return f"topk:{most}"
    return "probs"
