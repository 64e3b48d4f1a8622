#!/usr/bin/python3
"""Keeps the coop's pads for members logged in through the coop's SSO (OIDC, Keycloak).

nginx asks this gate, with ``auth_request``, whether each pad request may go through
(``/_coop_sso/check``: 204 or 401) and sends a browser without a valid gate cookie to
``/_coop_sso/login``, which starts an OIDC authorization-code login at the coop's SSO.
``/_coop_sso/callback`` redeems the code at the SSO's token endpoint (over TLS checked against
the coop's CA, with the client's secret), checks the ID token's issuer, audience, expiry and
nonce, and the member's groups when ``allowed_groups`` is set, then sets a signed cookie for
``session_seconds``. The login also stays bound to the member's SSO session: the gate keeps
the refresh token in memory (never in the cookie) and, at most every ``recheck_seconds``,
asks the SSO to refresh it. A member suspended in the directory (Keycloak's LDAP filter then
refuses their refresh at once) or logged out of the SSO loses the pads at the next check; if
the SSO does not answer, the login stands (an SSO outage suspends nobody). A restart of the
gate forgets every login: browsers go through the SSO again, silently while their SSO
session lasts. Why a gate in front of Etherpad rather than an Etherpad plugin: npm has no
OIDC plugin for Etherpad 1.8.14, and nginx has no OIDC client of its own in Debian.

Only Python's standard library (Debian's python3); listens on loopback; reads its settings
(JSON) and two secrets (the OIDC client secret and the cookie signing key, files of its own
user) named on the command line. Nothing secret is ever logged: only the member's login and
the outcome.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/_coop_sso"
STATE_COOKIE = "coop_pads_sso_state"
STATE_SECONDS = 600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Login:
    """A member's pads login, held in memory under the random id its cookie carries."""

    def __init__(self, user: str, refresh_token: str, expires: int) -> None:
        self.user = user
        self.refresh_token = refresh_token
        self.expires = expires
        self.checked = time.time()
        self.lock = threading.Lock()  # one refresh at a time per login


class Gate:
    """Settings, secrets, the SSO's endpoints (discovered once, on first need), the logins."""

    def __init__(self, settings: dict, client_secret: str, cookie_key: bytes) -> None:
        self.s = settings
        self.client_secret = client_secret
        self.key = cookie_key
        self.logins: dict[str, Login] = {}
        self._logins_lock = threading.Lock()
        self.tls = ssl.create_default_context(cafile=settings["ca_file"])
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._endpoints: dict | None = None
        self._lock = threading.Lock()
        # coopctl's hosts reach the SSO directly: no proxy from the environment.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.tls))

    def endpoints(self) -> dict:
        with self._lock:
            if self._endpoints is None:
                url = self.s["issuer"].rstrip("/") + "/.well-known/openid-configuration"
                with self.opener.open(url, timeout=10) as answer:
                    found = json.load(answer)
                if found.get("issuer") != self.s["issuer"]:
                    raise ValueError(f"{url} names issuer {found.get('issuer')!r}")
                self._endpoints = found
            return self._endpoints

    # -- signed values (cookies) ---------------------------------------------------------
    def sign(self, payload: dict) -> str:
        body = b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self.key, body.encode(), hashlib.sha256).digest()
        return f"{body}.{b64(mac)}"

    def verify(self, value: str | None) -> dict | None:
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        good = hmac.new(self.key, body.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(good, unb64(mac)):
                return None
            payload = json.loads(unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or int(payload.get("exp", 0)) < time.time():
            return None
        return payload

    # -- logins ---------------------------------------------------------------------------
    def open_login(self, user: str, refresh_token: str) -> tuple[str, int]:
        """Remember a new login; (its id, its expiry). Expired logins are dropped here."""
        now = int(time.time())
        expires = now + int(self.s["session_seconds"])
        login_id = secrets.token_urlsafe(24)
        with self._logins_lock:
            for key in [k for k, v in self.logins.items() if v.expires < now]:
                del self.logins[key]
            self.logins[login_id] = Login(user, refresh_token, expires)
        return login_id, expires

    def still_valid(self, login_id: str) -> Login | None:
        """The login if it still stands, re-asking the SSO once `recheck_seconds` passed."""
        with self._logins_lock:
            login = self.logins.get(login_id)
        if login is None or login.expires < time.time():
            return None
        recheck = int(self.s.get("recheck_seconds", 60))
        with login.lock:
            if time.time() - login.checked < recheck:
                return login
            try:
                tokens = self.token_request({"grant_type": "refresh_token",
                                             "refresh_token": login.refresh_token})
            except urllib.error.HTTPError as exc:
                if exc.code not in (400, 401):
                    return login  # the SSO failing is not the member's fault
                with self._logins_lock:
                    self.logins.pop(login_id, None)
                return None
            except (OSError, ValueError):
                return login  # unreachable: an SSO outage suspends nobody
            login.refresh_token = str(tokens.get("refresh_token") or login.refresh_token)
            login.checked = time.time()
            return login

    # -- the token endpoint -----------------------------------------------------------------
    def token_request(self, fields: dict) -> dict:
        """POST to the SSO's token endpoint with the client's credentials; the JSON answer."""
        basic = base64.b64encode(
            f"{urllib.parse.quote(self.s['client_id'], safe='')}:"
            f"{urllib.parse.quote(self.client_secret, safe='')}".encode()).decode()
        request = urllib.request.Request(
            self.endpoints()["token_endpoint"], data=urllib.parse.urlencode(fields).encode(),
            method="POST", headers={"Authorization": f"Basic {basic}",
                                    "Content-Type": "application/x-www-form-urlencoded"})
        with self.opener.open(request, timeout=15) as answer:
            return json.load(answer)

    def redeem(self, code: str) -> tuple[dict, str]:
        """The ID token's claims for `code`, checked (token endpoint reached over checked TLS,
        so OIDC Core 3.1.3.7 lets TLS stand for the token's signature), and the refresh
        token that later checks use."""
        tokens = self.token_request({"grant_type": "authorization_code", "code": code,
                                     "redirect_uri": self.s["redirect_uri"]})
        parts = str(tokens.get("id_token", "")).split(".")
        if len(parts) != 3:
            raise ValueError("the token endpoint returned no ID token")
        return json.loads(unb64(parts[1])), str(tokens.get("refresh_token") or "")


def safe_target(raw: str) -> str:
    """A local path to go back to after login (never another site: no //, no scheme)."""
    if (not raw.startswith("/") or raw.startswith("//") or raw.startswith(PREFIX)
            or any(c in raw for c in "\\\r\n\t ") or not raw.isascii()):
        return "/"
    return raw


class Handler(BaseHTTPRequestHandler):
    gate: Gate
    server_version = "coop-pads-sso"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        pass  # nginx logs requests (without query strings); outcomes are logged by note()

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in self.headers.get("Cookie", "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                out.setdefault(name, value)
        return out

    def reply(self, status: int, location: str | None = None,
              set_cookies: tuple[str, ...] = (), text: str = "") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Cache-Control", "no-store")
        if location:
            self.send_header("Location", location)
        for cookie in set_cookies:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def cookie(self, name: str, value: str, path: str, max_age: int) -> str:
        return (f"{name}={value}; Path={path}; Max-Age={max_age}; Secure; HttpOnly; "
                "SameSite=Lax")

    def do_GET(self) -> None:
        s = self.gate.s
        path, _, query = self.path.partition("?")
        try:
            if path == f"{PREFIX}/check":
                self.check()
            elif path == f"{PREFIX}/login":
                self.login(query)
            elif path == f"{PREFIX}/callback":
                self.callback(urllib.parse.parse_qs(query))
            elif path == f"{PREFIX}/logout":
                self.reply(302, "/", (self.cookie(s["cookie_name"], "", "/", 0),))
            else:
                self.reply(404, text="not found\n")
        except (OSError, ValueError, KeyError) as exc:
            # Never the exception's text: it could quote a token or the SSO's answer.
            self.note(f"SSO unreachable or refused: {type(exc).__name__}")
            self.reply(502, text="The coop's login service did not answer; try again later.\n")

    def check(self) -> None:
        payload = self.gate.verify(self.cookies().get(self.gate.s["cookie_name"]))
        login = self.gate.still_valid(str(payload.get("l", ""))) if payload else None
        if login is None:
            if payload:
                self.note(f"pads login ended: {payload.get('u')} (SSO session gone, or the "
                          "gate restarted)")
            self.reply(401)
            return
        self.send_response(204)
        self.send_header("X-Coop-User", login.user)
        self.end_headers()

    def login(self, query: str) -> None:
        # nginx passes the original request URI as it came (rd=<uri>, not re-encoded).
        target = safe_target(query[3:]) if query.startswith("rd=") else "/"
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        s = self.gate.s
        cookie = self.gate.sign({"s": state, "n": nonce, "t": target,
                                 "exp": int(time.time()) + STATE_SECONDS})
        where = self.gate.endpoints()["authorization_endpoint"] + "?" + urllib.parse.urlencode({
            "response_type": "code", "client_id": s["client_id"], "scope": "openid",
            "redirect_uri": s["redirect_uri"], "state": state, "nonce": nonce})
        self.reply(302, where, (self.cookie(STATE_COOKIE, cookie, PREFIX + "/", STATE_SECONDS),))

    def callback(self, params: dict[str, list[str]]) -> None:
        s = self.gate.s
        pending = self.gate.verify(self.cookies().get(STATE_COOKIE))
        state = (params.get("state") or [""])[0]
        code = (params.get("code") or [""])[0]
        clear = self.cookie(STATE_COOKIE, "", PREFIX + "/", 0)
        if pending is None or not hmac.compare_digest(str(pending.get("s")), state) or not code:
            self.note("login refused: no matching login in progress (state)")
            self.reply(403, set_cookies=(clear,),
                       text="This login did not start here or took too long; open the pad again.\n")
            return
        claims, refresh_token = self.gate.redeem(code)
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        user = str(claims.get("preferred_username") or claims.get("sub") or "")
        if (claims.get("iss") != s["issuer"] or s["client_id"] not in auds
                or int(claims.get("exp", 0)) < time.time()
                or claims.get("nonce") != pending.get("n") or not user):
            self.note("login refused: ID token not for this client")
            self.reply(403, set_cookies=(clear,), text="Login refused.\n")
            return
        allowed = set(s.get("allowed_groups") or [])
        groups = set(claims.get(s.get("groups_claim", "groups")) or [])
        if allowed and not allowed & groups:
            self.note(f"login refused: {user} is in none of the groups allowed the pads")
            self.reply(403, set_cookies=(clear,), text="Your account may not use the pads.\n")
            return
        if not refresh_token:
            self.note(f"login refused: the SSO gave no refresh token for {user}")
            self.reply(403, set_cookies=(clear,), text="Login refused.\n")
            return
        login_id, expires = self.gate.open_login(user, refresh_token)
        session = self.gate.sign({"u": user, "l": login_id, "exp": expires})
        self.note(f"login: {user}")
        self.reply(302, str(pending.get("t") or "/"),
                   (clear, self.cookie(s["cookie_name"], session, "/", int(s["session_seconds"]))))


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: pads-sso-gate SETTINGS.json CLIENT_SECRET_FILE COOKIE_KEY_FILE",
              file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        settings = json.load(fh)
    with open(argv[2], encoding="utf-8") as fh:
        client_secret = fh.read().strip()
    with open(argv[3], "rb") as fh:
        cookie_key = fh.read().strip()
    if not client_secret or len(cookie_key) < 32:
        print("pads-sso-gate: empty client secret or cookie key shorter than 32 bytes",
              file=sys.stderr)
        return 2
    Handler.gate = Gate(settings, client_secret, cookie_key)
    server = ThreadingHTTPServer(("127.0.0.1", int(settings["port"])), Handler)
    server.daemon_threads = True
    print(f"pads-sso-gate: listening on 127.0.0.1:{settings['port']}, issuer {settings['issuer']}",
          file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
