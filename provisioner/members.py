"""Member lifecycle in the directory: desired member -> change set.

A member's desired state is built from what the sysadmin (or the ERP's CSV)
says plus what the plan implies: services default to the plan's, quotas
follow the plan unless set by hand. The difference with the entry that
exists is the change; nothing is written here, callers apply the set.
Deleting from services is never done here: `depart` only records the date,
the sync removes accounts after the grace period.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from provisioner import validate
from provisioner.changes import Change, ChangeSet, attribute_diff
from provisioner.directory import Directory
from provisioner.errors import Conflict, InvalidInput
from provisioner.model import Member, Plan, now
from provisioner.naming import derive_uid, first_free_uid

OWNED_CLASSES = ["top", "inetOrgPerson", "coopMember"]


@dataclass(slots=True)
class MemberSpec:
    """What the user asked for; None means 'not said' (keep or default)."""

    given_name: str | None = None
    family_name: str | None = None
    uid: str | None = None
    mail: str | None = None
    display_name: str | None = None
    plan: str | None = None
    status: str | None = None
    services: list[str] | None = None
    groups: list[str] | None = None
    aliases: list[str] | None = None
    forwards: list[str] | None = None
    mail_quota: int | None = None
    cloud_quota: int | None = None
    follow_plan_quotas: bool = False  # every quota back on the plan's
    follow_plan: list[str] = field(default_factory=list)  # these quotas ("mail", "cloud") only
    member_number: str | None = None
    recovery_mail: str | None = None
    language: str | None = None
    line: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _where(spec: MemberSpec) -> str:
    return f"line {spec.line}: " if spec.line else ""


def check_spec(spec: MemberSpec, mail_domain: str) -> MemberSpec:
    """Validate and normalise every value of a spec (no directory access)."""
    v = replace(spec)
    if v.given_name is not None:
        v.given_name = validate.text(v.given_name, "given name", required=False)
    if v.family_name is not None:
        v.family_name = validate.text(v.family_name, "family name")
    if v.display_name is not None:
        v.display_name = validate.text(v.display_name, "display name", required=False)
    if v.uid:
        v.uid = validate.uid(v.uid.strip())
    if v.mail:
        v.mail = validate.mail(v.mail)
        if v.mail.rpartition("@")[2] != mail_domain:
            raise InvalidInput(f"the mail address {v.mail} is not in the coop's domain "
                               f"{mail_domain}", "leave it out to get uid@" + mail_domain)
    if v.plan:
        v.plan = validate.identifier(v.plan.strip(), "plan")
    if v.status:
        v.status = validate.status(v.status)
        if v.status not in validate.SETTABLE_STATUSES:
            raise InvalidInput(f"{_where(v)}status {v.status!r} cannot be set by hand",
                               "`coopctl sync` marks a member purged once their data is archived "
                               "and removed; use departed")
    if v.services is not None:
        v.services = validate.services(v.services)
    if v.groups is not None:
        v.groups = sorted({validate.identifier(g.strip(), "group") for g in v.groups})
    if v.aliases is not None:
        v.aliases = sorted({validate.mail(a, "alias") for a in v.aliases})
        for alias in v.aliases:
            if alias.rpartition("@")[2] != mail_domain:
                raise InvalidInput(f"the alias {alias} is not in the coop's domain {mail_domain}",
                                   "aliases deliver into the member's coop mailbox")
    if v.forwards is not None:
        v.forwards = sorted({validate.mail(f, "forward address") for f in v.forwards})
    if v.language:
        v.language = validate.language(v.language)
    if v.recovery_mail:
        v.recovery_mail = validate.mail(v.recovery_mail, "recovery address")
    if v.member_number:
        v.member_number = validate.member_number(v.member_number)
    return v


def desired_member(spec: MemberSpec, existing: Member | None, plans: dict[str, Plan],
                   uid: str, mail_domain: str) -> Member:
    """The member as it should be once the spec is applied."""
    base = existing or Member(uid=uid, given_name="", family_name="", mail=f"{uid}@{mail_domain}")
    member = replace(base, services=list(base.services), groups=list(base.groups),
                     aliases=list(base.aliases), forwards=list(base.forwards),
                     quota_overrides=list(base.quota_overrides))
    for attr in ("given_name", "family_name", "display_name", "member_number", "recovery_mail",
                 "language"):
        value = getattr(spec, attr)
        if value is not None:
            setattr(member, attr, value)
    if spec.mail:
        member.mail = spec.mail
    if spec.groups is not None:
        member.groups = list(spec.groups)
    if spec.aliases is not None:
        member.aliases = list(spec.aliases)
    if spec.forwards is not None:
        member.forwards = list(spec.forwards)
    plan_changed = spec.plan is not None and spec.plan != member.plan
    if spec.plan is not None:
        if spec.plan not in plans:
            known = ", ".join(sorted(plans)) or "none yet"
            raise InvalidInput(f"{_where(spec)}no plan named {spec.plan!r}",
                               f"known plans: {known}")
        member.plan = spec.plan
    plan = plans.get(member.plan) if member.plan else None
    if spec.services is not None:
        member.services = list(spec.services)
    elif existing is None or plan_changed:
        member.services = list(plan.services) if plan else []
    # A quota nobody mentions keeps what it is: set by hand, it stays so (an ERP's import
    # never resets it); following the plan, it follows the plan's current value.
    overrides = set() if spec.follow_plan_quotas else set(member.quota_overrides)
    overrides -= set(spec.follow_plan)
    for kind, value in (("mail", spec.mail_quota), ("cloud", spec.cloud_quota)):
        if value is not None:
            overrides.add(kind)
            setattr(member, f"{kind}_quota", value)
        elif kind not in overrides:
            setattr(member, f"{kind}_quota", getattr(plan, f"{kind}_quota") if plan else None)
    member.quota_overrides = sorted(overrides)
    if spec.status is not None and spec.status != member.status:
        if member.status == "purged":
            raise InvalidInput(f"{_where(spec)}{member.uid} was purged: their data is gone and "
                               "the entry is kept only so that the uid and number are never reused",
                               "give the person a new membership (a new uid and member number)")
        set_status(member, spec.status)
    return member


def set_status(member: Member, status: str) -> None:
    """Status change with its timestamps; departure keeps the first date."""
    member.status = status
    member.status_changed = now()
    if status in ("departed", "purged"):
        member.departure_date = member.departure_date or member.status_changed
    else:
        member.departure_date = None


def describe(old: Member | None, new: Member) -> list[str]:
    """Human lines for what differs, in the units a sysadmin thinks in."""
    fields = [
        ("name", lambda m: m.full_name), ("mail", lambda m: m.mail),
        ("status", lambda m: m.status), ("plan", lambda m: m.plan or "-"),
        ("services", lambda m: ",".join(m.services) or "-"),
        ("groups", lambda m: ",".join(m.groups) or "-"),
        ("aliases", lambda m: ",".join(m.aliases) or "-"),
        ("forwards", lambda m: ",".join(m.forwards) or "-"),
        ("mail quota", lambda m: validate.format_quota(m.mail_quota) or "-"),
        ("cloud quota", lambda m: validate.format_quota(m.cloud_quota) or "-"),
        ("member number", lambda m: m.member_number or "-"),
    ]
    lines = []
    for label, get in fields:
        after = get(new)
        if old is None:
            if after != "-":
                lines.append(f"{label}: {after}")
        elif get(old) != after:
            lines.append(f"{label}: {get(old)} -> {after}")
    return lines


def member_differs(directory: Directory, old: Member | None, new: Member) -> bool:
    """Whether turning `old` (None: absent) into `new` writes anything."""
    if old is None:
        return True
    if set(old.groups) != set(new.groups):
        return True
    plans_dn = directory.cfg.plans_dn
    return bool(attribute_diff(old.attributes(plans_dn), new.attributes(plans_dn)))


def add_to_changeset(cs: ChangeSet, directory: Directory, old: Member | None,
                     new: Member, label: str | None = None, describe_it: bool = True) -> None:
    """Record the operations that turn `old` (None: absent) into `new`.

    `label` names the change for an error the server may return (an import's CSV line);
    `describe_it=False` skips the plan's text, which an import makes only to show it.
    """
    plans_dn = directory.cfg.plans_dn
    dn = directory.member_dn(new.uid)
    new_attrs = new.attributes(plans_dn)
    if old is None:
        attrs = {k: v for k, v in new_attrs.items() if v is not None}
        attrs["objectClass"] = OWNED_CLASSES
        attrs["uid"] = new.uid
        cs.tx.add(dn, attrs, label)
        if describe_it:
            cs.changes.append(Change("+", "member", new.uid, describe(None, new)))
    else:
        mods = attribute_diff(old.attributes(plans_dn), new_attrs)
        if mods:
            cs.tx.modify(dn, mods, label)
        if describe_it and (mods or set(old.groups) != set(new.groups)):
            cs.changes.append(Change("~", "member", new.uid, describe(old, new) or
                                     ["attributes"]))
    before = set(old.groups) if old else set()
    for group in sorted(set(new.groups) - before):
        cs.join_group(group, new.uid)
    for group in sorted(before - set(new.groups)):
        cs.leave_group(group, new.uid)


def check_references(directory_groups: set[str], spec_groups: list[str] | None,
                     where: str = "") -> None:
    for group in spec_groups or []:
        if group not in directory_groups:
            raise InvalidInput(f"{where}no group named {group!r}",
                               "create it first with `coopctl group add`")


def check_addresses(directory: Directory, member: Member, old: Member | None) -> None:
    """Refuse a mail address or alias that another member already uses."""
    addresses = [member.mail, *member.aliases]
    if old is not None:
        addresses = [a for a in addresses if a not in (old.mail, *old.aliases)]
    for address, owner in directory.address_owners(addresses).items():
        if owner != member.uid:
            raise Conflict(f"{address} already belongs to member {owner}",
                           "choose another address")


def new_uid(directory: Directory, spec: MemberSpec, reserved: set[str]) -> str:
    """The uid for a new member: the one given, or derived from the name."""
    if spec.uid:
        if spec.uid in reserved or directory.uid_exists(spec.uid):
            raise Conflict(f"{_where(spec)}the uid {spec.uid!r} is already taken",
                           "choose another with --uid, or change that member instead")
        return spec.uid
    preferred = derive_uid(spec.given_name or "", spec.family_name or "")
    return first_free_uid(preferred, lambda u: u in reserved or directory.uid_exists(u))
