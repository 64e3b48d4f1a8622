"""The double's state: one SQLite database (standard library), shared with ``occ``.

Users, groups, group memberships and auth tokens are rows, so an operation reads and
writes only the rows it concerns and costs the same with ten users or ten thousand.
The database is in WAL mode with a busy timeout, so the HTTP server and the ``occ``
double share it safely; each HTTP request and each ``occ`` command is one transaction
(``with store.transaction():``), and a failing operation inside one is rolled back on
its own (a savepoint), as the old whole-file edit discarded its changes.

Next to the store lives the data directory (``<store dir>/data``, as Nextcloud's
``datadirectory``): ``<data>/<uid>/files`` is created with the account and removed
with it, and what lies there is what the OCS API reports as the user's ``used``
space (so a test, or an admin in the lab, can put files there and see usage).

Auth tokens (Nextcloud's ``oc_authtoken``: session tokens and app passwords) are
kept in the store too, hashed; only their public part is ever listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path

DEFAULT_STORE = "/var/lib/nextcloud-double/store.sqlite"

_UNITS = {
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "p": 1024**5,
    "pb": 1024**5,
}
_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_LEADING_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)")
_UNIT_SUFFIX = re.compile(r"([kmgtp]?b?)$", re.IGNORECASE)
# Nextcloud's own rule for user ids (IUserManager::createUser).
_VALID_UID = re.compile(r"^[a-zA-Z0-9 _.@\-']+$")


def computer_file_size(text: str) -> float | None:
    """Nextcloud's ``Util::computerFileSize``: "5 GB" -> bytes; None if unparsable."""
    s = text.strip().lower()
    if _NUMERIC.match(s):
        return float(s)
    m = _LEADING_NUMBER.match(s)
    number = float(m.group(0)) if m else 0.0
    unit = _UNIT_SUFFIX.search(s)
    if unit is None or not unit.group(1) or unit.group(1) not in _UNITS:
        return None
    return float(round(number * _UNITS[unit.group(1)]))


def _num(x: float) -> str:
    """PHP prints round(x, 1) without a trailing .0."""
    return str(int(x)) if float(x).is_integer() else str(x)


def human_file_size(size: float) -> str:
    """Nextcloud's ``Util::humanFileSize`` (what it stores as a user's quota)."""
    if size < 0:
        return "?"
    if size < 1024:
        return f"{_num(size)} B"
    size = round(size / 1024)
    if size < 1024:
        return f"{_num(size)} KB"
    for unit in ("MB", "GB", "TB"):
        size = round(size / 1024, 1)
        if size < 1024:
            return f"{_num(size)} {unit}"
    return f"{_num(round(size / 1024, 1))} PB"


def valid_uid(uid: str) -> bool:
    return (
        bool(uid) and uid.strip() == uid and uid not in (".", "..") and bool(_VALID_UID.match(uid))
    )


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)
    return f"pbkdf2_sha256$100000${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        _, rounds, salt, digest = stored.split("$")
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def new_user(uid: str, password: str | None) -> dict:
    return {
        "id": uid,
        "password": hash_password(password) if password else None,
        "displayname": uid,
        "email": None,
        "quota": "default",
        "enabled": True,
        "groups": [],
        "settings": {},
        "created": int(time.time()),
        "lastLogin": 0,
    }


def quota_bytes(user: dict) -> int | str:
    """What OCS shows as quota.quota for a user who never logged in."""
    q = user.get("quota") or "default"
    if q in ("none", "default"):
        return "none"
    size = computer_file_size(q)
    return "none" if size is None else int(size)


# Nextcloud's FileInfo::SPACE_UNLIMITED: what the API shows as quota/free/total without a limit.
SPACE_UNLIMITED = -3
# IToken::TEMPORARY_TOKEN (a browser/client session) and IToken::PERMANENT_TOKEN (app password).
TEMPORARY_TOKEN = 0
PERMANENT_TOKEN = 1
# Nextcloud updates a token's lastActivity at most this often (activity_update_interval).
ACTIVITY_UPDATE_INTERVAL = 60


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def storage_info(user: dict, used: int | None) -> dict:
    """OCS ``quota`` of a user, as ``AUserData::fillStorageInfo`` builds it.

    `used` is None when the user's home was never set up (no files directory): then
    Nextcloud returns only ``quota`` (bytes, or "none") and ``used: 0``.
    """
    if used is None:
        return {"quota": quota_bytes(user), "used": 0}
    limit = quota_bytes(user)
    quota = limit if isinstance(limit, int) else SPACE_UNLIMITED
    if quota > 0:
        return {
            "free": quota - used,
            "used": used,
            "total": quota,
            "relative": round(used / quota * 10000) / 100,
            "quota": quota,
        }
    return {
        "free": SPACE_UNLIMITED,
        "used": used,
        "total": SPACE_UNLIMITED,
        "relative": 0,
        "quota": quota,
    }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (uid TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (gid TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memberships (
    gid TEXT NOT NULL, uid TEXT NOT NULL, PRIMARY KEY (gid, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_uid ON memberships (uid);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    type INTEGER NOT NULL,
    last_activity INTEGER NOT NULL,
    scope TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_hash ON tokens (hash);
CREATE INDEX IF NOT EXISTS tokens_uid ON tokens (uid);
"""
_SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000


def _dumps(value) -> str:
    # sorted keys: a user's settings come back in the order the JSON store gave them
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class StoreError(RuntimeError):
    """The store cannot be used (the message says why)."""


class Store:
    """The SQLite database at `path`.

    Reads and writes go through methods that touch only the rows they concern; group
    several in one transaction with ``with store.transaction():`` (nested calls become
    savepoints, so an operation that fails inside a request undoes only itself). A
    method called outside a transaction is one transaction of its own.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORE,
        data_dir: str | os.PathLike[str] | None = None,
    ):
        self.path = Path(path)
        # Nextcloud's datadirectory: <data_dir>/<uid>/files holds a user's files.
        self.data_dir = Path(data_dir) if data_dir else self.path.parent / "data"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0

    # ------------------------------------------------------------ connection
    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        with self._lock:
            if self._conn is None:
                self._open()
        assert self._conn is not None
        return self._conn

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # create it 0600 first: SQLite gives its -wal and -shm files the database's mode
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        with open(self.path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise StoreError(
                f"{self.path} is not an SQLite database (a JSON store of an older double? "
                f"give --store a new path ending in .sqlite: a store.json beside it is "
                f"imported on first use)"
            )
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn
        with self.transaction():
            fresh = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'"
                ).fetchone()
                is None
            )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO groups (gid, data) VALUES ('admin', ?)",
                (_dumps({"displayname": "admin"}),),
            )
            if fresh:
                self._import_json(self.path.with_suffix(".json"))

    def _import_json(self, legacy: Path) -> None:
        """Take over the JSON store of earlier versions of the double (once, when new)."""
        if legacy == self.path or not legacy.is_file():
            return
        with open(legacy, encoding="utf-8") as f:
            state = json.load(f)
        for gid, group in state.get("groups", {}).items():
            self.conn.execute(
                "INSERT OR REPLACE INTO groups (gid, data) VALUES (?, ?)", (gid, _dumps(group))
            )
        for user in state.get("users", {}).values():
            self.save_user(user)
        for t in state.get("tokens", []):
            self.conn.execute(
                "INSERT INTO tokens (id, uid, hash, name, type, last_activity, scope) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    t["id"],
                    t["uid"],
                    t["hash"],
                    t["name"],
                    t["type"],
                    t["lastActivity"],
                    _dumps(t["scope"]),
                ),
            )
        # ids are never handed out twice, as with the JSON store's next_token_id
        next_id = int(state.get("next_token_id", 1))
        self.conn.execute("DELETE FROM sqlite_sequence WHERE name = 'tokens'")
        self.conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('tokens', ?)", (next_id - 1,)
        )

    @property
    def conn(self) -> sqlite3.Connection:
        return self._connection()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def transaction(self):
        """One transaction (BEGIN IMMEDIATE: the write lock, waited for up to the busy
        timeout); inside another, a savepoint rolled back alone when its block raises."""
        with self._lock:
            conn = self.conn
            if self._depth == 0:
                conn.execute("BEGIN IMMEDIATE")
                begin, commit, rollback = None, "COMMIT", "ROLLBACK"
            else:
                name = f"sp{self._depth}"
                begin, commit, rollback = (
                    f"SAVEPOINT {name}",
                    f"RELEASE {name}",
                    f"ROLLBACK TO {name}; RELEASE {name}",
                )
                conn.execute(begin)
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                for statement in rollback.split(";"):
                    conn.execute(statement)
                raise
            self._depth -= 1
            try:
                conn.execute(commit)
            except BaseException:
                if self._depth == 0 and conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------ users
    def get_user(self, uid: str) -> dict | None:
        row = self.conn.execute("SELECT data FROM users WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else json.loads(row[0])

    def has_user(self, uid: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM users WHERE uid = ?", (uid,)).fetchone()
        return row is not None

    def save_user(self, user: dict) -> None:
        """Insert or replace the user `user["id"]`, group memberships included."""
        with self.transaction():
            uid = user["id"]
            self.conn.execute(
                "INSERT OR REPLACE INTO users (uid, data) VALUES (?, ?)", (uid, _dumps(user))
            )
            self.conn.execute("DELETE FROM memberships WHERE uid = ?", (uid,))
            self.conn.executemany(
                "INSERT OR IGNORE INTO memberships (gid, uid) VALUES (?, ?)",
                [(gid, uid) for gid in user.get("groups", [])],
            )

    def delete_user(self, uid: str) -> None:
        """The user, their memberships and their tokens."""
        with self.transaction():
            for table in ("users", "memberships", "tokens"):
                self.conn.execute(f"DELETE FROM {table} WHERE uid = ?", (uid,))

    def uids(self) -> list[str]:
        """Every uid, in code point order (callers sort further as they need)."""
        return [r[0] for r in self.conn.execute("SELECT uid FROM users ORDER BY uid")]

    def users(self) -> list[dict]:
        """Every user, in code point order of uid (listings only)."""
        return [json.loads(r[0]) for r in self.conn.execute("SELECT data FROM users ORDER BY uid")]

    # ------------------------------------------------------------ groups
    def has_group(self, gid: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM groups WHERE gid = ?", (gid,)).fetchone()
        return row is not None

    def gids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT gid FROM groups ORDER BY gid")]

    def add_group(self, gid: str, displayname: str) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO groups (gid, data) VALUES (?, ?)",
                (gid, _dumps({"displayname": displayname})),
            )

    def members(self, gid: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT uid FROM memberships WHERE gid = ? ORDER BY uid", (gid,)
            )
        ]

    def delete_group(self, gid: str) -> None:
        """The group, and it from its members' group lists."""
        with self.transaction():
            for uid in self.members(gid):
                user = self.get_user(uid)
                if user is not None:
                    user["groups"] = [g for g in user.get("groups", []) if g != gid]
                    self.save_user(user)
            self.conn.execute("DELETE FROM memberships WHERE gid = ?", (gid,))
            self.conn.execute("DELETE FROM groups WHERE gid = ?", (gid,))

    # ------------------------------------------------------------ auth tokens
    def add_token(self, uid: str, name: str, kind: int) -> str:
        """Record a new auth token of `uid`; return its secret (stored only as a hash)."""
        secret = secrets.token_urlsafe(48)
        with self.transaction():
            self.conn.execute(
                "INSERT INTO tokens (uid, hash, name, type, last_activity, scope) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    _token_hash(secret),
                    name[:120] or "unknown client",
                    kind,
                    int(time.time()),
                    _dumps({"filesystem": True}),
                ),
            )
        return secret

    def find_token(self, secret: str) -> dict | None:
        """The token whose secret is `secret` (id, uid, lastActivity), or None."""
        wanted = _token_hash(secret)
        row = self.conn.execute(
            "SELECT id, uid, hash, last_activity FROM tokens WHERE hash = ?", (wanted,)
        ).fetchone()
        if row is None or not hmac.compare_digest(row[2], wanted):
            return None
        return {"id": row[0], "uid": row[1], "lastActivity": row[3]}

    def touch_token(self, token_id: int, now: int) -> None:
        with self.transaction():
            self.conn.execute("UPDATE tokens SET last_activity = ? WHERE id = ?", (now, token_id))

    def tokens_of(self, uid: str) -> list[dict]:
        """A user's tokens as ``occ user:auth-tokens:list`` shows them (no secret, no hash)."""
        return [
            {
                "id": r[0],
                "name": r[1],
                "lastActivity": r[2],
                "type": r[3],
                "scope": json.loads(r[4]),
            }
            for r in self.conn.execute(
                "SELECT id, name, last_activity, type, scope FROM tokens WHERE uid = ? ORDER BY id",
                (uid,),
            )
        ]

    def delete_tokens_last_used_before(self, uid: str, before: int) -> None:
        """Nextcloud's invalidateLastUsedBefore: the user's tokens last used before `before`
        (unix time); no check that the user exists, as in Nextcloud."""
        with self.transaction():
            self.conn.execute("DELETE FROM tokens WHERE uid = ? AND last_activity < ?",
                              (uid, before))

    def delete_token(self, token_id: int, uid: str | None = None) -> None:
        """Nextcloud's invalidateTokenById: silently nothing when there is no such token."""
        with self.transaction():
            if uid is None:
                self.conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
            else:
                self.conn.execute("DELETE FROM tokens WHERE id = ? AND uid = ?", (token_id, uid))

    # ------------------------------------------------------------ homes
    def home(self, uid: str) -> Path:
        return self.data_dir / uid

    def make_home(self, uid: str) -> None:
        """Create ``<data>/<uid>/files`` (Nextcloud sets a home up on creation/first login)."""
        (self.home(uid) / "files").mkdir(parents=True, exist_ok=True, mode=0o750)

    def remove_home(self, uid: str) -> None:
        """Delete the user's home with everything in it (Nextcloud does on user deletion)."""
        home = self.home(uid)
        if home.parent == self.data_dir and valid_uid(uid):
            shutil.rmtree(home, ignore_errors=True)

    def used_bytes(self, uid: str) -> int | None:
        """Total size of the regular files under ``<data>/<uid>/files``; None without one."""
        files = self.home(uid) / "files"
        if not files.is_dir():
            return None
        total = 0
        for root, _dirs, names in os.walk(files):
            for name in names:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):  # symlinks and the like hold no quota
                    total += st.st_size
        return total

    def ensure_admin(self, uid: str, password: str) -> None:
        """Create or update the admin account (member of group admin)."""
        with self.transaction():
            user = self.get_user(uid)
            if user is None:
                user = new_user(uid, password)
            elif not check_password(password, user.get("password")):
                user["password"] = hash_password(password)
            user["enabled"] = True
            if "admin" not in user["groups"]:
                user["groups"].append("admin")
            self.save_user(user)
        self.make_home(uid)
