"""A Knockoff run started under the earlier surrogate defaults, resumed end to end through gRPC
by a config at today's defaults: it continues with its own settings (nothing sent again, the
finished surrogate loaded, config.json untouched) instead of being refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from attack.knockoff import run_knockoff
from tests.attack.helpers import knockoff_config

EARLIER = {"ema": 0.0, "augment": "crop+flip", "target_temperature": 1.0,
           "fit_batch_size": None}


@pytest.mark.slow
def test_a_run_under_the_earlier_defaults_resumes_unchanged(served_victim, data_files,
                                                            tmp_path):
    run = tmp_path / "run"
    first = knockoff_config(served_victim, data_files, run, budget=200, curve_points=1,
                            **EARLIER)
    before = run_knockoff(first)
    saved = (run / "config.json").read_bytes()
    report = json.loads((run / "report.json").read_text())
    today = knockoff_config(served_victim, data_files, run, budget=200, curve_points=1,
                            resume=True)
    assert (today.ema, today.augment) == (0.99, "none")  # what the same command means now
    again = run_knockoff(today)
    assert (run / "config.json").read_bytes() == saved
    resumed = json.loads((run / "report.json").read_text())
    assert resumed["extra"]["query_stats"]["sent_this_session"] == 0
    assert resumed["evaluation"] == report["evaluation"]  # the same surrogate, loaded
    assert again.queries == before.queries == 200
    with pytest.raises(Exception, match="--ema 0.0"):  # a value given on purpose is compared
        run_knockoff(dataclasses.replace(today, ema=0.5))
