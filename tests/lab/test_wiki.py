"""The wiki role on the lab host `apps`: DokuWiki behind nginx + php-fpm, members from LDAP.

Members are created in the real directory on `dir` as cn=coopctl (ldap3, StartTLS with the lab
CA, password set with the password-modify extended operation); logins go through nginx over
TLS, verified with the lab CA. The apps certificate names the host (apps.demo.coop, its IP),
not the virtual hosts, so requests go to the IP with the virtual host in the Host header.
"""

from __future__ import annotations

import re
import xmlrpc.client
from pathlib import Path

import pytest
import requests
import yaml

from tests.lab.helpers import ThrowawayDirectory

pytestmark = pytest.mark.lab

VHOST = "wiki.demo.coop"
ADMIN_GROUP = "admins"  # wiki_admin_group
REMOTE_GROUP = "remoteuser"  # wiki_remote_group
ROLE_VARS = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "wiki" / "vars"


@pytest.fixture
def directory(throwaway_directory) -> ThrowawayDirectory:
    return throwaway_directory(prefix="wikitest", given_name="Wiki", services=("wiki",))


class Wiki:
    """A browser session on the wiki (cookies kept), TLS checked with the lab CA."""

    def __init__(self, lab):
        self.base = f"https://{lab.addresses['apps']}"
        self.session = requests.Session()
        self.session.trust_env = False  # no REQUESTS_CA_BUNDLE / proxies from the environment
        self.session.verify = str(lab.ca_file)
        self.session.headers["Host"] = VHOST

    def get(self, path: str, **params) -> requests.Response:
        return self.session.get(self.base + path, params=params, allow_redirects=False, timeout=20)

    def login(self, user: str, password: str) -> str:
        """Web login as a browser does it; returns the start page afterwards."""
        form = self.get("/doku.php", id="start", do="login")
        assert form.status_code == 200, form.status_code
        sectok = re.search(r'name="sectok" value="([0-9a-f]*)"', form.text)
        assert sectok, "no sectok in DokuWiki's login form"
        answer = self.session.post(
            self.base + "/doku.php",
            data={
                "sectok": sectok.group(1),
                "id": "start",
                "do": "login",
                "u": user,
                "p": password,
            },
            allow_redirects=False,
            timeout=20,
        )
        assert answer.status_code in (200, 302, 303, 403), answer.status_code
        return self.get("/doku.php", id="start").text

    def rpc(self, method: str, *args):
        body = xmlrpc.client.dumps(args, methodname=method)
        answer = self.session.post(
            self.base + "/lib/exe/xmlrpc.php",
            data=body,
            headers={"Content-Type": "text/xml"},
            timeout=20,
        )
        if answer.status_code == 403:  # DokuWiki's answer to a call the caller may not make
            try:  # Debian 13's DokuWiki (2024-02-06) sends an XML-RPC fault with it
                detail = xmlrpc.client.loads(answer.content)
            except xmlrpc.client.Fault as fault:
                detail = fault
            raise PermissionError(detail)
        assert answer.status_code == 200, answer.status_code
        return xmlrpc.client.loads(answer.content)[0][0]


def logged_in(page: str, uid: str) -> bool:
    return "do=logout" in page and f"(<bdi>{uid}</bdi>)" in page


def php_fpm_unit(host) -> str:
    """php-fpm's unit on the host: the PHP of its Debian release, as the wiki role's
    vars/Debian-N.yml gives it (php8.2-fpm on Debian 12, php8.4-fpm on Debian 13)."""
    major = host.check_output(". /etc/os-release && echo $VERSION_ID")
    release = yaml.safe_load((ROLE_VARS / f"Debian-{major}.yml").read_text())
    version = release["wiki_php_version"]
    assert host.check_output("php -r 'echo PHP_MAJOR_VERSION.\".\".PHP_MINOR_VERSION;'") == version
    return f"php{version}-fpm"


def test_nginx_and_php_fpm_run_under_systemd(lab):
    host = lab.host("apps")
    for unit in ("nginx", php_fpm_unit(host)):
        assert host.service(unit).is_running, unit
        assert host.service(unit).is_enabled, unit
    assert not host.package("apache2").is_installed
    assert host.socket("tcp://0.0.0.0:443").is_listening
    assert host.file("/run/php/dokuwiki.sock").is_socket


def test_plain_http_redirects_to_https(lab):
    session = requests.Session()
    session.trust_env = False
    answer = session.get(
        f"http://{lab.addresses['apps']}/",
        headers={"Host": VHOST},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 301
    assert answer.headers["Location"].startswith(f"https://{VHOST}/")


def test_configuration_is_not_served(lab):
    wiki = Wiki(lab)
    for path in ("/conf/local.protected.php", "/data/pages/start.txt", "/inc/init.php"):
        assert wiki.get(path).status_code in (403, 404), path


def test_active_member_logs_in(lab, directory):
    uid, _, password = directory.member()
    page = Wiki(lab).login(uid, password)
    assert logged_in(page, uid)


def test_wrong_password_is_refused(lab, directory):
    uid, _, password = directory.member()
    page = Wiki(lab).login(uid, password + "x")
    assert not logged_in(page, uid)


def test_suspended_member_is_refused(lab, directory):
    uid, _, password = directory.member(status="suspended")
    page = Wiki(lab).login(uid, password)
    assert not logged_in(page, uid)


def test_member_without_the_wiki_service_is_refused(lab, directory):
    uid, _, password = directory.member(services=("mail",))
    page = Wiki(lab).login(uid, password)
    assert not logged_in(page, uid)


def test_admin_group_member_is_superuser(lab, directory):
    admin_uid, admin_dn, admin_pw = directory.member()
    directory.add_to_group(ADMIN_GROUP, admin_dn)
    plain_uid, _, plain_pw = directory.member()

    admin = Wiki(lab)
    assert logged_in(admin.login(admin_uid, admin_pw), admin_uid)
    acl_page = admin.get("/doku.php", id="start", do="admin", page="acl").text
    assert "acl_manager" in acl_page or 'id="acl__tree"' in acl_page

    plain = Wiki(lab)
    assert logged_in(plain.login(plain_uid, plain_pw), plain_uid)
    acl_page = plain.get("/doku.php", id="start", do="admin", page="acl").text
    assert "acl_manager" not in acl_page and 'id="acl__tree"' not in acl_page


def test_remote_api_only_for_the_remote_group(lab, directory):
    remote_uid, remote_dn, remote_pw = directory.member()
    directory.add_to_group(REMOTE_GROUP, remote_dn)
    other_uid, _, other_pw = directory.member()

    remote = Wiki(lab)
    assert remote.rpc("dokuwiki.login", remote_uid, remote_pw) is True
    assert isinstance(remote.rpc("wiki.getPage", "start"), str)

    other = Wiki(lab)
    assert other.rpc("dokuwiki.login", other_uid, other_pw) is True
    with pytest.raises(PermissionError):
        other.rpc("wiki.getPage", "start")

    stranger = Wiki(lab)
    assert stranger.rpc("dokuwiki.login", other_uid, "wrong-password") is False
