"""Issue 9, the directory: slapd's TLS, password hashes, must-change passwords, no lockout,
logged binds, members' privacy and the read-only audit account, on the lab's real slapd.

Every test talks to the `dir` host from the controller (or reads slapd's own state there as
root over ldapi). The members and groups are made once for the module, as coopctl makes them.
"""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import ldap3
import pytest

from tests.lab.helpers import BASE, ThrowawayDirectory, coopctl_connection, given_password_member
from tests.lab.test_mail import imap
from tests.lab.test_openldap import as_service, connect, server, service_dn

pytestmark = pytest.mark.lab

# An LDAPv3 StartTLS extended request (message id 1), as every LDAP client sends it.
STARTTLS = bytes.fromhex("301d02010177188016") + b"1.3.6.1.4.1.1466.20037"
# Suites of TLS 1.2 without forward secrecy (RSA key exchange) and with it (ECDHE).
NO_PFS = "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA"
PFS = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"
# ppolicy's request/response control, and its response "error: changeAfterReset (2)".
PPOLICY = "1.3.6.1.4.1.42.2.27.8.5.1"
CHANGE_AFTER_RESET = bytes.fromhex("3003810102")
# A connection's number in slapd's stats log lines.
CONN = re.compile(r"conn=\d+")


def handshake(lab, port: int, version: ssl.TLSVersion, ciphers: str = "DEFAULT") -> str:
    """The TLS version slapd agreed to on `port` (StartTLS on 389), or raises ssl.SSLError.

    The client offers exactly `version` and `ciphers`, at OpenSSL's security level 0 so that
    the controller's own OpenSSL does offer TLS 1.0/1.1: a refusal is slapd's.
    """
    sock = socket.create_connection((lab.addresses["dir"], port), timeout=5)
    try:
        if port == 389:
            sock.sendall(STARTTLS)
            reply = sock.recv(1024)
            assert b"\x0a\x01\x00" in reply, reply  # resultCode success
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 on purpose
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ctx.maximum_version = version
        ctx.load_verify_locations(str(lab.ca_file))
        ctx.check_hostname = False
        ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
        with ctx.wrap_socket(sock) as tls:
            return str(tls.version())
    finally:
        sock.close()


@pytest.mark.parametrize("port", [389, 636])
def test_slapd_speaks_only_tls_1_2_or_newer_with_forward_secrecy(lab, port):
    assert handshake(lab, port, ssl.TLSVersion.TLSv1_2, PFS) == "TLSv1.2"
    assert handshake(lab, port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(lab, port, old)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(lab, port, ssl.TLSVersion.TLSv1_2, NO_PFS)


def root_search(lab, base: str, *attrs: str, scope: str = "base") -> str:
    """ldapsearch as root over ldapi on `dir` (sees everything, hashes included)."""
    return lab.host("dir").check_output(
        f"ldapsearch -Q -LLL -o ldif-wrap=no -Y EXTERNAL -H ldapi:/// -s {scope} "
        f"-b '{base}' '(objectClass=*)' {' '.join(attrs)}"
    )


def stored_hash_schemes(lab, dn: str) -> list[str]:
    """The scheme prefixes of dn's userPassword values (base64 in LDIF: decoded here)."""
    import base64

    schemes = []
    for line in root_search(lab, dn, "userPassword").splitlines():
        if line.startswith("userPassword::"):
            value = base64.b64decode(line.split(":: ", 1)[1]).decode("utf-8", "replace")
        elif line.startswith("userPassword:"):
            value = line.split(": ", 1)[1]
        else:
            continue
        schemes.append(value.split("}", 1)[0] + "}")
    return schemes


@dataclass
class People:
    """Two members, each alone in a group of their own, and their passwords."""

    ann: tuple[str, str, str]  # uid, dn, password
    bob: tuple[str, str, str]
    ann_group: str  # DN
    bob_group: str
    directory: ThrowawayDirectory


@pytest.fixture(scope="module")
def people(lab) -> Iterator[People]:
    directory = ThrowawayDirectory(coopctl_connection(lab), prefix="secdir", given_name="Sec",
                                   services=("mail", "wiki", "sso", "cloud"))
    try:
        ann = directory.member()
        bob = directory.member()
        for uid, dn, _pw in (ann, bob):
            assert directory.conn.modify(dn, {
                "coopRecoveryMail": [(ldap3.MODIFY_REPLACE, [f"{uid}@elsewhere.example"])],
                "employeeNumber": [(ldap3.MODIFY_REPLACE, [str(secrets.randbelow(10**6))])],
                "coopMailAlias": [(ldap3.MODIFY_REPLACE, [f"alias-{uid}@demo.coop"])],
            }), directory.conn.result
        groups = [f"cn={directory.group(dn)},ou=groups,{BASE}" for _u, dn, _p in (ann, bob)]
        yield People(ann, bob, groups[0], groups[1], directory)
    finally:
        directory.cleanup()


def test_new_passwords_are_stored_as_argon2(lab, people):
    """A password coopctl sets (password modify) and the role's service accounts' secrets."""
    assert stored_hash_schemes(lab, people.ann[1]) == ["{ARGON2}"]
    for name in ("mail", "coopctl", "audit"):
        assert stored_hash_schemes(lab, service_dn(name)) == ["{ARGON2}"], name
    # ... and argon2 hashes verify: the member binds with the password.
    conn = connect(lab, people.ann[1], people.ann[2])
    assert conn.bound, conn.result
    conn.unbind()


def test_a_member_with_an_initial_password_must_change_it(lab, coopctl_config):
    """`coopctl member add --generate-password`: the bind works, anything else is refused
    until the member has changed the password; then all is normal."""
    with given_password_member(lab, coopctl_config, "secdirnew", ("mail",)) as (uid, dn, initial):
        assert "pwdReset: TRUE" in root_search(lab, dn, "pwdReset")
        # A mail-only member (no SSO, so no page to change it on) keeps it for mail.
        imap(lab, uid, initial).logout()
        conn = ldap3.Connection(server(lab), user=dn, password=initial, raise_exceptions=False)
        conn.open()
        assert conn.start_tls(), conn.result
        assert conn.bind(controls=[(PPOLICY, False, None)]), conn.result
        assert conn.result["controls"][PPOLICY]["value"] == CHANGE_AFTER_RESET
        assert not conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["uid"])
        assert conn.result["description"] == "insufficientAccessRights"
        assert "modify password" in conn.result["message"]
        new = secrets.token_urlsafe(18)
        assert conn.extend.standard.modify_password(
            user=dn, old_password=initial, new_password=new), conn.result
        conn.unbind()
        assert "pwdReset" not in root_search(lab, dn, "pwdReset")
        again = connect(lab, dn, new)
        assert again.bound, again.result
        assert again.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["uid"])
        assert again.entries[0].uid.value == uid
        again.unbind()
        assert not connect(lab, dn, initial).bound  # the initial password is gone


def test_wrong_passwords_do_not_lock_the_member_out(lab, people):
    """Twelve wrong guesses (more than the old lockout's ten) and the member still gets in;
    the failures are recorded for the audit account."""
    _uid, dn, password = people.bob
    for _ in range(12):
        wrong = connect(lab, dn, "not-the-password")
        assert not wrong.bound and wrong.result["description"] == "invalidCredentials"
    audit = as_service(lab, "audit")
    assert audit.search(dn, "(objectClass=*)", ldap3.BASE,
                        attributes=["pwdFailureTime", "pwdAccountLockedTime"])
    attrs = audit.entries[0].entry_attributes_as_dict
    assert attrs.get("pwdFailureTime")  # counted (the last pwdMaxFailure), cleared at success
    assert not attrs.get("pwdAccountLockedTime")
    audit.unbind()
    conn = connect(lab, dn, password)
    assert conn.bound, conn.result
    conn.unbind()


def test_binds_are_logged_with_dn_and_result(lab, people):
    _uid, dn, password = people.ann
    assert connect(lab, dn, password).bound
    assert not connect(lab, dn, password + "x").bound
    log = lab.host("dir").check_output("journalctl -u slapd --since -5min --no-pager -o cat")
    binds = [line for line in log.splitlines() if f'BIND dn="{dn}"' in line]
    assert binds, log[-2000:]
    conns = {m.group(0) + " " for line in binds if (m := CONN.search(line))}
    results = [line for line in log.splitlines()
               if "RESULT tag=97" in line and any(c in line for c in conns)]
    assert any("err=0" in line for line in results), results
    assert any("err=49" in line for line in results), results
    assert password not in log


def visible_groups(conn: ldap3.Connection) -> set[str]:
    conn.search(f"ou=groups,{BASE}", "(objectClass=groupOfNames)", attributes=["member"])
    return {e.entry_dn.lower() for e in conn.entries}


def test_a_member_reads_only_their_entry_and_their_groups(lab, people):
    _uid, ann_dn, password = people.ann
    conn = connect(lab, ann_dn, password)
    assert conn.bound, conn.result
    # Their own group, with its members; not Bob's group, not even by its name.
    assert visible_groups(conn) == {people.ann_group.lower()}
    assert conn.search(people.ann_group, "(objectClass=*)", ldap3.BASE, attributes=["member"])
    assert conn.entries[0].member.values == [ann_dn]
    assert not conn.search(people.bob_group, "(objectClass=*)", ldap3.BASE,
                           attributes=["member"])
    assert not conn.search(f"ou=groups,{BASE}", f"(member={people.bob[1]})", attributes=["cn"])
    # Their own entry whole (but the hash); no one else's.
    conn.search(f"ou=people,{BASE}", "(objectClass=*)", ldap3.LEVEL, attributes=["uid"])
    assert [e.entry_dn for e in conn.entries] == [ann_dn]
    assert conn.search(ann_dn, "(objectClass=*)", ldap3.BASE,
                       attributes=["coopRecoveryMail", "userPassword"])
    attrs = conn.entries[0].entry_attributes_as_dict
    assert attrs["coopRecoveryMail"] and not attrs.get("userPassword")
    # Plans are coopctl's business (and the audit's).
    conn.search(f"ou=plans,{BASE}", "(objectClass=*)", ldap3.LEVEL)
    assert conn.entries == []
    conn.unbind()


# What each service's configuration reads off a member (mail: Postfix and Dovecot maps;
# wiki: DokuWiki authldap; sso: Keycloak's mappers; cloud: Nextcloud user_ldap).
USED = {
    "mail": {"uid", "mail", "coopMailAlias", "coopMailQuota", "coopMemberStatus", "coopService"},
    "wiki": {"uid", "mail", "cn", "displayName", "coopMemberStatus", "coopService"},
    "sso": {"uid", "mail", "givenName", "sn", "displayName", "entryUUID", "coopService"},
    "cloud": {"uid", "mail", "displayName", "entryUUID", "memberOf", "coopService"},
}
PRIVATE = {"coopRecoveryMail", "employeeNumber", "userPassword", "pwdChangedTime"}


@pytest.mark.parametrize("name", sorted(USED))
def test_each_service_account_reads_only_what_its_service_uses(lab, people, name):
    _uid, dn, _password = people.ann
    conn = as_service(lab, name)
    assert conn.search(f"ou=people,{BASE}", f"(&(objectClass=coopMember)({dn.split(',')[0]}))",
                       attributes=["*", "+"])
    seen = {k for k, v in conn.entries[0].entry_attributes_as_dict.items() if v}
    conn.unbind()
    assert USED[name] - {"coopMailQuota"} <= seen, USED[name] - seen
    assert not seen & PRIVATE, seen & PRIVATE
    if name != "mail":
        assert not seen & {"coopMailAlias", "coopMailForward"}


def test_the_mail_account_cannot_read_a_recovery_address(lab, people):
    _uid, dn, _password = people.ann
    conn = as_service(lab, "mail")
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE,
                       attributes=["mail", "coopMailAlias", "coopRecoveryMail"])
    attrs = conn.entries[0].entry_attributes_as_dict
    assert attrs["mail"] and attrs["coopMailAlias"]
    assert not attrs.get("coopRecoveryMail")
    # Not by filtering on it either.
    assert not conn.search(f"ou=people,{BASE}", "(coopRecoveryMail=*)", attributes=["uid"])
    conn.unbind()


def test_the_audit_account_reads_everything_but_passwords_and_writes_nothing(lab, people):
    _uid, dn, _password = people.ann
    conn = as_service(lab, "audit")
    assert conn.extend.standard.who_am_i() == f"dn:{service_dn('audit')}"
    # Members (private attributes included), groups, plans' subtree, services' entries.
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["*", "+"])
    attrs = {k for k, v in conn.entries[0].entry_attributes_as_dict.items() if v}
    assert {"uid", "mail", "coopRecoveryMail", "employeeNumber", "coopMemberStatus"} <= attrs
    assert "userPassword" not in attrs
    assert not conn.search(f"ou=people,{BASE}", "(userPassword=*)", attributes=["1.1"])
    assert people.ann_group.lower() in visible_groups(conn)
    assert people.bob_group.lower() in visible_groups(conn)
    assert conn.search(f"ou=plans,{BASE}", "(objectClass=*)", ldap3.BASE)
    conn.search(f"ou=services,{BASE}", "(objectClass=applicationProcess)",
                attributes=["cn", "userPassword"])
    found = {e.cn.value: e.entry_attributes_as_dict for e in conn.entries}
    assert {"coopctl", "mail", "audit"} <= set(found)
    assert not any(a.get("userPassword") for a in found.values())
    # No write anywhere.
    assert not conn.modify(dn, {"displayName": [(ldap3.MODIFY_REPLACE, ["taken"])]})
    assert conn.result["description"] == "insufficientAccessRights"
    assert not conn.modify(people.ann_group, {"member": [(ldap3.MODIFY_ADD, [people.bob[1]])]})
    assert conn.result["description"] == "insufficientAccessRights"
    assert not conn.add(f"cn=auditwrite,ou=groups,{BASE}", ["groupOfNames"], {"member": [dn]})
    assert not conn.delete(dn)
    assert not conn.extend.standard.modify_password(user=dn, new_password="x" * 20)
    conn.unbind()
