"""The openldap role on the lab host `dir`: a real slapd reached from the controller."""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
import yaml
from click.testing import CliRunner
from ldap3.core.exceptions import LDAPSocketOpenError, LDAPStartTLSError

from provisioner.cli import cli
from provisioner.lab.inventory import write_coopctl_config
from provisioner.resources import schemas_dir

pytestmark = pytest.mark.lab

BASE = "dc=demo,dc=coop"
SERVICES = ("coopctl", "mail", "wiki", "sso", "cloud", "audit")


def service_dn(name: str) -> str:
    return f"cn={name},ou=services,{BASE}"


def server(lab, *, port: int = 389, ca_file: str | None = None) -> ldap3.Server:
    tls = ldap3.Tls(ca_certs_file=ca_file or str(lab.ca_file), validate=ssl.CERT_REQUIRED)
    return ldap3.Server(
        lab.addresses["dir"],
        port=port,
        use_ssl=port == 636,
        tls=tls,
        get_info=ldap3.SCHEMA,
        connect_timeout=5,
    )


def connect(
    lab,
    user: str | None = None,
    password: str | None = None,
    *,
    port: int = 389,
    starttls: bool = True,
) -> ldap3.Connection:
    """A bound connection (StartTLS on 389 unless starttls=False; anonymous without user)."""
    conn = ldap3.Connection(
        server(lab, port=port), user=user, password=password, raise_exceptions=False
    )
    conn.open()
    if starttls and port == 389:
        assert conn.start_tls(), conn.result
    conn.bind()
    return conn


def as_service(lab, name: str) -> ldap3.Connection:
    conn = connect(lab, service_dn(name), lab.secret(f"ldap_{name}"))
    assert conn.bound, conn.result
    return conn


@pytest.fixture
def member(lab) -> Iterator[tuple[str, str]]:
    """A throwaway active member with a password, created and removed as cn=coopctl."""
    uid = f"ldaptest{secrets.token_hex(3)}"
    dn = f"uid={uid},ou=people,{BASE}"
    password = secrets.token_urlsafe(16)
    conn = as_service(lab, "coopctl")
    assert conn.add(
        dn,
        ["inetOrgPerson", "coopMember"],
        {
            "uid": uid,
            "cn": uid,
            "sn": uid,
            "mail": f"{uid}@demo.coop",
            "coopMemberStatus": "active",
            "coopService": ["mail"],
        },
    ), conn.result
    assert conn.extend.standard.modify_password(user=dn, new_password=password), conn.result
    yield dn, password
    conn.delete(dn)
    conn.unbind()


def test_slapd_runs_under_systemd_and_listens(lab):
    host = lab.host("dir")
    slapd = host.service("slapd")
    assert slapd.is_running
    assert slapd.is_enabled
    assert host.socket("tcp://0.0.0.0:389").is_listening
    assert host.socket("tcp://0.0.0.0:636").is_listening
    assert host.socket("unix:///var/run/slapd/ldapi").is_listening


def test_starttls_and_ldaps_verify_with_the_lab_ca(lab):
    conn = ldap3.Connection(server(lab))
    conn.open()
    assert conn.start_tls()
    assert conn.tls_started
    conn.unbind()
    conn = ldap3.Connection(server(lab, port=636))
    conn.open()
    assert conn.bound is False and not conn.closed
    conn.unbind()


def test_tls_fails_against_another_ca(lab):
    """The certificate is really checked: the public CA bundle does not vouch for the lab."""
    conn = ldap3.Connection(server(lab, ca_file="/etc/ssl/certs/ca-certificates.crt"))
    conn.open()
    with pytest.raises((LDAPStartTLSError, LDAPSocketOpenError, ssl.SSLError)):
        conn.start_tls()


def test_simple_bind_without_tls_is_refused(lab):
    conn = connect(lab, service_dn("mail"), lab.secret("ldap_mail"), starttls=False)
    assert not conn.bound
    assert conn.result["description"] == "confidentialityRequired"


@pytest.mark.parametrize("name", SERVICES)
def test_service_accounts_bind_with_their_secret(lab, name):
    conn = as_service(lab, name)
    assert conn.extend.standard.who_am_i() == f"dn:{service_dn(name)}"
    conn.unbind()
    wrong = connect(lab, service_dn(name), lab.secret(f"ldap_{name}") + "x")
    assert not wrong.bound
    assert wrong.result["description"] == "invalidCredentials"


def test_schema_is_loaded(lab):
    conn = as_service(lab, "coopctl")
    schema = conn.server.schema
    assert "coopMember" in schema.object_classes
    assert "coopPlan" in schema.object_classes
    for attr in ("coopMemberStatus", "coopMailQuota", "coopMailAlias", "coopService", "memberOf"):
        assert attr in schema.attribute_types, attr
    conn.unbind()


def test_base_tree_exists(lab):
    out = lab.host("dir").check_output(
        f"ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b {BASE} -s one '(objectClass=*)' 1.1"
    )
    dns = {line[4:] for line in out.splitlines() if line.startswith("dn: ")}
    for ou in ("people", "groups", "plans", "services", "policies"):
        assert f"ou={ou},{BASE}" in dns, ou
    # coopctl sees the members' subtrees, not the service accounts.
    conn = as_service(lab, "coopctl")
    for ou in ("people", "groups", "plans"):
        assert conn.search(
            f"ou={ou},{BASE}", "(objectClass=organizationalUnit)", search_scope=ldap3.BASE
        ), ou
    conn.search(f"ou=services,{BASE}", "(objectClass=*)", attributes=["cn"])
    assert conn.entries == []
    conn.unbind()


def test_mail_account_reads_members_but_not_their_password(lab, member):
    dn, _password = member
    conn = as_service(lab, "mail")
    assert conn.search(
        dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["uid", "mail", "userPassword"]
    )
    attrs = conn.entries[0].entry_attributes_as_dict
    assert attrs["uid"] and attrs["mail"]
    assert not attrs.get("userPassword")
    conn.unbind()
    # ... while the password is really there: the member can bind with it.
    self_conn = connect(lab, dn, _password)
    assert self_conn.bound, self_conn.result


def test_anonymous_cannot_read_people(lab, member):
    dn, _password = member
    anon = connect(lab)
    anon.search(f"ou=people,{BASE}", "(objectClass=*)", attributes=["*"])
    assert anon.entries == []
    anon.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"])
    assert anon.entries == []
    anon.unbind()


def test_overlays_are_configured(lab):
    host = lab.host("dir")
    out = host.check_output(
        "ldapsearch -Q -LLL -o ldif-wrap=no -Y EXTERNAL -H ldapi:/// "
        "-b 'olcDatabase={1}mdb,cn=config' '(objectClass=olcOverlayConfig)' olcOverlay"
    )
    overlays = {
        line.split("}", 1)[1] for line in out.splitlines() if line.startswith("olcOverlay:")
    }
    assert {"syncprov", "refint", "ppolicy", "unique"} <= overlays
    assert overlays & {"dynlist", "memberof"}  # memberOf, computed or stored
    suffix = host.check_output(
        "ldapsearch -Q -LLL -o ldif-wrap=no -Y EXTERNAL -H ldapi:/// "
        "-b 'olcDatabase={1}mdb,cn=config' -s base olcRootDN olcSuffix"
    )
    assert f"olcSuffix: {BASE}" in suffix
    assert "olcRootDN: gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth" in suffix


def test_memberof_and_unique_work(lab, member):
    dn, _password = member
    conn = as_service(lab, "coopctl")
    group = f"cn=ldaptest{secrets.token_hex(3)},ou=groups,{BASE}"
    assert conn.add(group, ["groupOfNames"], {"member": [dn]}), conn.result
    try:
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["memberOf"])
        assert conn.entries[0].memberOf.values == [group]
        assert conn.search(f"ou=people,{BASE}", f"(memberOf={group})", attributes=["uid"])
        assert [e.entry_dn for e in conn.entries] == [dn]
        uid = dn.split(",")[0].split("=")[1]
        clash = f"uid={uid}x,ou=people,{BASE}"
        assert not conn.add(
            clash,
            ["inetOrgPerson", "coopMember"],
            {
                "uid": f"{uid}x",
                "cn": "x",
                "sn": "x",
                "mail": f"{uid}@demo.coop",
                "coopMemberStatus": "active",
            },
        )
        assert conn.result["description"] == "constraintViolation"
    finally:
        conn.delete(group)
        conn.unbind()


def test_password_policy_refuses_short_passwords(lab, member):
    dn, password = member
    conn = connect(lab, dn, password)
    assert conn.bound
    assert not conn.extend.standard.modify_password(
        user=dn, old_password=password, new_password="short"
    )
    conn.unbind()


@pytest.fixture
def init_config(lab, tmp_path) -> Iterator[Path]:
    """A coopctl configuration whose admin_uri is `dir`'s ldapi socket, forwarded over SSH.

    `coopctl init` administers slapd over ldapi with SASL EXTERNAL, on the directory host
    itself. Here sshd (root) connects to the socket for us, so slapd maps the peer to root's
    identity exactly as it would for `coopctl init` run on the host.
    """
    sock = tmp_path / "ldapi"
    forward = subprocess.Popen(
        ["ssh", "-F", str(lab.cfg.ssh_config), "-o", "ControlPath=none",
         "-o", "ExitOnForwardFailure=yes", "-N", "-L", f"{sock}:/run/slapd/ldapi", "dir"],
        stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.is_socket():
            assert forward.poll() is None and time.monotonic() < deadline, "no SSH forward"
            time.sleep(0.1)
        path = write_coopctl_config(lab.cfg, tmp_path / "coopctl.yaml")
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["directory"]["admin_uri"] = "ldapi://" + urllib.parse.quote(str(sock), safe="")
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        yield path
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def run_init(config: Path) -> list[str]:
    result = CliRunner().invoke(cli, ["--config", str(config), "init", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["done"]


def db_indexes(lab) -> list[str]:
    out = lab.host("dir").check_output(
        "ldapsearch -Q -LLL -o ldif-wrap=no -Y EXTERNAL -H ldapi:/// "
        "-b 'olcDatabase={1}mdb,cn=config' -s base olcDbIndex"
    )
    return [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("olcDbIndex:")]


def test_init_and_the_role_agree(lab, init_config):
    """schemas/indexes.yml is the one list: neither `coopctl init` nor the role undoes the other.

    Before it, init added its own indexes (employeeNumber, ...) and every deploy removed them.
    """
    wanted = yaml.safe_load((schemas_dir() / "indexes.yml").read_text(encoding="utf-8"))
    assert sorted(db_indexes(lab)) == sorted(wanted["indexes"])  # as the role left them
    # On a server the role deployed, init finds nothing to do: not an index, not a rule.
    assert run_init(init_config) == []
    # A server that lacks one (say, set up before employeeNumber was indexed) gets it back
    # from init, in the very form the role writes...
    without = [v for v in wanted["indexes"] if not v.startswith("employeeNumber")]
    values = "".join(f"olcDbIndex: {v}\n" for v in without)
    lab.host("dir").check_output(
        "printf 'dn: olcDatabase={1}mdb,cn=config\\nchangetype: modify\\nreplace: olcDbIndex\\n"
        + values.replace("\n", "\\n")
        + "' | ldapmodify -Q -Y EXTERNAL -H ldapi:///"
    )
    assert run_init(init_config) == ["indexed employeeNumber"]
    assert sorted(db_indexes(lab)) == sorted(wanted["indexes"])
    # ... so that the next deploy changes nothing.
    recap = lab.deploy(tags="openldap", limit="dir")
    assert (recap["changed"], recap["failed"], recap["rc"]) == (0, 0, 0), recap
