"""`coopctl sync` and Keycloak on the lab: a suspended member's SSO sessions stop working at once.

Keycloak federates the directory with import off, and its LDAP filter admits active members
only. Measured here: the moment the directory suspends a member, Keycloak refuses their
refresh tokens, offline ones included, because it can no longer load the user; their
sessions disappear from the admin API's listings, and the admin API cannot delete them
either (404: the session's user cannot be loaded). So the SSO connector has nothing to
revoke for a suspended member (its plan is empty): the federation's filter already did it.
"""

from __future__ import annotations

import pytest

from provisioner.config import load
from provisioner.sync import Sync
from tests.lab.test_sso import REALM, TEST_CLIENT, password_grant, session

pytestmark = pytest.mark.lab


def refresh(lab, token: str):
    return session(lab).post(
        f"https://{lab.addresses['dir']}:8443/realms/{REALM}/protocol/openid-connect/token",
        data={"grant_type": "refresh_token", "client_id": TEST_CLIENT,
              "client_secret": lab.secret(f"oidc_{TEST_CLIENT}"), "refresh_token": token},
        timeout=60)


def test_suspension_refuses_refresh_tokens_at_once(lab, throwaway_directory, coopctl_config):
    directory = throwaway_directory(prefix="ssosync", given_name="Sso", services=("sso",))
    uid, dn, password = directory.member()
    other, _, other_password = directory.member()
    tokens = password_grant(lab, uid, password).json()
    other_tokens = password_grant(lab, other, other_password).json()
    sync = Sync(load(coopctl_config))
    seen = sync.connectors(["sso"])["sso"].observe()
    assert uid in seen.accounts and other in seen.accounts  # bulk: every session of the realm

    directory.set_status(dn, "suspended")
    denied = refresh(lab, tokens["refresh_token"])
    assert denied.status_code == 400 and denied.json()["error"] == "invalid_grant", denied.text
    assert refresh(lab, other_tokens["refresh_token"]).status_code == 200  # others keep theirs
    assert uid not in sync.connectors(["sso"])["sso"].observe().accounts
    assert sync.plan(["sso"], [uid, other]).changes() == []


def test_connector_uses_the_coopctl_client_or_an_admin_password(lab, coopctl_config, tmp_path):
    """The lab's config names the realm's confidential client (no master admin), which signs
    an assertion with its key for every token; a config written before that client existed
    (admin_user + admin_secret_file) still works."""
    import yaml

    data = yaml.safe_load(coopctl_config.read_text())
    sso = data["services"]["sso"]
    assert sso["client_id"] == "coopctl" and "admin_user" not in sso
    assert "client_secret_file" not in sso and sso["client_key_file"].endswith(".pem")
    admin = Sync(load(coopctl_config)).connectors(["sso"])["sso"].admin()
    first = admin.connection.token["access_token"]
    admin.connection.get_token()  # what python-keycloak does when a token expires
    assert admin.connection.token["access_token"] != first
    assert admin.get_realm(sso["realm"])["realm"] == sso["realm"]
    data["services"]["sso"] = {"url": sso["url"], "realm": sso["realm"], "admin_user": "admin",
                               "admin_secret_file": str(lab.state_dir / "secrets" /
                                                        "keycloak_admin")}
    legacy = tmp_path / "legacy.yml"
    legacy.write_text(yaml.safe_dump(data))
    connector = Sync(load(legacy)).connectors(["sso"])["sso"]
    assert isinstance(connector.observe().sessions, dict)
