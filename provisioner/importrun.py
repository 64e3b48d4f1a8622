"""The record of an import under way, so that a run that stops half-way is finished by the next.

A large import is committed in parts (see `provisioner.imports`): each part is one
LDAP transaction, so the server applies it whole or not at all, but a run killed
between parts leaves the first ones in the directory. Before the first part is sent,
coopctl writes this record: which file (its path and SHA-256), how many parts, how
many are committed, and which new members still wait for their one-time password.
The next `member import` of the same file reads it, says that it finishes that run,
and clears it once everything is done; an import of another file is refused while
it is there, so that nobody mistakes a half-imported file for a whole one.

The record lives in the coopctl state directory (`sync.state_dir`), one file per
directory server, written atomically (temporary file, fsync, rename): a crash at any
point leaves the previous record or the next one, never a torn one. A lock file keeps
two imports into the same directory from this machine from running at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from provisioner.changes import ChangeSet
from provisioner.config import DirectoryConfig
from provisioner.directory import Directory
from provisioner.errors import ConfigError, Conflict, CoopError, DirectoryUnavailable, InvalidInput
from provisioner.imports import PART_SIZE, ImportPlan, RowChange
from provisioner.ldapconn import set_password
from provisioner.members import add_to_changeset
from provisioner.model import now


@dataclass
class ImportRecord:
    source: str                  # absolute path of the CSV file
    digest: str                  # SHA-256 of its bytes
    started: str                 # ISO time of the run that wrote the record first
    parts: int                   # parts the current run planned
    done: int = 0                # parts committed by the current run
    passwords: list[str] = field(default_factory=list)   # files passwords were written to
    committing: list[str] = field(default_factory=list)  # new uids of the part being sent
    without_password: list[str] = field(default_factory=list)  # committed, no password yet
    wants_passwords: bool = False  # the run that started it gave --initial-passwords

    def same_file(self, source: Path, digest: str) -> bool:
        return self.digest == digest or self.source == str(source)

    def describe(self) -> str:
        return (f"the import of {self.source} started {self.started} "
                f"(stopped after part {self.done} of {self.parts})")


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImportJournal:
    """Reads and writes the record of one directory's unfinished import."""

    def __init__(self, state_dir: Path, directory: DirectoryConfig) -> None:
        key = hashlib.sha256(f"{directory.uri}|{directory.base_dn}".encode()).hexdigest()[:16]
        self.folder = state_dir / "imports"
        self.path = self.folder / f"{key}.json"
        self.lock_path = self.folder / f"{key}.lock"

    def _ensure_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create coopctl's state directory {self.folder}: {exc.strerror}",
                "set sync.state_dir in the configuration to a directory coopctl may write "
                "(it records imports under way so that an interrupted one can be finished)",
            ) from None

    def check_writable(self) -> None:
        """Fail before anything is written if the record could not be kept."""
        self._ensure_folder()
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise ConfigError(f"coopctl's state directory {self.folder} is not writable",
                              "set sync.state_dir to a directory coopctl may write")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Only one import into this directory at a time, from this machine."""
        self._ensure_folder()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("another `coopctl member import` into this directory is running",
                               "wait for it to finish, then run this one again") from None
            yield
        finally:
            os.close(fd)

    def load(self) -> ImportRecord | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the record of an unfinished import {self.path} is unreadable: "
                              f"{exc}", "look at it; delete it only if no import is "
                              "unfinished") from None
        fields = ImportRecord.__dataclass_fields__
        return ImportRecord(**{k: v for k, v in data.items() if k in fields})

    def save(self, record: ImportRecord) -> None:
        """Replace the record atomically and durably."""
        self._ensure_folder()
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(asdict(record), out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            self._sync_folder()
        except OSError as exc:
            raise ConfigError(f"cannot record the import's progress in {self.path}: "
                              f"{exc.strerror}",
                              "free space or fix the permissions of sync.state_dir, then run "
                              "the same import again") from None

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            self._sync_folder()

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- running an import ---------------------------------------------------------------------

PASSWORDS_HEADER = "uid,initial_password\n"


def uids_in_password_files(paths: list[str]) -> set[str]:
    """The members an earlier run already wrote a password for (the uid column only)."""
    found: set[str] = set()
    for name in paths:
        with contextlib.suppress(OSError):
            for line in Path(name).read_text(encoding="utf-8").splitlines()[1:]:
                found.add(line.split(",", 1)[0])
    return found


def left_without_password(directory: Directory, record: ImportRecord) -> list[str]:
    """Members an interrupted run created but gave no password: the next run gives them one.

    A uid counts if the run meant to give it a password (its part was committed, or was being
    committed and the entry exists now) and no password file of the run lists it.
    """
    if not record.wants_passwords:
        return []
    candidates = [*record.without_password, *record.committing]
    if not candidates:
        return []
    given = uids_in_password_files(record.passwords)
    existing = directory.uids()
    return [uid for uid in dict.fromkeys(candidates) if uid not in given and uid in existing]


@dataclass
class ImportRun:
    """Commits a validated plan part by part, recording its progress, and sets passwords."""

    directory: Directory
    journal: ImportJournal
    plan: ImportPlan
    source: Path
    digest: str
    previous: ImportRecord | None = None
    left_without_password: list[str] = field(default_factory=list)
    passwords_path: Path | None = None
    new_password: Callable[[], str] = lambda: ""
    progress: Callable[[str], None] = lambda _text: None
    part_size: int = PART_SIZE
    given_passwords: list[str] = field(default_factory=list)
    committed_parts: int = 0

    def run(self) -> None:
        parts = self.plan.parts(self.part_size)
        previous = self.previous
        record = ImportRecord(
            source=str(self.source), digest=self.digest,
            started=previous.started if previous else now().isoformat(),
            parts=len(parts),
            passwords=list(previous.passwords) if previous else [],
            wants_passwords=bool(self.passwords_path) or bool(previous and
                                                              previous.wants_passwords),
            without_password=list(self.left_without_password),
        )
        out = None
        if self.passwords_path and (self.plan.new_uids or self.left_without_password):
            out = _open_passwords(self.passwords_path)
            record.passwords.append(str(self.passwords_path))
        try:
            self.journal.save(record)
            if out is not None and record.without_password:
                self._give_passwords(record, out)
            for number, part in enumerate(parts, start=1):
                self._commit(record, number, part, len(parts))
                if out is not None and record.without_password:
                    self._give_passwords(record, out)
        except KeyboardInterrupt:
            raise CoopError(
                f"interrupted: {self.committed_parts} of the import's {len(parts)} part(s) "
                "were committed (a part being committed is applied whole or not at all)",
                f"run `coopctl member import {self.source}` again: it finishes the import",
            ) from None
        finally:
            if out is not None:
                out.close()
                if not self.given_passwords and self.passwords_path is not None:
                    # Nothing in it: the same name can be given again to the next run.
                    with contextlib.suppress(OSError):
                        self.passwords_path.unlink()
        self.journal.clear()

    def _commit(self, record: ImportRecord, number: int, part: list[RowChange],
                total: int) -> None:
        directory = self.directory
        cs = ChangeSet(directory.cfg)
        for row in part:
            add_to_changeset(cs, directory, row.old, row.new, row.label, describe_it=False)
        if number < total:
            # Group memberships all go with the last part: one modify per group for the whole
            # run. Part by part, slapd would rewrite each growing group entry and compare every
            # new member with every current one each time: quadratic in the group's size.
            cs.group_adds.clear()
            cs.group_removes.clear()
        else:
            for row in self.plan.changes[:-len(part)]:
                before = set(row.old.groups) if row.old else set()
                for name in set(row.new.groups) - before:
                    cs.join_group(name, row.new.uid)
                for name in before - set(row.new.groups):
                    cs.leave_group(name, row.new.uid)
            cs.finalize(self.plan.groups)
        record.committing = ([row.new.uid for row in part if row.old is None]
                             if record.wants_passwords else [])
        self.journal.save(record)
        try:
            cs.apply(directory.conn)
        except CoopError as exc:
            raise self._stopped(exc, number, total) from None
        self.committed_parts = number
        record.done = number
        record.without_password += record.committing
        record.committing = []
        self.journal.save(record)
        if total > 1:
            self.progress(f"part {number} of {total} committed ({len(part)} rows)")

    def _stopped(self, exc: CoopError, number: int, total: int) -> CoopError:
        """Say what the stop left behind: nothing, or parts already committed."""
        refused = not isinstance(exc, DirectoryUnavailable)
        if number == 1 and refused and self.previous is None:
            # The server refused the first part: the transaction rolled back, nothing of the
            # import exists; the record goes, the file can be corrected and imported again.
            self.journal.clear()
            exc.message += "\nNothing of the import was written."
            return exc
        done_rows = sum(len(p) for p in self.plan.parts(self.part_size)[:number - 1])
        exc.message += (f"\nParts 1 to {number - 1} of {total} ({done_rows} rows) were "
                        "committed before this; the rest was not." if number > 1 else
                        f"\nThis was part 1 of {total}: no part was committed before it.")
        finish = (f"run `coopctl member import {self.source}` again: rows already imported "
                  "are recognised and the import is finished")
        if refused:
            exc.hint = f"{exc.hint}; then {finish}" if exc.hint else finish[0].upper() + finish[1:]
        else:
            exc.hint = ("check that slapd runs (systemctl status slapd) and the network, "
                        f"then {finish}")
        return exc

    def _give_passwords(self, record: ImportRecord, out: TextIO) -> None:
        """One-time passwords, each written (and flushed) as soon as the directory has it."""
        directory = self.directory
        waiting = record.without_password
        for number, uid in enumerate(waiting):
            password = self.new_password()
            try:
                set_password(directory.conn, directory.member_dn(uid), password, reset=True)
            except CoopError as exc:
                record.without_password = waiting[number:]
                self.journal.save(record)
                exc.message += (f"\n{len(record.without_password)} member(s) of this import "
                                "have no password yet.")
                exc.hint = (f"run `coopctl member import {self.source} --initial-passwords "
                            "NEWFILE` again: it gives them one")
                raise
            out.write(f"{uid},{password}\n")
            out.flush()
            self.given_passwords.append(uid)
        record.without_password = []
        self.journal.save(record)


def _open_passwords(path: Path) -> TextIO:
    """A new file only its owner reads: it holds passwords."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot create {path}: {exc.strerror}",
                           "choose a new file in a directory you may write") from None
    out = os.fdopen(fd, "w", encoding="utf-8")
    out.write(PASSWORDS_HEADER)
    out.flush()
    return out


def check_passwords_path(path: Path) -> None:
    """Before anything is written: the passwords' file must be new, its folder writable."""
    if path.exists() or path.is_symlink():
        raise InvalidInput(f"{path} already exists", "choose a new file: it will hold passwords")
    folder = path.parent
    if not folder.is_dir():
        raise InvalidInput(f"cannot write {path}: the folder {folder} does not exist",
                           "create the folder first, or choose a file in an existing one")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write {path}: the folder {folder} is not writable",
                           "choose a file in a folder you may write")
