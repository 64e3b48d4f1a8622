"""The double's state: one JSON file, locked with flock, written atomically.

Every operation opens, reads, changes and rewrites the file under an exclusive
lock, so the HTTP server and the ``occ`` double can share it safely.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

DEFAULT_STORE = "/var/lib/nextcloud-double/store.json"

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
    return {"users": {}, "groups": {"admin": {"displayname": "admin"}}}


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


class Store:
    """The JSON file. Use ``with store.edit() as state`` / ``store.read()``."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

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
