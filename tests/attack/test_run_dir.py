"""Tests of the run folder on --resume: the same folder however it is spelled, and a refusal
that tells the user how to resume (never to start over and pay again); no server needed."""

from __future__ import annotations

import os

import pytest

from attack.config import KnockoffConfig
from attack.pipeline import prepare_run_dir
from common.errors import UsageError


def make(out, **changes) -> KnockoffConfig:
    values = dict(transfer_set="transfer.npz", backbone="cnn", weights="none", budget=400,
                  out=str(out))
    values.update(changes)
    return KnockoffConfig(**values)


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare_run_dir(make("runs/k1"))
    return tmp_path / "runs" / "k1"


@pytest.mark.parametrize("spelling", ["runs/k1/", "./runs/k1", "runs//k1", "ABS", "LINK"])
def test_resume_accepts_the_same_folder_however_it_is_spelled(run, spelling):
    if spelling == "ABS":
        spelling = str(run)
    elif spelling == "LINK":
        os.symlink(run, run.parent / "latest")
        spelling = "runs/latest"
    resumed = prepare_run_dir(make(spelling, resume=True))
    assert os.path.samefile(resumed, run)


def test_resume_accepts_a_path_setting_given_another_way(run):
    (run.parent.parent / "transfer.npz").write_bytes(b"")
    prepare_run_dir(make("runs/k1", resume=True,
                         transfer_set=str(run.parent.parent / "transfer.npz")))


def test_a_refused_resume_names_the_flags_to_give_back_and_never_a_new_out(run):
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(UsageError) as caught:
        prepare_run_dir(make("runs/k1/", resume=True, budget=500, strategy="adaptive"))
    message = str(caught.value)
    assert "`--resume`" in message
    assert "--budget 400 (now --budget 500)" in message
    assert "resume with --budget 400 --strategy random" in message
    assert "new --out" not in message and "none is paid again" in message
    assert sorted(p.name for p in run.iterdir()) == before


def test_an_unwritable_run_folder_is_one_usage_error_before_anything_is_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"`out`.*a_file is a file, not a folder"):
        prepare_run_dir(make(blocker / "run"))
    assert blocker.read_text() == "x"
