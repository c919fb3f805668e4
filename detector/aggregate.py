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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.errors import invalid

__all__ = ["SlidingWindow"]


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
        array = np.asarray(verdicts)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != 1 or not (array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
            raise invalid("verdicts", f"{array.dtype} array of shape {array.shape}",
                          "a bool array [N]")
        new = array.astype(bool).astype(int)
        queries = int(state.get("queries", 0))
        if state.get("flagged_at") is None and len(new):
            # Share after each verdict of the batch, over the window ending there.
            history = np.concatenate([np.asarray(bits, dtype=int), new])
            ends = np.arange(len(bits) + 1, len(history) + 1)
            cumulative = np.r_[0, np.cumsum(history)]
            starts = np.maximum(0, ends - self.window)
            sizes = ends - starts
            shares = (cumulative[ends] - cumulative[starts]) / sizes
            seen = queries + np.arange(1, len(new) + 1)
            # A window never holds more than the client has sent, so `sizes` is the count too.
            hits = np.flatnonzero((shares >= self.level) & (np.minimum(seen, sizes)
                                                            >= self.min_queries))
            if hits.size:
                state["flagged_at"] = int(seen[hits[0]])
        bits.extend(int(b) for b in new)
        if len(bits) > self.window:
            del bits[: len(bits) - self.window]
        state["queries"] = queries + len(new)
        state["flagged_queries"] = int(state.get("flagged_queries", 0)) + int(new.sum())
        share = self.share(state)
        flagged = len(bits) >= self.min_queries and share >= self.level
        return bool(flagged), share
