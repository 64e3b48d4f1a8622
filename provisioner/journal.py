"""The journal: every change coopctl applied to a service, and what the sync remembers.

An embedded SQLite database on the machine that runs coopctl (one file, no server, safe
against a crash: WAL and synchronous=FULL, each record committed as it is written). Records
are append-only and chained: each carries the SHA-256 of the previous record's hash and its
own content, so `coopctl audit journal` can later name the first record edited by hand.
Records never hold a secret: a change's detail is what the plan showed.

Besides the records it keeps small facts a reconcile needs between runs: marks (a welcome
mail sent, a member's live sessions already ended) and the number of members the last
successful run saw (the sync's guard against a directory that suddenly looks empty).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    run TEXT NOT NULL,
    actor TEXT NOT NULL,
    service TEXT NOT NULL,
    uid TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_uid ON journal (uid, at);
CREATE INDEX IF NOT EXISTS journal_at ON journal (at);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    actor TEXT NOT NULL,
    members INTEGER,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS marks (
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    uid TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (service, kind, uid)
);
"""
GENESIS = "0" * 64
FIELDS = ("at", "run", "actor", "service", "uid", "action", "detail", "result", "error")


def record_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the record's fields, in a fixed canonical form."""
    body = json.dumps([prev_hash, *[record.get(k) for k in FIELDS]], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def actor() -> str:
    """Who runs coopctl: the login, and sudo's caller when there is one."""
    user = getpass.getuser()
    caller = os.environ.get("SUDO_USER")
    return f"{caller} (as {user})" if caller and caller != user else user


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    id: int
    at: str
    run: str
    actor: str
    service: str
    uid: str
    action: str
    detail: dict[str, Any]
    result: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Rows(list):
    def fetchone(self) -> Any:
        return self[0] if self else None


class _SerialDB:
    """One SQLite connection shared by the sync's threads (one per service), one at a time.

    Every statement runs under one re-entrant lock and returns its rows at once, so no
    cursor is ever read while another thread uses the connection.
    """

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.lock = threading.RLock()
        target = f"{Path(path).resolve().as_uri()}?mode=ro" if readonly else str(path)
        self.conn = sqlite3.connect(target, isolation_level=None, timeout=30,
                                    check_same_thread=False, uri=readonly)

    def execute(self, sql: str, args: Any = ()) -> _Rows:
        with self.lock:
            return _Rows(self.conn.execute(sql, args).fetchall())

    def executescript(self, sql: str) -> None:
        with self.lock:
            self.conn.executescript(sql)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class Journal:
    """The journal database; also the sync's state store (services.base.StateStore)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open (creating it if needed) the journal; `readonly` opens an existing one in
        SQLite's read-only mode, so that a caller such as the audit cannot write at all."""
        self.path = path
        self.readonly = readonly
        try:
            if readonly:
                self.db = _SerialDB(path, readonly=True)
                self.db.execute("SELECT count(*) FROM journal")
                self.actor = actor()
                return
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = _SerialDB(path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the journal {path}: {exc}",
                              "set sync.journal in the configuration to the journal's file "
                              "(writable, except for the audit)") from None
        os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.actor = actor()

    def close(self) -> None:
        self.db.close()

    # -- runs ---------------------------------------------------------------------------
    def start_run(self) -> str:
        run = uuid.uuid4().hex[:12]
        self.db.execute("INSERT INTO runs (run, started, actor) VALUES (?, ?, ?)",
                        (run, _now(), self.actor))
        return run

    def finish_run(self, run: str, members: int | None, outcome: str) -> None:
        self.db.execute("UPDATE runs SET finished = ?, members = ?, outcome = ? WHERE run = ?",
                        (_now(), members, outcome, run))

    def last_member_count(self) -> int | None:
        """Members seen by the last run that read the whole directory and succeeded."""
        row = self.db.execute(
            "SELECT members FROM runs WHERE outcome = 'ok' AND members IS NOT NULL "
            "ORDER BY started DESC, rowid DESC LIMIT 1").fetchone()
        return row[0] if row else None

    # -- records ------------------------------------------------------------------------
    def append(self, run: str, service: str, uid: str, action: str,
               detail: dict[str, Any], ok: bool, error: str | None = None) -> None:
        """Append one applied change (in its own transaction, chained to the last record)."""
        record = {"at": _now(), "run": run, "actor": self.actor, "service": service,
                  "uid": uid, "action": action,
                  "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
                  "result": "ok" if ok else "failed", "error": error}
        with self._transaction():
            row = self.db.execute("SELECT hash FROM journal ORDER BY id DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            self.db.execute(
                "INSERT INTO journal (at, run, actor, service, uid, action, detail, result, "
                "error, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*[record[k] for k in FIELDS], prev, record_hash(prev, record)))

    def entries(self, uid: str | None = None, since: str | None = None,
                service: str | None = None) -> Iterator[Entry]:
        query, args = "SELECT id, " + ", ".join(FIELDS) + " FROM journal WHERE 1=1", []
        if uid:
            query, args = query + " AND uid = ?", [*args, uid]
        if since:
            query, args = query + " AND at >= ?", [*args, since]
        if service:
            query, args = query + " AND service = ?", [*args, service]
        for row in self.db.execute(query + " ORDER BY id", args):
            yield Entry(row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                        json.loads(row[7]), row[8], row[9])

    def verify_chain(self) -> int | None:
        """The id of the first record whose hash does not match, or None if all do."""
        prev = GENESIS
        for row in self.db.execute("SELECT id, " + ", ".join(FIELDS) +
                                   ", prev_hash, hash FROM journal ORDER BY id"):
            record = dict(zip(FIELDS, row[1:10], strict=True))
            if row[10] != prev or row[11] != record_hash(prev, record):
                return row[0]
            prev = row[11]
        return None

    # -- state store (marks) ------------------------------------------------------------
    def marks(self, service: str, kind: str) -> set[str]:
        return {r[0] for r in self.db.execute(
            "SELECT uid FROM marks WHERE service = ? AND kind = ?", (service, kind))}

    def mark(self, service: str, kind: str, uid: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO marks VALUES (?, ?, ?, ?)",
                        (service, kind, uid, _now()))

    def unmark(self, service: str, kind: str, uid: str) -> None:
        self.db.execute("DELETE FROM marks WHERE service = ? AND kind = ? AND uid = ?",
                        (service, kind, uid))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the connection's lock."""
        with self.db.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
