"""The cloud role on the lab host `apps`, flavour "double": the Nextcloud contract double
(OCS provisioning API + occ user:*) under systemd, behind nginx TLS. NOT Nextcloud.

The same OCS contract as tests/test_nextcloud_double.py, here through the deployed service.
"""

from __future__ import annotations

import json
import secrets

import pytest
import requests

pytestmark = pytest.mark.lab

VHOST = "cloud.demo.coop"


class OCS:
    def __init__(self, lab, *, user="admin", password=None, header=True):
        self.base = f"https://{lab.addresses['apps']}/ocs/v1.php/cloud"
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(lab.ca_file)
        self.session.headers["Host"] = VHOST
        if header:
            self.session.headers["OCS-APIRequest"] = "true"
        self.session.auth = (user, lab.secret("cloud_admin") if password is None else password)

    def call(self, method: str, path: str, data=None) -> tuple[int, dict, requests.Response]:
        answer = self.session.request(
            method, f"{self.base}/{path}", params={"format": "json"}, data=data, timeout=20
        )
        return answer.status_code, answer.json()["ocs"], answer


def code(body: dict) -> int:
    return body["meta"]["statuscode"]


@pytest.fixture
def uid(lab):
    name = f"cloudtest{secrets.token_hex(3)}"
    yield name
    OCS(lab).call("DELETE", f"users/{name}")


def test_double_runs_under_systemd_and_says_what_it_is(lab):
    host = lab.host("apps")
    service = host.service("nextcloud-double")
    assert service.is_running and service.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value nextcloud-double")
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "nextcloud-double"
    assert host.socket("tcp://127.0.0.1:8089").is_listening
    assert not host.socket("tcp://0.0.0.0:8089").is_listening
    journal = host.check_output("journalctl -u nextcloud-double --no-pager -o cat")
    assert "CONTRACT DOUBLE" in journal and "NOT Nextcloud" in journal
    _, _, answer = OCS(lab).call("GET", "users")
    assert "double" in answer.headers["Server"].lower()


def test_ocs_user_lifecycle(lab, uid):
    ocs = OCS(lab)
    status, body, _ = ocs.call(
        "POST", "users",
        {"userid": uid, "password": secrets.token_urlsafe(16), "email": f"{uid}@demo.coop",
         "displayName": "Cloud Test", "quota": "512 MB"},
    )  # fmt: skip
    assert (status, code(body)) == (200, 100), body
    status, body, _ = ocs.call("POST", "users", {"userid": uid, "password": "Another-pw-123"})
    assert code(body) == 102

    _, body, _ = ocs.call("PUT", f"users/{uid}", {"key": "quota", "value": "2 GB"})
    assert code(body) == 100
    _, body, _ = ocs.call("GET", f"users/{uid}")
    assert body["data"]["quota"]["quota"] == 2 * 1024**3
    assert body["data"]["email"] == f"{uid}@demo.coop"

    assert code(ocs.call("PUT", f"users/{uid}/disable")[1]) == 100
    assert ocs.call("GET", f"users/{uid}")[1]["data"]["enabled"] is False
    assert code(ocs.call("PUT", f"users/{uid}/enable")[1]) == 100
    assert ocs.call("GET", f"users/{uid}")[1]["data"]["enabled"] is True

    group = f"g{uid}"
    assert code(ocs.call("POST", "groups", {"groupid": group})[1]) == 100
    assert code(ocs.call("POST", f"users/{uid}/groups", {"groupid": group})[1]) == 100
    assert ocs.call("GET", f"users/{uid}/groups")[1]["data"]["groups"] == [group]
    assert code(ocs.call("DELETE", f"users/{uid}/groups", {"groupid": group})[1]) == 100
    assert ocs.call("GET", f"users/{uid}/groups")[1]["data"]["groups"] == []

    # the occ double on the host sees the same store
    info = lab.host("apps").run("occ-double user:info %s --output=json", uid)
    assert info.rc == 0, info.stderr
    assert json.loads(info.stdout)["user_id"] == uid

    assert code(ocs.call("DELETE", f"users/{uid}")[1]) == 100
    assert code(ocs.call("DELETE", f"users/{uid}")[1]) == 998
    assert lab.host("apps").run("occ-double user:info %s", uid).rc == 1


def test_missing_ocs_header_is_refused(lab):
    status, body, _ = OCS(lab, header=False).call("GET", "users")
    assert (status, code(body)) == (401, 997)


def test_bad_admin_password_is_refused(lab):
    status, body, _ = OCS(lab, password="not-the-password").call("GET", "users")
    assert (status, code(body)) == (401, 997)
