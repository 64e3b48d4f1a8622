"""What the watcher remembers between runs, next to the journal: `<state_dir>/watch/watch.sqlite`.

- the syncrepl **cookie**, written in the same transaction as the map changes of the batch it
  ends, and only after that batch was applied: a watcher killed at any point resumes from the
  last applied batch (the batch in flight is delivered again; the sync is idempotent);
- the **entryUUID map**: syncrepl reports a deletion by entryUUID alone, so every entry the
  watcher follows is kept as uuid -> (kind, name, plan of a member, members of a group);
- members to **retry** (a change failed, a service was down) and members **held** by the
  guard, with the alert that held them;
- small facts (last full sync).

SQLite in WAL mode with synchronous=FULL, like the journal: a commit survives a power cut.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS entries (
    uuid TEXT PRIMARY KEY,
    kind TEXT NOT NULL,          -- member | group | plan
    name TEXT NOT NULL,          -- uid or cn
    plan TEXT,                   -- a member's plan (cn)
    members TEXT,                -- a group's member uids (JSON list)
    digest TEXT                  -- hash of the attributes the sync reads (member, plan)
);
CREATE INDEX IF NOT EXISTS entries_plan ON entries (kind, plan);
CREATE TABLE IF NOT EXISTS pending (
    uid TEXT NOT NULL,
    reason TEXT NOT NULL,        -- retry | held
    at TEXT NOT NULL,
    PRIMARY KEY (uid, reason)
);
"""


@dataclass(frozen=True)
class Known:
    """One followed entry as the map remembers it."""

    kind: str
    name: str
    plan: str | None = None
    members: frozenset[str] = field(default_factory=frozenset)
    digest: str | None = None


class WatchState:
    """The watcher's SQLite store (one writer: the watcher holds `<dir>/lock`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "watch.sqlite"
        self.lock = threading.RLock()
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30,
                                      check_same_thread=False)
            self.path.chmod(0o600)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the watcher's state {self.path}: {exc}",
                              "check sync.state_dir (writable by the user coopctl runs as)"
                              ) from None

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- meta ------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: bytes | str | None) -> None:
        with self.lock:
            self._put(key, value)

    def _put(self, key: str, value: bytes | str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def cookie(self) -> bytes | None:
        value = self.get("cookie")
        return value if isinstance(value, bytes) else None

    # -- the entryUUID map -----------------------------------------------------------------
    def known(self, uuids: Iterable[str]) -> dict[str, Known]:
        wanted = list(uuids)
        found: dict[str, Known] = {}
        with self.lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                rows = self.db.execute(
                    "SELECT uuid, kind, name, plan, members, digest FROM entries WHERE uuid IN "
                    f"({','.join('?' * len(part))})", part).fetchall()
                for uuid, kind, name, plan, members, digest in rows:
                    found[uuid] = Known(kind, name, plan,
                                        frozenset(json.loads(members) if members else ()),
                                        digest)
        return found

    def all_uuids(self) -> set[str]:
        with self.lock:
            return {r[0] for r in self.db.execute("SELECT uuid FROM entries")}

    def on_plan(self, plan: str) -> set[str]:
        with self.lock:
            return {r[0] for r in self.db.execute(
                "SELECT name FROM entries WHERE kind = 'member' AND plan = ?", (plan,))}

    def member_count(self) -> int:
        with self.lock:
            return int(self.db.execute(
                "SELECT count(*) FROM entries WHERE kind = 'member'").fetchone()[0])

    def commit(self, upserts: dict[str, Known], deletes: Iterable[str], cookie: bytes | None,
               replace_map: bool = False, meta: dict[str, str | None] | None = None) -> None:
        """One transaction: the batch's map changes, then its cookie (None keeps the old one).

        `replace_map` drops every entry first (after a full refresh, the map is exactly
        what the refresh listed)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if replace_map:
                    self.db.execute("DELETE FROM entries")
                self.db.executemany("DELETE FROM entries WHERE uuid = ?",
                                    [(u,) for u in deletes])
                self.db.executemany(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                    [(u, k.kind, k.name, k.plan,
                      json.dumps(sorted(k.members)) if k.kind == "group" else None, k.digest)
                     for u, k in upserts.items()])
                if cookie is not None:
                    self._put("cookie", cookie)
                for key, value in (meta or {}).items():
                    self._put(key, value)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- retries and held members ----------------------------------------------------------
    def pending(self, reason: str) -> set[str]:
        with self.lock:
            return {r[0] for r in self.db.execute(
                "SELECT uid FROM pending WHERE reason = ?", (reason,))}

    def set_pending(self, reason: str, uids: Iterable[str], at: str) -> None:
        with self.lock:
            self.db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?)",
                                [(u, reason, at) for u in uids])

    def clear_pending(self, reason: str, uids: Iterable[str] | None = None) -> None:
        with self.lock:
            if uids is None:
                self.db.execute("DELETE FROM pending WHERE reason = ?", (reason,))
            else:
                self.db.executemany("DELETE FROM pending WHERE reason = ? AND uid = ?",
                                    [(reason, u) for u in uids])
