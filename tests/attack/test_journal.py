"""Tests of the query journal: round trip, never paying twice, torn tails, corruption, real kills.

The crash tests run a child process that journals answers in a loop, printing the running
count after each durable append, and kill it with SIGKILL at a random moment (fixed seeds);
every answer whose append returned before the kill must be there when the journal is reopened,
byte for byte, and the journal must take further appends. Torn tails are also made by hand
(a cut at every kind of position, a flipped CRC byte, zero fill, garbage) and corruption in the
middle must raise `JournalCorrupt` naming the file and the offset without touching the file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attack.journal as journal_module
from attack.journal import (
    FORMAT_VERSION,
    JOURNAL_NAME,
    JournalCorrupt,
    QueryJournal,
    release_unjournaled,
    unjournaled,
)
from attack.strategies import RandomStrategy
from common.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]
K = 5
HEADER_SIZE = 16


def rows(indices, width=K) -> np.ndarray:
    """Deterministic float32 answers, a different row for every index."""
    indices = np.asarray(indices, dtype=np.int64)[:, None]
    return (((indices * 31 + np.arange(width)) % 997) / 997.0).astype(np.float32)


def record_offsets(path: Path) -> list[tuple[int, int, int]]:
    """(offset, kind, payload length) of every record of an intact journal file."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        magic, kind, length, _ = struct.unpack_from("<4sB3xII", data, offset)
        assert magic == b"MXQJ"
        offsets.append((offset, kind, length))
        offset += HEADER_SIZE + length
    assert offset == len(data)
    return offsets


def frame(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<4sB3xI", b"MXQJ", kind, len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def three_answers(run_dir: Path) -> Path:
    """A journal with a header, a sent record and three answer records (indices 0..8)."""
    with QueryJournal.open(run_dir, num_classes=K, durable=False) as journal:
        journal.record_sent(np.arange(9))
        for start in (0, 3, 6):
            journal.record_answers(np.arange(start, start + 3), rows(np.arange(start, start + 3)))
    return run_dir / JOURNAL_NAME


# -- round trip and contract ------------------------------------------------------------


def test_answers_round_trip_in_answer_order(tmp_path):
    with QueryJournal.open(tmp_path, num_classes=K) as journal:
        assert journal.durable is True  # durable is the default
        assert journal.num_answered == 0 and journal.responses().shape == (0, K)
        journal.record_sent([7, 3, 11])
        journal.record_answers([11, 3], rows([11, 3]))
        journal.record_answers(np.array([7], dtype=np.int32), rows([7]).astype(np.float64))
        assert journal.num_answered == 3
    with QueryJournal.open(tmp_path) as again:
        np.testing.assert_array_equal(again.answered_indices(), [11, 3, 7])
        assert again.answered_indices().dtype == np.int64
        assert again.responses().dtype == np.float32
        np.testing.assert_array_equal(again.responses(), rows([11, 3, 7]))
        assert again.num_classes == K and again.pending().size == 0
        assert again.is_answered(3) and not again.is_answered(4)


def test_pending_lists_sent_but_unanswered_in_sending_order(tmp_path):
    with QueryJournal.open(tmp_path, durable=False) as journal:
        journal.record_sent([5, 1, 9])
        journal.record_sent([4, 1])
        journal.record_answers([1], rows([1]))
        np.testing.assert_array_equal(journal.pending(), [5, 9, 4])
    with QueryJournal.open(tmp_path, durable=False) as journal:
        np.testing.assert_array_equal(journal.pending(), [5, 9, 4])
        journal.record_sent([9])  # re-sending a pending query (paid or not) is allowed
        journal.record_answers([9, 5, 4], rows([9, 5, 4]))
        assert journal.pending().size == 0
    with QueryJournal.open(tmp_path) as journal:
        assert journal.pending().size == 0
        np.testing.assert_array_equal(journal.answered_indices(), [1, 9, 5, 4])


def test_answered_index_is_never_sent_or_returned_twice(tmp_path, caplog):
    with QueryJournal.open(tmp_path, num_classes=K, durable=False) as journal:
        journal.record_answers([0, 1], rows([0, 1]))
        size = journal.path.stat().st_size
        with pytest.raises(UsageError, match=r"`indices`.*already answered \(first: 1\)"):
            journal.record_sent([2, 1])
        assert journal.path.stat().st_size == size  # refused before writing anything
        assert journal.pending().size == 0
        with caplog.at_level(logging.WARNING, logger="attack.journal"):
            journal.record_answers([1, 2, 2], rows([1, 2, 2]) + 0.5)
        assert "first answer is kept" in caplog.text
        np.testing.assert_array_equal(journal.answered_indices(), [0, 1, 2])
        np.testing.assert_array_equal(journal.responses()[1], rows([1])[0])
        np.testing.assert_array_equal(journal.responses()[2], rows([2])[0] + 0.5)
        journal.record_answers([0], rows([0]))  # all repeats: nothing written
        assert journal.num_answered == 3
    with QueryJournal.open(tmp_path) as journal:
        np.testing.assert_array_equal(journal.answered_indices(), [0, 1, 2])


def test_repeated_answers_in_the_file_keep_the_first(tmp_path, caplog):
    path = three_answers(tmp_path)
    payload = struct.pack("<II", 2, K) + np.array([4, 20], "<i8").tobytes()
    payload += (rows([4, 20]) + 1).tobytes()
    with open(path, "ab") as handle:
        handle.write(frame(3, payload))
    with caplog.at_level(logging.WARNING, logger="attack.journal"):
        journal = QueryJournal.open(tmp_path)
    with journal:
        assert "first answer is kept" in caplog.text
        np.testing.assert_array_equal(journal.answered_indices(), list(range(9)) + [20])
        np.testing.assert_array_equal(journal.responses()[4], rows([4])[0])


def test_returned_arrays_are_read_only(tmp_path):
    with QueryJournal.open(tmp_path, durable=False) as journal:
        journal.record_sent([1])
        journal.record_answers([0], rows([0]))
        for array in (journal.answered_indices(), journal.responses(), journal.pending()):
            with pytest.raises(ValueError):
                array[0] = 1


def test_num_classes_is_fixed_by_the_header_or_the_first_answer(tmp_path):
    with QueryJournal.open(tmp_path / "a", num_classes=K, durable=False) as journal:
        with pytest.raises(UsageError, match=r"`responses`.*Received: responses='3 columns'"):
            journal.record_answers([0], np.ones((1, 3)))
        assert journal.num_answered == 0
    with pytest.raises(UsageError, match=r"`num_classes`.*num_classes=7.*Expected 5"):
        QueryJournal.open(tmp_path / "a", num_classes=7)
    with QueryJournal.open(tmp_path / "b", durable=False) as journal:  # K unknown until answered
        assert journal.num_classes is None
        journal.record_sent([0])
        journal.record_answers([0], np.full((1, 4), 0.25))
        assert journal.num_classes == 4
        with pytest.raises(UsageError, match="4 columns"):
            journal.record_answers([1], np.ones((1, 6)))
    with QueryJournal.open(tmp_path / "b") as journal:
        assert journal.num_classes == 4
    with pytest.raises(UsageError, match="num_classes=6"):
        QueryJournal.open(tmp_path / "b", num_classes=6)
    with QueryJournal.open(tmp_path / "c") as journal:  # no answers yet: K can still be given
        pass
    with QueryJournal.open(tmp_path / "c", num_classes=3) as journal:
        assert journal.num_classes == 3
        with pytest.raises(UsageError, match="3 columns"):
            journal.record_answers([1], np.ones((1, 2)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda j: j.record_sent(np.zeros((2, 2), np.int64)), r"`indices`.*shape \(2, 2\)"),
        (lambda j: j.record_sent([0.5]), r"`indices`.*dtype float64"),
        (lambda j: j.record_sent([3, -1]), r"`indices`.*minimum -1"),
        (lambda j: j.record_answers([1, 2], np.ones((3, K))), r"`responses`.*shape \(3, 5\)"),
        (lambda j: j.record_answers([1], np.ones(K)), r"`responses`.*shape \(5,\)"),
        (lambda j: j.record_answers([1], np.array([["a"] * K])), r"`responses`.*dtype <U1"),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, call, match):
    with QueryJournal.open(tmp_path, num_classes=K, durable=False) as journal:
        size = journal.path.stat().st_size
        with pytest.raises(UsageError, match=match):
            call(journal)
        assert journal.path.stat().st_size == size


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_bad_num_classes(tmp_path, value):
    with pytest.raises(UsageError, match="`num_classes`"):
        QueryJournal.open(tmp_path / "run", num_classes=value)
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="`run_dir`"):
        QueryJournal.open(tmp_path / "file")


def test_closed_journal_refuses_writes_but_keeps_its_answers(tmp_path):
    journal = QueryJournal.open(tmp_path, durable=False)
    journal.record_answers([3], rows([3]))
    journal.close()
    journal.close()
    assert journal.closed
    with pytest.raises(ValueError, match="closed"):
        journal.record_answers([4], rows([4]))
    np.testing.assert_array_equal(journal.answered_indices(), [3])


def test_one_writer_per_journal(tmp_path):
    with QueryJournal.open(tmp_path, durable=False):
        with pytest.raises(UsageError, match="in use by another process"):
            QueryJournal.open(tmp_path)
    QueryJournal.open(tmp_path).close()  # the lock goes with close


def test_large_batches_span_several_records(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "_MAX_PAYLOAD", 1000)  # 35 rows of K=5 a record
    with QueryJournal.open(tmp_path, num_classes=K, durable=False) as journal:
        journal.record_answers(np.arange(100), rows(np.arange(100)))
    kinds = [kind for _, kind, _ in record_offsets(tmp_path / JOURNAL_NAME)]
    assert kinds == [1, 3, 3, 3]
    with QueryJournal.open(tmp_path) as journal:
        np.testing.assert_array_equal(journal.responses(), rows(np.arange(100)))


def test_fsync_after_every_append_only_when_durable(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    with QueryJournal.open(tmp_path / "durable", num_classes=K) as journal:
        opened = len(calls)
        assert opened >= 1  # the header (and the directory entry)
        journal.record_sent([0])
        journal.record_answers([0], rows([0]))
        assert len(calls) == opened + 2
    calls.clear()
    with QueryJournal.open(tmp_path / "fast", num_classes=K, durable=False) as journal:
        journal.record_sent([0])
        journal.record_answers([0], rows([0]))
    assert calls == []


# -- interrupted and failed writes -------------------------------------------------------


def test_interrupted_write_is_rolled_back(tmp_path, monkeypatch):
    journal = QueryJournal.open(tmp_path, num_classes=K, durable=False)
    journal.record_answers([0], rows([0]))
    size = journal.path.stat().st_size
    real_write = os.write

    def half_then_ctrl_c(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.os, "write", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        journal.record_answers([1, 2], rows([1, 2]))
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert journal.path.stat().st_size == size
    assert journal.num_answered == 1
    journal.record_answers([1, 2], rows([1, 2]))  # the caller retries after the interrupt
    journal.close()
    with QueryJournal.open(tmp_path) as again:
        np.testing.assert_array_equal(again.answered_indices(), [0, 1, 2])


def test_failed_fsync_stops_writes_until_reopened(tmp_path, monkeypatch):
    journal = QueryJournal.open(tmp_path, num_classes=K)

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        journal.record_answers([0], rows([0]))
    with pytest.raises(OSError, match="reopen it"):
        journal.record_answers([1], rows([1]))
    monkeypatch.undo()
    journal.close()
    with QueryJournal.open(tmp_path) as again:  # what reached the file is read back
        np.testing.assert_array_equal(again.answered_indices(), [0])


# -- torn tails and corruption -------------------------------------------------------------


def test_torn_tail_is_cut_at_every_kind_of_position(tmp_path):
    pristine = three_answers(tmp_path / "pristine").read_bytes()
    last_offset, _, last_length = record_offsets(tmp_path / "pristine" / JOURNAL_NAME)[-1]
    cuts = [1, 4, 8, 15, HEADER_SIZE, HEADER_SIZE + 7, HEADER_SIZE + last_length - 1]
    for cut in cuts:
        run_dir = tmp_path / f"cut{cut}"
        run_dir.mkdir()
        (run_dir / JOURNAL_NAME).write_bytes(pristine[: last_offset + cut])
        with QueryJournal.open(run_dir) as journal:
            np.testing.assert_array_equal(journal.answered_indices(), np.arange(6))
            np.testing.assert_array_equal(journal.pending(), [6, 7, 8])
            assert journal.path.stat().st_size == last_offset + cut  # cut only to append
            journal.record_answers([6, 7, 8], rows([6, 7, 8]))
        with QueryJournal.open(run_dir) as journal:
            np.testing.assert_array_equal(journal.responses(), rows(np.arange(9)))
        assert (run_dir / JOURNAL_NAME).read_bytes() == pristine


@pytest.mark.parametrize(
    "damage",
    ["crc_byte", "payload_byte", "length_byte", "zero_fill", "garbage"],
)
def test_damaged_last_record_is_not_trusted(tmp_path, damage, caplog):
    path = three_answers(tmp_path)
    last_offset, _, _ = record_offsets(path)[-1]
    data = bytearray(path.read_bytes())
    if damage == "crc_byte":
        data[last_offset + 13] ^= 0xFF
    elif damage == "payload_byte":
        data[-1] ^= 0x01
    elif damage == "length_byte":
        data[last_offset + 8] ^= 0x04
    elif damage == "zero_fill":  # a crash that extended the file but never wrote the data
        data = data[:last_offset] + bytes(len(data) - last_offset + 4096)
    else:
        data += b"MXQJ\x03" + bytes(range(200))
        last_offset = len(path.read_bytes())
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="attack.journal"):
        journal = QueryJournal.open(tmp_path)
    with journal:
        assert f"torn tail at byte offset {last_offset}" in caplog.text
        expected = np.arange(9 if damage == "garbage" else 6)
        np.testing.assert_array_equal(journal.answered_indices(), expected)
        assert path.read_bytes() == bytes(data)  # left as found until the run appends
        journal.repair()
        assert path.stat().st_size == last_offset


def test_torn_header_of_a_new_journal_is_rewritten(tmp_path):
    QueryJournal.open(tmp_path, num_classes=K).close()
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(path.read_bytes()[:10])
    with QueryJournal.open(tmp_path, num_classes=K) as journal:
        journal.record_answers([0], rows([0]))
    with QueryJournal.open(tmp_path) as journal:
        assert journal.num_classes == K and journal.num_answered == 1
    path.write_bytes(b"")  # created, then killed before the header reached the disk
    with QueryJournal.open(tmp_path, num_classes=K) as journal:
        assert journal.num_answered == 0
    assert [kind for _, kind, _ in record_offsets(path)] == [1]


@pytest.mark.parametrize("where", ["payload", "crc", "length", "magic"])
def test_corruption_in_the_middle_raises_and_leaves_the_file(tmp_path, where):
    path = three_answers(tmp_path)
    offset, kind, length = record_offsets(path)[2]  # header, sent, [first answer], ...
    assert kind == 3
    data = bytearray(path.read_bytes())
    position = {"payload": offset + HEADER_SIZE + length // 2, "crc": offset + 12,
                "length": offset + 9, "magic": offset}[where]
    data[position] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=f"corrupt at byte offset {offset}") as caught:
        QueryJournal.open(tmp_path)
    assert caught.value.offset == offset and caught.value.path == path
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, UsageError)
    assert path.read_bytes() == bytes(data)


def test_a_file_that_is_not_a_journal_is_refused_untouched(tmp_path):
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(b"PK\x03\x04 some zip file")
    with pytest.raises(JournalCorrupt, match="byte offset 0: this is not a query journal"):
        QueryJournal.open(tmp_path)
    assert path.read_bytes() == b"PK\x03\x04 some zip file"


@pytest.mark.parametrize(
    ("header", "error", "match"),
    [
        ({"format": "mext-query-journal", "version": 99, "num_classes": 5}, UsageError,
         r"format version 99; this toolkit reads version 1"),
        ({"format": "something-else", "version": 1}, JournalCorrupt, "not a mext-query-journal"),
        ({"format": "mext-query-journal", "version": 1, "num_classes": 0}, JournalCorrupt,
         "num_classes=0"),
    ],
)
def test_header_from_another_format_or_version_is_refused(tmp_path, header, error, match):
    (tmp_path / JOURNAL_NAME).write_bytes(frame(1, json.dumps(header).encode()))
    with pytest.raises(error, match=match):
        QueryJournal.open(tmp_path)
    assert FORMAT_VERSION == 1


def test_records_out_of_place_are_corruption(tmp_path):
    (tmp_path / JOURNAL_NAME).write_bytes(frame(2, np.arange(3, dtype="<i8").tobytes()))
    with pytest.raises(JournalCorrupt, match="first record is a sent record"):
        QueryJournal.open(tmp_path)
    path = three_answers(tmp_path / "b")
    header = path.read_bytes()[: record_offsets(path)[1][0]]
    with open(path, "ab") as handle:
        handle.write(header)
    with pytest.raises(JournalCorrupt, match="a second journal header"):
        QueryJournal.open(tmp_path / "b")
    path = three_answers(tmp_path / "c")
    with open(path, "ab") as handle:  # intact CRC, inconsistent sizes: a writer bug, not a tear
        handle.write(frame(3, struct.pack("<II", 2, K) + bytes(8)))
    with pytest.raises(JournalCorrupt, match="answer record of 16 bytes for n=2, K=5"):
        QueryJournal.open(tmp_path / "c")


# -- property: whatever sequence of appends, reopening gives the same state --------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.sampled_from(["sent", "answer"]), st.lists(st.integers(0, 30), max_size=6)),
        max_size=12,
    ),
    st.integers(0, 40),
)
def test_reopen_reproduces_any_history(operations, tail_cut):
    with tempfile.TemporaryDirectory() as directory:
        answered: dict[int, np.ndarray] = {}
        pending: dict[int, None] = {}
        with QueryJournal.open(directory, num_classes=3, durable=False) as journal:
            for kind, indices in operations:
                if kind == "sent":
                    if any(index in answered for index in indices):
                        with pytest.raises(UsageError):
                            journal.record_sent(indices)
                        continue
                    journal.record_sent(indices)
                    pending.update(dict.fromkeys(indices))
                else:
                    journal.record_answers(indices, rows(indices, 3))
                    for index, row in zip(indices, rows(indices, 3)):
                        if index not in answered:
                            answered[index] = row
                            pending.pop(index, None)
        path = Path(directory) / JOURNAL_NAME
        with QueryJournal.open(directory) as journal:
            assert journal.answered_indices().tolist() == list(answered)
            assert journal.pending().tolist() == list(pending)
            np.testing.assert_array_equal(
                journal.responses(), np.array(list(answered.values())).reshape(-1, 3)
            )
        # A cut anywhere leaves a prefix of the history, never anything else.
        size = path.stat().st_size
        os.truncate(path, max(0, size - tail_cut))
        with QueryJournal.open(directory) as journal:
            got = journal.answered_indices().tolist()
            assert got == list(answered)[: len(got)]
            assert len(journal.responses()) == len(got)
            if got:
                np.testing.assert_array_equal(
                    journal.responses(), np.array([answered[i] for i in got])
                )


# -- performance ---------------------------------------------------------------------------


def test_appending_17600_answers_in_batches_of_64_round_trips(tmp_path):
    # A full-size attack's journal (its speed is measured by benchmarks.attack_throughput,
    # not asserted here: timed tests fail on loaded machines).
    width, total, batch = 200, 17_600, 64
    responses = np.random.default_rng(0).random((total, width), dtype=np.float32)
    with QueryJournal.open(tmp_path, num_classes=width, durable=False) as journal:
        for start in range(0, total, batch):
            indices = np.arange(start, min(start + batch, total))
            journal.record_sent(indices)
            journal.record_answers(indices, responses[indices])
    with QueryJournal.open(tmp_path) as journal:
        assert journal.num_answered == total and len(journal.pending()) == 0
        np.testing.assert_array_equal(journal.responses(), responses)


# -- real crashes: SIGKILL at a random moment ----------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys

    import numpy as np

    from attack.journal import QueryJournal

    run_dir, width, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with QueryJournal.open(run_dir, num_classes=width) as journal:
        next_index = journal.num_answered
        print("ready", next_index, flush=True)
        while True:
            indices = np.arange(next_index, next_index + batch)
            journal.record_sent(indices)
            column = np.arange(width)
            responses = (((indices[:, None] * 31 + column) % 997) / 997.0).astype(np.float32)
            journal.record_answers(indices, responses)
            next_index += batch
            print(journal.num_answered, flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_loses_no_returned_append(tmp_path, seed):
    rng = np.random.default_rng(seed)
    width, batch = 200, 64
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run_dir = tmp_path / "run"
    for round_ in range(3):  # crash, resume, crash again: tails torn by one kill are cut
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(run_dir), str(width), str(batch)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        first = child.stdout.readline().split()
        assert first and first[0] == "ready", child.communicate()[1]
        time.sleep(float(rng.uniform(0.01, 0.3)))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        counts = [int(line) for line in out.split()]
        acknowledged = counts[-1] if counts else int(first[1])
        with QueryJournal.open(run_dir, num_classes=width) as journal:
            answered = journal.num_answered
            assert acknowledged <= answered <= acknowledged + batch, (round_, acknowledged)
            indices = journal.answered_indices()
            np.testing.assert_array_equal(indices, np.arange(answered))
            expected = (((indices[:, None] * 31 + np.arange(width)) % 997) / 997.0)
            np.testing.assert_array_equal(journal.responses(), expected.astype(np.float32))
            assert set(journal.pending().tolist()) <= set(range(answered, answered + batch))
    assert answered > 0


# -- a journal cut short: nothing rewritten on a failing exit, lost images given back ----------


def test_a_torn_journal_is_left_as_found_when_the_run_stops_before_appending(tmp_path):
    path = three_answers(tmp_path)
    last_offset = record_offsets(path)[-1][0]
    torn = path.read_bytes()[:-7]
    path.write_bytes(torn)
    with QueryJournal.open(tmp_path) as journal:  # read, then the command fails
        assert journal.torn_tail == (last_offset, len(torn) - last_offset)
        with pytest.raises(UsageError):
            journal.record_sent([0])  # already answered: refused before anything is written
    assert path.read_bytes() == torn
    with QueryJournal.open(tmp_path) as journal:  # the run proceeds: cut, then appended
        journal.record_sent([9])
        assert journal.torn_tail is None
    with QueryJournal.open(tmp_path) as journal:
        assert journal.torn_tail is None and journal.pending().tolist() == [6, 7, 8, 9]


def test_release_unjournaled_gives_the_lost_images_back_to_the_strategy(tmp_path):
    # The README's case: a budget equal to the transfer set, every image asked, then the journal
    # is cut short (a torn copy): the images whose records were lost must be asked again.
    num_items = 12
    strategy = RandomStrategy(num_items, seed=3)
    with QueryJournal.open(tmp_path, num_classes=K, durable=False) as journal:
        for _ in range(3):
            batch = strategy.select(4)
            journal.record_sent(batch)
            journal.record_answers(batch, rows(batch))
    saved = json.loads(json.dumps(strategy.state()))
    assert strategy.remaining == 0
    path = tmp_path / JOURNAL_NAME
    offsets = record_offsets(path)
    path.write_bytes(path.read_bytes()[:offsets[-2][0] + 5])  # the last sent+answer pair torn

    with QueryJournal.open(tmp_path) as journal:
        answered, pending = journal.answered_indices().copy(), journal.pending().copy()
        lost = unjournaled(saved["used"], journal)
        state, released = release_unjournaled(saved, journal)
    assert len(answered) == 8 and len(pending) == 0
    np.testing.assert_array_equal(lost, np.setdiff1d(np.arange(num_items), answered))
    np.testing.assert_array_equal(released, lost)
    assert len(saved["used"]) == num_items  # the caller's state is not modified
    resumed = RandomStrategy(num_items, seed=3, exclude=answered)
    resumed.load_state(state)
    assert resumed.remaining == 4
    np.testing.assert_array_equal(np.sort(resumed.select(4)), lost)
    # nothing lost: the state comes back as it was
    with QueryJournal.open(tmp_path) as journal:
        journal.record_sent(lost)
        journal.record_answers(lost, rows(lost))
        same, none = release_unjournaled(saved, journal)
    assert same is saved and len(none) == 0
