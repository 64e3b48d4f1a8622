"""Passwords coopctl gives out must be changed at first login (ppolicy's pwdReset), and the
access rules of schemas/acl.j2 keep members out of each other's groups; on the private slapd
(Debian's, with the ppolicy overlay as on the coop's servers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from provisioner.config import load
from tests.conftest import SUFFIX, Coopctl
from tests.test_import import GOOD, write

POLICY = f"cn=default,ou=policies,{SUFFIX}"


@pytest.fixture
def must_change(admin: ldap3.Connection) -> Iterator[None]:
    """The coop's default password policy (pwdMustChange), as the openldap role writes it.

    Removed afterwards: the session's other tests bind as members without a policy.
    """
    admin.add(f"ou=policies,{SUFFIX}", ["organizationalUnit"], {"ou": "policies"})
    assert admin.add(POLICY, ["organizationalRole", "pwdPolicy"], {
        "cn": "default", "pwdAttribute": "userPassword", "pwdMustChange": "TRUE",
        "pwdAllowUserChange": "TRUE", "pwdLockout": "FALSE"}), admin.result
    yield
    admin.delete(POLICY)
    admin.delete(f"ou=policies,{SUFFIX}")


def member_dn(uid: str) -> str:
    return f"uid={uid},ou=people,{SUFFIX}"


def reset_flag(admin: ldap3.Connection, uid: str) -> list[str]:
    admin.search(member_dn(uid), "(objectClass=*)", ldap3.BASE, attributes=["pwdReset"])
    return [v.decode() for v in admin.response[0]["raw_attributes"].get("pwdReset") or []]


PPOLICY = "1.3.6.1.4.1.42.2.27.8.5.1"  # ppolicy's request and response control
CHANGE_AFTER_RESET = bytes.fromhex("3003810102")  # its response "error: changeAfterReset"


def bind_as(c: Coopctl, uid: str, password: str) -> ldap3.Connection:
    cfg = load(c.config).directory
    conn = ldap3.Connection(ldap3.Server(cfg.uri, get_info=ldap3.NONE), user=member_dn(uid),
                            password=password, raise_exceptions=False)
    assert conn.bind(controls=[(PPOLICY, False, None)]), conn.result
    return conn


def add_ann(c: Coopctl) -> None:
    c("member", "add", "--given-name", "Ann", "--family-name", "Aa", "--plan", "small",
      "--group", "board", "--password-stdin", input="a long secret phrase\n")


def test_a_password_set_by_coopctl_must_be_changed_first(with_plans: Coopctl,
                                                         admin: ldap3.Connection,
                                                         must_change: None) -> None:
    add_ann(with_plans)
    assert reset_flag(admin, "ann.aa") == ["TRUE"]
    conn = bind_as(with_plans, "ann.aa", "a long secret phrase")
    assert conn.result["controls"][PPOLICY]["value"] == CHANGE_AFTER_RESET
    assert not conn.search(member_dn("ann.aa"), "(objectClass=*)", ldap3.BASE)
    assert conn.result["description"] == "insufficientAccessRights"
    assert conn.extend.standard.modify_password(
        user=member_dn("ann.aa"), old_password="a long secret phrase",
        new_password="my very own phrase"), conn.result
    assert reset_flag(admin, "ann.aa") == []
    conn.unbind()
    conn = bind_as(with_plans, "ann.aa", "my very own phrase")
    assert conn.search(member_dn("ann.aa"), "(objectClass=*)", ldap3.BASE)
    conn.unbind()
    # An administrator's new password (`member passwd`) is again one to change.
    with_plans("member", "passwd", "ann.aa", "--password-stdin", input="reset by the board\n")
    assert reset_flag(admin, "ann.aa") == ["TRUE"]


def test_generated_and_imported_passwords_are_marked(with_plans: Coopctl,
                                                     admin: ldap3.Connection,
                                                     tmp_path: Path) -> None:
    out = with_plans("member", "add", "--given-name", "Bob", "--family-name", "Bb",
                     "--plan", "small", "--generate-password", "--json")
    assert json.loads(out.output)["initial_password"]
    assert reset_flag(admin, "bob.bb") == ["TRUE"]
    passwords = tmp_path / "passwords.csv"
    with_plans("member", "import", write(tmp_path, GOOD), "--initial-passwords", str(passwords))
    uids = [row.split(",")[0] for row in passwords.read_text().splitlines()[1:]]
    assert len(uids) == 3
    assert all(reset_flag(admin, uid) == ["TRUE"] for uid in uids)


def test_a_member_sees_only_their_own_groups_and_no_plan(with_plans: Coopctl) -> None:
    add_ann(with_plans)
    with_plans("member", "add", "--given-name", "Bob", "--family-name", "Bb", "--plan", "small",
               "--group", "wiki-editors", "--password-stdin", input="another long phrase\n")
    conn = bind_as(with_plans, "ann.aa", "a long secret phrase")  # no policy: no must-change
    conn.search(f"ou=groups,{SUFFIX}", "(objectClass=groupOfNames)", attributes=["member"])
    found = {e["dn"]: e["attributes"]["member"] for e in conn.response
             if e["type"] == "searchResEntry"}
    assert found == {f"cn=board,ou=groups,{SUFFIX}": [member_dn("ann.aa")]}
    assert not conn.search(f"ou=groups,{SUFFIX}", f"(member={member_dn('bob.bb')})")
    conn.search(f"ou=plans,{SUFFIX}", "(objectClass=*)", ldap3.LEVEL)
    assert [e for e in conn.response if e["type"] == "searchResEntry"] == []
    conn.unbind()
