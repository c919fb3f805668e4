"""The detector CLIs refuse an output they cannot write in one line, before loading or training
anything (issue 17: every file a command writes is checked first)."""

from __future__ import annotations

import pytest

from detector.evaluate import main as evaluate_main
from detector.train import main as train_main


@pytest.fixture()
def blocker(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_refuses_an_unwritable_work_dir_before_training(tmp_path, blocker, capsys):
    argv = ["--benign", "missing_benign.npz", "--attack", "missing_attack.npz",
            "--weights", "none", "--out", str(tmp_path / "det" / "ood" / "1"),
            "--work-dir", str(blocker / "work")]
    assert train_main(argv) == 2
    line = _one_line(capsys)
    assert "`--work-dir`" in line and "a_file is a file, not a folder" in line
    assert not (tmp_path / "det").exists()


def test_train_refuses_an_unwritable_out_before_reading_the_data(blocker, capsys):
    argv = ["--benign", "missing_benign.npz", "--attack", "missing_attack.npz",
            "--weights", "none", "--out", str(blocker / "ood" / "1")]
    assert train_main(argv) == 2
    line = _one_line(capsys)
    assert "`--out`" in line and "is a file, not a folder" in line
    assert "missing_benign" not in line  # the output is checked before the data is looked at


def test_evaluate_refuses_an_unwritable_out(tmp_path, blocker, capsys):
    argv = ["--detector", str(tmp_path), "--benign", "b.npz", "--attack", "a.npz",
            "--out", str(blocker / "evaluation")]
    assert evaluate_main(argv) == 2
    line = _one_line(capsys)
    assert "`--out`" in line and "is a file, not a folder" in line
