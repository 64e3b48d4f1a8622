"""The Nextcloud contract double's OCS contract, on loopback (no lab needed).

The double runs as a real HTTP server in a subprocess, exactly as the cloud
role runs it on the lab host, and is driven over HTTP and through its occ CLI.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
ADMIN_PASSWORD = "double-admin-pw-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ncdouble")
    pw = tmp / "admin-password"
    pw.write_text(ADMIN_PASSWORD + "\n")
    pw.chmod(0o600)
    store = tmp / "store.json"
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nextcloud_double",
            "serve",
            "--port",
            str(port),
            "--store",
            str(store),
            "--admin-password-file",
            str(pw),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(base + "/status.php", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    "the double did not start: " + (proc.stderr.read() or "")
                ) from None
            time.sleep(0.05)
    yield {"base": base, "store": store, "env": env, "proc": proc}
    proc.terminate()
    proc.wait(timeout=5)


def ocs(
    double,
    method,
    path,
    data=None,
    *,
    version=1,
    fmt="json",
    auth=("admin", ADMIN_PASSWORD),
    header=True,
    accept=None,
):
    """One OCS call; returns (HTTP status, parsed body, response headers)."""
    url = f"{double['base']}/ocs/v{version}.php/cloud/{path}"
    if fmt == "json" and accept is None:
        url += ("&" if "?" in url else "?") + "format=json"
    body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if header:
        req.add_header("OCS-APIRequest", "true")
    if accept:
        req.add_header("Accept", accept)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", "Basic " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(raw)["ocs"], headers
    return status, ET.fromstring(raw), headers


def meta(body):
    return body["meta"]


def test_server_header_names_the_double(double):
    status, _, headers = ocs(double, "GET", "users")
    assert status == 200
    assert "double" in headers["Server"].lower()
    assert "not nextcloud" in headers["Server"].lower()


def test_user_lifecycle_v1_json(double):
    status, body, _ = ocs(
        double,
        "POST",
        "users",
        {
            "userid": "alice",
            "password": "Secret-pass-1",
            "email": "alice@demo.coop",
            "displayName": "Alice A",
            "quota": "1024 MB",
        },
    )
    assert status == 200
    assert meta(body) == {
        "status": "ok",
        "statuscode": 100,
        "message": "OK",
        "totalitems": "",
        "itemsperpage": "",
    }
    assert body["data"] == {"id": "alice"}

    status, body, _ = ocs(double, "POST", "users", {"userid": "alice", "password": "x-Other-2"})
    assert status == 200  # v1 keeps HTTP 200 for OCS errors
    assert meta(body)["statuscode"] == 102
    assert meta(body)["status"] == "failure"

    _, body, _ = ocs(double, "GET", "users/alice")
    assert body["data"]["id"] == "alice"
    assert body["data"]["email"] == "alice@demo.coop"
    assert body["data"]["displayname"] == "Alice A"
    assert body["data"]["quota"]["quota"] == 1024 * 1024 * 1024
    assert body["data"]["enabled"] is True

    _, body, _ = ocs(double, "PUT", "users/alice", {"key": "quota", "value": "5 GB"})
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(double, "GET", "users/alice")
    assert body["data"]["quota"]["quota"] == 5 * 1024**3
    _, body, _ = ocs(double, "PUT", "users/alice", {"key": "quota", "value": "lots"})
    assert meta(body)["statuscode"] == 102
    _, body, _ = ocs(double, "PUT", "users/alice", {"key": "email", "value": "a2@demo.coop"})
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(double, "PUT", "users/alice", {"key": "displayname", "value": "Alice B"})
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(double, "GET", "users/alice")
    assert (body["data"]["email"], body["data"]["displayname"]) == ("a2@demo.coop", "Alice B")
    _, body, _ = ocs(double, "PUT", "users/alice", {"key": "shoesize", "value": "42"})
    assert meta(body)["statuscode"] == 113

    _, body, _ = ocs(double, "PUT", "users/alice/disable")
    assert meta(body)["statuscode"] == 100
    assert ocs(double, "GET", "users/alice")[1]["data"]["enabled"] is False
    # a disabled account cannot authenticate
    status, body, _ = ocs(double, "GET", "users", auth=("alice", "Secret-pass-1"))
    assert (status, meta(body)["statuscode"]) == (401, 997)
    _, body, _ = ocs(double, "PUT", "users/alice/enable")
    assert meta(body)["statuscode"] == 100
    assert ocs(double, "GET", "users/alice")[1]["data"]["enabled"] is True
    _, body, _ = ocs(double, "PUT", "users/nobody/enable")
    assert meta(body)["statuscode"] == 101

    _, body, _ = ocs(double, "DELETE", "users/alice")
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(double, "DELETE", "users/alice")
    assert meta(body)["statuscode"] == 998
    _, body, _ = ocs(double, "GET", "users/alice")
    assert meta(body)["statuscode"] == 404


def test_v2_codes_and_http_status(double):
    status, body, _ = ocs(
        double, "POST", "users", {"userid": "bob", "password": "Bob-pass-123"}, version=2
    )
    assert (status, meta(body)["statuscode"], meta(body)["message"]) == (200, 200, "OK")
    assert "totalitems" not in meta(body)
    status, body, _ = ocs(
        double, "POST", "users", {"userid": "bob", "password": "Bob-pass-123"}, version=2
    )
    assert (status, meta(body)["statuscode"]) == (400, 102)
    status, body, _ = ocs(double, "DELETE", "users/ghost", version=2)
    assert (status, meta(body)["statuscode"]) == (404, 998)
    status, body, _ = ocs(double, "GET", "users", version=2, header=False)
    assert (status, meta(body)["statuscode"]) == (401, 997)


def test_groups(double):
    _, body, _ = ocs(double, "POST", "groups", {"groupid": "members"})
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(double, "POST", "groups", {"groupid": "members"})
    assert meta(body)["statuscode"] == 102
    _, body, _ = ocs(double, "POST", "groups", {"groupid": ""})
    assert meta(body)["statuscode"] == 101
    _, body, _ = ocs(double, "GET", "groups?search=memb")
    assert body["data"]["groups"] == ["members"]

    _, body, _ = ocs(
        double,
        "POST",
        "users",
        {"userid": "carol", "password": "Carol-pass-1", "groups[]": ["members"]},
    )
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(
        double,
        "POST",
        "users",
        {"userid": "dave", "password": "Dave-pass-1", "groups[]": ["nosuchgroup"]},
    )
    assert meta(body)["statuscode"] == 104
    assert meta(ocs(double, "GET", "users/dave")[1])["statuscode"] == 404

    _, body, _ = ocs(double, "GET", "users/carol/groups")
    assert body["data"]["groups"] == ["members"]
    _, body, _ = ocs(double, "POST", "groups", {"groupid": "board"})
    _, body, _ = ocs(double, "POST", "users/carol/groups", {"groupid": "board"})
    assert meta(body)["statuscode"] == 100
    _, body, _ = ocs(double, "POST", "users/carol/groups", {"groupid": "nope"})
    assert meta(body)["statuscode"] == 102
    _, body, _ = ocs(double, "POST", "users/ghost/groups", {"groupid": "board"})
    assert meta(body)["statuscode"] == 103
    assert sorted(ocs(double, "GET", "users/carol/groups")[1]["data"]["groups"]) == [
        "board",
        "members",
    ]
    _, body, _ = ocs(double, "DELETE", "users/carol/groups", {"groupid": "members"})
    assert meta(body)["statuscode"] == 100
    assert ocs(double, "GET", "users/carol/groups")[1]["data"]["groups"] == ["board"]


def test_search_limit_offset(double):
    for uid in ("srch1", "srch2", "srch3"):
        ocs(double, "POST", "users", {"userid": uid, "password": "Srch-pass-1"})
    _, body, _ = ocs(double, "GET", "users?search=srch")
    assert body["data"]["users"] == ["srch1", "srch2", "srch3"]
    _, body, _ = ocs(double, "GET", "users?search=srch&limit=1&offset=1")
    assert body["data"]["users"] == ["srch2"]


def test_auth_failures(double):
    status, body, _ = ocs(double, "GET", "users", header=False)
    assert (status, meta(body)["statuscode"]) == (401, 997)
    status, body, _ = ocs(double, "GET", "users", auth=("admin", "wrong"))
    assert (status, meta(body)["statuscode"]) == (401, 997)
    assert meta(body)["message"] == "Current user is not logged in"
    status, body, _ = ocs(double, "GET", "users", auth=None)
    assert (status, meta(body)["statuscode"]) == (401, 997)
    # an ordinary account is authenticated but not an admin
    ocs(double, "POST", "users", {"userid": "erin", "password": "Erin-pass-1"})
    status, body, _ = ocs(double, "GET", "users", auth=("erin", "Erin-pass-1"))
    assert (status, meta(body)["statuscode"]) == (200, 403)


def test_xml_is_the_default_and_accept_json_works(double):
    status, root, headers = ocs(double, "GET", "users?search=srch1", fmt="xml")
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    assert root.tag == "ocs"
    assert root.findtext("meta/statuscode") == "100"
    assert root.findtext("meta/status") == "ok"
    assert [e.text for e in root.findall("data/users/element")] == ["srch1"]
    status, body, headers = ocs(
        double, "GET", "users?search=srch1", fmt="xml", accept="application/json"
    )
    assert headers["Content-Type"].startswith("application/json")
    assert body["data"]["users"] == ["srch1"]


def test_unknown_route_is_998(double):
    status, body, _ = ocs(double, "GET", "nonsense")
    assert (status, meta(body)["statuscode"]) == (200, 998)


def occ(double, *args):
    return subprocess.run(
        [sys.executable, "-m", "nextcloud_double", "occ", "--store", str(double["store"]), *args],
        env=double["env"],
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_occ_shares_the_store(double):
    ocs(
        double,
        "POST",
        "users",
        {"userid": "frank", "password": "Frank-pass-1", "displayName": "Frank F"},
    )
    r = occ(double, "user:list", "--output=json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["frank"] == "Frank F"
    r = occ(double, "user:info", "frank", "--output=json")
    assert json.loads(r.stdout)["enabled"] is True
    assert occ(double, "user:disable", "frank").returncode == 0
    assert ocs(double, "GET", "users/frank")[1]["data"]["enabled"] is False
    assert occ(double, "user:enable", "frank").returncode == 0
    assert occ(double, "user:setting", "frank", "files", "quota", "2 GB").returncode == 0
    assert ocs(double, "GET", "users/frank")[1]["data"]["quota"]["quota"] == 2 * 1024**3
    r = occ(double, "user:setting", "frank", "files", "quota")
    assert r.stdout.strip() == "2 GB"
    assert occ(double, "user:delete", "frank").returncode == 0
    assert meta(ocs(double, "GET", "users/frank")[1])["statuscode"] == 404
    r = occ(double, "user:delete", "frank")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = occ(double, "user:info", "frank")
    assert r.returncode == 1
