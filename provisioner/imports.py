"""CSV import and export of members: the format a coop's ERP can produce.

Every row is checked first, against the file and the directory, and every
error is reported with its line number: a file with any error writes nothing.
Only then is the plan committed, in parts of PART_SIZE rows, each one LDAP
transaction (slapd's commit of one huge transaction grows quadratically; parts
keep the cost linear); `provisioner.importrun` records the progress so that a
run stopped half-way is finished by the next run of the same file. A file of
up to PART_SIZE changed rows is one transaction: all of it or nothing.

Re-importing the same file (or an export) finds nothing to change. Members
missing from the file are left alone: departures are an explicit `member
depart`, never a side effect. A quota cell left empty (or no quota column)
leaves the member's quota as it is, set by hand or following the plan; the
word `plan` puts it back on the plan's.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import validate
from provisioner.changes import Change
from provisioner.directory import Directory
from provisioner.errors import InvalidInput
from provisioner.members import (
    MemberSpec,
    check_spec,
    describe,
    desired_member,
    member_differs,
)
from provisioner.model import Group, Member, Plan
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


PART_SIZE = 2000  # rows per transaction: slapd's commit grows faster than linearly with size


@dataclass(slots=True)
class RowChange:
    """One row that changes the directory: the member before (None: new) and after.

    The plan's text is made when it is shown, not kept: 100,000 of them would weigh more
    than the members themselves.
    """

    line: int
    old: Member | None
    new: Member

    @property
    def label(self) -> str:
        return f"line {self.line} ({self.new.uid})"

    @property
    def change(self) -> Change:
        action = "+" if self.old is None else "~"
        return Change(action, "member", self.new.uid, describe(self.old, self.new) or
                      ["attributes"])


@dataclass
class ImportPlan:
    """Every change an import makes, in the file's order; nothing is written yet."""

    rows: int
    groups: dict[str, Group]
    changes: list[RowChange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)

    @property
    def new_uids(self) -> list[str]:
        return [row.new.uid for row in self.changes if row.old is None]

    def summary(self) -> dict[str, int]:
        created = sum(1 for row in self.changes if row.old is None)
        return {"create": created, "change": len(self.changes) - created, "remove": 0}

    def parts(self, size: int = PART_SIZE) -> list[list[RowChange]]:
        return [self.changes[i:i + size] for i in range(0, len(self.changes), size)]


def _split(cell: str) -> list[str]:
    return [part for part in _LIST_SPLIT.split(cell.strip()) if part]


def iter_rows(data: bytes, source: str) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header (checked at once) and the rows, parsed one at a time as they are used:
    a 100,000-line file never exists as 100,000 dictionaries at once."""
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
    return header, _records(reader, header, source)


def _records(reader: Any, header: list[str], source: str) -> Iterator[tuple[int, dict[str, str]]]:
    count = 0
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            count += 1
            if count > MAX_ROWS:
                raise InvalidInput(f"{source} has more than {MAX_ROWS} rows; split it")
            if len(record) != len(header):
                yield line, {"__error__": f"{len(record)} fields, expected {len(header)}"}
                continue
            yield line, dict(zip(header, record, strict=True))
    except csv.Error as exc:
        raise InvalidInput(f"{source}, line {reader.line_num}: {exc}") from None


def row_to_spec(line: int, row: dict[str, str], mail_domain: str) -> MemberSpec:
    if "__error__" in row:
        raise InvalidInput(row["__error__"])
    spec = MemberSpec(line=line)
    for column, raw in row.items():
        cell = raw.strip()
        if column in LIST_COLUMNS:
            setattr(spec, column, _split(cell))
        elif column in ("mail_quota", "cloud_quota"):
            # Empty: leave the quota as it is (a hand-set one survives the ERP's export,
            # which knows nothing of it); `plan`: back on the plan's; a size: set by hand.
            if cell:
                value = validate.quota_setting(cell, column.replace("_", " "))
                if value is None:
                    spec.follow_plan.append(column.split("_")[0])
                else:
                    setattr(spec, column, value)
        elif cell:
            setattr(spec, column, cell)
    if "services" in row and not row["services"].strip():
        spec.services = None  # empty: the plan's services
    if spec.given_name is None:
        spec.given_name = ""
    return check_spec(spec, mail_domain)


def plan_import(directory: Directory, data: bytes, source: str) -> ImportPlan:
    """Validate the whole file against itself and the directory; plan every row's change.

    Nothing is written here: any error in any row stops the import before its first write.
    One pass over the rows, in the file's order; memory stays near one small object per
    member read from the directory and one per row that changes something: a row that
    changes nothing leaves nothing behind.
    """
    config = directory.config
    _header, rows = iter_rows(data, source)  # the header is checked before any read
    plans = {p.name: p for p in directory.plans()}
    groups = {g.name: g for g in directory.groups()}
    by_uid: dict[str, Member] = {}
    by_number: dict[str, Member] = {}
    owners: dict[str, str] = {}  # address (lower case) -> uid, as the file makes them
    for member in directory.members():
        by_uid[member.uid] = member
        if member.member_number:
            by_number[member.member_number] = member
        owners[member.mail.lower()] = member.uid
        for alias in member.aliases:
            owners[alias.lower()] = member.uid
    # uids compare without case in LDAP: an entry `Jan.Peeters` takes `jan.peeters` too.
    taken = {uid.lower() for uid in (*by_uid, *directory.other_uids())}
    tried: dict[str, int] = {}  # homonyms: the last suffix found taken for each login
    plan = ImportPlan(rows=0, groups=groups)
    errors: list[str] = []
    seen: dict[str, dict[str, int]] = {"uid": {}, "member number": {}, "address": {}}

    def once(kind: str, key: str, line: int) -> None:
        first = seen[kind].setdefault(key, line)
        if first != line:
            errors.append(f"line {line}: duplicates line {first} ({kind} {key})")

    for line, row in rows:
        plan.rows += 1
        try:
            spec = row_to_spec(line, row, config.mail_domain)
        except InvalidInput as exc:
            errors.append(f"line {line}: {exc.message}")
            continue
        before = len(errors)
        if not spec.uid and not spec.member_number:
            # Without either, the next import of the same row could not find this member
            # again and would add them a second time (karel.noid, then karel.noid2).
            errors.append(f"line {line}: neither uid nor member_number: the next import "
                          "could not recognise this member")
        if spec.uid:
            once("uid", spec.uid, line)
        if spec.member_number:
            once("member number", spec.member_number, line)
        if spec.mail:
            once("address", spec.mail, line)
        for alias in spec.aliases or []:
            once("address", alias, line)
        if spec.plan not in plans:
            errors.append(f"line {line}: no plan named {spec.plan!r} "
                          f"(known: {', '.join(sorted(plans)) or 'none'})")
        for group in spec.groups or []:
            if group not in groups:
                errors.append(f"line {line}: no group named {group!r}")
        if len(errors) > before:
            continue
        change = _plan_row(directory, spec, line, plans, by_uid, by_number, owners, taken,
                           tried, errors)
        if change is not None:
            plan.changes.append(change)
    if errors:
        raise _report(source, errors)
    return plan


def _plan_row(directory: Directory, spec: MemberSpec, line: int, plans: dict[str, Plan],
              by_uid: dict[str, Member], by_number: dict[str, Member], owners: dict[str, str],
              taken: set[str], tried: dict[str, int], errors: list[str]) -> RowChange | None:
    """The member a valid row asks for, and whether that changes anything; errors appended."""
    old = by_uid.get(spec.uid) if spec.uid else by_number.get(spec.member_number or "")
    if old and spec.member_number and old.member_number not in (None, spec.member_number):
        errors.append(f"line {line}: uid {old.uid} has member number "
                      f"{old.member_number}, not {spec.member_number}")
        return None
    holder = by_number.get(spec.member_number or "")
    if old is None and holder is not None:
        errors.append(f"line {line}: member number {spec.member_number} belongs to "
                      f"{holder.uid}; a member number is never given twice")
        return None
    if old is None:
        try:
            uid = spec.uid or first_free_uid(
                derive_uid(spec.given_name or "", spec.family_name or ""),
                lambda u: u.lower() in taken, tried)
        except InvalidInput as exc:
            errors.append(f"line {line}: {exc.message} (or give it in a uid column)")
            return None
        if spec.uid and spec.uid.lower() in taken:
            errors.append(f"line {line}: the uid {spec.uid} is taken by an entry that is "
                          "not a member")
            return None
        taken.add(uid.lower())
    else:
        uid = old.uid
    try:
        new = desired_member(spec, old, plans, uid, directory.config.mail_domain)
    except InvalidInput as exc:
        errors.append(f"line {line}: {exc.message}")
        return None
    for address in (new.mail, *new.aliases):
        owner = owners.get(address.lower())
        if owner and owner != uid:
            errors.append(f"line {line}: {address} already belongs to member {owner}")
        owners[address.lower()] = uid
    return RowChange(line, old, new) if member_differs(directory, old, new) else None


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
