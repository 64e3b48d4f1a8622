"""The pads role on the lab host `apps`: Etherpad under systemd, behind nginx TLS.

The HTTP API must answer coopctl only: it needs the API key, and nginx lets /api and /rest
through only from pads_api_allowed_sources (in the lab the controller's bridge address).

A coop may give the role a release tarball of its own (pads_etherpad_tarball and its sha256):
with a wrong checksum the deploy stops before the host is touched; with the right one that
release runs, in a directory of its own. The lab is put back on coopctl's build afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import requests

from provisioner.artifacts import DEFAULT_ARTIFACTS_DIR, ETHERPAD_VERSION, RECORDED_SHA256

pytestmark = pytest.mark.lab

VHOST = "pads.demo.coop"
API = "/api/1.2.15"
DEAD_PROXY = "http://127.0.0.1:9"


def api(lab, call: str, **params) -> requests.Response:
    """An API call from the controller (an allowed source) through nginx, TLS checked; the
    key in the POST body, as coopctl sends it (a URL would put it in logs)."""
    session = requests.Session()
    session.trust_env = False
    return session.post(
        f"https://{lab.addresses['apps']}{API}/{call}",
        data=params,
        headers={"Host": VHOST},
        verify=str(lab.ca_file),
        timeout=20,
    )


def test_etherpad_runs_under_systemd_as_etherpad(lab):
    host = lab.host("apps")
    service = host.service("etherpad")
    assert service.is_running
    assert service.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value etherpad")
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "etherpad"
    unit = host.file("/etc/systemd/system/etherpad.service").content_string
    assert "Restart=on-failure" in unit
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit


def test_etherpad_listens_on_loopback_only(lab):
    host = lab.host("apps")
    assert host.socket("tcp://127.0.0.1:9001").is_listening
    listeners = host.check_output("ss -Hltn 'sport = :9001'").splitlines()
    assert listeners, "nothing listens on 9001"
    for line in listeners:
        assert line.split()[3] == "127.0.0.1:9001", line


def test_api_answers_coopctl_with_the_key(lab):
    answer = api(
        lab, "createGroupIfNotExistsFor", apikey=lab.secret("etherpad_apikey"), groupMapper="t1"
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["code"] == 0, body
    assert body["data"]["groupID"].startswith("g.")


def test_api_refuses_a_bad_key(lab):
    answer = api(lab, "createGroupIfNotExistsFor", apikey="not-the-key", groupMapper="t1")
    assert answer.json()["code"] == 4


def test_api_key_file(lab):
    key = lab.host("apps").file("/var/lib/etherpad/APIKEY.txt")
    assert key.user == "etherpad"
    assert key.mode == 0o600
    assert key.content_string.strip() == lab.secret("etherpad_apikey")


def test_api_is_refused_from_another_address(lab):
    """From `apps` itself (10.77.0.12, not allowed) to nginx's public address: 403 even with
    the right key (read from its file on the host, sent in the body: never in an argv or a
    URL), also for the spellings Express would still route to the API."""
    host = lab.host("apps")
    script = (
        "import json, ssl, sys, urllib.parse, urllib.request, urllib.error\n"
        "ctx = ssl._create_unverified_context()\n"
        "class Stay(urllib.request.HTTPRedirectHandler):\n"
        "    def redirect_request(self, *args):\n"
        "        return None\n"
        "opener = urllib.request.build_opener(Stay, urllib.request.HTTPSHandler(context=ctx))\n"
        "key = open('/var/lib/etherpad/APIKEY.txt').read().strip()\n"
        "out = {}\n"
        "for path in sys.argv[2:]:\n"
        "    body = urllib.parse.urlencode({'apikey': key, 'groupMapper': 't2'}).encode()\n"
        "    req = urllib.request.Request('https://' + sys.argv[1] + path,"
        " data=None if path == '/' else body, headers={'Host': 'pads.demo.coop'})\n"
        "    try:\n"
        "        out[path] = opener.open(req, timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        out[path] = e.code\n"
        "print(json.dumps(out))\n"
    )
    paths = [
        f"{API}/createGroupIfNotExistsFor",
        f"/API{API[4:]}/listAllGroups",
        f"/rest{API[4:]}/group/create",
        "/api",
        "/",
    ]
    # testinfra quotes each %s argument for the shell
    cmd = host.run("python3 -c %s %s" + " %s" * len(paths), script, lab.addresses["apps"], *paths)
    assert cmd.rc == 0, cmd.stderr
    codes = json.loads(cmd.stdout)
    # The pads themselves: only through the SSO (pads_public: false), so to its login.
    assert codes.pop("/") == 302
    assert set(codes.values()) == {403}, codes


def test_update_check_is_off(lab):
    host = lab.host("apps")
    unit = host.file("/etc/systemd/system/etherpad.service").content_string
    assert "--require /opt/etherpad/no-update-check.js" in unit
    pid = host.check_output("systemctl show -p MainPID --value etherpad")
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ").splitlines()
    assert f"https_proxy={DEAD_PROXY}" in environ and f"HTTPS_PROXY={DEAD_PROXY}" in environ
    since = host.check_output("systemctl show -p ActiveEnterTimestamp --value etherpad").strip()
    journal = host.check_output(f"journalctl -u etherpad --no-pager --since '{since}' -o cat")
    assert "update check disabled" in journal
    assert "Can not perform Etherpad update check" not in journal
    settings = json.loads(host.file("/etc/etherpad/settings.json").content_string)
    assert settings["ip"] == "127.0.0.1"
    assert settings["users"] == {}


# -- a release of the coop's own (pads_etherpad_tarball) ---------------------------------------

def running_release(host) -> dict[str, str]:
    """What shows that Etherpad was left alone: its process, unit, releases and settings."""
    return {
        "pid": host.check_output("systemctl show -p MainPID --value etherpad"),
        "since": host.check_output("systemctl show -p ActiveEnterTimestamp --value etherpad"),
        "unit": host.file("/etc/systemd/system/etherpad.service").content_string,
        "releases": host.check_output("ls -1a /opt/etherpad"),
        "settings": host.file("/etc/etherpad/settings.json").sha256sum,
    }


@pytest.fixture(scope="module")
def coop_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A coop's release tarball and its sha256: coopctl's Etherpad tree under another top
    directory, with a file of the coop's in it (so another tree, another checksum)."""
    source = Path(os.environ.get("COOPCTL_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS_DIR)
    source = source / f"etherpad-{ETHERPAD_VERSION}.tar.gz"
    tarball = tmp_path_factory.mktemp("coop-release") / "etherpad-lite-coop.tar.gz"
    top = f"etherpad-{ETHERPAD_VERSION}"
    with tarfile.open(source) as old, tarfile.open(tarball, "w:gz", compresslevel=1) as new:
        for member in old:
            member.name = "etherpad-lite-coop" + member.name[len(top):]
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        note = f"built by the coop from Etherpad {ETHERPAD_VERSION}\n".encode()
        info = tarfile.TarInfo("etherpad-lite-coop/COOP-RELEASE")
        info.size = len(note)
        new.addfile(info, io.BytesIO(note))
    return tarball, hashlib.sha256(tarball.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def back_to_coopctls_build(lab):
    """After these tests, the lab runs coopctl's own build again."""
    yield
    recap = lab.deploy(limit="apps", tags="pads")
    assert not recap["failed"] and not recap["unreachable"], recap
    build = RECORDED_SHA256[f"etherpad-{ETHERPAD_VERSION}.tar.gz"]
    assert lab.host("apps").check_output("ls -1 /opt/etherpad") == (
        f"etherpad-{ETHERPAD_VERSION}-{build[:12]}\nno-update-check.js")


def deploy_release(lab, tarball: Path, sha256: str) -> tuple[dict, str]:
    lines: list[str] = []
    recap = lab.deploy(limit="apps", tags="pads", echo=lines.append, extravars={
        "pads_etherpad_tarball": str(tarball), "pads_etherpad_tarball_sha256": sha256})
    return recap, "\n".join(lines)


def test_a_coop_release_with_a_wrong_checksum_is_refused_and_etherpad_left_alone(
    lab, coop_release, back_to_coopctls_build
):
    tarball, sha256 = coop_release
    host = lab.host("apps")
    before = running_release(host)
    wrong = hashlib.sha256(b"another release").hexdigest()
    recap, output = deploy_release(lab, tarball, wrong)
    assert recap["failed"] == 1 and recap["rc"] != 0, output
    assert f"{tarball} has sha256 {sha256}, not pads_etherpad_tarball_sha256 {wrong}" in output
    assert "nothing was copied or unpacked, Etherpad keeps running its current release" in output
    assert running_release(host) == before
    assert not host.file("/opt/etherpad/COOP-RELEASE").exists
    assert host.run("ls /opt/etherpad/*/COOP-RELEASE").rc != 0
    assert api(lab, "listAllGroups", apikey=lab.secret("etherpad_apikey")).json()["code"] == 0


def test_a_coop_release_with_its_checksum_is_deployed(lab, coop_release, back_to_coopctls_build):
    tarball, sha256 = coop_release
    host = lab.host("apps")
    before = running_release(host)
    recap, output = deploy_release(lab, tarball, sha256.upper())  # as some tools print it
    assert not recap["failed"] and not recap["unreachable"], output
    release = f"/opt/etherpad/etherpad-{ETHERPAD_VERSION}-{sha256[:12]}"
    assert host.file(f"{release}/COOP-RELEASE").exists
    assert host.file(f"{release}/.coopctl-sha256").content_string.strip() == sha256
    assert host.check_output("ls -1 /opt/etherpad") == (
        f"{release.rsplit('/', 1)[1]}\nno-update-check.js")  # the earlier release is gone
    pid = host.check_output("systemctl show -p MainPID --value etherpad")
    assert pid != before["pid"]
    assert host.file(f"/proc/{pid}/cwd").linked_to == release
    cmdline = host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert f"{release}/src/node/server.js" in cmdline
    answer = api(lab, "createGroupIfNotExistsFor", apikey=lab.secret("etherpad_apikey"),
                 groupMapper="coop-release")
    assert answer.json()["code"] == 0, answer.text
