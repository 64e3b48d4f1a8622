"""`coopctl audit` on the lab's real services: drift made by hand in each service is found and is
gone after `coopctl sync`; the audit changes nothing; the infrastructure checks fail on a host
misconfigured on purpose and pass once it is restored; the HTML report renders in Chromium.

Kinds of drift made directly in the services: a mailbox left for an address the directory does
not know; a quota changed in the Nextcloud double; a member's wiki rule edited by hand; a pad
group session held by a member who is not in the group. Keycloak's realm administrators
(a member given manage-users directly, then through a group) show in the access matrix. (A
Keycloak session of a suspended
member cannot be made: Keycloak's LDAP filter drops it the moment the directory suspends them,
see tests/lab/test_sync_sso.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.lab.test_security_sso import admin_token, api, base
from tests.lab.test_sso import REALM
from tests.lab.test_sync_lifecycle import Coop, cloud_user, coop, pads_api

__all__ = ["coop"]  # the lifecycle tests' fixture: plan, group, purge at the end

pytestmark = pytest.mark.lab

COOPCTL = str(Path(sys.executable).with_name("coopctl"))
ACL_FILE = "/var/lib/dokuwiki/acl/acl.auth.php"
GHOST = "ghost.nobody"
GROUP = "audit-team"
SSO_ADMINS = "audit-sso-admins"  # a directory group given manage-users in Keycloak, then not


@pytest.fixture(scope="module")
def audit_group(coop: Coop) -> str:
    groups = {g["name"] for g in json.loads(coop.run("group", "list", "--json").stdout)}
    if GROUP not in groups:
        coop.run("group", "add", GROUP)
    return GROUP


def audit(coop: Coop, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = coop.run("audit", *args, ok=False)
    if ok:
        assert result.returncode in (0, 9), result.stdout[-2000:] + result.stderr[-2000:]
    return result


def drift_of(coop: Coop, *uids: str) -> set[tuple[str, str, str]]:
    data = json.loads(audit(coop, "--format", "json", "--no-checks", "--fail-on", "none").stdout)
    return {(f["area"], f["subject"], f["kind"]) for f in data["findings"]
            if not uids or f["subject"] in uids}


def test_drift_made_by_hand_is_found_then_gone_after_sync(lab, coop: Coop,
                                                          audit_group: str) -> None:
    ana, _ = coop.member("Ana", "--group", GROUP)
    bea, _ = coop.member("Bea")
    coop.sync(ana, bea)
    assert drift_of(coop, ana, bea, GHOST) == set(), "a synced member audits clean"

    mail = lab.host("mail")
    mail.check_output(f"install -d -o vmail -g vmail /var/vmail/{GHOST}/Maildir/new")
    s = requests.Session()
    s.trust_env = False
    s.put(f"https://{lab.addresses['apps']}/ocs/v2.php/cloud/users/{ana}",
          data={"key": "quota", "value": "7 GB"},
          headers={"Host": "cloud.demo.coop", "OCS-APIRequest": "true"},
          auth=("admin", lab.secret("cloud_admin")), verify=str(lab.ca_file),
          timeout=30).raise_for_status()
    apps = lab.host("apps")
    apps.check_output(f"sed -i 's|^user:{ana}:\\*\\t@ALL\\t0$|user:{ana}:*\\t@ALL\\t8|' {ACL_FILE}")
    assert f"user:{ana}:*\t@ALL\t8" in apps.file(ACL_FILE).content_string, "rule edited"
    group_id = pads_api(lab, "createGroupIfNotExistsFor", groupMapper=f"group:{GROUP}")[
        "data"]["groupID"]
    author = pads_api(lab, "createAuthorIfNotExistsFor", authorMapper=bea, name="Bea")[
        "data"]["authorID"]
    pads_api(lab, "createSession", groupID=group_id, authorID=author,
             validUntil=str(int(time.time()) + 3600))

    found = drift_of(coop, ana, bea, GHOST)
    assert ("mail", GHOST, "orphan") in found
    assert ("cloud", ana, "quota") in found
    assert ("wiki", ana, "attributes") in found or ("wiki", ana, "observed") in found
    assert ("pads", bea, "groups") in found
    data = json.loads(audit(coop, "--format", "json", "--no-checks").stdout)
    assert {f["severity"] for f in data["findings"] if f["subject"] == bea} == {"high"}
    assert audit(coop, "--no-checks").returncode == 9  # --fail-on high by default

    coop.sync(ana, bea)
    mail.check_output(f"rm -rf /var/vmail/{GHOST}")  # the orphan's fix: by hand, never by sync
    assert drift_of(coop, ana, bea, GHOST) == set()
    assert cloud_user(lab, ana)["quota"]["quota"] == 5 * 1024**3


def _state(lab, coop: Coop) -> dict[str, str]:
    """Fingerprints of everything an audit could change."""
    s = requests.Session()
    s.trust_env = False
    users = s.get(f"https://{lab.addresses['apps']}/ocs/v2.php/cloud/users/details",
                  params={"format": "json"}, headers={"Host": "cloud.demo.coop",
                                                      "OCS-APIRequest": "true"},
                  auth=("admin", lab.secret("cloud_admin")), verify=str(lab.ca_file),
                  timeout=60).text
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    return {
        "directory": digest(coop.run("member", "list", "--json").stdout),
        "journal": digest(coop.run("journal", "--json").stdout),
        "cloud": digest(users),
        "pads": digest(json.dumps(pads_api(lab, "listAllGroups"))),
        "wiki": lab.host("apps").check_output(f"sha256sum {ACL_FILE}"),
        "mail": lab.host("mail").check_output("ls -la --time-style=+%s /var/vmail"),
    }


def test_the_audit_changes_nothing(lab, coop: Coop) -> None:
    before = _state(lab, coop)
    result = audit(coop, "--format", "json", "--fail-on", "none")
    assert result.returncode == 0, result.stderr
    assert _state(lab, coop) == before
    # It read with the read-only accounts (cn=audit, the view-only Keycloak client).
    used = json.loads(result.stdout)["credentials"]
    assert used["directory"] == "cn=audit,ou=services,dc=demo,dc=coop (read-only)"
    assert used["sso"].startswith("view roles only (audit.services)")
    # view-clients reveals client secrets, but coopctl's client has none that works: it signs
    # with a key (tests/lab/test_security_sso.py tries what the audit client can read)
    assert "not read-only in effect" not in used["sso"] and "never holds" in used["sso"]


def sso_admins(coop: Coop) -> list[str]:
    data = json.loads(audit(coop, "--service", "sso", "--no-checks", "--format", "json",
                            "--fail-on", "none").stdout)
    return data["administrators"]["sso"]


def test_sso_administrators_in_the_access_matrix(lab, coop: Coop) -> None:
    """Keycloak's realm admins as the audit's view-only client lists them: coopctl's own
    service account; a member given manage-users through a group (the federation is read-only,
    so Keycloak refuses a role granted to a member directly: groups are how it is done), gone
    once they leave the group; and the master realm's admins said to be out of its sight."""
    groups = {g["name"] for g in json.loads(coop.run("group", "list", "--json").stdout)}
    if SSO_ADMINS not in groups:
        coop.run("group", "add", SSO_ADMINS)
    uid, _ = coop.member("Kim", "--group", SSO_ADMINS)
    kc = api(lab, admin_token(lab))  # the master admin makes the change, the audit reads it
    url = f"{base(lab)}/admin/realms/{REALM}"
    ldap = kc.get(f"{url}/components", params={
        "type": "org.keycloak.storage.UserStorageProvider"}, timeout=30).json()[0]["id"]
    mapper = next(m["id"] for m in kc.get(f"{url}/components", params={"parent": ldap},
                                          timeout=30).json()
                  if m["providerId"] == "group-ldap-mapper")
    # The directory's groups into Keycloak's (as a login would): the group to grant a role to.
    kc.post(f"{url}/user-storage/{ldap}/mappers/{mapper}/sync",
            params={"direction": "fedToKeycloak"}, timeout=60).raise_for_status()
    group = next(g for g in kc.get(f"{url}/groups", params={"search": SSO_ADMINS,
                                                            "exact": "true"}, timeout=30).json()
                 if g["name"] == SSO_ADMINS)
    management = kc.get(f"{url}/clients", params={"clientId": "realm-management"},
                        timeout=30).json()[0]["id"]
    role = kc.get(f"{url}/clients/{management}/roles/manage-users", timeout=30).json()
    grant = f"{url}/groups/{group['id']}/role-mappings/clients/{management}"
    entry = f"group /{SSO_ADMINS} (manage-users; members: {uid})"

    admins = sso_admins(coop)
    mine = [a for a in admins if a.startswith("service-account-coopctl (")]
    assert len(mine) == 1 and "coopctl's own client" in mine[0], admins
    assert "manage-users" in mine[0]
    assert admins[-1].startswith("not listed: the master realm's administrators")
    assert not any(SSO_ADMINS in a for a in admins)

    r = kc.post(grant, json=[role], timeout=30)
    assert r.status_code == 204, r.text
    try:
        assert entry in sso_admins(coop)
        coop.run("member", "modify", uid, "--remove-group", SSO_ADMINS)
        admins = sso_admins(coop)
        assert f"group /{SSO_ADMINS} (manage-users; no members)" in admins, admins
        assert not any(uid in a for a in admins)
    finally:
        kc.delete(grant, json=[role], timeout=30).raise_for_status()
    assert not any(SSO_ADMINS in a for a in sso_admins(coop))


def check_outcome(lab, coop: Coop, name: str) -> str:
    """One infrastructure check run as a sysadmin would, with plain pytest and testinfra."""
    return check_run(lab, coop, name)[0]


def check_run(lab, coop: Coop, name: str, host: str = "") -> tuple[str, str]:
    """The check's outcome (passed, failed) and pytest's output, on one host if named."""
    from provisioner.audit.infra import CHECKS_DIR

    env = {**os.environ, "COOPCTL_CONFIG": str(coop.config),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    selected = f"{name} and {host}" if host else name
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
         "--rootdir", str(CHECKS_DIR), f"--ansible-inventory={lab.inventory}", "-k", selected,
         "-rA", str(CHECKS_DIR)], capture_output=True, text=True, env=env, timeout=300,
        check=False)
    outcomes = {line.split()[0] for line in done.stdout.splitlines()
                if line.startswith(("PASSED", "FAILED")) and name in line}
    assert len(outcomes) == 1, done.stdout[-3000:]
    return outcomes.pop().lower(), done.stdout


def test_infrastructure_checks_see_an_open_relay_and_its_repair(lab, coop: Coop) -> None:
    def relay_check() -> str:
        return check_outcome(lab, coop, "test_mail_not_an_open_relay")

    assert relay_check() == "passed"
    mail = lab.host("mail")
    # The lab's Postfix has no outbound transport at all, so opening mynetworks alone relays
    # nothing: an open relay needs both (the check only sends MAIL and RCPT, then RSET).
    saved = {key: mail.check_output(f"postconf -h {key}")
             for key in ("mynetworks", "default_transport")}
    mail.check_output("postconf -e 'mynetworks = 0.0.0.0/0' 'default_transport = smtp' "
                      "&& postfix reload")
    try:
        assert relay_check() == "failed"
    finally:
        mail.check_output("postconf -e " + " ".join(f"'{k} = {v}'" for k, v in saved.items())
                          + " && postfix reload")
    assert relay_check() == "passed"


def test_checks_see_a_certificate_about_to_expire(lab, coop: Coop) -> None:
    """Submission's certificate replaced by one valid 10 more days (same key, same names,
    signed by the lab's CA, so only its date is wrong): the check names port and days."""
    import base64
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    pki = lab.cfg.state_dir / "pki"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    current = x509.load_pem_x509_certificate((pki / "mail.crt").read_bytes())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca.subject)
               .public_key(current.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=10)))
    for ext in current.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    short = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    cert_check = "test_certificates_valid_for_their_names"
    assert check_run(lab, coop, cert_check, "mail")[0] == "passed"
    mail = lab.host("mail")
    crt = "/etc/ssl/coop/server.crt"
    mail.check_output(f"cp -p {crt} {crt}.audit-test")
    try:
        mail.check_output(f"echo {base64.b64encode(short).decode()} | base64 -d > {crt} "
                          "&& postfix reload")
        outcome, output = check_run(lab, coop, cert_check, "mail")
        assert outcome == "failed"
        assert ":587: certificate expires in 9 days" in output or \
            ":587: certificate expires in 10 days" in output, output[-2000:]
        assert ":993:" not in output  # Dovecot still serves the good one: only 587 is named
    finally:
        mail.check_output(f"mv {crt}.audit-test {crt} && postfix reload")
    assert check_run(lab, coop, cert_check, "mail")[0] == "passed"


def test_checks_see_anonymous_ldap_reads(lab, coop: Coop) -> None:
    def anonymous_check() -> str:
        return check_outcome(lab, coop, "test_ldap_no_anonymous_read")

    assert anonymous_check() == "passed"
    directory = lab.host("dir")
    # Names and memberships readable by anyone (never passwords), first in the list.
    rule = "olcAccess: {0}to attrs=entry,objectClass,uid,cn,member by anonymous read by * break"
    dn = directory.check_output(
        "ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b cn=config "
        "'(olcSuffix=dc=demo,dc=coop)' dn | head -1").removeprefix("dn: ").strip()
    directory.check_output(f"printf 'dn: {dn}\\nchangetype: modify\\nadd: olcAccess\\n{rule}\\n' "
                           "| ldapmodify -Q -Y EXTERNAL -H ldapi:///")
    try:
        assert anonymous_check() == "failed"
    finally:
        directory.check_output(
            f"printf 'dn: {dn}\\nchangetype: modify\\ndelete: olcAccess\\nolcAccess: {{0}}\\n' "
            "| ldapmodify -Q -Y EXTERNAL -H ldapi:///")
    assert anonymous_check() == "passed"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_report_summary_renders_in_chromium(lab, coop: Coop, tmp_path: Path) -> None:
    report = tmp_path / "audit.html"
    result = audit(coop, "--format", "html", "--language", "fr", "--output", str(report),
                   "--fail-on", "none")
    assert result.returncode == 0, result.stderr
    assert report.stat().st_mode & 0o077 == 0
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'id="verdict"' in dom and "Résumé" in dom
    members = dom.split('id="member-count">', 1)[1].split("<", 1)[0]
    assert int(members) == len(json.loads(coop.run("member", "list", "--json").stdout))
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,900", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
