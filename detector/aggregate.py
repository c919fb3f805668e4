"""Per-client aggregation of single-query verdicts over a sliding window.

One OOD verdict is noisy (Atli et al. 2020 report 96% benign / 96% anomalous accuracy per query
on CIFAR-10, so a benign client sees about one false positive in 25 queries). A client is
therefore flagged when the share of flagged queries among its last `window` queries reaches
`level`, once it has sent at least `min_queries`. With a per-query false-positive rate p and
level L > p, a benign client's share concentrates around p and the binomial tail
P(share >= L) vanishes quickly with the window, while an attacker whose queries are flagged at
rate q > L is flagged after about ``max(min_queries, L * window / q)`` queries at worst (the
window only has to fill to the level).

The per-client state is a plain JSON-serialisable dict, so the gateway can keep it in SQLite or
Redis: ``{"bits": [0/1 ...] (the last `window` verdicts, oldest first), "queries": total seen,
"flagged_queries": total flagged, "flagged_at": the query count at which the client was first
flagged, or None}``.

`BinomialWindow` keeps the same state but tests the OOD share against chance instead of a fixed
level: a benign client's flagged queries among its last n are at most Binomial(n, fpr) at the
detector's calibrated benign false-positive rate, so the client is flagged once that count
reaches the binomial's upper critical value at significance `alpha`. A thief who dilutes its
stream with in-distribution images (camouflage) only lowers its share towards fpr; at a 75%
in-distribution mix and a per-query detection rate q, the share is about 0.25 q + 0.75 fpr,
far above what chance gives a benign client, where a level of 0.5 is never reached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.constraints import check_int, check_number
from common.errors import invalid

__all__ = ["BinomialWindow", "SlidingWindow", "binomial_critical_counts", "first_flag"]


def _verdict_bits(verdicts: Any) -> np.ndarray:
    array = np.asarray(verdicts)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1 or not (array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
        raise invalid("verdicts", f"{array.dtype} array of shape {array.shape}",
                      "a bool array [N]")
    return array.astype(bool).astype(int)


class SlidingWindow:
    """Flag a client when its share of flagged queries in the last `window` reaches `level`."""

    def __init__(self, window: int = 256, level: float = 0.5, min_queries: int = 64) -> None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise invalid("window", window, "a positive integer")
        if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
                or not math.isfinite(level) or not 0 < level <= 1:
            raise invalid("level", level, "a share in (0, 1]")
        if isinstance(min_queries, bool) or not isinstance(min_queries, (int, np.integer)) \
                or min_queries < 1:
            raise invalid("min_queries", min_queries, "a positive integer")
        if min_queries > window:
            raise invalid("min_queries", min_queries, f"at most the window ({window})")
        self.window = int(window)
        self.level = float(level)
        self.min_queries = int(min_queries)

    def __repr__(self) -> str:
        return (f"SlidingWindow(window={self.window}, level={self.level}, "
                f"min_queries={self.min_queries})")

    def new_state(self) -> dict[str, Any]:
        """A fresh client state (JSON-serialisable)."""
        return {"bits": [], "queries": 0, "flagged_queries": 0, "flagged_at": None}

    def _check_state(self, state: Any) -> list[int]:
        if not isinstance(state, dict) or not isinstance(state.get("bits"), list):
            raise invalid("state", type(state).__name__, "a state from SlidingWindow.new_state()")
        return state["bits"]

    def share(self, state: dict[str, Any]) -> float:
        """The share of flagged queries in the current window (0.0 when empty)."""
        bits = self._check_state(state)
        return float(sum(bits)) / len(bits) if bits else 0.0

    def update(self, state: dict[str, Any], verdicts: Any) -> tuple[bool, float]:
        """Add a batch of verdicts (bool ``[N]``, oldest first); return (flagged, share).

        `state` is updated in place. ``flagged`` is the window test after the whole batch; the
        first query count at which it held is kept in ``state["flagged_at"]`` (checked after
        every single verdict, so a batch cannot hide the moment).
        """
        bits = self._check_state(state)
        new = _verdict_bits(verdicts)
        queries = int(state.get("queries", 0))
        if state.get("flagged_at") is None and len(new):
            # The window ending after each verdict of the batch: its flagged count and size.
            history = np.concatenate([np.asarray(bits, dtype=int), new])
            ends = np.arange(len(bits) + 1, len(history) + 1)
            cumulative = np.r_[0, np.cumsum(history)]
            starts = np.maximum(0, ends - self.window)
            seen = queries + np.arange(1, len(new) + 1)
            # A window never holds more than the client has sent, so its size is the count too.
            sizes = np.minimum(seen, ends - starts)
            hits = np.flatnonzero(self._flags(cumulative[ends] - cumulative[starts], sizes))
            if hits.size:
                state["flagged_at"] = int(seen[hits[0]])
        bits.extend(int(b) for b in new)
        if len(bits) > self.window:
            del bits[: len(bits) - self.window]
        state["queries"] = queries + len(new)
        state["flagged_queries"] = int(state.get("flagged_queries", 0)) + int(new.sum())
        flagged = self._flags(np.array([sum(bits)]), np.array([len(bits)]))[0]
        return bool(flagged), self.share(state)

    def _flags(self, counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Whether windows of `sizes` verdicts holding `counts` flagged ones flag the client."""
        return (sizes >= self.min_queries) & (counts / np.maximum(sizes, 1) >= self.level)


def first_flag(window: SlidingWindow, verdicts: Any, batch: int) -> int | None:
    """The query at which a fresh client sending `verdicts` in requests of `batch` is flagged
    by `window` (None: never within them)."""
    state = window.new_state()
    array = _verdict_bits(verdicts)
    for start in range(0, len(array), batch):
        window.update(state, array[start:start + batch])
        if state["flagged_at"] is not None:
            return int(state["flagged_at"])
    return None


def binomial_critical_counts(window: int, fpr: float, alpha: float) -> np.ndarray:
    """``c[n]`` for n = 0..window: the smallest count k with ``P(Binomial(n, fpr) >= k) <=
    alpha`` (``n + 1`` where even n flagged queries out of n are not that unlikely)."""
    log_factorial = np.r_[0.0, np.cumsum(np.log(np.arange(1, window + 1)))]
    counts = np.empty(window + 1, np.int64)
    for n in range(window + 1):
        k = np.arange(n + 1)
        log_pmf = (log_factorial[n] - log_factorial[k] - log_factorial[n - k]
                   + k * math.log(fpr) + (n - k) * math.log1p(-fpr))
        # P(X >= k), summed from the smallest terms up.
        tails = np.cumsum(np.exp(log_pmf)[::-1])[::-1]
        below = np.flatnonzero(tails <= alpha)
        counts[n] = int(below[0]) if below.size else n + 1
    return counts


class BinomialWindow(SlidingWindow):
    """Flag a client when its flagged queries among its last ``n = min(window, sent)`` are more
    than a benign client at false-positive rate `fpr` reaches with probability `alpha`.

    Same state and `update` contract as `SlidingWindow` (the gateway stores either); checked
    after every single verdict once the client has sent `min_queries`. The test is repeated at
    every query, so a benign client's chance of ever being flagged grows with its traffic:
    simulated at exactly `fpr` 0.02 and window 256, about ``5 * alpha * queries / window``
    (a small `alpha`, 1e-6 by default, keeps it near 2e-3 per 100,000 queries), and more if
    its true false-positive rate exceeds `fpr`.
    """

    def __init__(self, window: int = 256, fpr: float = 0.02, alpha: float = 1e-6,
                 min_queries: int = 32) -> None:
        check_int("window", window, min=1)
        check_number("fpr", fpr, gt=0.0, lt=1.0)
        check_number("alpha", alpha, gt=0.0, lt=1.0)
        check_int("min_queries", min_queries, min=1)
        if min_queries > window:
            raise invalid("min_queries", min_queries, f"at most the window ({window})")
        self.window = int(window)
        self.fpr = float(fpr)
        self.alpha = float(alpha)
        self.min_queries = int(min_queries)
        self.critical = binomial_critical_counts(self.window, self.fpr, self.alpha)
        # The share a full window must reach (for logs and `SlidingWindow.level` readers).
        self.level = float(self.critical[self.window]) / self.window

    def __repr__(self) -> str:
        return (f"BinomialWindow(window={self.window}, fpr={self.fpr}, alpha={self.alpha}, "
                f"min_queries={self.min_queries})")

    def _flags(self, counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        return (sizes >= self.min_queries) & (counts >= self.critical[np.minimum(sizes,
                                                                                 self.window)])
