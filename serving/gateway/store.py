"""The gateway's per-client state and audit log, in SQLite (one gateway) or Redis (replicas).

Per client: its key record (SHA-256 of the key, never the key; optional budget/rate/burst
overrides; revoked flag), its usage (queries charged, token bucket), its detector state (the
sliding-window verdict history of `detector.aggregate` as JSON, PRADA's growing sets as the bytes
of `detector.prada.dumps`, the flag) and an append-only audit log of every decision (time,
client, method, model, rows, verdicts, action, status code; never the key), and its DAWN
watermark set (`add_watermarks`, `watermarks`: each watermarked query's image and labels, written
before the answer leaves, kept across restarts).

A request goes through `admit` (token bucket + budget reservation, atomic), then, once the answer
is known, `commit` (charge, detector state and audit record together) or `cancel` (no answer was
given: the reservation is released). A refusal only appends an audit record (`audit`).

Durability guarantees (what a SIGKILL of the gateway can lose):

* `SQLiteStore`: WAL journal, `synchronous=NORMAL` by default. `commit` and `audit` run one
  transaction each and return only after it is committed, and the server calls them *before*
  it hands the answer to gRPC. So every answered request's charge, detector update and audit
  record are in the database file (WAL) when the client can first see the answer; a SIGKILL of
  the gateway loses none of them. What it loses: requests in flight at the kill (admitted, not
  answered): they were never charged and never answered. Power loss or an OS crash can drop the
  last transactions under NORMAL; pass `synchronous="FULL"` (`sqlite:PATH?synchronous=FULL`) to
  fsync each commit as well. One SQLite file serves one gateway process (reservations of
  requests in flight live in its memory); use Redis for several replicas.
* `RedisStore`: `admit` charges the budget in Redis at once (WATCH/MULTI), `cancel` gives it
  back, `commit` writes detector state and audit record in one MULTI/EXEC. A gateway killed
  between admit and answer leaves that request charged without an answer (never the other way
  round). Durability beyond a Redis restart is Redis's own (`appendonly yes` for the same
  guarantee as SQLite). Detector state of one client updated by two replicas at the same instant
  is last-writer-wins; budgets and rate limits are exact across replicas.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from common.errors import UsageError, invalid
from detector.watermark import WatermarkRecord
from serving.gateway.config import parse_state_url

__all__ = [
    "AuditRecord",
    "ClientRecord",
    "DetectorState",
    "Limits",
    "RedisStore",
    "Refusal",
    "SQLiteStore",
    "StateStore",
    "new_record",
    "open_store",
]


@dataclass(frozen=True)
class ClientRecord:
    """A client as the key table knows it. None limits mean "the policy's"."""

    name: str
    key_hash: str
    budget: int | None = None
    rate: float | None = None
    burst: float | None = None
    revoked: bool = False
    created: float = 0.0


@dataclass
class DetectorState:
    """A client's detector memory: OOD window state, PRADA bytes, and whether it is flagged."""

    ood: dict | None = None
    prada: bytes | None = None
    flagged: bool = False
    flagged_by: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """One decision. `client` is None when no known key was presented."""

    time: float
    client: str | None
    method: str
    model: str
    rows: int
    verdicts: dict = field(default_factory=dict)
    action: str = "pass"
    code: str = "OK"
    message: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "AuditRecord":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Limits:
    budget: int | None
    rate: float
    burst: float


class Refusal(NamedTuple):
    limit: str  # "budget" or "rate"
    message: str


def _budget_refusal(name: str, used: int, budget: int, rows: int) -> Refusal:
    return Refusal("budget", f"Query budget exceeded for client '{name}': {used} of {budget} "
                             f"queries used, this request asks for {rows} more "
                             "(limit: budget)")


def _rate_refusal(name: str, limits: Limits) -> Refusal:
    return Refusal("rate", f"Rate limit exceeded for client '{name}': {limits.rate:g} requests "
                           f"per second, burst {limits.burst:g} (limit: rate_per_second)")


def _refill(tokens: float | None, at: float | None, now: float, limits: Limits) -> float:
    if tokens is None or at is None:
        return float(limits.burst)
    return min(float(limits.burst), tokens + max(0.0, now - at) * limits.rate)


class StateStore(Protocol):
    """What the gateway needs from a state backend (both backends below implement it)."""

    def find_client(self, key_hash: str) -> ClientRecord | None: ...
    def admit(self, name: str, rows: int, limits: Limits, now: float) -> Refusal | None: ...
    def cancel(self, name: str, rows: int) -> None: ...
    def load_detectors(self, name: str) -> DetectorState: ...
    def commit(self, name: str, rows: int, detectors: DetectorState | None,
               record: AuditRecord) -> None: ...
    def audit(self, record: AuditRecord) -> None: ...
    def usage(self, name: str) -> int: ...
    def add_client(self, record: ClientRecord) -> None: ...
    def get_client(self, name: str) -> ClientRecord | None: ...
    def list_clients(self) -> list[ClientRecord]: ...
    def revoke(self, name: str) -> None: ...
    def rotate(self, name: str, key_hash: str) -> None: ...
    def audit_records(self, limit: int | None = None) -> list[AuditRecord]: ...
    def add_watermarks(self, records: list) -> None: ...
    def watermarks(self, client: str) -> list: ...
    def close(self) -> None: ...


def _unknown_client(name: str) -> UsageError:
    return invalid("client", name, "the name of a client added with `keys add`")


# -- SQLite ------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, budget INTEGER, rate REAL,
    burst REAL, revoked INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    name TEXT PRIMARY KEY, used INTEGER NOT NULL DEFAULT 0, tokens REAL, tokens_at REAL);
CREATE TABLE IF NOT EXISTS detectors (
    name TEXT PRIMARY KEY, ood TEXT, prada BLOB, flagged INTEGER NOT NULL DEFAULT 0,
    flagged_by TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, client TEXT, method TEXT NOT NULL,
    model TEXT NOT NULL, rows INTEGER NOT NULL, verdicts TEXT NOT NULL, action TEXT NOT NULL,
    code TEXT NOT NULL, message TEXT NOT NULL);
"""


# DAWN watermark sets (detector.watermark.WatermarkRecord), kept with the audit log: one row
# per (client, image digest), the image as the client sent it so it can be replayed.
_WATERMARK_SCHEMA = """
CREATE TABLE IF NOT EXISTS watermarks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL, model TEXT NOT NULL,
    digest TEXT NOT NULL, label INTEGER NOT NULL, true_label INTEGER NOT NULL, time REAL NOT NULL,
    shape TEXT NOT NULL, image BLOB NOT NULL, UNIQUE(client, digest));
"""


def _watermark_json(r: Any) -> str:
    return json.dumps({"client": r.client, "model": r.model, "digest": r.digest,
                       "label": int(r.label), "true_label": int(r.true_label),
                       "time": float(r.time), "shape": list(r.image.shape),
                       "image": base64.b64encode(r.image_bytes()).decode("ascii")})


def _watermark_from(client: str, model: str, digest: str, label: int, true_label: int,
                    time_: float, shape: Any, blob: bytes) -> Any:
    return WatermarkRecord(client, model, digest, int(label), int(true_label), float(time_),
                           WatermarkRecord.image_from(blob, shape))


@dataclass
class _Live:
    used: int
    reserved: int = 0
    tokens: float | None = None
    tokens_at: float | None = None
    detectors: DetectorState | None = None


def _client_from_row(row) -> ClientRecord:
    name, key_hash, budget, rate, burst, revoked, created = row
    return ClientRecord(name, key_hash, budget, rate, burst, bool(revoked), created)


class SQLiteStore:
    """State in one SQLite file (WAL). See the module docstring for the exact guarantee."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL",
                 create: bool = True) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise invalid("synchronous", synchronous, "NORMAL, FULL or EXTRA")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise invalid("state", f"sqlite:{path}", "a path whose folder exists")
        if not create and not self.path.is_file():  # a typo must not look like "no clients"
            raise invalid("state", f"sqlite:{path}", "an existing gateway state database "
                          f"({self.path.resolve()} does not exist; the gateway's first start "
                          "or `keys add` creates it)")
        self._lock = threading.RLock()
        self._db = None
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
            self._db.executescript(_WATERMARK_SCHEMA)
        except sqlite3.Error as err:  # read-only place, not a database, locked, disk full
            if self._db is not None:
                self._db.close()
            raise invalid("state", f"sqlite:{path}", "a SQLite database this process can open "
                          f"and write ({type(err).__name__}: {err})") from None
        self._live: dict[str, _Live] = {}

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _state(self, name: str) -> _Live:
        live = self._live.get(name)
        if live is None:
            row = self._db.execute("SELECT used, tokens, tokens_at FROM usage WHERE name=?",
                                   (name,)).fetchone()
            live = _Live(used=row[0], tokens=row[1], tokens_at=row[2]) if row else _Live(0)
            self._live[name] = live
        return live

    # -- request path ------------------------------------------------------------------------
    def find_client(self, key_hash: str) -> ClientRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, key_hash, budget, rate, burst, revoked, created FROM clients "
                "WHERE key_hash=?", (key_hash,)).fetchone()
        return None if row is None else _client_from_row(row)

    def admit(self, name: str, rows: int, limits: Limits, now: float) -> Refusal | None:
        with self._lock:
            live = self._state(name)
            tokens = _refill(live.tokens, live.tokens_at, now, limits)
            if tokens < 1.0:
                live.tokens, live.tokens_at = tokens, now
                return _rate_refusal(name, limits)
            if limits.budget is not None and live.used + live.reserved + rows > limits.budget:
                return _budget_refusal(name, live.used + live.reserved, limits.budget, rows)
            live.tokens, live.tokens_at = tokens - 1.0, now
            live.reserved += rows
            return None

    def cancel(self, name: str, rows: int) -> None:
        with self._lock:
            live = self._state(name)
            live.reserved = max(0, live.reserved - rows)

    def load_detectors(self, name: str) -> DetectorState:
        with self._lock:
            live = self._state(name)
            if live.detectors is None:
                row = self._db.execute(
                    "SELECT ood, prada, flagged, flagged_by FROM detectors WHERE name=?",
                    (name,)).fetchone()
                live.detectors = DetectorState() if row is None else DetectorState(
                    json.loads(row[0]) if row[0] else None, row[1], bool(row[2]), row[3])
            det = live.detectors
            return DetectorState(det.ood, det.prada, det.flagged, det.flagged_by)

    def commit(self, name: str, rows: int, detectors: DetectorState | None,
               record: AuditRecord) -> None:
        with self._txn() as db:
            live = self._state(name)
            db.execute(
                "INSERT INTO usage(name, used, tokens, tokens_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET used=used+excluded.used, "
                "tokens=excluded.tokens, tokens_at=excluded.tokens_at",
                (name, rows, live.tokens, live.tokens_at))
            if detectors is not None:
                db.execute(
                    "INSERT OR REPLACE INTO detectors(name, ood, prada, flagged, flagged_by) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, None if detectors.ood is None else json.dumps(detectors.ood),
                     detectors.prada, int(detectors.flagged), detectors.flagged_by))
            self._insert_audit(db, record)
            # memory follows only once the transaction is in
        live.used += rows
        live.reserved = max(0, live.reserved - rows)
        if detectors is not None:
            live.detectors = detectors

    @staticmethod
    def _insert_audit(db: sqlite3.Connection, r: AuditRecord) -> None:
        db.execute("INSERT INTO audit(time, client, method, model, rows, verdicts, action, code, "
                   "message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (r.time, r.client, r.method, r.model, r.rows,
                    json.dumps(r.verdicts, sort_keys=True), r.action, r.code, r.message))

    def audit(self, record: AuditRecord) -> None:
        with self._txn() as db:
            self._insert_audit(db, record)

    def usage(self, name: str) -> int:
        with self._lock:
            return self._state(name).used

    # -- administration ------------------------------------------------------------------------
    def add_client(self, record: ClientRecord) -> None:
        try:
            with self._txn() as db:
                db.execute("INSERT INTO clients(name, key_hash, budget, rate, burst, revoked, "
                           "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (record.name, record.key_hash, record.budget, record.rate,
                            record.burst, int(record.revoked), record.created))
        except sqlite3.IntegrityError:
            raise invalid("client", record.name,
                          "a new client name (this one exists: use `keys rotate`)") from None

    def get_client(self, name: str) -> ClientRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, key_hash, budget, rate, burst, revoked, created FROM clients "
                "WHERE name=?", (name,)).fetchone()
        return None if row is None else _client_from_row(row)

    def list_clients(self) -> list[ClientRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, key_hash, budget, rate, burst, revoked, created FROM clients "
                "ORDER BY name").fetchall()
        return [_client_from_row(r) for r in rows]

    def revoke(self, name: str) -> None:
        with self._txn() as db:
            if db.execute("UPDATE clients SET revoked=1 WHERE name=?", (name,)).rowcount == 0:
                raise _unknown_client(name)

    def rotate(self, name: str, key_hash: str) -> None:
        with self._txn() as db:
            if db.execute("UPDATE clients SET key_hash=?, revoked=0 WHERE name=?",
                          (key_hash, name)).rowcount == 0:
                raise _unknown_client(name)

    def audit_records(self, limit: int | None = None) -> list[AuditRecord]:
        sql = ("SELECT time, client, method, model, rows, verdicts, action, code, message "
               "FROM audit ORDER BY id")
        with self._lock:
            rows = self._db.execute(sql).fetchall()
        if limit is not None:
            rows = rows[-limit:]
        return [AuditRecord(t, c, m, mo, n, json.loads(v), a, code, msg)
                for t, c, m, mo, n, v, a, code, msg in rows]

    def add_watermarks(self, records: list) -> None:
        """Store watermark records (`detector.watermark.WatermarkRecord`); a (client, image)
        pair already stored is kept as it was."""
        if not records:
            return
        with self._txn() as db:
            db.executemany(
                "INSERT OR IGNORE INTO watermarks(client, model, digest, label, true_label, time, "
                "shape, image) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.client, r.model, r.digest, int(r.label), int(r.true_label), float(r.time),
                  json.dumps(list(r.image.shape)), r.image_bytes()) for r in records])

    def watermarks(self, client: str) -> list:
        """A client's watermark records, in the order they were answered."""
        with self._lock:
            rows = self._db.execute(
                "SELECT client, model, digest, label, true_label, time, shape, image FROM "
                "watermarks WHERE client=? ORDER BY id", (client,)).fetchall()
        return [_watermark_from(c, m, d, lab, t, tm, json.loads(sh), blob)
                for c, m, d, lab, t, tm, sh, blob in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- Redis -------------------------------------------------------------------------------------

def _s(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """State in Redis (redis-py), shared by gateway replicas. Keys under `prefix`."""

    def __init__(self, url: str | None = None, *, client: Any = None,
                 prefix: str = "mxgw:") -> None:
        if client is None:
            client = _connect_redis(url)
        self.r = client
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _client(self, name: str) -> ClientRecord | None:
        data = self.r.hgetall(self._k("client", name))
        if not data:
            return None
        d = {_s(k): _s(v) for k, v in data.items()}

        def num(key: str, kind):
            return None if d.get(key) in (None, "") else kind(d[key])

        return ClientRecord(name, d["key_hash"], num("budget", int), num("rate", float),
                            num("burst", float), d.get("revoked") == "1",
                            float(d.get("created") or 0))

    def find_client(self, key_hash: str) -> ClientRecord | None:
        name = _s(self.r.get(self._k("keyhash", key_hash)))
        return None if name is None else self._client(name)

    def admit(self, name: str, rows: int, limits: Limits, now: float) -> Refusal | None:
        key = self._k("usage", name)
        outcome: list[Refusal | None] = [None]

        def attempt(pipe) -> None:
            used, tokens, at = pipe.hmget(key, "used", "tokens", "tokens_at")
            used = int(used or 0)
            tokens = _refill(None if tokens is None else float(tokens),
                             None if at is None else float(at), now, limits)
            pipe.multi()
            if tokens < 1.0:
                pipe.hset(key, mapping={"tokens": tokens, "tokens_at": now})
                outcome[0] = _rate_refusal(name, limits)
            elif limits.budget is not None and used + rows > limits.budget:
                outcome[0] = _budget_refusal(name, used, limits.budget, rows)
            else:
                pipe.hset(key, mapping={"tokens": tokens - 1.0, "tokens_at": now})
                pipe.hincrby(key, "used", rows)
                outcome[0] = None

        self.r.transaction(attempt, key)
        return outcome[0]

    def cancel(self, name: str, rows: int) -> None:
        self.r.hincrby(self._k("usage", name), "used", -rows)

    def load_detectors(self, name: str) -> DetectorState:
        data = self.r.hgetall(self._k("detectors", name))
        if not data:
            return DetectorState()
        d = {_s(k): v for k, v in data.items()}
        ood = d.get("ood")
        prada = d.get("prada")
        return DetectorState(json.loads(ood) if ood else None, bytes(prada) if prada else None,
                             _s(d.get("flagged")) == "1", _s(d.get("flagged_by")) or "")

    def commit(self, name: str, rows: int, detectors: DetectorState | None,
               record: AuditRecord) -> None:
        pipe = self.r.pipeline(transaction=True)
        if detectors is not None:
            mapping = {"flagged": int(detectors.flagged), "flagged_by": detectors.flagged_by,
                       "ood": json.dumps(detectors.ood) if detectors.ood is not None else "",
                       "prada": detectors.prada or b""}
            pipe.hset(self._k("detectors", name), mapping=mapping)
        pipe.rpush(self._k("audit"), record.to_json())
        pipe.execute()

    def audit(self, record: AuditRecord) -> None:
        self.r.rpush(self._k("audit"), record.to_json())

    def usage(self, name: str) -> int:
        return int(self.r.hget(self._k("usage", name), "used") or 0)

    def add_client(self, record: ClientRecord) -> None:
        key = self._k("client", record.name)
        mapping = {"key_hash": record.key_hash, "revoked": int(record.revoked),
                   "created": record.created,
                   "budget": "" if record.budget is None else record.budget,
                   "rate": "" if record.rate is None else record.rate,
                   "burst": "" if record.burst is None else record.burst}
        if not self.r.hsetnx(key, "key_hash", record.key_hash):
            raise invalid("client", record.name,
                          "a new client name (this one exists: use `keys rotate`)")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.set(self._k("keyhash", record.key_hash), record.name)
        pipe.sadd(self._k("clients"), record.name)
        pipe.execute()

    def get_client(self, name: str) -> ClientRecord | None:
        return self._client(name)

    def list_clients(self) -> list[ClientRecord]:
        names = sorted(_s(n) for n in self.r.smembers(self._k("clients")))
        return [c for c in (self._client(n) for n in names) if c is not None]

    def revoke(self, name: str) -> None:
        if self._client(name) is None:
            raise _unknown_client(name)
        self.r.hset(self._k("client", name), "revoked", 1)

    def rotate(self, name: str, key_hash: str) -> None:
        old = self._client(name)
        if old is None:
            raise _unknown_client(name)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._k("keyhash", old.key_hash))
        pipe.set(self._k("keyhash", key_hash), name)
        pipe.hset(self._k("client", name), mapping={"key_hash": key_hash, "revoked": 0})
        pipe.execute()

    def audit_records(self, limit: int | None = None) -> list[AuditRecord]:
        start = 0 if limit is None else -limit
        return [AuditRecord.from_json(x) for x in self.r.lrange(self._k("audit"), start, -1)]

    def add_watermarks(self, records: list) -> None:
        """Store watermark records; a (client, image) pair already stored is kept as it was."""
        for r in records:
            if self.r.hsetnx(self._k("wmseen", r.client), r.digest, 1):
                self.r.rpush(self._k("watermarks", r.client), _watermark_json(r))

    def watermarks(self, client: str) -> list:
        """A client's watermark records, in the order they were answered."""
        out = []
        for raw in self.r.lrange(self._k("watermarks", client), 0, -1):
            d = json.loads(raw)
            out.append(_watermark_from(d["client"], d["model"], d["digest"], d["label"],
                                       d["true_label"], d["time"], d["shape"],
                                       base64.b64decode(d["image"])))
        return out

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _connect_redis(url: str) -> Any:
    """A redis-py client for `url` that has answered a PING, or a `UsageError` naming `state`
    (bad URL, refused, unreachable within 5 s, wrong password) instead of a traceback at the
    first request."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5.0)
        client.ping()
    except (ValueError, redis.exceptions.RedisError) as err:
        raise invalid("state", url, f"a reachable Redis server ({type(err).__name__}: "
                      f"{' '.join(str(err).split())})") from None
    return client


def open_store(url: str, *, redis_client: Any = None,
               create: bool = True) -> SQLiteStore | RedisStore:
    """`sqlite:PATH[?synchronous=FULL]` or `redis://HOST:PORT/DB` (or a redis-py client).

    `create=False` refuses a SQLite file that does not exist yet (the `keys` commands that
    read or change existing clients), rather than creating an empty one.
    """
    kind, target = parse_state_url(url)
    if kind == "sqlite":
        path, _, query = target.partition("?")
        sync = "NORMAL"
        if query:
            key, _, value = query.partition("=")
            if key != "synchronous":
                raise invalid("state", url, "sqlite:PATH or sqlite:PATH?synchronous=FULL")
            sync = value
        return SQLiteStore(path, synchronous=sync, create=create)
    return RedisStore(target, client=redis_client)


def new_record(name: str, key_hash: str, *, budget: int | None = None,
               rate: float | None = None, burst: float | None = None) -> ClientRecord:
    return ClientRecord(name, key_hash, budget, rate, burst, False, time.time())

