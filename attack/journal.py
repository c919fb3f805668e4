"""The query journal: every answer the victim gave, on disk as soon as it arrives.

Knockoff Nets (Orekondy et al., CVPR 2019) pays the victim per query; the reference code keeps
the answers in memory and pickles them at the end, so a crash loses every query it paid for.
`QueryJournal` is the opposite: an append-only file, ``RUN_DIR/journal.bin``, to which each
batch of answers is written and fsynced before `record_answers` returns. Ctrl-C, a crash or
``kill -9`` at any moment loses no answer whose `record_answers` call returned, and a resumed run
reads the journal back and never sends an answered query again (`record_sent` refuses it).

File format (version 1, all integers little-endian). The file is a sequence of records::

    offset  size  field
    0       4     magic b"MXQJ"
    4       1     kind: 1 = header, 2 = sent, 3 = answer
    5       3     reserved, zero
    8       4     payload length in bytes (uint32)
    12      4     CRC-32 (zlib.crc32) of bytes 0..11 followed by the payload
    16      len   payload

Payloads:

* header (always the first record, exactly once): UTF-8 JSON
  ``{"format": "mext-query-journal", "version": 1, "num_classes": K or null}``.
  When K is null it is fixed by the first answer record; every answer has the same width.
* sent: int64 transfer-set indices, written (and fsynced) before the request goes out. Indices
  that were sent and never answered are `pending` after a crash: they may have been paid for.
* answer: uint32 n, uint32 K, then int64 indices [n], then float32 responses [n, K] (row-major).
  One `record_answers` call writes one or more answer records with a single write and fsync.

Reading the file back, a record whose header is cut short, whose length runs past the end of
the file, or whose CRC does not match is a *torn tail* when no valid record follows it (the
process died inside a write): it is logged and never trusted, and cut off (the file truncated to
the last good record) only when the run proceeds, just before the next record is appended
(`repair` does it at once): a command that stops with an error leaves the file as it found it.
A bad record *followed* by a valid one is corruption in the middle of the journal (a disk or a
hand edit, not a crash) and raises `JournalCorrupt` naming the file and the byte offset. Only
one process may append to a journal at a time (an advisory `flock`).

A journal cut short (a torn copy, a full disk) has lost answers, and a sampling strategy whose
saved state marks those images as used would never ask them again: `release_unjournaled` gives
a saved strategy state back every image the journal holds no record of (neither sent nor
answered), so that a resumed run asks them again and can still reach its budget.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from common.constraints import check_int, is_int
from common.errors import UsageError, invalid

try:  # POSIX: one writer per journal; elsewhere the lock is skipped.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "JOURNAL_NAME",
    "JournalCorrupt",
    "QueryJournal",
    "release_unjournaled",
    "unjournaled",
]

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.bin"
FORMAT_NAME = "mext-query-journal"
FORMAT_VERSION = 1

MAGIC = b"MXQJ"
KIND_HEADER = 1
KIND_SENT = 2
KIND_ANSWER = 3
_KIND_NAMES = {KIND_HEADER: "header", KIND_SENT: "sent", KIND_ANSWER: "answer"}

_HEADER = struct.Struct("<4sB3xII")  # magic, kind, reserved, payload length, crc32
_ANSWER_HEAD = struct.Struct("<II")  # n, K
# One answer record holds at most this many payload bytes; bigger batches span several records.
_MAX_PAYLOAD = 64 * 1024 * 1024
# Torn tails already reported by this process: (file, offset, size).
_TORN_REPORTED: set[tuple[str, int, int]] = set()


class JournalCorrupt(UsageError):
    """The journal is damaged somewhere other than its last record (or is not a journal)."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"Query journal {path} is corrupt at byte offset {offset}: {reason}. It was not "
            "modified; restore it from a backup or start a new run directory."
        )


def _frame(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<4sB3xI", MAGIC, kind, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def _valid_record_at(data: memoryview, offset: int) -> tuple[int, int] | None:
    """(kind, payload length) of an intact record starting at `offset`, else None."""
    if offset + _HEADER.size > len(data):
        return None
    magic, kind, length, crc = _HEADER.unpack_from(data, offset)
    if magic != MAGIC or kind not in _KIND_NAMES:
        return None
    end = offset + _HEADER.size + length
    if end > len(data):
        return None
    if zlib.crc32(data[offset + _HEADER.size : end], zlib.crc32(data[offset : offset + 12])) != crc:
        return None
    return kind, length


def _defect(data: memoryview, offset: int) -> str:
    """Why the record at `offset` is not intact (for the log and the error)."""
    if offset + _HEADER.size > len(data):
        return f"record header cut short ({len(data) - offset} of {_HEADER.size} bytes)"
    magic, kind, length, _ = _HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return f"bad record magic {bytes(magic)!r}"
    if kind not in _KIND_NAMES:
        return f"unknown record kind {kind}"
    if offset + _HEADER.size + length > len(data):
        return f"payload of {length} bytes runs past the end of the file ({len(data)} bytes)"
    return f"CRC mismatch in the {_KIND_NAMES[kind]} record"


def _next_valid_record(raw: bytes, data: memoryview, start: int) -> int | None:
    """Offset of the first intact record at or after `start`, else None."""
    position = raw.find(MAGIC, start)
    while position != -1:
        if _valid_record_at(data, position) is not None:
            return position
        position = raw.find(MAGIC, position + 1)
    return None


def _check_num_classes(num_classes: int | None) -> int | None:
    if num_classes is None:
        return None
    return int(check_int("num_classes", num_classes, min=1))


def _as_indices(indices: Any) -> np.ndarray:
    array = np.asarray(indices)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise invalid(
            "indices", f"array of dtype {array.dtype} and shape {array.shape}",
            "a 1-D array of integer transfer-set indices",
        )
    if array.size and array.min() < 0:
        raise invalid("indices", f"array with minimum {array.min()}", "non-negative indices")
    return array.astype("<i8", copy=False)


class QueryJournal:
    """Append-only, crash-safe record of the queries sent to the victim and its answers.

    Use `QueryJournal.open(run_dir)` (or the constructor) as a context manager. `durable=False`
    skips the fsyncs (tests, benchmarks): the journal then survives a killed process but not a
    power cut. Arrays returned by `answered_indices`, `responses` and `pending` are read-only.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], *, num_classes: int | None = None,
        durable: bool = True,
    ) -> None:
        num_classes = _check_num_classes(num_classes)
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise invalid("run_dir", str(run_dir), "a directory (or a path to create)")
        self.path = run_dir / JOURNAL_NAME
        self.durable = bool(durable)
        self._num_classes: int | None = None  # what the file says; reconciled in _load
        self._index_chunks: list[np.ndarray] = []
        self._response_chunks: list[np.ndarray] = []
        self._answered: set[int] = set()
        self._pending: dict[int, None] = {}  # insertion-ordered set
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self._failed: BaseException | None = None
        self._fd: int | None = None
        self.torn_tail: tuple[int, int] | None = None  # (offset, bytes) until repaired
        self._needs_header = False

        run_dir.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise UsageError(
                        f"Query journal {self.path} is in use by another process (or another "
                        "QueryJournal in this one); one run directory takes one writer."
                    ) from None
            if created and self.durable:
                self._fsync_dir(run_dir)
            self._fd = fd
            self._load(num_classes)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    @classmethod
    def open(
        cls, run_dir: str | os.PathLike[str], *, num_classes: int | None = None,
        durable: bool = True,
    ) -> QueryJournal:
        """Open (or create) ``run_dir/journal.bin``; a torn tail is cut, other damage raises."""
        return cls(run_dir, num_classes=num_classes, durable=durable)

    # -- reading back -------------------------------------------------------------------

    def _load(self, num_classes: int | None) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, size, 0) if size else b""
        if len(raw) != size:  # pragma: no cover - a file that shrank under us
            raise JournalCorrupt(self.path, len(raw), "the file changed while it was read")
        data = memoryview(raw)
        if raw and not MAGIC.startswith(raw[:4]) and raw.strip(b"\0"):
            raise JournalCorrupt(self.path, 0, "this is not a query journal (bad magic)")

        offset = 0
        header_seen = False
        while offset < len(data):
            record = _valid_record_at(data, offset)
            if record is None:
                reason = _defect(data, offset)
                following = _next_valid_record(raw, data, offset + 1)
                if following is not None:
                    raise JournalCorrupt(
                        self.path, offset, f"{reason}, with an intact record at byte {following}"
                    )
                seen = (str(self.path.resolve()), offset, len(data))
                logger.log(  # once per torn file and process: a run opens its journal often
                    logging.DEBUG if seen in _TORN_REPORTED else logging.WARNING,
                    "Query journal %s: torn tail at byte offset %d (%s); the %d bytes that a "
                    "killed write left behind are ignored, and cut before the next record is "
                    "appended.", self.path, offset, reason, len(data) - offset,
                )
                _TORN_REPORTED.add(seen)
                self.torn_tail = (offset, len(data) - offset)
                break
            kind, length = record
            payload = data[offset + _HEADER.size : offset + _HEADER.size + length]
            if not header_seen:
                if kind != KIND_HEADER:
                    raise JournalCorrupt(
                        self.path, offset, f"first record is a {_KIND_NAMES[kind]} record, "
                        "not the journal header"
                    )
                self._read_header(bytes(payload), offset)
                header_seen = True
            elif kind == KIND_HEADER:
                raise JournalCorrupt(self.path, offset, "a second journal header")
            elif kind == KIND_SENT:
                if length % 8:
                    raise JournalCorrupt(self.path, offset, f"sent payload of {length} bytes")
                self._apply_sent(np.frombuffer(payload, dtype="<i8"))
            else:
                indices, responses = self._decode_answer(payload, offset)
                self._apply_answers(indices, responses, source=f"record at byte {offset}")
            offset += _HEADER.size + length

        if num_classes is not None:
            if self._num_classes is None:
                self._num_classes = num_classes
            elif self._num_classes != num_classes:
                raise invalid(
                    "num_classes", num_classes,
                    f"{self._num_classes}, the number of classes of {self.path}",
                )
        if not header_seen:
            self._needs_header = True
            if not raw:  # a new journal: its header now (a torn one waits for the repair)
                self._append(b"")
        logger.info(
            "Query journal %s: %d answered, %d pending.", self.path, self.num_answered,
            len(self._pending),
        )

    def _header_payload(self) -> bytes:
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                  "num_classes": self._num_classes}
        return json.dumps(header, sort_keys=True).encode("utf-8")

    def _read_header(self, payload: bytes, offset: int) -> None:
        try:
            header = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise JournalCorrupt(self.path, offset, "unreadable journal header") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise JournalCorrupt(self.path, offset, f"not a {FORMAT_NAME} header: {header!r}")
        if header.get("version") != FORMAT_VERSION:
            raise UsageError(
                f"Query journal {self.path} has format version {header.get('version')!r}; this "
                f"toolkit reads version {FORMAT_VERSION}. Use the toolkit version that wrote it "
                "or start a new run directory."
            )
        stored = header.get("num_classes")
        if stored is not None:
            if not is_int(stored) or stored < 1:
                raise JournalCorrupt(self.path, offset, f"num_classes={stored!r} in the header")
            self._num_classes = stored

    def _decode_answer(self, payload: memoryview, offset: int) -> tuple[np.ndarray, np.ndarray]:
        if len(payload) < _ANSWER_HEAD.size:
            raise JournalCorrupt(self.path, offset, "answer record without its size fields")
        n, width = _ANSWER_HEAD.unpack_from(payload, 0)
        expected = _ANSWER_HEAD.size + 8 * n + 4 * n * width
        if len(payload) != expected or width < 1:
            raise JournalCorrupt(
                self.path, offset,
                f"answer record of {len(payload)} bytes for n={n}, K={width}",
            )
        if self._num_classes is None:
            self._num_classes = width
        elif width != self._num_classes:
            raise JournalCorrupt(
                self.path, offset, f"answer width {width} after answers of width "
                f"{self._num_classes}",
            )
        start = _ANSWER_HEAD.size
        indices = np.frombuffer(payload, dtype="<i8", count=n, offset=start)
        responses = np.frombuffer(payload, dtype="<f4", count=n * width, offset=start + 8 * n)
        return indices, responses.reshape(n, width)

    # -- in-memory state ----------------------------------------------------------------

    def _apply_sent(self, indices: np.ndarray) -> None:
        for index in indices.tolist():
            if index not in self._answered:
                self._pending[index] = None

    def _apply_answers(self, indices: np.ndarray, responses: np.ndarray, *, source: str) -> None:
        keep = self._first_answers(indices)
        if not keep.all():
            logger.warning(
                "Query journal %s: %d answer(s) in %s repeat an index already answered; "
                "the first answer is kept.", self.path, int((~keep).sum()), source,
            )
            indices, responses = indices[keep], responses[keep]
        if not len(indices):
            return
        indices.flags.writeable = False
        responses.flags.writeable = False
        self._index_chunks.append(indices)
        self._response_chunks.append(responses)
        self._cache = None
        for index in indices.tolist():
            self._answered.add(index)
            self._pending.pop(index, None)

    def _first_answers(self, indices: np.ndarray) -> np.ndarray:
        """Mask of the entries that are the first answer for their index."""
        keep = np.ones(len(indices), dtype=bool)
        seen: set[int] = set()
        for position, index in enumerate(indices.tolist()):
            if index in self._answered or index in seen:
                keep[position] = False
            seen.add(index)
        return keep

    # -- appending ----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._fd is None:
            raise ValueError(f"Query journal {self.path} is closed.")
        if self._failed is not None:
            raise OSError(
                f"Query journal {self.path} stopped accepting writes after a failed fsync "
                f"({self._failed}); reopen it to continue from what is on disk."
            )

    def repair(self) -> None:
        """Cut a torn tail off the file (and write a missing header) now, before appending."""
        self._check_writable()
        self._append(b"")

    def _append(self, blob: bytes) -> None:
        """`_write` `blob` after repairing the file: the torn tail cut, the header in place."""
        assert self._fd is not None
        if self.torn_tail is not None:
            offset, length = self.torn_tail
            os.ftruncate(self._fd, offset)
            if self.durable:
                os.fsync(self._fd)
            logger.warning("Query journal %s: cut the torn tail of %d bytes at byte offset %d.",
                           self.path, length, offset)
            self.torn_tail = None
        if self._needs_header:
            blob = _frame(KIND_HEADER, self._header_payload()) + blob
        if blob:
            self._write(blob)
        self._needs_header = False

    def _write(self, blob: bytes) -> None:
        """Append `blob` with O_APPEND; a partial write is rolled back, then fsync."""
        assert self._fd is not None
        fd = self._fd
        start: int | None = None
        try:
            start = os.fstat(fd).st_size
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            # Interrupted (Ctrl-C, disk full) part-way: take the partial record back out so the
            # next append does not land behind a torn one. A complete record stays.
            if start is not None:
                try:
                    if os.fstat(fd).st_size != start + len(blob):
                        os.ftruncate(fd, start)
                except OSError as error:
                    self._failed = error
            raise
        if self.durable:
            try:
                os.fsync(fd)
            except OSError as error:
                self._failed = error  # after a failed fsync the page cache cannot be trusted
                raise

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory handles
            return
        try:
            os.fsync(dir_fd)
        except OSError:  # pragma: no cover - file systems that refuse directory fsync
            pass
        finally:
            os.close(dir_fd)

    def record_sent(self, indices: Any) -> None:
        """Journal the intent to query `indices` (fsynced before the request goes out).

        Raises `UsageError` (writing nothing) when one of them was already answered: the journal
        is how a run avoids paying twice for the same query.
        """
        self._check_writable()
        indices = _as_indices(indices)
        again = [index for index in indices.tolist() if index in self._answered]
        if again:
            raise invalid(
                "indices", f"{len(again)} already answered (first: {again[0]})",
                "indices without an answer in the journal (answered queries are never re-sent)",
            )
        if not len(indices):
            return
        self._append(_frame(KIND_SENT, indices.tobytes()))
        self._apply_sent(indices)

    def record_answers(self, indices: Any, responses: Any) -> None:
        """Journal the victim's answers (fsynced before this returns).

        `responses` is float [n, K]; K is fixed by the journal's header or its first answer.
        An index that already has an answer keeps its first one (a warning is logged).
        """
        self._check_writable()
        indices = _as_indices(indices)
        responses = np.asarray(responses)
        if (
            responses.ndim != 2
            or responses.shape[0] != len(indices)
            or not (responses.size == 0 or np.issubdtype(responses.dtype, np.number))
        ):
            raise invalid(
                "responses", f"array of dtype {responses.dtype} and shape {responses.shape}",
                f"a numeric array of shape [{len(indices)}, K], one row per index",
            )
        width = responses.shape[1]
        if width < 1 or (self._num_classes is not None and width != self._num_classes):
            expected = self._num_classes if self._num_classes is not None else "K >= 1"
            raise invalid(
                "responses", f"{width} columns", f"{expected} columns (the journal's width)",
            )
        if not len(indices):
            return
        responses = np.ascontiguousarray(responses, dtype="<f4")
        keep = self._first_answers(indices)
        if not keep.all():
            logger.warning(
                "Query journal %s: %d answer(s) repeat an index already answered; the first "
                "answer is kept.", self.path, int((~keep).sum()),
            )
            indices, responses = indices[keep], responses[keep]
            if not len(indices):
                return
        rows_per_record = max(1, (_MAX_PAYLOAD - _ANSWER_HEAD.size) // (8 + 4 * width))
        frames = []
        for start in range(0, len(indices), rows_per_record):
            part_indices = np.ascontiguousarray(indices[start : start + rows_per_record])
            part_responses = responses[start : start + rows_per_record]
            payload = b"".join((
                _ANSWER_HEAD.pack(len(part_indices), width),
                part_indices.tobytes(),
                part_responses.tobytes(),
            ))
            frames.append(_frame(KIND_ANSWER, payload))
        self._append(b"".join(frames))
        if self._num_classes is None:
            self._num_classes = width
        self._apply_answers(indices.copy(), responses.copy(), source="this call")

    # -- queries ------------------------------------------------------------------------

    def _concatenated(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            width = self._num_classes or 0
            if self._index_chunks:
                indices = np.concatenate(self._index_chunks)
                responses = np.concatenate(self._response_chunks)
            else:
                indices = np.zeros(0, dtype=np.int64)
                responses = np.zeros((0, width), dtype=np.float32)
            indices = indices.astype(np.int64, copy=False)
            responses = responses.astype(np.float32, copy=False)
            indices.flags.writeable = False
            responses.flags.writeable = False
            self._cache = (indices, responses)
        return self._cache

    def answered_indices(self) -> np.ndarray:
        """int64 [n]: every answered index once, in the order the answers were journaled."""
        return self._concatenated()[0]

    def responses(self) -> np.ndarray:
        """float32 [n, K]: the answers, row i for `answered_indices()[i]`."""
        return self._concatenated()[1]

    def pending(self) -> np.ndarray:
        """int64: indices sent but never answered (in flight at a crash), in sending order."""
        array = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        array.flags.writeable = False
        return array

    def is_answered(self, index: int) -> bool:
        """Whether `index` already has an answer in the journal."""
        return int(index) in self._answered

    @property
    def num_answered(self) -> int:
        """How many distinct indices have an answer."""
        return len(self._answered)

    @property
    def num_classes(self) -> int | None:
        """K, the width of every answer (None until it is known)."""
        return self._num_classes

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Release the file (and its lock); the answers stay readable in memory."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> QueryJournal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def __repr__(self) -> str:
        return (
            f"QueryJournal({str(self.path)!r}, answered={self.num_answered}, "
            f"pending={len(self._pending)}, num_classes={self._num_classes})"
        )


def unjournaled(used: Any, journal: QueryJournal) -> np.ndarray:
    """int64, sorted: the indices in `used` that `journal` holds no record of, neither an answer
    nor a sent record (their records were lost when the journal was cut short)."""
    used = np.unique(_as_indices(np.asarray(used, dtype=np.int64)))
    known = np.union1d(journal.answered_indices(), journal.pending())
    return np.setdiff1d(used, known).astype(np.int64)


def release_unjournaled(state: dict[str, Any], journal: QueryJournal
                        ) -> tuple[dict[str, Any], np.ndarray]:
    """A sampling strategy's saved `state` with the images `journal` lost given back.

    `state` is what ``strategy.state()`` wrote (``strategy.json``): its ``used`` list marks the
    images already asked. Those the journal holds no record of (`unjournaled`) are taken out of
    ``used`` (and out of an adaptive strategy's ``pending`` walks), so the resumed run selects
    them again. Returns (the new state, the released indices); `state` itself is not modified.
    """
    if not isinstance(state, dict) or not isinstance(state.get("used"), list):
        return state, np.zeros(0, dtype=np.int64)
    try:
        lost = unjournaled(state["used"], journal)
    except UsageError:
        return state, np.zeros(0, dtype=np.int64)  # load_state reports a malformed state
    if not len(lost):
        return state, lost
    gone = set(lost.tolist())
    state = dict(state)
    state["used"] = [index for index in state["used"] if index not in gone]
    if isinstance(state.get("pending"), list):
        state["pending"] = [entry for entry in state["pending"]
                            if not (isinstance(entry, list) and entry and entry[0] in gone)]
    logger.warning(
        "Query journal %s holds no record of %d image(s) that the saved strategy state marks "
        "as asked (the journal was cut short: a torn copy or a full disk); they go back to the "
        "pool and are asked again.", journal.path, len(lost),
    )
    return state, lost
