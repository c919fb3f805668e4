"""The natural-image attacks' training recipe: Knockoff and Copycat default to the measured
recipe (EMA 0.99, peak rate 0.002, no crop/flip) on the command line and in the Python API, the
other attacks keep the generic defaults, and a run started under the earlier defaults resumes
with its own settings (`keep_run_settings`, `RUN_LEGACY`) instead of being refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from attack.base import _surrogate_fields
from attack.config import (
    RUN_LEGACY,
    CopycatConfig,
    JBDAConfig,
    KnockoffConfig,
    SurrogatePart,
    TransferRecipePart,
    keep_run_settings,
)
from attack.datafree import DataFreeConfig
from attack.pipeline import prepare_run_dir
from attack.synthetic import SyntheticConfig
from common.cli import build_parser, parse_config
from common.errors import UsageError

NEW = {"ema": 0.99, "learning_rate": 2e-3, "augment": "none"}
OLD = {"ema": 0.0, "learning_rate": 1e-3, "augment": "crop+flip"}
REQUIRED = {KnockoffConfig: {"transfer_set": "t.zip"}, CopycatConfig: {"transfer_set": "t.zip"},
            JBDAConfig: {"seed_set": "s.zip"}, DataFreeConfig: {}, SyntheticConfig: {}}


def recipe(config) -> dict:
    return {name: getattr(config, name) for name in NEW}


@pytest.mark.parametrize("cls, expected", [(KnockoffConfig, NEW), (CopycatConfig, NEW),
                                           (JBDAConfig, OLD), (DataFreeConfig, OLD),
                                           (SyntheticConfig, OLD)])
def test_only_the_natural_image_attacks_take_the_recipe(cls, expected):
    config = cls(**REQUIRED[cls], weights="none")
    assert recipe(config) == expected
    assert (config.target_temperature, config.fit_batch_size) == (0.5, 32)  # unchanged
    assert recipe(SurrogatePart()) == OLD  # attack.Surrogate: the generic trainer


def test_the_command_line_shows_the_new_defaults_and_gives_the_old_behaviour_back():
    help_text = " ".join(build_parser(KnockoffConfig).format_help().split())
    assert "(default: 0.99)" in help_text and "(default: none)" in help_text
    argv = ["--transfer-set", "t.zip", "--weights", "none"]
    assert recipe(parse_config(KnockoffConfig, argv)) == NEW
    old = parse_config(CopycatConfig, [*argv, "--ema", "0", "--learning-rate", "0.001",
                                       "--augment", "crop+flip"])
    assert recipe(old) == OLD
    with pytest.raises(UsageError, match="ema"):  # the field's rule is kept with its default
        KnockoffConfig(transfer_set="t.zip", weights="none", ema=1.0)
    assert TransferRecipePart.__dataclass_fields__["ema"].metadata == \
        SurrogatePart.__dataclass_fields__["ema"].metadata


def test_the_api_takes_the_attacks_defaults_unless_given_a_surrogate():
    assert recipe(SurrogatePart(**_surrogate_fields(None, KnockoffConfig))) == NEW
    mapped = _surrogate_fields({"backbone": "cnn", "ema": 0.5}, CopycatConfig)
    assert mapped["backbone"] == "cnn" and recipe(SurrogatePart(**mapped)) == {**NEW, "ema": 0.5}
    assert recipe(SurrogatePart(**_surrogate_fields(None, JBDAConfig))) == OLD
    given = _surrogate_fields(SurrogatePart(backbone="cnn"), KnockoffConfig)
    assert recipe(SurrogatePart(**given)) == OLD  # an explicit Surrogate is taken as it is


def _started(tmp_path, saved_changes: dict, drop: tuple[str, ...] = (), cls=KnockoffConfig):
    """A run folder whose config.json was written under other settings (or, with `drop`,
    before those fields existed); returns today's default config resuming it."""
    config = cls(**REQUIRED[cls], weights="none", backbone="cnn", out=str(tmp_path / "run"),
                 **saved_changes)
    prepare_run_dir(config)
    path = tmp_path / "run" / "config.json"
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps(saved, sort_keys=True, indent=2))
    resumed = cls(**REQUIRED[cls], weights="none", backbone="cnn", out=str(tmp_path / "run"),
                  resume=True)
    return resumed, path.read_bytes()


def test_a_run_under_the_earlier_defaults_resumes_with_its_own(tmp_path):
    resumed, saved = _started(tmp_path, OLD)
    with pytest.raises(UsageError, match="--ema 0.0"):
        prepare_run_dir(resumed)  # compared as such, today's defaults differ from the run's
    kept = keep_run_settings(resumed)
    assert recipe(kept) == OLD and kept.resume
    prepare_run_dir(kept)
    assert (tmp_path / "run" / "config.json").read_bytes() == saved  # the record is untouched


def test_a_run_from_before_the_recipe_fields_resumes_as_it_trained(tmp_path):
    fields = ("target_temperature", "mixup", "label_smoothing", "warmup", "ema",
              "color_jitter", "augment", "fit_batch_size")
    resumed, _ = _started(tmp_path, {**OLD, "target_temperature": 1.0, "fit_batch_size": None},
                          drop=fields)
    kept = keep_run_settings(resumed)
    assert recipe(kept) == OLD
    assert (kept.target_temperature, kept.fit_batch_size) == (1.0, None)
    prepare_run_dir(kept)
    assert {name: getattr(kept, name) for name in RUN_LEGACY} == RUN_LEGACY


def test_a_setting_given_on_purpose_is_still_compared(tmp_path):
    resumed, _ = _started(tmp_path, OLD)
    other = keep_run_settings(dataclasses.replace(resumed, ema=0.5))
    assert other.ema == 0.5 and other.learning_rate == 1e-3  # only the untouched ones kept
    with pytest.raises(UsageError, match="--ema 0.0"):
        prepare_run_dir(other)


def test_runs_under_todays_defaults_and_new_runs_are_left_alone(tmp_path):
    resumed, _ = _started(tmp_path, {})
    assert keep_run_settings(resumed) == resumed
    fresh = dataclasses.replace(resumed, resume=False, out=str(tmp_path / "new"))
    assert keep_run_settings(fresh) is fresh


def test_the_generated_query_attacks_keep_their_resume_rules(tmp_path):
    assert DataFreeConfig.run_legacy == {} and SyntheticConfig.run_legacy == {}
    resumed, _ = _started(tmp_path, {}, drop=("target_temperature",), cls=DataFreeConfig)
    assert keep_run_settings(resumed) == resumed
    prepare_run_dir(resumed)  # a field it lacks counts as today's default, as before
