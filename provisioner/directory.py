"""Reading the coop's directory: members, plans, groups.

Reads are few and wide (one paged search per kind) so that listing 10,000
members costs three searches, not 10,000. Every value put in a filter is
escaped; identifiers were already validated, so escaping is a second belt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import ldap3
from ldap3.core.results import RESULT_CODES as RESULT_NAMES
from ldap3.operation.search import compile_filter, parse_filter
from ldap3.utils.conv import escape_filter_chars
from pyasn1.codec.ber import encoder

from provisioner import ber, validate
from provisioner.config import Config
from provisioner.errors import NotFound
from provisioner.ldapconn import (
    CONNECTION_ERRORS,
    broken_connection,
    live_socket,
    result_error,
)
from provisioner.model import (
    BRIEF_MEMBER_ATTRIBUTES,
    GROUP_ATTRIBUTES,
    MEMBER_ATTRIBUTES,
    PLAN_ATTRIBUTES,
    Group,
    Member,
    Plan,
    rdn_value,
)

PAGE_SIZE = 1000


@dataclass
class Directory:
    """The coop's tree, read through one bound connection."""

    config: Config
    conn: ldap3.Connection

    @property
    def cfg(self):
        return self.config.directory

    def member_dn(self, uid: str) -> str:
        return f"uid={uid},{self.cfg.people_dn}"

    def plan_dn(self, name: str) -> str:
        return f"cn={name},{self.cfg.plans_dn}"

    def group_dn(self, name: str) -> str:
        return f"cn={name},{self.cfg.groups_dn}"

    # -- low level -------------------------------------------------------

    def _search(self, base: str, ldap_filter: str, attributes: list[str],
                scope: str = ldap3.LEVEL) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
        """(dn, raw attributes) of every match, paged, raising on failure.

        Requests and answers go through `provisioner.ber`: ldap3's decoder
        costs about a millisecond per entry, too slow to list 10,000 members.
        """
        parsed = parse_filter(ldap_filter, None, False, True, None, False)
        encoded_filter = encoder.encode(compile_filter(parsed.elements[0]))
        names = {a.lower(): a for a in attributes}  # answers may spell names differently
        canonical = set(attributes)
        conn = self.conn
        reader = ber.MessageReader(live_socket(conn, f"a search of {base}"))
        cookie = b""
        while True:
            message_id = conn.server.next_message_id()
            request = ber.search_request(base, scope, encoded_filter, attributes)
            try:
                conn.socket.sendall(ber.message(message_id, request,
                                                [ber.paged_control(PAGE_SIZE, cookie)]))
                page = ber.read_search_page(reader, message_id)
            except CONNECTION_ERRORS as exc:
                raise broken_connection(exc, f"a search of {base}") from None
            if page.result_code not in (0, 4):
                conn.result = {"result": page.result_code, "message": page.diagnostic,
                               "description": RESULT_NAMES.get(page.result_code, "error")}
                if page.result_code == 32:
                    raise NotFound(
                        f"{base} does not exist in the directory",
                        "create the coop's tree with `coopctl init`",
                    )
                raise result_error(conn, f"searching {base}")
            for dn, raw in page.entries:
                if raw.keys() - canonical:  # rare: rename to the spelling we asked for
                    raw = {names.get(k.lower(), k): v for k, v in raw.items()}
                yield dn, raw
            cookie = page.cookie
            if not cookie:
                return

    # -- groups ------------------------------------------------------------

    def groups(self) -> list[Group]:
        placeholder = self.cfg.placeholder_dn.lower()
        found = []
        for _dn, raw in self._search(self.cfg.groups_dn, "(objectClass=groupOfNames)",
                                     GROUP_ATTRIBUTES):
            members = sorted(
                rdn_value(m.decode()) for m in raw.get("member", [])
                if m.decode().lower() != placeholder
            )
            description = (raw.get("description") or [b""])[0].decode()
            found.append(Group(raw["cn"][0].decode(), description, members))
        return sorted(found, key=lambda g: g.name)

    def group_map(self) -> dict[str, list[str]]:
        """uid -> names of its groups, from one search of all groups."""
        by_member: dict[str, list[str]] = {}
        for group in self.groups():
            for uid in group.members:
                by_member.setdefault(uid, []).append(group.name)
        return by_member

    def find_group(self, name: str) -> Group | None:
        validate.identifier(name, "group")
        return next((g for g in self.groups() if g.name == name), None)

    def get_group(self, name: str) -> Group:
        group = self.find_group(name)
        if group is None:
            known = ", ".join(g.name for g in self.groups()) or "none yet"
            raise NotFound(f"no group named {name!r}", f"known groups: {known}")
        return group

    # -- plans -------------------------------------------------------------

    def plans(self) -> list[Plan]:
        found = [Plan.from_raw(raw) for _dn, raw in
                 self._search(self.cfg.plans_dn, "(objectClass=coopPlan)", PLAN_ATTRIBUTES)]
        return sorted(found, key=lambda p: p.name)

    def find_plan(self, name: str) -> Plan | None:
        validate.identifier(name, "plan")
        flt = f"(&(objectClass=coopPlan)(cn={escape_filter_chars(name)}))"
        found = [Plan.from_raw(raw) for _dn, raw in
                 self._search(self.cfg.plans_dn, flt, PLAN_ATTRIBUTES)]
        return found[0] if found else None

    def get_plan(self, name: str) -> Plan:
        plan = self.find_plan(name)
        if plan is None:
            known = ", ".join(p.name for p in self.plans()) or "none yet"
            raise NotFound(f"no plan named {name!r}",
                           f"known plans: {known}; add one with `coopctl plan add`")
        return plan

    # -- members -----------------------------------------------------------

    def members(self, status: str | None = None, plan: str | None = None,
                service: str | None = None, group: str | None = None,
                brief: bool = False) -> list[Member]:
        """Members matching every given criterion, sorted by uid.

        `brief` reads only what a listing shows (uid, name, status, plan, services) and no
        group memberships: a third of the bytes to decode for a 10,000-member table.
        """
        parts = ["(objectClass=coopMember)"]
        if status:
            parts.append(f"(coopMemberStatus={escape_filter_chars(validate.status(status))})")
        if plan:
            self.get_plan(plan)
            parts.append(f"(coopPlan={escape_filter_chars(self.plan_dn(plan))})")
        if service:
            parts.append(f"(coopService={escape_filter_chars(validate.service(service))})")
        wanted: set[str] | None = None
        if group:
            wanted = set(self.get_group(group).members)
        group_map = {} if brief else self.group_map()
        found = []
        for _dn, raw in self._search(self.cfg.people_dn, f"(&{''.join(parts)})",
                                     BRIEF_MEMBER_ATTRIBUTES if brief else MEMBER_ATTRIBUTES):
            uid = raw["uid"][0].decode()
            if wanted is not None and uid not in wanted:
                continue
            found.append(Member.from_raw(raw, group_map.get(uid, [])))
        return sorted(found, key=lambda m: m.uid)

    def awaiting_own_password(self) -> set[str]:
        """Members whose password coopctl gave out (ppolicy's pwdReset): until they choose
        their own at the SSO's login, the services that only bind (mail, wiki, cloud) refuse
        them, by their roles' login filters, so an audit must not call that drift."""
        return {raw["uid"][0].decode() for _dn, raw in self._search(
            self.cfg.people_dn, "(&(objectClass=coopMember)(pwdReset=TRUE))", ["uid"])}

    def find_member(self, uid: str) -> Member | None:
        validate.uid(uid)
        flt = f"(&(objectClass=coopMember)(uid={escape_filter_chars(uid)}))"
        found = list(self._search(self.cfg.people_dn, flt, MEMBER_ATTRIBUTES))
        if not found:
            return None
        groups = [g.name for g in self.groups() if uid in g.members]
        return Member.from_raw(found[0][1], groups)

    def get_member(self, uid: str) -> Member:
        member = self.find_member(uid)
        if member is None:
            raise NotFound(f"no member with uid {uid!r}",
                           "list members with `coopctl member list`")
        return member

    def members_named(self, uids: list[str]) -> list[Member]:
        """These members only (one search, plus the groups), for a sync narrowed to them."""
        if not uids:
            return []
        wanted = "".join(f"(uid={escape_filter_chars(validate.uid(u))})" for u in uids)
        group_map = self.group_map()
        found = [Member.from_raw(raw, group_map.get(raw["uid"][0].decode(), []))
                 for _dn, raw in self._search(self.cfg.people_dn,
                                              f"(&(objectClass=coopMember)(|{wanted}))",
                                              MEMBER_ATTRIBUTES)]
        return sorted(found, key=lambda m: m.uid)

    def count_members(self) -> int:
        """How many members there are (one search that returns no attribute)."""
        return sum(1 for _ in self._search(self.cfg.people_dn, "(objectClass=coopMember)",
                                           ["1.1"]))

    def uids(self) -> set[str]:
        """Every uid under people, member or not (one search)."""
        return {raw["uid"][0].decode() for _dn, raw in
                self._search(self.cfg.people_dn, "(uid=*)", ["uid"])}

    def other_uids(self) -> set[str]:
        """uids under people that are not members (a service's entry, an old account)."""
        return {raw["uid"][0].decode() for _dn, raw in
                self._search(self.cfg.people_dn, "(&(uid=*)(!(objectClass=coopMember)))",
                             ["uid"])}

    def uid_exists(self, uid: str) -> bool:
        """Any entry under people with this uid, member or not."""
        flt = f"(uid={escape_filter_chars(uid)})"
        return any(True for _ in self._search(self.cfg.people_dn, flt, ["1.1"]))

    def address_owners(self, addresses: list[str]) -> dict[str, str]:
        """address -> uid of whoever already uses it as mail or alias."""
        if not addresses:
            return {}
        terms = "".join(
            f"(mail={escape_filter_chars(a)})(coopMailAlias={escape_filter_chars(a)})"
            for a in addresses
        )
        owners: dict[str, str] = {}
        wanted = {a.lower() for a in addresses}
        for _dn, raw in self._search(self.cfg.people_dn, f"(|{terms})",
                                     ["uid", "mail", "coopMailAlias"]):
            uid = raw["uid"][0].decode()
            for value in raw.get("mail", []) + raw.get("coopMailAlias", []):
                if value.decode().lower() in wanted:
                    owners[value.decode().lower()] = uid
        return owners
