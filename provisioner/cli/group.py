"""`coopctl group ...`: groups of members (wiki editors, board, staff...)."""

from __future__ import annotations

import click

from provisioner import validate
from provisioner.changes import Change, ChangeSet
from provisioner.cli.common import (
    State,
    apply_changes,
    emit,
    handle_errors,
    json_option,
    pass_state,
)
from provisioner.errors import Conflict
from provisioner.model import Group


@click.group()
def group() -> None:
    """Create groups and manage who is in them."""


@group.command("add")
@click.argument("name")
@click.option("--description", default="", help="One line for humans.")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_state
@handle_errors
def group_add(state: State, name: str, description: str, dry_run: bool, as_json: bool) -> None:
    """Create an empty group."""
    validate.identifier(name, "group")
    description = validate.text(description, "description", validate.MAX_DESCRIPTION, False)
    directory = state.directory
    if directory.find_group(name):
        raise Conflict(f"a group named {name!r} exists already")
    attrs = {"objectClass": ["groupOfNames"], "cn": name,
             "member": [state.config.directory.placeholder_dn]}
    if description:
        attrs["description"] = description
    cs = ChangeSet(state.config.directory)
    cs.tx.add(directory.group_dn(name), attrs)
    cs.changes.append(Change("+", "group", name, [description] if description else []))
    apply_changes(state, cs, dry_run, as_json)


@group.command("list")
@json_option
@pass_state
@handle_errors
def group_list(state: State, as_json: bool) -> None:
    """List groups with their size."""
    groups = state.directory.groups()
    emit(as_json, [g.to_dict() for g in groups],
         lambda: "\n".join(f"{g.name:<24} {len(g.members):>6} member(s)  {g.description}"
                           for g in groups) or "No groups yet.")


@group.command("show")
@click.argument("name")
@json_option
@pass_state
@handle_errors
def group_show(state: State, name: str, as_json: bool) -> None:
    """Show a group and its members."""
    g = state.directory.get_group(name)
    emit(as_json, g.to_dict(), lambda: _text(g))


def _text(g: Group) -> str:
    head = f"{g.name}: {g.description}" if g.description else g.name
    return head + "\n" + ("\n".join(f"  {m}" for m in g.members) or "  (no members)")


def _membership(name: str, joining: bool) -> None:
    verb = "add-member" if joining else "remove-member"

    @group.command(verb, help=("Add members to a group." if joining
                               else "Remove members from a group."))
    @click.argument("name")
    @click.argument("uids", nargs=-1, required=True)
    @click.option("--dry-run", is_flag=True)
    @json_option
    @pass_state
    @handle_errors
    def command(state: State, name: str, uids: tuple[str, ...], dry_run: bool,
                as_json: bool) -> None:
        directory = state.directory
        g = directory.get_group(name)
        cs = ChangeSet(state.config.directory)
        for uid in uids:
            directory.get_member(validate.uid(uid))
            if joining and uid not in g.members:
                cs.join_group(name, uid)
                cs.changes.append(Change("~", "group", name, [f"+ {uid}"]))
            elif not joining and uid in g.members:
                cs.leave_group(name, uid)
                cs.changes.append(Change("~", "group", name, [f"- {uid}"]))
        cs.finalize({name: g})
        apply_changes(state, cs, dry_run, as_json)


_membership("add-member", True)
_membership("remove-member", False)
