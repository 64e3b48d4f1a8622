"""The pads role on the lab host `apps`: Etherpad under systemd, behind nginx TLS.

The HTTP API must answer coopctl only: it needs the API key, and nginx lets /api and /rest
through only from pads_api_allowed_sources (in the lab the controller's bridge address).
"""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.lab

VHOST = "pads.demo.coop"
API = "/api/1.2.15"
DEAD_PROXY = "http://127.0.0.1:9"


def api(lab, call: str, **params) -> requests.Response:
    """An API call from the controller (an allowed source) through nginx, TLS checked."""
    session = requests.Session()
    session.trust_env = False
    return session.get(
        f"https://{lab.addresses['apps']}{API}/{call}",
        params=params,
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
    """From `apps` itself (10.77.0.12, not allowed) to nginx's public address: 403,
    also for the spellings Express would still route to the API."""
    host = lab.host("apps")
    key = lab.secret("etherpad_apikey")
    script = (
        "import json, ssl, sys, urllib.request, urllib.error\n"
        "ctx = ssl._create_unverified_context()\n"
        "out = {}\n"
        "for path in sys.argv[2:]:\n"
        "    req = urllib.request.Request('https://' + sys.argv[1] + path,"
        " headers={'Host': 'pads.demo.coop'})\n"
        "    try:\n"
        "        out[path] = urllib.request.urlopen(req, context=ctx, timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        out[path] = e.code\n"
        "print(json.dumps(out))\n"
    )
    paths = [
        f"{API}/createGroupIfNotExistsFor?apikey={key}&groupMapper=t2",
        f"/API{API[4:]}/listAllGroups?apikey={key}",
        f"/rest{API[4:]}/group/create?apikey={key}",
        "/api",
        "/",
    ]
    # testinfra quotes each %s argument for the shell
    cmd = host.run("python3 -c %s %s" + " %s" * len(paths), script, lab.addresses["apps"], *paths)
    assert cmd.rc == 0, cmd.stderr
    codes = json.loads(cmd.stdout)
    assert codes.pop("/") == 200  # the pads themselves are public
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
