"""`coopctl plan ...`: what a member subscribes to (quotas, services, price)."""

from __future__ import annotations

from dataclasses import replace

import click

from provisioner import validate
from provisioner.changes import Change, ChangeSet, attribute_diff
from provisioner.cli.common import (
    State,
    apply_changes,
    emit,
    handle_errors,
    json_option,
    list_option,
    pass_state,
)
from provisioner.errors import Conflict
from provisioner.members import MemberSpec, add_to_changeset, desired_member
from provisioner.model import Plan


@click.group()
def plan() -> None:
    """Define the coop's plans, e.g. '5 GB for 2.50 EUR/month'."""


def _plan_text(p: Plan) -> str:
    return (f"{p.name}: {p.label()}\n  services: {', '.join(p.services) or '-'}"
            + (f"\n  {p.description}" if p.description else ""))


@plan.command("add")
@click.argument("name")
@click.option("--cloud-quota", help="Cloud storage, e.g. '5 GB'.")
@click.option("--mail-quota", help="Mailbox size, e.g. '1 GB'.")
@click.option("--price", help="Monthly price, e.g. 2.50.")
@click.option("--currency", default="EUR", show_default=True)
@list_option("--service", "Service included in the plan")
@click.option("--description", default="", help="One line for humans.")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_state
@handle_errors
def plan_add(state: State, name: str, cloud_quota: str | None, mail_quota: str | None,
             price: str | None, currency: str, service: tuple[str, ...], description: str,
             dry_run: bool, as_json: bool) -> None:
    """Add a plan."""
    new = Plan(
        name=validate.identifier(name, "plan"),
        description=validate.text(description, "description", validate.MAX_DESCRIPTION, False),
        cloud_quota=validate.quota(cloud_quota, "cloud quota") if cloud_quota else None,
        mail_quota=validate.quota(mail_quota, "mail quota") if mail_quota else None,
        price_cents=validate.price(price) if price else None,
        currency=validate.currency(currency),
        services=validate.services(list(service)),
    )
    directory = state.directory
    if directory.find_plan(name):
        raise Conflict(f"a plan named {name!r} exists already",
                       "change it with `coopctl plan modify`")
    cs = ChangeSet(state.config.directory)
    cs.tx.add(directory.plan_dn(name), new.attributes())
    cs.changes.append(Change("+", "plan", name, [new.label()]))
    apply_changes(state, cs, dry_run, as_json)


@plan.command("list")
@json_option
@pass_state
@handle_errors
def plan_list(state: State, as_json: bool) -> None:
    """List plans."""
    plans = state.directory.plans()
    emit(as_json, [p.to_dict() for p in plans],
         lambda: "\n".join(_plan_text(p) for p in plans) or "No plans yet.")


@plan.command("show")
@click.argument("name")
@json_option
@pass_state
@handle_errors
def plan_show(state: State, name: str, as_json: bool) -> None:
    """Show a plan and how many members are on it."""
    p = state.directory.get_plan(name)
    count = len(state.directory.members(plan=name))
    emit(as_json, {**p.to_dict(), "members": count},
         lambda: _plan_text(p) + f"\n  members: {count}")


@plan.command("modify")
@click.argument("name")
@click.option("--cloud-quota")
@click.option("--mail-quota")
@click.option("--price")
@click.option("--currency")
@list_option("--service", "Replace the plan's services with these")
@click.option("--description")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_state
@handle_errors
def plan_modify(state: State, name: str, cloud_quota: str | None, mail_quota: str | None,
                price: str | None, currency: str | None, service: tuple[str, ...],
                description: str | None, dry_run: bool, as_json: bool) -> None:
    """Change a plan; members who follow it get the new quotas in the same change."""
    directory = state.directory
    old = directory.get_plan(name)
    new = replace(old, services=list(old.services))
    if cloud_quota is not None:
        new.cloud_quota = validate.quota(cloud_quota, "cloud quota")
    if mail_quota is not None:
        new.mail_quota = validate.quota(mail_quota, "mail quota")
    if price is not None:
        new.price_cents = validate.price(price)
    if currency is not None:
        new.currency = validate.currency(currency)
    if service:
        new.services = validate.services(list(service))
    if description is not None:
        new.description = validate.text(description, "description", validate.MAX_DESCRIPTION,
                                        False)
    cs = ChangeSet(state.config.directory)
    old_attrs = {k: v for k, v in old.attributes().items() if k != "objectClass"}
    new_attrs = {k: v for k, v in new.attributes().items() if k != "objectClass"}
    for key in ("description", "coopCloudQuota", "coopMailQuota", "coopPriceCents",
                "coopCurrency", "coopService"):
        new_attrs.setdefault(key, None)
    mods = attribute_diff(old_attrs, new_attrs)
    if mods:
        cs.tx.modify(directory.plan_dn(name), mods)
        cs.changes.append(Change("~", "plan", name, [f"{old.label()} -> {new.label()}"]))
        plans = {p.name: p for p in directory.plans()}
        plans[name] = new
        for member in directory.members(plan=name):
            updated = desired_member(MemberSpec(), member, plans, member.uid,
                                     state.config.mail_domain)
            add_to_changeset(cs, directory, member, updated)
    cs.finalize({g.name: g for g in directory.groups()})
    apply_changes(state, cs, dry_run, as_json)
