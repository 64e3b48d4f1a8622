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


def empty_state() -> dict:
    return {
        "users": {},
        "groups": {"admin": {"displayname": "admin"}},
        "tokens": [],
        "next_token_id": 1,
    }


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


def add_token(state: dict, uid: str, name: str, kind: int) -> str:
    """Record a new auth token of `uid`; return its secret (stored only as a hash)."""
    secret = secrets.token_urlsafe(48)
    token_id = int(state.get("next_token_id", 1))
    state["next_token_id"] = token_id + 1
    now = int(time.time())
    state.setdefault("tokens", []).append(
        {
            "id": token_id,
            "uid": uid,
            "name": name[:120] or "unknown client",
            "type": kind,
            "lastActivity": now,
            "scope": {"filesystem": True},
            "hash": _token_hash(secret),
        }
    )
    return secret


def find_token(state: dict, secret: str) -> dict | None:
    """The token whose secret is `secret`, or None."""
    wanted = _token_hash(secret)
    for token in state.get("tokens", []):
        if hmac.compare_digest(token["hash"], wanted):
            return token
    return None


def tokens_of(state: dict, uid: str) -> list[dict]:
    """A user's tokens as ``occ user:auth-tokens:list`` shows them (no secret, no hash)."""
    return [
        {k: t[k] for k in ("id", "name", "lastActivity", "type", "scope")}
        for t in state.get("tokens", [])
        if t["uid"] == uid
    ]


def delete_token(state: dict, uid: str, token_id: int) -> None:
    """Nextcloud's invalidateTokenById: silently nothing when there is no such token."""
    state["tokens"] = [
        t for t in state.get("tokens", []) if not (t["uid"] == uid and t["id"] == token_id)
    ]


def delete_tokens_of(state: dict, uid: str) -> None:
    state["tokens"] = [t for t in state.get("tokens", []) if t["uid"] != uid]


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


class Store:
    """The JSON file. Use ``with store.edit() as state`` / ``store.read()``."""

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORE,
        data_dir: str | os.PathLike[str] | None = None,
    ):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # Nextcloud's datadirectory: <data_dir>/<uid>/files holds a user's files.
        self.data_dir = Path(data_dir) if data_dir else self.path.parent / "data"

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

    @contextlib.contextmanager
    def _locked(self, exclusive: bool):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return empty_state()
        state.setdefault("users", {})
        state.setdefault("groups", {})
        state.setdefault("tokens", [])
        state.setdefault("next_token_id", 1)
        state["groups"].setdefault("admin", {"displayname": "admin"})
        return state

    def read(self) -> dict:
        with self._locked(exclusive=False):
            return self._load()

    @contextlib.contextmanager
    def edit(self):
        with self._locked(exclusive=True):
            state = self._load()
            yield state
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".store-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(state, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    def ensure_admin(self, uid: str, password: str) -> None:
        """Create or update the admin account (member of group admin)."""
        with self.edit() as state:
            user = state["users"].get(uid)
            if user is None:
                user = state["users"][uid] = new_user(uid, password)
            elif not check_password(password, user.get("password")):
                user["password"] = hash_password(password)
            user["enabled"] = True
            if "admin" not in user["groups"]:
                user["groups"].append("admin")
        self.make_home(uid)
