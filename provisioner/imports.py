"""CSV import and export of members: the format a coop's ERP can produce.

An import is all-or-nothing: every row is checked first and every error is
reported with its line number; only a file with no error becomes a change
set, applied in one LDAP transaction. Re-importing the same file (or an
export) finds nothing to change. Members missing from the file are left
alone: departures are an explicit `member depart`, never a side effect.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import validate
from provisioner.changes import ChangeSet
from provisioner.directory import Directory
from provisioner.errors import InvalidInput
from provisioner.members import (
    MemberSpec,
    add_to_changeset,
    check_spec,
    desired_member,
)
from provisioner.model import Member
from provisioner.naming import derive_uid, first_free_uid

COLUMNS = [
    "member_number", "uid", "given_name", "family_name", "display_name", "mail", "status",
    "plan", "services", "groups", "aliases", "forwards", "mail_quota", "cloud_quota",
    "recovery_mail", "language",
]  # fmt: skip
REQUIRED = {"given_name", "family_name", "plan"}
LIST_COLUMNS = {"services", "groups", "aliases", "forwards"}
MAX_ROWS = 200_000
_LIST_SPLIT = re.compile(r"[\s,;|]+")


@dataclass
class ImportResult:
    changes: ChangeSet
    new_uids: list[str] = field(default_factory=list)
    rows: int = 0


def _split(cell: str) -> list[str]:
    return [part for part in _LIST_SPLIT.split(cell.strip()) if part]


def read_rows(data: bytes, source: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Decode and parse the CSV, checking its header. Returns (header, [(line, row)])."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            f"{source} is not UTF-8 (line {line}, byte {exc.start})",
            "save the file as UTF-8 (in LibreOffice: Save As, 'Edit filter settings', UTF-8)",
        ) from None
    if "\x00" in text:
        raise InvalidInput(f"{source} contains NUL characters", "is it really a CSV file?")
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise InvalidInput(f"{source} is empty", "the first line must name the columns") from None
    except csv.Error as exc:
        raise InvalidInput(f"{source}, line 1: {exc}") from None
    unknown = [h for h in header if h not in COLUMNS]
    missing = sorted(REQUIRED - set(header))
    duplicated = sorted({h for h in header if header.count(h) > 1})
    problems = []
    if unknown:
        problems.append(f"unknown column(s): {', '.join(unknown)}")
    if missing:
        problems.append(f"missing column(s): {', '.join(missing)}")
    if duplicated:
        problems.append(f"repeated column(s): {', '.join(duplicated)}")
    if not {"uid", "member_number"} & set(header):
        problems.append("one of the columns uid or member_number is needed to recognise members")
    if problems:
        raise InvalidInput(
            f"{source}: the header line is wrong: " + "; ".join(problems),
            f"columns are: {', '.join(COLUMNS)} (given_name, family_name, plan required)",
        )
    rows = []
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                rows.append((line, {"__error__": f"{len(record)} fields, expected {len(header)}"}))
                continue
            rows.append((line, dict(zip(header, record, strict=True))))
            if len(rows) > MAX_ROWS:
                raise InvalidInput(f"{source} has more than {MAX_ROWS} rows; split it")
    except csv.Error as exc:
        raise InvalidInput(f"{source}, line {reader.line_num}: {exc}") from None
    return header, rows


def row_to_spec(line: int, row: dict[str, str], mail_domain: str) -> MemberSpec:
    if "__error__" in row:
        raise InvalidInput(row["__error__"])
    spec = MemberSpec(line=line)
    for column, raw in row.items():
        cell = raw.strip()
        if column in LIST_COLUMNS:
            setattr(spec, column, _split(cell))
        elif column in ("mail_quota", "cloud_quota"):
            if cell:
                setattr(spec, column, validate.quota(cell, column.replace("_", " ")))
        elif cell:
            setattr(spec, column, cell)
    if "services" in row and not row["services"].strip():
        spec.services = None  # empty: the plan's services
    spec.follow_plan_quotas = True  # an empty quota cell means: follow the plan
    if spec.given_name is None:
        spec.given_name = ""
    return check_spec(spec, mail_domain)


def plan_import(directory: Directory, data: bytes, source: str) -> ImportResult:
    """Validate the whole file against itself and the directory; build the change set."""
    config = directory.config
    _header, rows = read_rows(data, source)
    errors: list[str] = []
    specs: list[MemberSpec] = []
    for line, row in rows:
        try:
            specs.append(row_to_spec(line, row, config.mail_domain))
        except InvalidInput as exc:
            errors.append(f"line {line}: {exc.message}")
    plans = {p.name: p for p in directory.plans()}
    groups = {g.name: g for g in directory.groups()}
    existing = directory.members()
    by_uid = {m.uid: m for m in existing}
    by_number = {m.member_number: m for m in existing if m.member_number}
    owners: dict[str, str] = {}
    for member in existing:
        for address in (member.mail, *member.aliases):
            owners[address.lower()] = member.uid
    seen: dict[str, int] = {}

    def once(key: str, line: int | None) -> None:
        if key in seen:
            errors.append(f"line {line}: duplicates line {seen[key]} ({key})")
        else:
            seen[key] = line or 0

    for spec in specs:
        if not spec.uid and not spec.member_number:
            # Without either, the next import of the same row could not find this member
            # again and would add them a second time (karel.noid, then karel.noid2).
            errors.append(f"line {spec.line}: neither uid nor member_number: the next import "
                          "could not recognise this member")
        if spec.uid:
            once(f"uid {spec.uid}", spec.line)
        if spec.member_number:
            once(f"member number {spec.member_number}", spec.line)
        if spec.mail:
            once(f"address {spec.mail}", spec.line)
        for alias in spec.aliases or []:
            once(f"address {alias}", spec.line)
        if spec.plan not in plans:
            errors.append(f"line {spec.line}: no plan named {spec.plan!r} "
                          f"(known: {', '.join(sorted(plans)) or 'none'})")
        for group in spec.groups or []:
            if group not in groups:
                errors.append(f"line {spec.line}: no group named {group!r}")
    if errors:
        raise _report(source, errors)

    taken = set(by_uid) | directory.uids()
    pairs: list[tuple[MemberSpec, Member | None, str]] = []
    for spec in specs:
        old = by_uid.get(spec.uid) if spec.uid else by_number.get(spec.member_number or "")
        if old and spec.member_number and old.member_number not in (None, spec.member_number):
            errors.append(f"line {spec.line}: uid {old.uid} has member number "
                          f"{old.member_number}, not {spec.member_number}")
            continue
        holder = by_number.get(spec.member_number or "")
        if old is None and holder is not None:
            errors.append(f"line {spec.line}: member number {spec.member_number} belongs to "
                          f"{holder.uid}; a member number is never given twice")
            continue
        if old is None:
            uid = spec.uid or first_free_uid(
                derive_uid(spec.given_name or "", spec.family_name or ""), taken.__contains__)
            if spec.uid and spec.uid in taken:
                errors.append(f"line {spec.line}: the uid {spec.uid} is taken by an entry that is "
                              "not a member")
                continue
            taken.add(uid)
        else:
            uid = old.uid
        pairs.append((spec, old, uid))
    if errors:
        raise _report(source, errors)

    result = ImportResult(ChangeSet(directory.cfg), rows=len(specs))
    for spec, old, uid in pairs:
        try:
            new = desired_member(spec, old, plans, uid, config.mail_domain)
        except InvalidInput as exc:
            errors.append(f"line {spec.line}: {exc.message}")
            continue
        for address in (new.mail, *new.aliases):
            owner = owners.get(address.lower())
            if owner and owner != uid:
                errors.append(f"line {spec.line}: {address} already belongs to member {owner}")
            owners[address.lower()] = uid
        add_to_changeset(result.changes, directory, old, new)
        if old is None:
            result.new_uids.append(uid)
    if errors:
        raise _report(source, errors)
    result.changes.finalize(groups)
    return result


def _report(source: str, errors: list[str]) -> InvalidInput:
    shown = errors[:200]
    more = f"\n  ... and {len(errors) - 200} more" if len(errors) > 200 else ""
    return InvalidInput(
        f"{source}: {len(errors)} error(s), nothing was imported:\n  " + "\n  ".join(shown) + more,
        "fix the lines above and import the file again",
    )


def export_rows(members: Iterable[Member]) -> str:
    """CSV that imports back to exactly the same directory state."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for m in members:
        writer.writerow([
            m.member_number or "", m.uid, m.given_name, m.family_name,
            m.display_name if m.display_name != m.full_name else "", m.mail, m.status,
            m.plan or "", " ".join(m.services), " ".join(m.groups), " ".join(m.aliases),
            " ".join(m.forwards),
            validate.format_quota(m.mail_quota) if "mail" in m.quota_overrides else "",
            validate.format_quota(m.cloud_quota) if "cloud" in m.quota_overrides else "",
            m.recovery_mail or "", m.language or "",
        ])
    return out.getvalue()


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
