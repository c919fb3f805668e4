"""benchmarks.defence_bench without running it: its gateway policies validate, its runs grid,
and bad input is one line with exit code 2 before anything starts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.defence_bench import POLICIES, _runs, main, policy_dict
from serving.gateway.config import policy_from_dict


def _config(**kw):
    base = dict(detector="d", tau=None, nu=50.0, misinformation_model=None,
                watermark_fraction=0.05, policies=",".join(POLICIES),
                granularities="probs,top1", seed_list=(0, 1))
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_is_a_valid_gateway_policy(name):
    policy = policy_from_dict(policy_dict(_config(), name, Path("wm.key")))
    assert policy.ood is not None and policy.watermark.fraction == 0.05
    assert policy.misinforms == name.startswith("misinform")
    assert (policy.on_query == "misinform") == (name == "misinform_query")
    if name.endswith("label_only"):
        assert policy.on_flag_policy == "label_only"


def test_misinformation_model_is_passed_to_the_gateway():
    data = policy_dict(_config(misinformation_model="m/1", tau=0.7), "misinform", Path("k"))
    assert data["misinformation"] == {"tau": 0.7, "nu": 50.0, "function": "model",
                                      "path": "m/1"}


def test_label_only_policies_run_one_granularity():
    runs = _runs(_config(policies="label_only,misinform"))
    assert ("label_only", "top1", 0) not in runs
    assert len(runs) == 2 + 4


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--detector", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "detector" in err
    assert main(["--detector", str(tmp_path), "--policies", "lie",
                 "--out", str(tmp_path / "o")]) == 2
    assert "policies" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
