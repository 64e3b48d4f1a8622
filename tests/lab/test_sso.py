"""The sso role on the lab host `dir`: Keycloak federating members from the real OpenLDAP.

Members are created in the directory as cn=coopctl (ldap3, StartTLS with the lab CA, password
set with the password-modify extended operation). Logins are direct OIDC password grants with
the lab-only client `coopctl-test` over HTTPS, verified with the lab CA. The federation does not
import members, so a change in LDAP (suspension, a group) shows at the very next login.
"""

from __future__ import annotations

import base64
import json

import pytest
import requests

from tests.lab.helpers import ThrowawayDirectory

pytestmark = pytest.mark.lab

REALM = "demo"  # coop_name
HOSTNAME = "dir.demo.coop"
TEST_CLIENT = "coopctl-test"  # sso_test_client_id, enabled in group_vars/sso_servers.yml


@pytest.fixture
def directory(throwaway_directory) -> ThrowawayDirectory:
    return throwaway_directory(prefix="ssotest", given_name="Sso", services=("sso",))


def session(lab) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies or CA bundles from the environment
    s.verify = str(lab.ca_file)
    return s


def password_grant(lab, username: str, password: str) -> requests.Response:
    """A direct OIDC password grant at the coop's realm, as a confidential client."""
    return session(lab).post(
        f"https://{lab.addresses['dir']}:8443/realms/{REALM}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": TEST_CLIENT,
            "client_secret": lab.secret(f"oidc_{TEST_CLIENT}"),
            "username": username,
            "password": password,
            "scope": "openid",
        },
        timeout=60,
    )


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def health(lab) -> dict:
    """Keycloak's readiness, asked on the host itself (the management port is loopback-only)."""
    out = lab.host("dir").check_output(
        "python3 -c 'import urllib.request;"
        "print(urllib.request.urlopen(\"http://127.0.0.1:9000/health/ready\").read().decode())'")
    return json.loads(out)


def loopback_only(host, port: int) -> bool:
    """Something listens on the port, and only on loopback (Java's dual-stack sockets show
    127.0.0.1 as ::ffff:127.0.0.1)."""
    found = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
    loopback = ("tcp://127.", "tcp://::1:", "tcp://::ffff:127.")
    return bool(found) and all(s.startswith(loopback) for s in found)


def test_keycloak_runs_under_systemd_with_https_only(lab):
    host = lab.host("dir")
    service = host.service("keycloak")
    assert service.is_running and service.is_enabled
    # The public port is nginx's (TLS); Keycloak itself speaks HTTP on loopback only.
    assert host.socket("tcp://0.0.0.0:8443").is_listening
    assert host.service("nginx").is_running
    assert loopback_only(host, 8080)
    # Production mode from an optimized build, heap bounded.
    cmdline = host.check_output("ps -o args= -C java")
    assert "-Xmx512m" in cmdline, cmdline
    assert cmdline.rstrip().endswith("start --optimized"), cmdline
    # The database password is readable by root only; the bootstrap admin's file is gone.
    env = host.file("/etc/keycloak/db.env")
    assert env.mode == 0o600 and env.user == "root"
    assert not host.file("/etc/keycloak/bootstrap-admin.env").exists


def test_discovery_and_health_over_tls_with_the_lab_ca(lab):
    s = session(lab)
    r = s.get(
        f"https://{lab.addresses['dir']}:8443/realms/{REALM}/.well-known/openid-configuration",
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["issuer"] == f"https://{HOSTNAME}:8443/realms/{REALM}"
    assert health(lab)["status"] == "UP"


def test_active_member_gets_a_token_with_their_groups(lab, directory):
    uid, dn, password = directory.member()
    group = directory.group(dn)
    r = password_grant(lab, uid, password)
    assert r.status_code == 200, r.text
    access = claims(r.json()["access_token"])
    assert access["preferred_username"] == uid
    assert access["iss"] == f"https://{HOSTNAME}:8443/realms/{REALM}"
    assert group in access["groups"], access
    ident = claims(r.json()["id_token"])
    assert ident["email"] == f"{uid}@demo.coop"
    assert ident["given_name"] == "Sso"
    assert ident["family_name"] == f"Test {uid}"


def test_wrong_password_is_refused(lab, directory):
    uid, _, password = directory.member()
    r = password_grant(lab, uid, password + "x")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    # The right password still works afterwards.
    assert password_grant(lab, uid, password).status_code == 200


def test_suspension_takes_effect_at_the_next_login(lab, directory):
    uid, dn, password = directory.member()
    assert password_grant(lab, uid, password).status_code == 200
    directory.set_status(dn, "suspended")
    r = password_grant(lab, uid, password)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    directory.set_status(dn, "active")
    assert password_grant(lab, uid, password).status_code == 200


def test_member_without_the_sso_service_is_refused(lab, directory):
    uid, _, password = directory.member(services=("mail", "wiki"))
    r = password_grant(lab, uid, password)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"


def test_group_change_shows_at_the_next_login(lab, directory):
    uid, dn, password = directory.member()
    r = password_grant(lab, uid, password)
    assert r.status_code == 200, r.text
    before = claims(r.json()["access_token"]).get("groups", [])
    group = directory.group(dn)
    assert group not in before
    r = password_grant(lab, uid, password)
    assert r.status_code == 200, r.text
    assert group in claims(r.json()["access_token"])["groups"]


def test_every_service_has_a_confidential_client(lab):
    """The OIDC clients exist with their secrets from the secrets dir (client credentials are
    checked by the token endpoint: a wrong secret is refused, the right one is not)."""
    s = session(lab)
    url = f"https://{lab.addresses['dir']}:8443/realms/{REALM}/protocol/openid-connect/token"
    for client in ("mail", "cloud", "wiki", "pads"):
        secret = lab.secret(f"oidc_{client}")
        wrong = s.post(
            url,
            data={
                "grant_type": "password",
                "client_id": client,
                "client_secret": secret + "x",
                "username": "nobody",
                "password": "nothing",
            },
            timeout=30,
        )
        assert wrong.status_code == 401, (client, wrong.text)
        assert "Invalid client" in wrong.json()["error_description"], (client, wrong.text)
        # Right secret: the client is authenticated, but it may not use the password grant.
        right = s.post(
            url,
            data={
                "grant_type": "password",
                "client_id": client,
                "client_secret": secret,
                "username": "nobody",
                "password": "nothing",
            },
            timeout=30,
        )
        assert right.status_code == 400, (client, right.text)
        assert "direct access grants" in right.json()["error_description"], (client, right.text)


def test_second_run_of_the_role_changes_nothing(lab, tmp_path):
    """The role compares before it writes: another run (after the session's deploy) is a no-op."""
    playbook = tmp_path / "sso.yml"
    playbook.write_text("- hosts: sso_servers\n  become: true\n  roles: [sso]\n")
    recap = lab.deploy(playbook=str(playbook))
    assert recap["rc"] == 0 and not recap["failed"], recap
    assert recap["changed"] == 0, recap
