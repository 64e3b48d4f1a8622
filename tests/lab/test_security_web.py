"""Security of the web front on the lab host `apps` (issue 9): certificates, TLS, pads.

- The apps certificate names every published site (wiki., pads., cloud.demo.coop): each is
  reached *by its name* with hostname checking against the lab CA. The lab has no DNS and the
  controller's /etc/hosts is left alone: ``SiteAdapter`` connects to the address a name has in
  the lab while TLS (SNI and the hostname check) and the Host header use the name itself.
- TLS 1.2 or newer with forward secrecy on 443: TLS 1.1 and a TLS 1.2 suite without ECDHE are
  refused, TLS 1.2 is negotiated with ECDHE.
- Etherpad's API key never lands in a log of the apps host, even when a client puts it in a
  URL (as coopctl's audit and older tests did): nginx's pads log records paths only, Etherpad
  logs API requests at debug level only.
- Pads only for members logged in through the coop's SSO (pads_public: false, the default): an
  anonymous request is sent to the SSO's login, a member who logs in there (a real
  authorization-code login at Keycloak, through the `pads` client) opens the pad; /stats is
  closed; the API still answers coopctl with the key.
"""

from __future__ import annotations

import html
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from provisioner.hosts import InventoryHosts
from provisioner.services.pads import PadsConnector
from tests.lab.helpers import ThrowawayDirectory
from tests.sync_helpers import runtime

pytestmark = pytest.mark.lab

DOMAIN = "demo.coop"
SITES = ("wiki", "pads", "cloud")
PADS = f"pads.{DOMAIN}"
SSO = f"dir.{DOMAIN}"  # the lab's Keycloak (sso_hostname), port 8443
REPO = Path(__file__).resolve().parents[2]
KEY_FILE = "/var/lib/etherpad/APIKEY.txt"


class SiteAdapter(HTTPAdapter):
    """Connects to the lab address of a site's name, with TLS and Host for the name itself.

    requests builds the connection pool from the URL's host; here the pool goes to the
    address while urllib3 sends that name as SNI and checks the certificate against it
    (``server_hostname``, ``assert_hostname``). Cookies and redirects keep the real names.
    """

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses
        super().__init__()

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        name = host_params["host"]
        if name in self.addresses:
            host_params = dict(host_params, host=self.addresses[name])
            pool_kwargs = dict(pool_kwargs, server_hostname=name, assert_hostname=name)
        return host_params, pool_kwargs

    def send(self, request, *args, **kwargs):
        name = urlsplit(request.url).hostname
        if name in self.addresses:
            # On a copy: requests matches cookies by a request's Host header, and builds the
            # next hop of a redirect from the request it sent.
            request = request.copy()
            request.headers["Host"] = urlsplit(request.url).netloc
        return super().send(request, *args, **kwargs)


def browser(lab) -> requests.Session:
    """A client that finds the lab's sites and Keycloak by name, trusting only the lab CA."""
    apps, sso = lab.addresses["apps"], lab.addresses["dir"]
    session = requests.Session()
    session.trust_env = False
    session.verify = str(lab.ca_file)
    session.mount("https://", SiteAdapter(
        {f"{site}.{DOMAIN}": apps for site in SITES} | {f"apps.{DOMAIN}": apps, SSO: sso}))
    return session


@pytest.fixture
def directory(throwaway_directory) -> ThrowawayDirectory:
    return throwaway_directory(prefix="padssec", given_name="Pads", services=("sso", "pads"))


# -- certificates and TLS -------------------------------------------------------------------

@pytest.mark.parametrize("site", SITES)
def test_each_site_verifies_by_its_name_against_the_lab_ca(lab, site):
    answer = browser(lab).get(f"https://{site}.{DOMAIN}/", allow_redirects=False, timeout=20)
    assert answer.status_code < 500, answer.status_code


def test_a_name_the_certificate_does_not_carry_is_refused(lab):
    """The check above can fail: a name outside the certificate is refused by the client."""
    session = browser(lab)
    session.mount("https://", SiteAdapter({f"webmail.{DOMAIN}": lab.addresses["apps"]}))
    with pytest.raises(requests.exceptions.SSLError):
        session.get(f"https://webmail.{DOMAIN}/", timeout=20)


def handshake(lab, context: ssl.SSLContext) -> tuple[str, str]:
    """(protocol, cipher) negotiated with nginx on apps:443 for the pads' name."""
    with socket.create_connection((lab.addresses["apps"], 443), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=PADS) as tls:
        return str(tls.version()), tls.cipher()[0]


def client_context(lab, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(lab.ca_file))
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def test_tls_1_2_is_negotiated_with_forward_secrecy(lab):
    protocol, cipher = handshake(lab, client_context(lab, ssl.TLSVersion.TLSv1_2))
    assert protocol == "TLSv1.2"
    assert cipher.startswith("ECDHE-"), cipher
    assert handshake(lab, client_context(lab, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"


def test_tls_1_2_without_forward_secrecy_is_refused(lab):
    # Static-RSA key exchange, which nginx's default "HIGH:!aNULL:!MD5" would accept.
    context = client_context(lab, ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256:AES256-GCM-SHA384")
    with pytest.raises(ssl.SSLError, match=r"(?i)handshake failure"):
        handshake(lab, context)


def test_tls_1_1_is_refused(lab):
    """With `openssl s_client` (the controller's OpenSSL still speaks TLS 1.1 at security
    level 0): the server must answer with a protocol-version alert."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"{lab.addresses['apps']}:443",
         "-servername", PADS, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        input="", capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert "alert protocol version" in result.stdout + result.stderr, result.stderr


# -- Etherpad's API key ------------------------------------------------------------------------

def test_the_api_key_is_absent_from_every_log_on_apps(lab):
    host = lab.host("apps")
    key = lab.secret("etherpad_apikey")
    # The pattern file grep uses on the host is the key itself (never in an argv there).
    assert host.file(KEY_FILE).content_string.strip() == key
    settings = {"url": f"https://{lab.addresses['apps']}", "host_header": PADS,
                "api_key_file": str(lab.state_dir / "secrets" / "etherpad_apikey")}
    pads = PadsConnector(runtime(
        InventoryHosts(inventory=lab.inventory, state_dir=lab.state_dir), settings=settings,
        ca_file=str(lab.ca_file), secret=lambda name: Path(settings[name]).read_text()))
    assert pads.call("createGroupIfNotExistsFor", groupMapper="security-web")["groupID"]
    assert isinstance(pads.call("listAllGroups")["groupIDs"], list)
    # A client that puts the key in the URL anyway (GET ...?apikey=): still not logged.
    stray = requests.get(f"https://{lab.addresses['apps']}/api/1.2.15/checkToken",
                         params={"apikey": key}, headers={"Host": PADS},
                         verify=str(lab.ca_file), timeout=20)
    assert stray.json()["code"] == 0
    logged = host.check_output("tail -n 20 /var/log/nginx/pads.access.log")
    assert "/api/1.2.15/createGroupIfNotExistsFor" in logged
    assert "/api/1.2.15/checkToken" in logged
    assert "apikey" not in logged
    # Every log of the host: /var/log (nginx, Etherpad has none of its own), DokuWiki's.
    places = host.check_output("ls -d /var/log /var/lib/dokuwiki/data/log 2>/dev/null || true")
    assert "/var/log" in places.split()
    files = host.run(f"grep -rIlF -f {KEY_FILE} {' '.join(places.split())}")
    assert files.rc == 1 and not files.stdout.strip(), files.stdout  # 1: nothing found
    journal = host.run(f"journalctl --no-pager -o cat | grep -cF -f {KEY_FILE}")
    assert journal.stdout.strip() == "0", "the API key is in the journal"


# -- pads only for the coop's members ----------------------------------------------------------

def test_stats_is_closed(lab):
    assert browser(lab).get(f"https://{PADS}/stats", timeout=20).status_code == 404


@pytest.mark.parametrize("path", ["/p/anything", "/", "/socket.io/?EIO=3&transport=polling"])
def test_an_anonymous_request_is_sent_to_the_sso_login(lab, path):
    session = browser(lab)
    first = session.get(f"https://{PADS}{path}", allow_redirects=False, timeout=20)
    assert first.status_code == 302, (first.status_code, first.text[:200])
    assert first.headers["Location"] == f"https://{PADS}/_coop_sso/login?rd={path}"
    login = session.get(first.headers["Location"], allow_redirects=False, timeout=20)
    assert login.status_code == 302, login.text[:200]
    where = urlsplit(login.headers["Location"])
    assert (where.scheme, where.netloc) == ("https", f"{SSO}:8443")
    assert where.path == "/realms/demo/protocol/openid-connect/auth"
    query = parse_qs(where.query)
    assert query["client_id"] == ["pads"]
    assert query["redirect_uri"] == [f"https://{PADS}/_coop_sso/callback"]
    assert query["response_type"] == ["code"]


def test_a_forged_gate_cookie_is_refused(lab):
    session = browser(lab)
    session.cookies.set("coop_pads_sso", "eyJ1IjoiYWRtaW4iLCJleHAiOjk5OTk5OTk5OTl9.AAAA",
                        domain=PADS, path="/")
    answer = session.get(f"https://{PADS}/p/anything", allow_redirects=False, timeout=20)
    assert answer.status_code == 302


def test_a_callback_without_a_login_in_progress_is_refused(lab):
    answer = browser(lab).get(f"https://{PADS}/_coop_sso/callback",
                              params={"code": "x", "state": "y"}, allow_redirects=False,
                              timeout=20)
    assert answer.status_code == 403
    assert "coop_pads_sso=" not in answer.headers.get("Set-Cookie", "")


def pads_login(lab, uid: str, password: str) -> requests.Session:
    """A browser that opened a pad through the SSO's login form (a real Keycloak login)."""
    session = browser(lab)
    form = session.get(f"https://{PADS}/p/secweb-{uid}", timeout=60)  # to Keycloak's form
    assert form.status_code == 200 and urlsplit(form.url).netloc == f"{SSO}:8443", form.url
    action = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', form.text)
    assert action, "no login form at the SSO"
    pad = session.post(html.unescape(action.group(1)),
                       data={"username": uid, "password": password, "credentialId": ""},
                       timeout=60)
    assert pad.status_code == 200, (pad.status_code, pad.url, pad.text[:300])
    assert pad.url == f"https://{PADS}/p/secweb-{uid}"
    assert "etherpad" in pad.text.lower() or "pad.js" in pad.text
    return session


def pads_open(session: requests.Session) -> int:
    return session.get(f"https://{PADS}/", allow_redirects=False, timeout=20).status_code


def test_a_member_logs_in_through_the_sso_and_opens_a_pad(lab, directory):
    uid, _, password = directory.member()
    session = pads_login(lab, uid, password)
    assert pads_open(session) == 200
    # Logging out of the pads ends the gate's cookie.
    session.get(f"https://{PADS}/_coop_sso/logout", allow_redirects=False, timeout=20)
    again = session.get(f"https://{PADS}/p/secweb-{uid}", allow_redirects=False, timeout=20)
    assert again.status_code == 302


def test_a_suspended_member_loses_the_pads(lab, directory):
    """The gate re-asks the SSO (refresh-token grant) once the lab's pads_sso_recheck_seconds
    (5 s) passed: an active member's login stands through the re-check, a suspended member's
    ends, though their cookie is still signed and unexpired."""
    uid, dn, password = directory.member()
    other, _, other_password = directory.member()
    session, kept = pads_login(lab, uid, password), pads_login(lab, other, other_password)
    recheck = 5 + 1
    time.sleep(recheck)  # the gate's own clock: nothing to poll before the re-check is due
    assert pads_open(session) == 200 and pads_open(kept) == 200  # refreshed, still in
    directory.set_status(dn, "suspended")
    time.sleep(recheck)
    assert pads_open(session) == 302  # sent to the SSO's login, where they cannot log in
    assert pads_open(kept) == 200
    log = lab.host("apps").check_output("journalctl -u pads-sso-gate --no-pager -n 50")
    assert f"pads login ended: {uid}" in log and password not in log


def test_a_wrong_password_gets_no_pad(lab, directory):
    uid, _, password = directory.member()
    session = browser(lab)
    form = session.get(f"https://{PADS}/p/secweb", timeout=60)
    action = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', form.text)
    assert action, "no login form at the SSO"
    answer = session.post(html.unescape(action.group(1)),
                          data={"username": uid, "password": password + "x"}, timeout=60)
    assert urlsplit(answer.url).netloc == f"{SSO}:8443"  # still at the SSO's form
    assert session.get(f"https://{PADS}/p/secweb", allow_redirects=False,
                       timeout=20).status_code == 302


def test_coopctl_exports_a_pad_from_its_address(lab):
    """The controller (pads_api_allowed_sources) still exports pads without an SSO login,
    as `coopctl sync` does for a departing member; from elsewhere an export is sent away."""
    key = lab.secret("etherpad_apikey")
    api = f"https://{lab.addresses['apps']}/api/1.2.15"
    created = requests.post(f"{api}/createPad", data={"apikey": key, "padID": "secweb-export",
                                                      "text": "exported"},
                            headers={"Host": PADS}, verify=str(lab.ca_file), timeout=20).json()
    assert created["code"] in (0, 1), created  # 1: the pad exists from an earlier run
    answer = browser(lab).get(f"https://{PADS}/p/secweb-export/export/etherpad", timeout=20)
    assert answer.status_code == 200 and "exported" in answer.text
    # From the apps host itself (127.0.0.1 is not in the lab's allowed sources): to the login.
    script = (
        "import http.client, ssl\n"
        "c = http.client.HTTPSConnection('127.0.0.1', 443,"
        " context=ssl._create_unverified_context())\n"
        "c.request('GET', '/p/secweb-export/export/etherpad', headers={'Host': 'PADS'})\n"
        "r = c.getresponse()\n"
        "print(r.status, r.getheader('Location'))\n"
    ).replace("PADS", PADS)
    other = lab.host("apps").run("python3 -c %s", script)
    assert other.rc == 0, other.stderr
    assert other.stdout.split() == [
        "302", f"https://{PADS}/_coop_sso/login?rd=/p/secweb-export/export/etherpad"]


def test_public_pads_switch_renders_an_open_site():
    """pads_public: true renders a virtual host without the gate (a unit-level check of the
    role's template; the lab runs the default, false)."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(REPO / "playbooks/roles/pads/templates"))
    common = {"ansible_managed": "test", "pads_fqdn": PADS, "web_https_listen_snippet": "x",
              "web_tls_cert": "c", "web_tls_key": "k", "pads_max_upload": "1M",
              "pads_access_log": "/var/log/nginx/pads.access.log", "pads_port": 9001,
              "pads_sso_port": 9002, "pads_api_allowed_sources": ["10.0.0.1"]}
    template = env.get_template("nginx-pads.conf.j2")
    closed = template.render(common | {"pads_public": False})
    opened = template.render(common | {"pads_public": True})
    assert closed.count("auth_request /_coop_sso/check;") == 2
    assert "auth_request" not in opened and "_coop_sso" not in opened
    for text in (closed, opened):
        assert "location = /stats { return 404; }" in text
        log_format = re.search(r"log_format pads_path_only (.*?);", text, re.S)
        assert log_format and "$uri" in log_format.group(1)
        assert not re.search(r"\$(request|request_uri|args|query_string|http_referer)\b",
                             log_format.group(1))
        assert "access_log /var/log/nginx/pads.access.log pads_path_only;" in text
