"""Mean and spread over seeds: the one summary the benchmarks compute for a figure measured on
several seeds (a comparison of surrogate accuracies is reported as mean and spread over at
least 3 seeds).

`spread(values)` takes one value per seed, None for a run that produced none (a client never
flagged, a seed that failed), and gives a `Spread`: the mean and the sample standard deviation
(n - 1) of the known values, their count, minimum and maximum, how many were missing, and
`cell()`, the "mean ± sd" text of a Markdown table. Each benchmark keeps the keys its committed
results files already use and maps a `Spread` onto them (`shipped_policy`, `evasion_bench`,
`active_curves`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Spread", "spread"]


@dataclass(frozen=True)
class Spread:
    """The values of one figure over seeds (None: that seed gave no value)."""

    values: tuple[float | None, ...]

    @property
    def known(self) -> tuple[float, ...]:
        """The values that are not None, as floats, in order."""
        return tuple(float(v) for v in self.values if v is not None)

    @property
    def n(self) -> int:
        return len(self.known)

    @property
    def missing(self) -> int:
        return len(self.values) - self.n

    @property
    def mean(self) -> float | None:
        """Mean of the known values (None without any)."""
        return statistics.fmean(self.known) if self.known else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (n - 1) of the known values (None with fewer than 2)."""
        return statistics.stdev(self.known) if self.n > 1 else None

    @property
    def min(self) -> float | None:
        return min(self.known) if self.known else None

    @property
    def max(self) -> float | None:
        return max(self.known) if self.known else None

    def cell(self, digits: int = 3, *, sign: str = "±", empty: str = "-") -> str:
        """``mean ± sd`` at `digits` decimals; the mean alone for one value; `empty` for none."""
        if self.mean is None:
            return empty
        if self.sd is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} {sign} {self.sd:.{digits}f}"


def spread(values: Iterable[float | None]) -> Spread:
    """The `Spread` of one value per seed; `ValueError` for a NaN or infinite value (a figure
    that was never measured is None, not NaN)."""
    kept = tuple(None if v is None else float(v) for v in values)
    bad = [v for v in kept if v is not None and not math.isfinite(v)]
    if bad:
        raise ValueError(f"spread: values must be finite or None; received {bad[0]!r}")
    return Spread(kept)
