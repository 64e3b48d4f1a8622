"""Issue 9, single sign-on: Keycloak's admin door, its admins, events and clients on the lab.

Everything talks to the real Keycloak on `dir` (behind the sso role's nginx front) over HTTPS
checked against the lab CA: from the controller, which is the lab's admin network
(sso_admin_networks), and from `apps`, a member-facing host that is not.
"""

from __future__ import annotations

import html
import imaplib
import re
import secrets
import socket
import urllib.parse

import ldap3
import pytest
import requests
from jwcrypto import jwk

from provisioner.services.keycloak_jwt import ASSERTION_TYPE, client_assertion, load_key
from tests.lab.helpers import BASE, given_password_member
from tests.lab.test_mail import imap
from tests.lab.test_openldap import as_service, connect
from tests.lab.test_security_directory import root_search, stored_hash_schemes
from tests.lab.test_sso import (
    HOSTNAME,
    REALM,
    TEST_CLIENT,
    claims,
    loopback_only,
    password_grant,
    session,
)
from tests.lab.test_wiki import Wiki, logged_in

pytestmark = pytest.mark.lab

PUBLIC = f"https://{HOSTNAME}:8443"


def base(lab) -> str:
    return f"https://{lab.addresses['dir']}:8443"


def status_from(host, url: str) -> int:
    """HTTP status of GET url, as seen from a lab host (its own python3, no proxy)."""
    script = (
        "import ssl, sys, urllib.request, urllib.error\n"
        "ctx = ssl._create_unverified_context()\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, context=ctx, timeout=20).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    return int(host.check_output(f"python3 -c {_quote(script)}").strip())


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def token_url(lab) -> str:
    return f"{base(lab)}/realms/{REALM}/protocol/openid-connect/token"


def issuer(lab) -> str:
    """The audience of a client assertion: the realm's issuer (its public name, not the IP)."""
    return session(lab).get(f"{base(lab)}/realms/{REALM}/.well-known/openid-configuration",
                            timeout=30).json()["issuer"]


def client_token(lab, client_id: str, key_name: str) -> str:
    """A service client's token, asked for as coopctl does: with an assertion its key signed."""
    key = load_key((lab.cfg.secrets_dir / key_name).read_text())
    r = session(lab).post(token_url(lab), timeout=30, data={
        "grant_type": "client_credentials", "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, client_id, issuer(lab))})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def admin_token(lab) -> str:
    r = session(lab).post(
        f"{base(lab)}/realms/master/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": "admin-cli", "username": "admin",
              "password": lab.secret("keycloak_admin")},
        timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def api(lab, token: str) -> requests.Session:
    s = session(lab)
    s.headers["Authorization"] = f"Bearer {token}"
    return s


@pytest.fixture(scope="module")
def audit(lab) -> requests.Session:
    return api(lab, client_token(lab, "coopctl-audit", "keycloak_audit_client.pem"))


def test_admin_paths_refused_from_a_member_host(lab):
    apps = lab.host("apps")
    dir_ip = lab.addresses["dir"]
    for path in ("/admin/", "/admin/master/console/", "/realms/master/",
                 "/realms/master/.well-known/openid-configuration",
                 f"/admin/realms/{REALM}/users", "/realms/Master/%2e/account",
                 "//admin/", "/realms/master;x/.well-known/openid-configuration",
                 "/realms/%6daster/.well-known/openid-configuration"):
        assert status_from(apps, f"https://{dir_ip}:8443{path}") == 403, path
    # The coop's realm stays public.
    url = f"https://{dir_ip}:8443/realms/{REALM}/.well-known/openid-configuration"
    assert status_from(apps, url) == 200


def test_admin_paths_reachable_from_the_admin_network(lab):
    s = session(lab)
    r = s.get(f"{base(lab)}/realms/master/.well-known/openid-configuration", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["issuer"] == f"{PUBLIC}/realms/master"
    console = s.get(f"{base(lab)}/admin/master/console/", timeout=30)
    assert console.status_code == 200 and "<html" in console.text.lower()


def test_keycloak_and_its_management_port_listen_on_loopback_only(lab):
    host = lab.host("dir")
    assert loopback_only(host, 8080) and loopback_only(host, 9000), (
        host.socket.get_listening_sockets())
    health = host.check_output(
        "python3 -c 'import urllib.request;"
        "print(urllib.request.urlopen(\"http://127.0.0.1:9000/health/ready\").read().decode())'")
    assert '"UP"' in health
    # And from another lab host, 9000 does not answer at all.
    dir_ip = lab.addresses["dir"]
    probe = lab.host("apps").run(
        f"python3 -c 'import socket; socket.create_connection((\"{dir_ip}\", 9000), timeout=5)'")
    assert probe.rc != 0 and ("refused" in probe.stderr.lower() or "timed out" in probe.stderr)
    with pytest.raises(OSError):
        socket.create_connection((lab.addresses["dir"], 9000), timeout=5).close()


def test_bootstrap_admin_gone_and_the_permanent_admin_works(lab):
    s = api(lab, admin_token(lab))  # the permanent admin (secret keycloak_admin) logs in
    users = s.get(f"{base(lab)}/admin/realms/master/users", params={"briefRepresentation": "false"},
                  timeout=30)
    assert users.status_code == 200, users.text
    names = {u["username"]: u for u in users.json()}
    assert "bootstrap-admin" not in names, names.keys()
    assert "admin" in names
    temporary = [n for n, u in names.items() if "is_temporary_admin" in (u.get("attributes") or {})]
    assert temporary == [], temporary
    # Nothing of the bootstrap admin on the host: no file, not in the JVM's environment.
    host = lab.host("dir")
    assert not host.file("/etc/keycloak/bootstrap-admin.env").exists
    pid = host.check_output("systemctl show -p MainPID --value keycloak")
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "KC_BOOTSTRAP_ADMIN" not in environ
    assert "KC_HOSTNAME=" in environ  # the environment was read at all


def test_master_realm_locks_out_after_repeated_failures(lab):
    """Brute-force detection is on in master: after 5 wrong passwords even the right one is
    refused (temporary lockout). A throwaway master user, deleted afterwards."""
    s = api(lab, admin_token(lab))
    realm = s.get(f"{base(lab)}/admin/realms/master", timeout=30).json()
    assert realm["bruteForceProtected"] is True and realm["permanentLockout"] is False
    name, password = f"bftest{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    created = s.post(f"{base(lab)}/admin/realms/master/users", json={
        "username": name, "enabled": True,
        "credentials": [{"type": "password", "value": password, "temporary": False}]},
        timeout=30)
    assert created.status_code == 201, created.text
    user_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    try:
        def login(pw: str) -> requests.Response:
            return session(lab).post(
                f"{base(lab)}/realms/master/protocol/openid-connect/token",
                data={"grant_type": "password", "client_id": "admin-cli", "username": name,
                      "password": pw}, timeout=30)

        assert login(password).status_code == 200
        for _ in range(5):
            wrong = login(password + "x")
            assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        locked = login(password)  # the right password, refused while locked
        assert locked.status_code == 400 and locked.json()["error"] == "invalid_grant", locked.text
        state = s.get(f"{base(lab)}/admin/realms/master/attack-detection/brute-force/users/"
                      f"{user_id}", timeout=30).json()
        assert state["disabled"] is True and state["numFailures"] >= 1, state
    finally:
        s.delete(f"{base(lab)}/admin/realms/master/users/{user_id}", timeout=30)


def test_events_on_in_both_realms(lab, audit):
    s = api(lab, admin_token(lab))
    for realm in ("master", REALM):
        config = s.get(f"{base(lab)}/admin/realms/{realm}/events/config", timeout=30).json()
        assert config["eventsEnabled"] and config["adminEventsEnabled"], (realm, config)
        assert config["eventsExpiration"] > 0, config
        assert "jboss-logging" in config["eventsListeners"], config
    coop = audit.get(f"{base(lab)}/admin/realms/{REALM}", timeout=30).json()
    # Throttling, never a permanent lockout a stranger could inflict on a member.
    assert coop["bruteForceProtected"] is True and coop["permanentLockout"] is False
    assert coop["maxFailureWaitSeconds"] <= 300, coop["maxFailureWaitSeconds"]


def test_failed_login_is_recorded_and_logged(lab, audit, throwaway_directory):
    directory = throwaway_directory(prefix="ssoevt", given_name="Sso", services=("sso",))
    uid, _, password = directory.member()
    host = lab.host("dir")
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    assert password_grant(lab, uid, password + "x").status_code == 400
    events = audit.get(f"{base(lab)}/admin/realms/{REALM}/events",
                       params={"type": "LOGIN_ERROR", "client": TEST_CLIENT, "max": 50},
                       timeout=30)
    assert events.status_code == 200, events.text
    mine = [e for e in events.json() if (e.get("details") or {}).get("username") == uid]
    assert mine, events.json()[:3]
    # The client's own address (nginx's X-Forwarded-For), not the proxy's loopback.
    assert mine[0]["ipAddress"] == lab.cfg.bridge_ip, mine[0]
    journal = host.check_output(f"journalctl -u keycloak --since '{since}' --no-pager -o cat")
    lines = [line for line in journal.splitlines()
             if 'type="LOGIN_ERROR"' in line and uid in line]
    assert lines, journal[-2000:]
    assert password not in journal


def test_audit_client_reads_but_cannot_write(lab, audit, throwaway_directory):
    directory = throwaway_directory(prefix="ssoaud", given_name="Sso", services=("sso",))
    uid, _, password = directory.member()
    assert password_grant(lab, uid, password).status_code == 200  # a live session
    url = f"{base(lab)}/admin/realms/{REALM}"
    users = audit.get(f"{url}/users", params={"username": uid, "exact": "true"}, timeout=30)
    assert users.status_code == 200 and [u["username"] for u in users.json()] == [uid], users.text
    stats = audit.get(f"{url}/client-session-stats", timeout=30)
    assert stats.status_code == 200, stats.text
    client = next(c for c in stats.json() if c["clientId"] == TEST_CLIENT)
    sessions = audit.get(f"{url}/clients/{client['id']}/user-sessions", timeout=30)
    assert sessions.status_code == 200, sessions.text
    mine = [x for x in sessions.json() if x["username"] == uid]
    assert mine, sessions.json()
    assert audit.get(f"{url}/clients", timeout=30).status_code == 200
    # Every write is refused.
    assert audit.post(f"{url}/users", json={"username": f"x{uid}", "enabled": True},
                      timeout=30).status_code == 403
    assert audit.delete(f"{url}/sessions/{mine[0]['id']}", timeout=30).status_code == 403
    assert audit.put(url, json={"displayName": "pwned"}, timeout=30).status_code == 403
    # The master realm is not its business either.
    assert audit.get(f"{base(lab)}/admin/realms/master/users", timeout=30).status_code == 403
    # The session survived the refused delete.
    after = audit.get(f"{url}/clients/{client['id']}/user-sessions", timeout=30).json()
    assert mine[0]["id"] in {x["id"] for x in after}


def test_coopctl_client_can_end_sessions_but_not_touch_the_realm(lab, throwaway_directory):
    """manage-users (needed to delete a session) is the only write role it has: it cannot
    change the realm, its clients, or read the events."""
    directory = throwaway_directory(prefix="ssocli", given_name="Sso", services=("sso",))
    uid, _, password = directory.member()
    assert password_grant(lab, uid, password).status_code == 200
    s = api(lab, client_token(lab, "coopctl", "keycloak_coopctl_client.pem"))
    url = f"{base(lab)}/admin/realms/{REALM}"
    client = next(c for c in s.get(f"{url}/client-session-stats", timeout=30).json()
                  if c["clientId"] == TEST_CLIENT)
    mine = [x for x in s.get(f"{url}/clients/{client['id']}/user-sessions", timeout=30).json()
            if x["username"] == uid]
    assert mine
    assert s.put(url, json={"displayName": "pwned"}, timeout=30).status_code == 403
    assert s.post(f"{url}/clients", json={"clientId": f"x{uid}"}, timeout=30).status_code == 403
    assert s.get(f"{url}/events", timeout=30).status_code == 403
    assert s.get(f"{base(lab)}/admin/realms/master/users", timeout=30).status_code == 403
    assert s.delete(f"{url}/sessions/{mine[0]['id']}", timeout=30).status_code == 204


def test_nothing_the_audit_client_reads_acts_as_a_service_client(lab, audit):
    """The audit's view-clients shows every client, and any secret Keycloak keeps for one:
    coopctl's and the audit's own clients authenticate by a signed JWT, so no secret read
    there gets a token, and an assertion signed by another key is refused too."""
    url = f"{base(lab)}/admin/realms/{REALM}/clients"
    for client_id in ("coopctl", "coopctl-audit"):
        shown = audit.get(url, params={"clientId": client_id}, timeout=30).json()[0]
        assert shown["clientAuthenticatorType"] == "client-jwt", shown
        assert "BEGIN" not in shown["attributes"]["jwt.credential.certificate"]  # bare base64
        read = audit.get(f"{url}/{shown['id']}/client-secret", timeout=30)
        value = (read.json() if read.status_code == 200 else {}).get("value") or "none"
        refused = session(lab).post(token_url(lab), timeout=30, data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": value})
        assert refused.status_code in (400, 401), (client_id, refused.status_code)
        stranger = jwk.JWK.generate(kty="RSA", size=2048)
        forged = session(lab).post(token_url(lab), timeout=30, data={
            "grant_type": "client_credentials", "client_id": client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(stranger, client_id, issuer(lab))})
        assert forged.status_code in (400, 401), (client_id, forged.status_code)
    mode = oct((lab.cfg.secrets_dir / "keycloak_coopctl_client.pem").stat().st_mode & 0o777)
    assert mode == "0o600", mode


def test_authorization_code_login_through_the_wiki_client(lab, throwaway_directory):
    """A browser's login, by hand: auth endpoint, login form, redirect with a code to the
    wiki's own name (as its certificate has it), code exchanged with the client's secret."""
    directory = throwaway_directory(prefix="ssocode", given_name="Sso", services=("sso",))
    uid, _, password = directory.member()
    s = session(lab)
    redirect_uri = "https://wiki.demo.coop/doku.php"
    state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    auth = f"{base(lab)}/realms/{REALM}/protocol/openid-connect/auth"
    page = s.get(auth, params={"client_id": "wiki", "response_type": "code", "scope": "openid",
                               "redirect_uri": redirect_uri, "state": state, "nonce": nonce},
                 timeout=30)
    assert page.status_code == 200, page.text[:500]
    action = html.unescape(re.search(r'<form[^>]+id="kc-form-login"[^>]+action="([^"]+)"',
                                     page.text).group(1))
    # The form posts to the public name; the controller reaches it by address (same cert).
    assert action.startswith(f"{PUBLIC}/realms/{REALM}/login-actions/authenticate"), action
    action = action.replace(PUBLIC, base(lab), 1)
    posted = s.post(action, data={"username": uid, "password": password, "credentialId": ""},
                    allow_redirects=False, timeout=30)
    assert posted.status_code == 302, posted.text[:500]
    location = posted.headers["Location"]
    assert location.startswith(redirect_uri + "?"), location
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["state"] == [state]
    assert query["iss"] == [f"{PUBLIC}/realms/{REALM}"]
    tokens = s.post(f"{base(lab)}/realms/{REALM}/protocol/openid-connect/token", data={
        "grant_type": "authorization_code", "code": query["code"][0],
        "redirect_uri": redirect_uri, "client_id": "wiki",
        "client_secret": lab.secret("oidc_wiki")}, timeout=30)
    assert tokens.status_code == 200, tokens.text
    ident = claims(tokens.json()["id_token"])
    assert ident["iss"] == f"{PUBLIC}/realms/{REALM}"
    assert ident["aud"] == "wiki" and ident["nonce"] == nonce
    assert ident["preferred_username"] == uid
    info = s.get(f"{base(lab)}/realms/{REALM}/protocol/openid-connect/userinfo",
                 headers={"Authorization": f"Bearer {tokens.json()['access_token']}"}, timeout=30)
    assert info.status_code == 200 and info.json()["sub"] == ident["sub"], info.text
    # A code is good once.
    again = s.post(f"{base(lab)}/realms/{REALM}/protocol/openid-connect/token", data={
        "grant_type": "authorization_code", "code": query["code"][0],
        "redirect_uri": redirect_uri, "client_id": "wiki",
        "client_secret": lab.secret("oidc_wiki")}, timeout=30)
    assert again.status_code == 400


def form_action(lab, page: requests.Response, form_id: str) -> str:
    """The action of the page's form `form_id`, on the address the controller dials."""
    found = re.search(rf'<form[^>]+id="{form_id}"[^>]+action="([^"]+)"', page.text)
    assert found, page.text[:800]
    return html.unescape(found.group(1)).replace(PUBLIC, base(lab), 1)


def test_a_password_coopctl_gave_out_is_changed_at_the_first_sso_login(lab, coopctl_config):
    """`member add --generate-password` (pwdReset): Keycloak's login asks for a new password
    before it lets the member in, writes it to LDAP, and slapd clears the mark; the given
    password is dead everywhere, and the next login goes straight through."""
    with given_password_member(lab, coopctl_config, "ssofirst",
                               ("mail", "sso", "wiki")) as (uid, dn, initial):
        assert "pwdReset: TRUE" in root_search(lab, dn, "pwdReset")
        # The direct grant (no page to show) refuses it: the account is not set up yet. The
        # services that only bind refuse it too (their login filters leave pwdReset out).
        assert password_grant(lab, uid, initial).json()["error"] == "invalid_grant"
        with pytest.raises(imaplib.IMAP4.error):
            imap(lab, uid, initial)
        assert not logged_in(Wiki(lab).login(uid, initial), uid)

        s = session(lab)
        redirect_uri = "https://wiki.demo.coop/doku.php"
        auth = f"{base(lab)}/realms/{REALM}/protocol/openid-connect/auth"
        params = {"client_id": "wiki", "response_type": "code", "scope": "openid",
                  "redirect_uri": redirect_uri, "state": secrets.token_urlsafe(12)}
        page = s.get(auth, params=params, timeout=30)
        posted = s.post(form_action(lab, page, "kc-form-login"),
                        data={"username": uid, "password": initial, "credentialId": ""},
                        allow_redirects=False, timeout=30)
        # Not in yet: the update-password form (Keycloak redirects to its required action),
        # no code.
        if posted.status_code == 302:
            location = posted.headers["Location"]
            assert "/login-actions/required-action" in location, location
            posted = s.get(location.replace(PUBLIC, base(lab), 1), allow_redirects=False,
                           timeout=30)
        assert posted.status_code == 200, (posted.status_code, posted.headers)
        assert "kc-passwd-update-form" in posted.text, posted.text[:800]
        new = secrets.token_urlsafe(18)
        changed = s.post(form_action(lab, posted, "kc-passwd-update-form"),
                         data={"password-new": new, "password-confirm": new},
                         allow_redirects=False, timeout=30)
        assert changed.status_code == 302, changed.text[:800]
        assert changed.headers["Location"].startswith(redirect_uri + "?"), changed.headers
        assert "code=" in changed.headers["Location"]

        # LDAP holds the new password (argon2), the mark is gone, the given one is dead.
        assert "pwdReset" not in root_search(lab, dn, "pwdReset")
        assert stored_hash_schemes(lab, dn) == ["{ARGON2}"]
        assert connect(lab, dn, new).bound
        assert not connect(lab, dn, initial).bound
        assert password_grant(lab, uid, initial).json()["error"] == "invalid_grant"
        assert password_grant(lab, uid, new).status_code == 200
        imap(lab, uid, new).logout()
        assert logged_in(Wiki(lab).login(uid, new), uid)

        # A fresh browser logs in with the new password straight to the site.
        fresh = session(lab)
        page = fresh.get(auth, params=params, timeout=30)
        direct = fresh.post(form_action(lab, page, "kc-form-login"),
                            data={"username": uid, "password": new, "credentialId": ""},
                            allow_redirects=False, timeout=30)
        assert direct.status_code == 302, direct.text[:800]
        assert direct.headers["Location"].startswith(redirect_uri + "?")


def test_keycloak_writes_a_members_password_and_nothing_else(lab, throwaway_directory):
    """cn=sso (Keycloak's bind) may set an active member's password, never read one, and write
    no other attribute, add no entry and delete none (the federation is WRITABLE)."""
    directory = throwaway_directory(prefix="ssoacl", given_name="Sso", services=("sso",))
    _uid, dn, password = directory.member()
    sso = as_service(lab, "sso")
    assert sso.extend.standard.modify_password(user=dn, new_password=password + "2"), sso.result
    assert connect(lab, dn, password + "2").bound
    sso.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["userPassword"])
    assert not sso.entries or not sso.entries[0]["userPassword"].values
    for attribute in ("mail", "sn", "coopMemberStatus"):
        assert not sso.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, ["x@example.org"])]}), \
            attribute
        assert sso.result["description"] == "insufficientAccessRights", sso.result
    assert not sso.add(f"uid=ssoacl{secrets.token_hex(3)},ou=people,{BASE}",
                       ["inetOrgPerson"], {"sn": "x", "cn": "x"})
    assert not sso.delete(dn)
    sso.unbind()


def test_redirect_uris_name_the_sites_not_the_apps_host(lab):
    s = session(lab)
    auth = f"{base(lab)}/realms/{REALM}/protocol/openid-connect/auth"
    for client in ("wiki", "pads", "cloud"):
        ok = s.get(auth, params={"client_id": client, "response_type": "code", "scope": "openid",
                                 "redirect_uri": f"https://{client}.demo.coop/x"}, timeout=30)
        assert ok.status_code == 200 and "kc-form-login" in ok.text, (client, ok.status_code)
        old = s.get(auth, params={"client_id": client, "response_type": "code", "scope": "openid",
                                  "redirect_uri": "https://apps.demo.coop/x"}, timeout=30)
        assert old.status_code == 400 and "redirect_uri" in old.text, (client, old.status_code)
