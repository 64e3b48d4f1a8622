"""`coopctl member ...`: the sysadmin's everyday commands."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from provisioner import validate
from provisioner.changes import ChangeSet
from provisioner.cli.common import (
    State,
    apply_changes,
    emit,
    generate_password,
    handle_errors,
    json_option,
    list_option,
    obtain_password,
    pass_state,
    with_password_options,
)
from provisioner.errors import Conflict, CoopError, InvalidInput
from provisioner.ldapconn import set_password
from provisioner.members import (
    MemberSpec,
    add_to_changeset,
    check_addresses,
    check_references,
    check_spec,
    desired_member,
    new_uid,
    set_status,
)
from provisioner.model import Member

if TYPE_CHECKING:
    from provisioner.imports import ImportPlan


@click.group()
def member() -> None:
    """Add, change, suspend, restore and list the coop's members."""


def _quotas(spec: MemberSpec, mail_quota: str | None, cloud_quota: str | None) -> MemberSpec:
    """--mail-quota/--cloud-quota: a size sets it by hand, `plan` puts it back on the plan's."""
    for kind, value in (("mail", mail_quota), ("cloud", cloud_quota)):
        if value is None:
            continue
        amount = validate.quota_setting(value, f"{kind} quota")
        if amount is None:
            spec.follow_plan.append(kind)
        else:
            setattr(spec, f"{kind}_quota", amount)
    return spec


def _member_text(m: Member) -> str:
    lines = [
        f"{m.uid}  {m.full_name}",
        f"  status:      {m.status}"
        + (f" since {m.status_changed:%Y-%m-%d}" if m.status_changed else ""),
        f"  mail:        {m.mail}",
        f"  plan:        {m.plan or '-'}",
        f"  services:    {', '.join(m.services) or '-'}",
        f"  groups:      {', '.join(m.groups) or '-'}",
        f"  mail quota:  {validate.format_quota(m.mail_quota) or '-'}"
        + (" (set by hand)" if "mail" in m.quota_overrides else ""),
        f"  cloud quota: {validate.format_quota(m.cloud_quota) or '-'}"
        + (" (set by hand)" if "cloud" in m.quota_overrides else ""),
    ]
    if m.aliases:
        lines.append(f"  aliases:     {', '.join(m.aliases)}")
    if m.forwards:
        lines.append(f"  forwards:    {', '.join(m.forwards)}")
    if m.member_number:
        lines.append(f"  member no.:  {m.member_number}")
    if m.departure_date:
        lines.append(f"  departed:    {m.departure_date:%Y-%m-%d}")
    return "\n".join(lines)


def _single_change(state: State, spec: MemberSpec, uid: str | None) -> tuple[ChangeSet, Member]:
    directory = state.directory
    cfg = state.config
    spec = check_spec(spec, cfg.mail_domain)
    old = directory.get_member(uid) if uid else None
    plans = {p.name: p for p in directory.plans()}
    groups = {g.name: g for g in directory.groups()}
    check_references(set(groups), spec.groups)
    if old is None:
        uid = new_uid(directory, spec, set())
        if spec.plan is None:
            spec.plan = cfg.default_plan
        if spec.plan is None:
            raise InvalidInput("no plan given", "name one with --plan (see `coopctl plan list`)")
    assert uid is not None
    new = desired_member(spec, old, plans, uid, cfg.mail_domain)
    check_addresses(directory, new, old)
    cs = ChangeSet(cfg.directory)
    add_to_changeset(cs, directory, old, new)
    cs.finalize(groups)
    return cs, new


@member.command("add")
@click.option("--given-name", required=True, help="First name(s), e.g. 'Stéphanie'.")
@click.option("--family-name", required=True, help="Family name, e.g. 'Dupré-Noël'.")
@click.option("--uid", help="Login name; derived from the name when absent.")
@click.option("--mail", help="Coop address; uid@<mail domain> when absent.")
@click.option("--plan", help="Plan name (see `coopctl plan list`).")
@list_option("--service", "Service the member gets; the plan's when none given")
@list_option("--group", "Group to join")
@list_option("--alias", "Extra address delivered to the mailbox")
@list_option("--forward", "Address that receives a copy of every message")
@click.option("--mail-quota", help="Override the plan's mail quota, e.g. '2 GB'.")
@click.option("--cloud-quota", help="Override the plan's cloud quota, e.g. '10 GB'.")
@click.option("--member-number", help="The member's number in the coop's ERP.")
@click.option("--recovery-mail", help="Address outside the coop, for password resets.")
@click.option("--language", help="fr, nl or en: the language of the member's welcome mail.")
@with_password_options
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@json_option
@pass_state
@handle_errors
def member_add(state: State, given_name: str, family_name: str, uid: str | None,
               mail: str | None, plan: str | None, service: tuple[str, ...],
               group: tuple[str, ...], alias: tuple[str, ...], forward: tuple[str, ...],
               mail_quota: str | None, cloud_quota: str | None, member_number: str | None,
               recovery_mail: str | None, language: str | None, password_stdin: bool,
               password_file: Path | None, generate_password: bool, dry_run: bool,
               as_json: bool) -> None:
    """Add a member. The password is never taken on the command line."""
    spec = MemberSpec(
        given_name=given_name, family_name=family_name, uid=uid, mail=mail, plan=plan,
        services=list(service) or None, groups=list(group), aliases=list(alias),
        forwards=list(forward), member_number=member_number,
        recovery_mail=recovery_mail, language=language, status="active",
    )
    _quotas(spec, mail_quota, cloud_quota)
    password, generated = (None, False) if dry_run else obtain_password(
        state.config.min_password_length, password_stdin, password_file, generate_password)
    cs, new = _single_change(state, spec, None)
    if generated:
        cs.apply(state.directory.conn)  # reported below, with the password, in one document
    else:
        apply_changes(state, cs, dry_run, as_json)
    if dry_run or password is None:
        return
    dn = state.directory.member_dn(new.uid)
    try:
        set_password(state.directory.conn, dn, password, reset=True)
    except CoopError:
        # Undo the add so that nothing half-made stays: the member can be added again.
        undo = ChangeSet(state.config.directory)
        undo.tx.delete(dn)
        for g in new.groups:
            undo.leave_group(g, new.uid)
        undo.finalize({g.name: g for g in state.directory.groups()})
        undo.apply(state.directory.conn)
        raise
    if generated:
        emit(as_json, {"uid": new.uid, "initial_password": password,
                       "changes": [c.to_dict() for c in cs.changes]},
             lambda: cs.render() + f"\nInitial password for {new.uid} (shown once, give it "
             f"to the member): {password}")


@member.command("show")
@click.argument("uid")
@json_option
@pass_state
@handle_errors
def member_show(state: State, uid: str, as_json: bool) -> None:
    """Show one member."""
    m = state.directory.get_member(uid)
    emit(as_json, m.to_dict(), lambda: _member_text(m))


@member.command("list")
@click.option("--status", help="active, suspended or departed.")
@click.option("--plan", help="Only members on this plan.")
@click.option("--group", help="Only members of this group.")
@click.option("--service", help="Only members with this service.")
@json_option
@pass_state
@handle_errors
def member_list(state: State, status: str | None, plan: str | None, group: str | None,
                service: str | None, as_json: bool) -> None:
    """List members, filtered by status, plan, group or service."""
    members = state.directory.members(status=status, plan=plan, service=service, group=group,
                                      brief=not as_json)
    if as_json:  # one member at a time: 100,000 of them as one JSON text would be 300 MB
        write = sys.stdout.write
        write("[")
        for number, m in enumerate(members):
            text = json.dumps(m.to_dict(), indent=2, ensure_ascii=False, default=str)
            write(("," if number else "") + "\n  " + text.replace("\n", "\n  "))
        write("\n]\n" if members else "]\n")
        return
    out = [f"{'UID':<24} {'STATUS':<10} {'PLAN':<12} {'SERVICES':<26} NAME"]
    out += [f"{m.uid:<24} {m.status:<10} {m.plan or '-':<12} "
            f"{','.join(m.services) or '-':<26} {m.full_name}" for m in members]
    out.append(f"{len(members)} member(s)")
    sys.stdout.write("\n".join(out) + "\n")


@member.command("modify")
@click.argument("uid")
@click.option("--given-name")
@click.option("--family-name")
@click.option("--display-name")
@click.option("--mail", help="New coop address.")
@click.option("--plan", help="Move to this plan (services and quotas follow it).")
@list_option("--service", "Replace the member's services with these")
@list_option("--add-group", "Join this group")
@list_option("--remove-group", "Leave this group")
@list_option("--add-alias", "Add this address")
@list_option("--remove-alias", "Remove this address")
@list_option("--add-forward", "Forward to this address too")
@list_option("--remove-forward", "Stop forwarding to this address")
@click.option("--mail-quota", help="Set the mail quota by hand, e.g. '2 GB'; 'plan' to follow "
              "the plan's again.")
@click.option("--cloud-quota", help="Set the cloud quota by hand, e.g. '10 GB'; 'plan' to "
              "follow the plan's again.")
@click.option("--follow-plan-quotas", is_flag=True, help="Drop quota overrides.")
@click.option("--member-number")
@click.option("--recovery-mail")
@click.option("--language", help="fr, nl or en.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@json_option
@pass_state
@handle_errors
def member_modify(state: State, uid: str, given_name: str | None, family_name: str | None,
                  display_name: str | None, mail: str | None, plan: str | None,
                  service: tuple[str, ...], add_group: tuple[str, ...],
                  remove_group: tuple[str, ...], add_alias: tuple[str, ...],
                  remove_alias: tuple[str, ...], add_forward: tuple[str, ...],
                  remove_forward: tuple[str, ...], mail_quota: str | None,
                  cloud_quota: str | None, follow_plan_quotas: bool,
                  member_number: str | None, recovery_mail: str | None,
                  language: str | None, dry_run: bool, as_json: bool) -> None:
    """Change a member: name, plan, services, groups, addresses, quotas."""
    validate.uid(uid)
    old = state.directory.get_member(uid)
    aliases = (set(old.aliases) | {validate.mail(a, "alias") for a in add_alias}) - {
        validate.mail(a, "alias") for a in remove_alias}
    forwards = (set(old.forwards) | {validate.mail(a, "forward") for a in add_forward}) - {
        validate.mail(a, "forward") for a in remove_forward}
    spec = MemberSpec(
        given_name=given_name, family_name=family_name, display_name=display_name, mail=mail,
        plan=plan, services=list(service) or None,
        groups=sorted((set(old.groups) | set(add_group)) - set(remove_group)),
        aliases=sorted(aliases), forwards=sorted(forwards),
        follow_plan_quotas=follow_plan_quotas, member_number=member_number,
        recovery_mail=recovery_mail, language=language,
    )
    _quotas(spec, mail_quota, cloud_quota)
    cs, _new = _single_change(state, spec, uid)
    apply_changes(state, cs, dry_run, as_json)


def _status_command(name: str, status: str, doc: str) -> None:
    @member.command(name, help=doc)
    @click.argument("uid")
    @click.option("--on", "on_date", metavar="YYYY-MM-DD", hidden=status != "departed",
                  help="The day the member left (default: today), e.g. from the ERP; the "
                  "grace period before the sync archives and removes their data counts from it.")
    @click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
    @json_option
    @pass_state
    @handle_errors
    def command(state: State, uid: str, on_date: str | None, dry_run: bool,
                as_json: bool) -> None:
        validate.uid(uid)
        left = None
        if on_date is not None:
            if status != "departed":
                raise InvalidInput(f"--on is for `coopctl member depart`, not {name}")
            left = validate.past_date(on_date, "--on")
        directory = state.directory
        old = directory.get_member(uid)
        allowed = {"suspended": {"active"}, "active": {"suspended", "departed"},
                   "departed": {"active", "suspended"}}[status]
        if old.status == status and (left is None or left == old.departure_date):
            emit(as_json, {"uid": uid, "status": status, "changes": []},
                 f"No changes: {uid} is already {status}.")
            return
        if old.status not in allowed | {status}:
            raise InvalidInput(f"{uid} is {old.status}; cannot {name} from there")
        new = replace(old)
        if old.status != status:
            set_status(new, status)
        if left is not None:
            new.departure_date = left
        cs = ChangeSet(state.config.directory)
        add_to_changeset(cs, directory, old, new)
        cs.finalize({g.name: g for g in directory.groups()})
        apply_changes(state, cs, dry_run, as_json)


_status_command("suspend", "suspended",
                "Suspend a member: they can no longer log in anywhere; nothing is deleted.")
_status_command("restore", "active", "Restore a suspended or departed member.")
_status_command("depart", "departed",
                "Record that a member left. Nothing is deleted here: the sync removes their "
                "accounts after the grace period.")


@member.command("passwd")
@click.argument("uid")
@with_password_options
@json_option
@pass_state
@handle_errors
def member_passwd(state: State, uid: str, password_stdin: bool, password_file: Path | None,
                  generate_password: bool, as_json: bool) -> None:
    """Set a member's password (the directory hashes it)."""
    validate.uid(uid)
    directory = state.directory
    directory.get_member(uid)
    password, generated = obtain_password(state.config.min_password_length, password_stdin,
                                          password_file, generate_password)
    set_password(directory.conn, directory.member_dn(uid), password, reset=True)
    data = {"uid": uid, "password_set": True}
    if generated:
        data["initial_password"] = password
        emit(as_json, data, f"New password for {uid} (shown once): {password}")
    else:
        emit(as_json, data, f"Password of {uid} changed.")


@member.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--initial-passwords", type=click.Path(dir_okay=False, path_type=Path),
              help="Give new members a one-time password, written to this new file (0600).")
@click.option("--abandon-unfinished", is_flag=True,
              help="Leave an unfinished import of another file as it is and import this one.")
@click.option("--part-size", type=click.IntRange(1, 50_000), default=None, hidden=True,
              help="Rows per transaction (tests and benchmarks; the default suits slapd).")
@json_option
@pass_state
@handle_errors
def member_import(state: State, csv_file: Path, dry_run: bool, initial_passwords: Path | None,
                  abandon_unfinished: bool, part_size: int | None, as_json: bool) -> None:
    """Import members from a CSV file: every row is checked before anything is written.

    Columns: member_number, uid, given_name, family_name, display_name, mail, status, plan,
    services, groups, aliases, forwards, mail_quota, cloud_quota, recovery_mail, language.
    Lists are separated by spaces. A quota cell left empty (or no quota column) keeps the
    member's quota as it is; `plan` puts it back on the plan's. Members not in the file are
    left alone. Large files are committed in parts; a run that stops half-way is finished by
    the next import of the same file.
    """
    # CSV and the import's record load only for this command.
    from provisioner.importrun import (
        ImportJournal,
        ImportRun,
        check_passwords_path,
        file_digest,
        left_without_password,
    )
    from provisioner.imports import plan_import, read_file

    config = state.config
    if initial_passwords is not None and not dry_run:
        check_passwords_path(initial_passwords)
    data = read_file(csv_file)
    source, digest = csv_file.resolve(), file_digest(data)
    assert config.sync is not None
    journal = ImportJournal(config.sync.state_dir, config.directory)
    if not dry_run:
        journal.check_writable()
    notes: list[str] = []
    with contextlib.nullcontext() if dry_run else journal.locked():
        previous = journal.load()
        if previous is not None and not previous.same_file(source, digest):
            if abandon_unfinished:
                notes.append(f"Left {previous.describe()} as it is: its remaining rows were "
                             "not imported" + (" (and would not be)" if dry_run else "") + ".")
                if not dry_run:
                    journal.clear()
                previous = None
            elif dry_run:
                notes.append(f"Note: {previous.describe()} is unfinished; importing another "
                             "file would be refused until it is finished.")
            else:
                raise Conflict(
                    f"{previous.describe()} is unfinished: importing {csv_file} now would leave "
                    "it half done",
                    f"finish it first with `coopctl member import {previous.source}`, or give "
                    "--abandon-unfinished to leave it as it is",
                )
        directory = state.directory
        plan = plan_import(directory, data, str(csv_file))
        pending = left_without_password(directory, previous) if previous else []
        if previous is not None:
            changed = " (the file changed since)" if previous.digest != digest else ""
            notes.append(("Dry run: this would finish " if dry_run else "Finishing ")
                         + f"{previous.describe()}{changed}: rows already in the directory "
                         "are recognised and left as they are.")
        if pending:
            shown = ", ".join(pending[:10]) + (" ..." if len(pending) > 10 else "")
            notes.append(f"{len(pending)} member(s) it created have no password yet ({shown}): "
                         + ("they would get one." if dry_run else "they get one now."))
        wants = bool(pending) or bool(previous and previous.wants_passwords and plan.new_uids)
        if wants and initial_passwords is None and not dry_run:
            raise InvalidInput(
                f"the interrupted import of {previous.source if previous else csv_file} gave new "
                "members one-time passwords; this run must give them too",
                f"run `coopctl member import {csv_file} --initial-passwords NEWFILE`",
            )
        summary = plan.summary()
        data_out = {"dry_run": dry_run, "summary": summary, "rows": plan.rows,
                    "new": plan.new_uids, "notes": notes}
        if dry_run or (not plan and not pending):
            after = []
            if not dry_run and previous is not None:
                journal.clear()
                after.append("The interrupted import is complete.")
            tail = (f"Dry run: {summary['create']} to create, {summary['change']} to change, "
                    "nothing written." if plan else "No changes: the directory already says so.")
            _emit_import(as_json, data_out, plan, [tail, *after])
            return
        run = ImportRun(
            directory, journal, plan, source, digest, previous=previous,
            left_without_password=pending, passwords_path=initial_passwords,
            new_password=lambda: generate_password(max(16, config.min_password_length)),
            progress=lambda text: click.echo(text, err=True),
        )
        if part_size:
            run.part_size = part_size
        run.run()
    data_out["passwords_given"] = run.given_passwords
    _emit_import(as_json, data_out, plan, [
        f"Applied: {summary['create']} created, {summary['change']} changed.",
        *(["The interrupted import is complete."] if previous is not None else [])])
    if run.given_passwords:
        click.echo(f"One-time passwords of {len(run.given_passwords)} member(s) are in "
                   f"{initial_passwords}; hand them out, then delete the file.", err=True)


def _emit_import(as_json: bool, data: dict, plan: ImportPlan, tail: list[str]) -> None:
    """Notes, the plan line by line (an import may change 100,000 members), the outcome.

    Written as it is made, JSON included: the whole text of a large plan is never in memory.
    """
    write = sys.stdout.write
    if as_json:
        head = json.dumps(data, indent=2, ensure_ascii=False)
        write(head[:-2] + ',\n  "changes": [')
        for number, row in enumerate(plan.changes):
            write(("," if number else "") + "\n    "
                  + json.dumps(row.change.to_dict(), ensure_ascii=False))
        write("\n  ]\n}\n")
        return
    for note in data["notes"]:
        write(note + "\n")
    for row in plan.changes:
        write(row.change.render() + "\n")
    for line in tail:
        write(line + "\n")


@member.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
@click.option("--status", help="Only members with this status.")
@pass_state
@handle_errors
def member_export(state: State, output: Path | None, status: str | None) -> None:
    """Export members as CSV, in the format `member import` reads."""
    from provisioner.imports import export_rows

    text = export_rows(state.directory.members(status=status))
    if output:
        # Names, addresses and member numbers: readable by the sysadmin only (mode 0600).
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
