"""The reference production inventory (inventories/example), deployed by coopctl installed from
its wheel, on the lab's hosts; then the lab's own inventory deployed back by the same coopctl.

This is what a coop does (docs/production.md): `pip install` coopctl, copy inventories/example,
fill in what it marks CHOOSE, `coopctl deploy -i hosts.yml`. The copy here changes as little as
possible, and every change is listed in OVERRIDES with its reason: either the value a coop
fills in for CHOOSE (its addresses, its name and domain, where its secrets and certificates
are), or something the lab cannot offer. One of those is explicit and important: **the cloud
host runs the Nextcloud contract double, not Nextcloud** (`cloud_flavour: double`), because
Nextcloud is in no package registry this machine reaches; so the example's production cloud
(`cloud_flavour: nextcloud`) is not tested here.

The services are then checked the way the lab tests check them (their helpers, imported), plus
a few values that only the example sets, to show its settings are the ones deployed. The lab is
shared with the rest of the session, so the last test deploys the lab's own inventory again,
with the installed coopctl: that is also the "deploy of a lab from the wheel" test.
"""

from __future__ import annotations

import imaplib
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
import yaml

from tests.installed_wheel import REPO, Installed, installed_coopctl
from tests.lab.helpers import BASE, ThrowawayDirectory, coopctl_connection
from tests.lab.test_cloud import OCS, code
from tests.lab.test_mail import imap, send, subjects, wait_for
from tests.lab.test_pads import api
from tests.lab.test_sso import claims, password_grant
from tests.lab.test_wiki import Wiki, logged_in

pytestmark = pytest.mark.lab

EXAMPLE = REPO / "inventories" / "example"
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


def overrides(lab) -> list[tuple[str, str, Any, str]]:
    """(file, variable, value, why) for every change made to the example inventory."""
    addresses = lab.cfg.addresses()
    lab_coop = "the lab's DNS names, certificates and directory are those of the coop 'demo'"
    return [
        *(("hosts.yml", f"all.hosts.{host}.ansible_host", addresses[host],
           "CHOOSE: the server's address (the lab host's)") for host in ("dir", "mail", "apps")),
        ("hosts.yml", "all.vars.ansible_user", "root",
         "CHOOSE: the admin account (lab hosts have root only, with the lab's key)"),
        ("hosts.yml", "all.vars.ansible_ssh_private_key_file", str(lab.cfg.ssh_key),
         "CHOOSE: the admin's SSH key (the lab's)"),
        ("hosts.yml", "all.vars.ansible_ssh_common_args", SSH_OPTIONS,
         "added: lab hosts get new host keys with every lab; a coop keeps known_hosts"),
        ("hosts.yml", "all.vars.ansible_control_path_dir", str(lab.cfg.control_dir),
         "added: so that `coopctl lab down` closes this deploy's SSH connections too"),
        ("group_vars/all.yml", "coop_name", "demo", f"CHOOSE: {lab_coop}"),
        ("group_vars/all.yml", "coop_domain", "demo.coop", f"CHOOSE: {lab_coop}"),
        ("group_vars/all.yml", "coop_base_dn", BASE, f"CHOOSE: {lab_coop}"),
        ("group_vars/all.yml", "coop_state_dir", str(lab.state_dir),
         "CHOOSE: where secrets/ and pki/ are (the lab's CA and host certificates stand in for "
         "a coop's ACME certificates, and the checks read the services' secrets there)"),
        ("group_vars/mail_servers.yml", "mail_allow_outbound", False,
         "the lab must never send mail out"),
        ("group_vars/pads_servers.yml", "pads_api_allowed_sources", [lab.cfg.bridge_ip],
         "CHOOSE: the address coopctl calls Etherpad's API from (the lab's bridge)"),
        ("group_vars/sso_servers.yml", "sso_hostname", "dir.demo.coop",
         "CHOOSE: Keycloak's public name; the lab's DNS and certificates have no login.demo.coop"),
        ("group_vars/sso_servers.yml", "sso_test_client", True,
         "added: the lab-only OIDC client the SSO checks log members in with (never in "
         "production)"),
        ("group_vars/cloud_servers.yml", "cloud_flavour", "double",
         "NOT TESTED: real Nextcloud is in no registry this machine reaches; the lab's contract "
         "double stands in for it"),
    ]


def write_example(dest: Path, lab) -> list[tuple[str, str, Any, str]]:
    """A copy of inventories/example at `dest` with OVERRIDES applied; returns them."""
    shutil.copytree(EXAMPLE, dest)
    changes = overrides(lab)
    for name in sorted({change[0] for change in changes}):
        path = dest / name
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for file, variable, value, _why in changes:
            if file != name:
                continue
            *parents, leaf = variable.split(".")
            node = data
            for key in parents:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[leaf] = value
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return changes


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return installed_coopctl(tmp_path_factory.getbasetemp() / "installed-coopctl")


class Deploys:
    """The example's deploy, and whether the lab's own inventory was deployed back."""

    def __init__(self, installed: Installed, lab, workdir: Path) -> None:
        self.installed, self.lab, self.workdir = installed, lab, workdir
        self.inventory = workdir / "ruches" / "hosts.yml"
        self.changes = write_example(self.inventory.parent, lab)
        self.example: subprocess.CompletedProcess | None = None
        self.restored: subprocess.CompletedProcess | None = None

    def deploy_example(self) -> subprocess.CompletedProcess:
        self.example = self.installed.run(
            "deploy", "-i", str(self.inventory), "--state-dir", str(self.workdir / "state"),
            timeout=1800)
        return self.example

    def deploy_lab_back(self) -> subprocess.CompletedProcess:
        """The lab's own inventory, with the lab's directory for Ansible's state (as
        `coopctl lab deploy` does), by the installed coopctl."""
        self.restored = self.installed.run(
            "deploy", "-i", str(self.lab.inventory), "--state-dir", str(self.lab.state_dir),
            timeout=1800)
        return self.restored


@pytest.fixture(scope="module")
def deploys(installed: Installed, lab_hosts, tmp_path_factory) -> Iterator[Deploys]:
    """The example deployed once for the module; the lab deployed back afterwards in any case
    (by the module's last test, or here if that test did not run)."""
    state = Deploys(installed, lab_hosts, tmp_path_factory.mktemp("example-inventory"))
    state.deploy_example()
    yield state
    if state.restored is None:
        result = state.deploy_lab_back()
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture
def directory(lab_hosts) -> Iterator[ThrowawayDirectory]:
    made = ThrowawayDirectory(coopctl_connection(lab_hosts), prefix="extest",
                              given_name="Example", services=("mail", "sso", "wiki"))
    yield made
    made.cleanup()


def test_every_override_is_documented(deploys: Deploys) -> None:
    """The copy differs from inventories/example in OVERRIDES only; each has its reason."""
    for file, variable, _value, why in deploys.changes:
        assert why.strip(), (file, variable)
    assert any("NOT TESTED" in why for *_rest, why in deploys.changes)
    assert (deploys.inventory.parent / "group_vars" / "ldap_servers.yml").read_bytes() == (
        EXAMPLE / "group_vars" / "ldap_servers.yml").read_bytes()


def test_the_installed_coopctl_deploys_the_example_inventory(deploys: Deploys) -> None:
    result = deploys.example
    assert result is not None
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    out = result.stdout
    assert ("artifacts this inventory needs: Keycloak 26.7.3, Etherpad 1.8.14, "
            "the Nextcloud contract double") in out
    assert "deploy successful" in out and "failed=0 unreachable=0" in out
    # The playbooks came from the installed package, Ansible's state went to --state-dir.
    assert (deploys.workdir / "state" / "runner" / "artifacts").is_dir()


def test_directory_binds_over_starttls_and_has_the_example_password_policy(
        deploys: Deploys, lab_hosts, directory: ThrowawayDirectory) -> None:
    _uid, dn, password = directory.member()
    tls = ldap3.Tls(ca_certs_file=str(lab_hosts.ca_file), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(lab_hosts.addresses["dir"], port=389, tls=tls, connect_timeout=5)
    conn = ldap3.Connection(server, user=dn, password=password)
    conn.open()
    assert conn.start_tls() and conn.bind(), conn.result
    conn.unbind()
    directory.set_status(dn, "suspended")
    refused = ldap3.Connection(server, user=dn, password=password)
    refused.open()
    assert refused.start_tls() and not refused.bind()
    refused.unbind()
    found = lab_hosts.host("dir").check_output(
        f"ldapsearch -LLL -Y EXTERNAL -H ldapi:/// -b {BASE} '(pwdMinLength=*)' pwdMinLength "
        "2>/dev/null")
    assert "pwdMinLength: 12" in found, found  # the example's; the lab's is 10


def test_mail_delivers_and_dovecot_logs_in_with_the_ldap_password(
        deploys: Deploys, lab_hosts, directory: ThrowawayDirectory) -> None:
    uid, _dn, password = directory.member()
    try:
        subject = f"example {secrets.token_hex(4)}"
        send(lab_hosts, f"{uid}@demo.coop", subject)
        assert subject in wait_for(lambda: subjects(lab_hosts, {"uid": uid,
                                                                 "password": password}))
        quota = lab_hosts.host("mail").check_output(f"doveadm quota get -u {uid}@demo.coop")
        assert "2097152" in quota, quota  # the example's mail_default_quota_mib: 2048 MiB
        with pytest.raises(imaplib.IMAP4.error):
            imap(lab_hosts, uid, password + "x")
    finally:
        lab_hosts.host("mail").run(f"rm -rf /var/vmail/{uid}")


def test_sso_logs_a_member_in_and_refuses_a_suspended_one(
        deploys: Deploys, lab_hosts, directory: ThrowawayDirectory) -> None:
    uid, dn, password = directory.member()
    group = directory.group(dn)
    answer = password_grant(lab_hosts, uid, password)
    assert answer.status_code == 200, answer.text
    access = claims(answer.json()["access_token"])
    assert access["iss"] == "https://dir.demo.coop:8443/realms/demo"
    assert access["preferred_username"] == uid and group in access["groups"]
    directory.set_status(dn, "suspended")
    assert password_grant(lab_hosts, uid, password).json()["error"] == "invalid_grant"
    heap = lab_hosts.host("dir").check_output("ps -o args= -C java")
    assert "-Xmx768m" in heap, heap  # the example's sso_java_heap; the lab's is 512m


def test_wiki_logs_a_member_in_with_the_example_title(
        deploys: Deploys, lab_hosts, directory: ThrowawayDirectory) -> None:
    uid, _dn, password = directory.member()
    page = Wiki(lab_hosts).login(uid, password)
    assert logged_in(page, uid)
    assert "Les Ruches" in page  # the example's wiki_title


def test_pads_api_answers_coopctl_from_the_allowed_address(deploys: Deploys, lab_hosts) -> None:
    answer = api(lab_hosts, "createGroupIfNotExistsFor",
                 apikey=lab_hosts.secret("etherpad_apikey"), groupMapper="example")
    assert answer.status_code == 200 and answer.json()["code"] == 0, answer.text
    settings = lab_hosts.host("apps").file("/etc/etherpad/settings.json").content_string
    assert "Les Ruches pads" in settings  # the example's pads_title


def test_cloud_is_the_contract_double_not_nextcloud(deploys: Deploys, lab_hosts) -> None:
    status, body, answer = OCS(lab_hosts).call("GET", "users")
    assert (status, code(body)) == (200, 100), body
    assert "double" in answer.headers["Server"].lower()  # NOT Nextcloud: see the module doc


def test_the_installed_coopctl_deploys_the_lab_back(deploys: Deploys) -> None:
    """Last: the lab's own inventory, deployed by the installed coopctl, so the session's
    other lab tests find the lab as they expect it."""
    result = deploys.deploy_lab_back()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "deploy successful" in result.stdout
