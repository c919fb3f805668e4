"""`benchmarks.harness.stats`: the one mean-and-spread summary over seeds, and the three
benchmarks' results forms built on it (their keys are those of committed results files)."""

from __future__ import annotations

import math

import pytest

from benchmarks import active_curves, evasion_bench, shipped_policy
from benchmarks.harness.stats import spread


def test_spread_of_known_and_missing_values():
    s = spread([0.5, None, 0.7, 0.6])
    assert s.n == 3 and s.missing == 1 and s.known == (0.5, 0.7, 0.6)
    assert s.mean == pytest.approx(0.6) and s.sd == pytest.approx(0.1)
    assert (s.min, s.max) == (0.5, 0.7)
    assert s.cell() == "0.600 ± 0.100" and s.cell(1, sign="+/-") == "0.6 +/- 0.1"
    one, none = spread([0.25]), spread([None, None])
    assert one.sd is None and one.cell() == "0.250"
    assert none.mean is None and none.min is None and none.cell() == "-"
    with pytest.raises(ValueError, match="finite or None"):
        spread([0.1, math.nan])


def test_each_benchmark_keeps_its_results_keys():
    values = [0.2, 0.4, None]
    assert shipped_policy._stats(values) == {
        "mean": pytest.approx(0.3), "sd": pytest.approx(math.sqrt(0.02)), "n": 2,
        "values": [0.2, 0.4]}
    assert evasion_bench._stats(values) == {"values": values}
    assert evasion_bench._stats([32, 48]) == {"mean": 40.0, "std": pytest.approx(math.sqrt(128)),
                                              "min": 32.0, "max": 48.0, "values": [32, 48]}
    assert evasion_bench._stats([7])["std"] == 0.0
    rows = [{"strategy": "random", "queries": 10, "accuracy": a} for a in (0.3, 0.5)]
    assert active_curves.summarise(rows, ("random",), (10,))["table"] == {
        "random": {"10": {"seeds": 2, "mean": pytest.approx(0.4),
                          "sd": pytest.approx(math.sqrt(0.02))}}}
