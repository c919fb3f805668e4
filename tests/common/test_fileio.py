"""Tests of `check_writable`: the probe every command runs on its outputs before paid work."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from common.errors import UsageError
from common.fileio import check_writable, write_error


def test_a_missing_folder_under_a_writable_one_passes_and_nothing_is_created(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert check_writable(target, "out") == target
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe left behind
    (tmp_path / "file.json").write_text("{}")
    check_writable(tmp_path / "file.json", "report", kind="file")
    assert (tmp_path / "file.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_path_through_a_regular_file_is_refused_naming_the_argument(tmp_path, kind):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(UsageError, match=r"`out`.*blocker is a file, not a folder") as caught:
        check_writable(tmp_path / "blocker" / "deeper" / "x", "out", kind=kind)
    assert caught.value.argument == "out"


def test_a_folder_where_a_file_is_expected_is_refused(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        check_writable(tmp_path, "report", kind="file")


def test_a_folder_that_refuses_new_files_is_refused(tmp_path, monkeypatch):
    # Root writes through permission bits, so the refusal a read-only mount gives is simulated
    # at the one call the probe makes.
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UsageError, match=r"`out`.*cannot be written: a read-only file system"):
        check_writable(tmp_path / "run", "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="permission denied"):
            check_writable(locked / "run", "out")
    finally:
        locked.chmod(0o700)


def test_write_error_is_one_line_naming_the_argument(tmp_path):
    err = write_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")),
                      "out", tmp_path)
    assert "`out`" in str(err) and "no space left" in str(err) and "\n" not in str(err)
