"""Helpers shared by the lab tests."""

from __future__ import annotations

import contextlib
import imaplib
import json
import secrets
import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ldap3
from click.testing import CliRunner
from ldap3.core.exceptions import LDAPSocketOpenError

from provisioner.cli import cli
from provisioner.hosts import InventoryHosts
from provisioner.services.base import Runtime
from tests.sync_helpers import runtime

BASE = "dc=demo,dc=coop"


def lab_runtime(lab, settings: Mapping[str, Any]) -> Runtime:
    """A connector's Runtime on the lab: its inventory, its CA, the state store in memory."""
    return runtime(InventoryHosts(inventory=lab.inventory, state_dir=lab.state_dir),
                   settings=settings, coop="Demo Coop", ca_file=str(lab.ca_file))


def fetch_inbox(conn: imaplib.IMAP4, what: str) -> list[bytes]:
    """FETCH `what` (e.g. "(RFC822)") of every message in INBOX, opened read-only; logs out."""
    try:
        conn.select("INBOX", readonly=True)
        _typ, data = conn.search(None, "ALL")
        found = []
        for num in data[0].split():
            _typ, parts = conn.fetch(num, what)
            found.append(parts[0][1])
        return found
    finally:
        conn.logout()


def lab_server(lab) -> ldap3.Server:
    """The lab directory on 389, for StartTLS with the lab CA."""
    tls = ldap3.Tls(ca_certs_file=str(lab.ca_file), validate=ssl.CERT_REQUIRED)
    return ldap3.Server(lab.addresses["dir"], port=389, tls=tls, connect_timeout=5)


def coopctl_connection(lab) -> ldap3.Connection:
    """The lab directory as coopctl's service account, over StartTLS with the lab CA."""
    server = lab_server(lab)
    conn = ldap3.Connection(
        server,
        user=f"cn=coopctl,ou=services,{BASE}",
        password=lab.secret("ldap_coopctl"),
        raise_exceptions=False,
    )
    # As coopctl does (directory.retry_seconds): a slapd that systemd is starting again
    # (see test_directory_restart.py) is waited for, not reported by every test that follows.
    deadline = time.monotonic() + 15
    while True:
        try:
            conn.open()
            break
        except LDAPSocketOpenError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            server.reset_availability()
    assert conn.start_tls(), conn.result
    assert conn.bind(), conn.result
    return conn


def first_login_change(lab, uid: str, given: str) -> str:
    """What a member does at the first login after coopctl gave them a password (pwdReset):
    they choose their own. Done here with the password modify operation bound as the member,
    as Keycloak's forced "Update password" ends up doing (test_security_sso.py proves that
    path); returns the new password."""
    dn = f"uid={uid},ou=people,{BASE}"
    conn = ldap3.Connection(lab_server(lab), user=dn, password=given, raise_exceptions=False)
    conn.open()
    assert conn.start_tls(), conn.result
    assert conn.bind(), conn.result
    new = secrets.token_urlsafe(18)
    assert conn.extend.standard.modify_password(user=dn, old_password=given,
                                                new_password=new), conn.result
    conn.unbind()
    return new


@contextlib.contextmanager
def given_password_member(lab, config: Path, prefix: str,
                          services: tuple[str, ...]) -> Iterator[tuple[str, str, str]]:
    """A member added by `coopctl member add --generate-password` (so marked pwdReset) on a
    plan of their own with these services: (uid, dn, the given password). The member and the
    plan are removed afterwards."""
    uid = f"{prefix}{secrets.token_hex(3)}"
    plan = f"{prefix}plan{secrets.token_hex(3)}"
    dn = f"uid={uid},ou=people,{BASE}"

    def coopctl(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    coopctl("plan", "add", plan, "--mail-quota", "1 GB", "--cloud-quota", "1 GB",
            "--price", "1", *(f"--service={service}" for service in services))
    try:
        initial = json.loads(coopctl(
            "member", "add", "--given-name", "New", "--family-name", "Member", "--uid", uid,
            "--plan", plan, "--generate-password", "--json"))["initial_password"]
        yield uid, dn, initial
    finally:
        conn = coopctl_connection(lab)
        conn.delete(dn)
        conn.delete(f"cn={plan},ou=plans,{BASE}")
        conn.unbind()


class ThrowawayDirectory:
    """Members and groups a test creates in the lab directory, removed after the test.

    Members are written as coopctl writes them (inetOrgPerson + coopMember, the password
    set with the password-modify extended operation), named ``given_name`` "Test <uid>", under
    a random uid starting with ``prefix``.
    """

    def __init__(
        self, conn: ldap3.Connection, *, prefix: str, given_name: str, services: tuple[str, ...]
    ):
        self.conn = conn
        self.prefix = prefix
        self.given_name = given_name
        self.services = services
        self.people: list[str] = []
        self.groups: list[str] = []
        self.memberships: list[tuple[str, str]] = []

    def member(
        self, *, status: str = "active", services: tuple[str, ...] | None = None
    ) -> tuple[str, str, str]:
        """A new member: (uid, dn, password)."""
        uid = f"{self.prefix}{secrets.token_hex(3)}"
        dn = f"uid={uid},ou=people,{BASE}"
        password = secrets.token_urlsafe(18)
        given, family = self.given_name, f"Test {uid}"
        attributes = {
            "uid": uid,
            "cn": f"{given} {family}",
            "givenName": given,
            "sn": family,
            "displayName": f"{given} {family}",
            "mail": f"{uid}@demo.coop",
            "coopMemberStatus": "active",
            "coopService": list(self.services if services is None else services),
        }
        assert self.conn.add(dn, ["inetOrgPerson", "coopMember"], attributes), self.conn.result
        self.people.append(dn)
        assert self.conn.extend.standard.modify_password(user=dn, new_password=password), (
            self.conn.result
        )
        if status != "active":
            self.set_status(dn, status)
        return uid, dn, password

    def set_status(self, dn: str, status: str) -> None:
        change = {"coopMemberStatus": [(ldap3.MODIFY_REPLACE, [status])]}
        assert self.conn.modify(dn, change), self.conn.result

    def group(self, *members: str) -> str:
        """A new group of these members; returns its cn."""
        name = f"{self.prefix}group{secrets.token_hex(3)}"
        gdn = f"cn={name},ou=groups,{BASE}"
        assert self.conn.add(gdn, ["groupOfNames"], {"member": list(members)}), self.conn.result
        self.groups.append(gdn)
        return name

    def add_to_group(self, group: str, dn: str) -> None:
        """Put a member in the group ``group`` (cn), creating the group if it is missing."""
        gdn = f"cn={group},ou=groups,{BASE}"
        if self.conn.search(gdn, "(objectClass=groupOfNames)", ldap3.BASE):
            assert self.conn.modify(gdn, {"member": [(ldap3.MODIFY_ADD, [dn])]}), self.conn.result
            self.memberships.append((gdn, dn))
        else:
            assert self.conn.add(gdn, ["groupOfNames"], {"member": [dn]}), self.conn.result
            self.groups.append(gdn)

    def cleanup(self) -> None:
        for gdn, dn in self.memberships:
            self.conn.modify(gdn, {"member": [(ldap3.MODIFY_DELETE, [dn])]})
        for gdn in self.groups:
            self.conn.delete(gdn)
        for dn in self.people:
            self.conn.delete(dn)
        self.conn.unbind()
