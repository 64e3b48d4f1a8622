"""The Nextcloud contract double's OCS contract, on loopback (no lab needed).

The double runs as a real HTTP server in a subprocess, exactly as the cloud
role runs it on the lab host, and is driven over HTTP and through its occ CLI.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.sync_helpers import serve_nextcloud_double

ADMIN_PASSWORD = "double-admin-pw-123"


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ncdouble")
    pw = tmp / "admin-password"
    pw.write_text(ADMIN_PASSWORD + "\n")
    pw.chmod(0o600)
    store = tmp / "store.json"
    with serve_nextcloud_double(store, pw) as (base, env, proc):
        yield {"base": base, "store": store, "env": env, "proc": proc}


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
    cookies=None,
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
    if cookies:
        req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
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


# ------------------------------------------------------------ bulk details, files, tokens
def _make(double, uid, **extra):
    data = {"userid": uid, "password": f"{uid}-Pass-123", **extra}
    _, body, _ = ocs(double, "POST", "users", data)
    assert meta(body)["statuscode"] == 100, body


def _data_dir(double) -> Path:
    return double["store"].parent / "data"


def test_users_details_is_keyed_by_uid_and_pages(double):
    for uid in ("dtl1", "dtl2", "dtl3"):
        _make(double, uid, email=f"{uid}@demo.coop", displayName=f"D {uid}", quota="1 GB")
    ocs(double, "PUT", "users/dtl2/disable")
    ocs(double, "POST", "groups", {"groupid": "dtlgroup"})
    ocs(double, "POST", "users/dtl3/groups", {"groupid": "dtlgroup"})
    for version in (1, 2):
        status, body, _ = ocs(double, "GET", "users/details?search=dtl", version=version)
        assert status == 200
        users = body["data"]["users"]
        assert isinstance(users, dict) and list(users) == ["dtl1", "dtl2", "dtl3"]
    one = users["dtl1"]
    assert one["id"] == "dtl1" and one["enabled"] is True
    assert (one["email"], one["displayname"], one["backend"]) == (
        "dtl1@demo.coop",
        "D dtl1",
        "Database",
    )
    assert set(one["quota"]) == {"free", "used", "total", "relative", "quota"}
    assert one["quota"]["quota"] == 1024**3 and one["quota"]["used"] == 0
    assert "lastLogin" in one and one["groups"] == []
    assert users["dtl2"]["enabled"] is False
    assert users["dtl3"]["groups"] == ["dtlgroup"]
    _, body, _ = ocs(double, "GET", "users/details?search=dtl&limit=2&offset=1")
    assert list(body["data"]["users"]) == ["dtl2", "dtl3"]
    _, body, _ = ocs(double, "GET", "users/details?search=dtl&limit=2&offset=3")
    assert body["data"]["users"] == []  # PHP's empty array is a JSON list, not an object


def test_users_details_xml(double):
    _make(double, "dtlx")
    status, root, _ = ocs(double, "GET", "users/details?search=dtlx", fmt="xml")
    assert status == 200
    assert root.findtext("data/users/dtlx/id") == "dtlx"
    assert root.findtext("data/users/dtlx/enabled") == "1"


def test_home_directory_and_used_space(double):
    _make(double, "filer", quota="1 MB")
    files = _data_dir(double) / "filer" / "files"
    assert files.is_dir()
    (files / "a.bin").write_bytes(b"x" * 300_000)
    (files / "sub").mkdir()
    (files / "sub" / "b.bin").write_bytes(b"y" * 1_000_000)
    quota = ocs(double, "GET", "users/filer")[1]["data"]["quota"]
    assert quota["used"] == 1_300_000
    assert quota["total"] == quota["quota"] == 1024**2
    assert quota["free"] == 1024**2 - 1_300_000  # over quota: negative, as Nextcloud computes it
    assert quota["relative"] == round(1_300_000 / 1024**2 * 10000) / 100
    ocs(double, "PUT", "users/filer", {"key": "quota", "value": "none"})
    quota = ocs(double, "GET", "users/filer")[1]["data"]["quota"]
    assert (quota["quota"], quota["free"], quota["total"], quota["relative"]) == (-3, -3, -3, 0)
    details = ocs(double, "GET", "users/details?search=filer")[1]["data"]["users"]
    assert details["filer"]["quota"]["used"] == 1_300_000
    r = occ(double, "user:info", "filer", "--output=json")
    assert json.loads(r.stdout)["storage"]["used"] == 1_300_000
    assert json.loads(r.stdout)["user_directory"] == str(_data_dir(double) / "filer")
    # deleting the account deletes its home
    assert meta(ocs(double, "DELETE", "users/filer")[1])["statuscode"] == 100
    assert not (_data_dir(double) / "filer").exists()
    _make(double, "filer2")
    assert occ(double, "user:delete", "filer2").returncode == 0
    assert not (_data_dir(double) / "filer2").exists()


def test_user_without_home_has_nextclouds_short_quota(double):
    _make(double, "nohome", quota="2 GB")
    (_data_dir(double) / "nohome" / "files").rmdir()
    quota = ocs(double, "GET", "users/nohome")[1]["data"]["quota"]
    assert quota == {"quota": 2 * 1024**3, "used": 0}


def _set_cookies(headers) -> dict[str, str]:
    out = {}
    for header in headers.get_all("Set-Cookie") or []:
        name, _, rest = header.partition("=")
        out[name] = rest.split(";")[0]
    return out


def tokens(double, uid):
    r = occ(double, "user:auth-tokens:list", uid, "--output=json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_session_tokens_follow_nextclouds_login(double):
    _make(double, "tok")
    auth = ("tok", "tok-Pass-123")
    # a client that keeps no cookie gets no session token (Session::supportsCookies)
    status, _, headers = ocs(double, "GET", "user", auth=auth)
    assert status == 200
    assert tokens(double, "tok") == []
    cookies = _set_cookies(headers)
    assert "cookie_test" in cookies
    # one that sends cookie_test back gets a session token, carried by nc_session_id
    _, _, headers = ocs(double, "GET", "user", auth=auth, cookies=cookies)
    session = _set_cookies(headers)["nc_session_id"]
    listed = tokens(double, "tok")
    assert len(listed) == 1
    assert set(listed[0]) == {"id", "name", "lastActivity", "type", "scope"}
    assert listed[0]["type"] == 0
    assert session not in json.dumps(listed)  # the secret is never listed
    # the session alone authenticates
    status, body, _ = ocs(double, "GET", "user", auth=None, cookies={"nc_session_id": session})
    assert (status, body["data"]["id"]) == (200, "tok")
    # deleting the token ends the session
    r = occ(double, "user:auth-tokens:delete", "tok", str(listed[0]["id"]))
    assert r.returncode == 0
    assert tokens(double, "tok") == []
    status, body, _ = ocs(double, "GET", "user", auth=None, cookies={"nc_session_id": session})
    assert (status, meta(body)["statuscode"]) == (401, 997)
    # deleting again is silent, as invalidateTokenById is
    assert occ(double, "user:auth-tokens:delete", "tok", str(listed[0]["id"])).returncode == 0
    r = occ(double, "user:auth-tokens:delete", "tok")
    assert r.returncode == 1 and "Specify the token <id>" in r.stderr
    r = occ(double, "user:auth-tokens:list", "ghost")
    assert r.returncode == 1 and "user not found" in r.stderr


def test_tokens_last_used_before_a_date_are_deleted_in_one_call(double):
    """``user:auth-tokens:delete UID --last-used-before DATE``: what coop-cloud-end-sessions
    runs, one call per member, whatever the tokens' ids."""
    _make(double, "tlb")
    for _ in range(2):
        assert occ(double, "user:auth-tokens:add", "tlb").returncode == 0
    assert len(tokens(double, "tlb")) == 2
    r = occ(double, "user:auth-tokens:delete", "tlb", "--last-used-before=2000-01-01")
    assert r.returncode == 0 and len(tokens(double, "tlb")) == 2  # none that old
    r = occ(double, "user:auth-tokens:delete", "tlb", "1", "--last-used-before=2000-01-01")
    assert r.returncode == 1 and "cannot be used with [<id>]" in r.stderr
    r = occ(double, "user:auth-tokens:delete", "tlb", "--last-used-before=soon")
    assert r.returncode == 1 and "Invalid date format" in r.stderr
    tomorrow = str(int(time.time()) + 86400)
    r = occ(double, "user:auth-tokens:delete", "tlb", f"--last-used-before={tomorrow}")
    assert r.returncode == 0 and tokens(double, "tlb") == []
    # a uid without tokens, or unknown: nothing to do, no error (as in Nextcloud)
    assert occ(double, "user:auth-tokens:delete", "ghost",
                f"--last-used-before={tomorrow}").returncode == 0


def test_disabled_users_tokens_stop_working(double):
    _make(double, "tokd")
    r = occ(double, "user:auth-tokens:add", "tokd")
    assert r.returncode == 0 and r.stdout.startswith("app password:")
    app_password = r.stdout.splitlines()[1]
    _, _, headers = ocs(double, "GET", "user", auth=("tokd", "tokd-Pass-123"))
    _, _, headers = ocs(
        double, "GET", "user", auth=("tokd", "tokd-Pass-123"), cookies=_set_cookies(headers)
    )
    session = _set_cookies(headers)["nc_session_id"]
    assert sorted(t["type"] for t in tokens(double, "tokd")) == [0, 1]
    # an app password works as the basic-auth password, and creates no further token
    status, body, _ = ocs(double, "GET", "user", auth=("tokd", app_password))
    assert (status, body["data"]["id"]) == (200, "tokd")
    assert ocs(double, "GET", "user", auth=("other", app_password))[0] == 401
    assert len(tokens(double, "tokd")) == 2

    ocs(double, "PUT", "users/tokd/disable")
    status, body, _ = ocs(double, "GET", "user", auth=("tokd", app_password))
    assert (status, meta(body)["statuscode"]) == (401, 997)
    status, _, _ = ocs(double, "GET", "user", auth=None, cookies={"nc_session_id": session})
    assert status == 401
    # each refused token was deleted at once (Nextcloud: at the next check, within 5 min)
    assert tokens(double, "tokd") == []
    ocs(double, "PUT", "users/tokd/enable")
    assert ocs(double, "GET", "user", auth=("tokd", app_password))[0] == 401

    # deleting a user deletes their tokens
    r = occ(double, "user:auth-tokens:add", "tokd")
    assert len(tokens(double, "tokd")) == 1
    ocs(double, "DELETE", "users/tokd")
    _make(double, "tokd")
    assert tokens(double, "tokd") == []


# ------------------------------------------------------------ the store (SQLite)
def test_store_imports_a_legacy_json_store_once(tmp_path):
    from tests.nextcloud_double.store import Store, StoreError, new_user

    user = new_user("old", None)
    user["groups"] = ["staff"]
    legacy = {
        "users": {"old": user},
        "groups": {"admin": {"displayname": "admin"}, "staff": {"displayname": "Staff"}},
        "tokens": [
            {
                "id": 4,
                "uid": "old",
                "name": "cli",
                "type": 1,
                "lastActivity": 5,
                "scope": {"filesystem": True},
                "hash": "ab" * 32,
            }
        ],
        "next_token_id": 7,
    }
    (tmp_path / "store.json").write_text(json.dumps(legacy))
    store = Store(tmp_path / "store.sqlite")
    assert store.get_user("old") == user
    assert store.members("staff") == ["old"] and sorted(store.gids()) == ["admin", "staff"]
    assert [t["id"] for t in store.tokens_of("old")] == [4]
    store.add_token("old", "next", 1)
    assert [t["id"] for t in store.tokens_of("old")] == [4, 7]  # ids are never reused
    store.close()
    with pytest.raises(StoreError):
        Store(tmp_path / "store.json").get_user("old")


def test_store_failed_step_undoes_only_itself(tmp_path):
    from tests.nextcloud_double.store import Store, new_user

    store = Store(tmp_path / "store.sqlite")
    with store.transaction():
        store.save_user(new_user("kept", None))
        with pytest.raises(ValueError), store.transaction():
            store.save_user(new_user("dropped", None))
            raise ValueError
    assert store.uids() == ["kept"]
    store.close()
    assert Store(tmp_path / "store.sqlite").uids() == ["kept"]


# ------------------------------------------------------------ the cloud role's end-sessions command
def test_the_roles_end_sessions_command_against_the_double(double, tmp_path):
    """The cloud role's coop-cloud-end-sessions, rendered as the role renders it for the
    double, run with the double's occ on PATH: every token of each member goes, one line per
    uid, a bad uid is refused and an unknown one is no error."""
    import os

    import jinja2

    from provisioner.resources import playbooks_dir

    source = playbooks_dir() / "roles" / "cloud" / "templates" / "coop-cloud-end-sessions.j2"
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    script = tmp_path / "coop-cloud-end-sessions"
    script.write_text(env.from_string(source.read_text()).render(
        ansible_managed="test", cloud_flavour="double", cloud_nextcloud_root="/var/www/nextcloud",
        cloud_end_sessions_parallel=2))
    occ_double = tmp_path / "bin" / "occ-double"
    occ_double.parent.mkdir()
    occ_double.write_text(f"#!/bin/sh\nexec {sys.executable} -m nextcloud_double occ "
                          f"--store {double['store']} \"$@\"\n")
    occ_double.chmod(0o755)
    for uid in ("ends1", "ends2"):
        _make(double, uid)
        for _ in range(2):
            assert occ(double, "user:auth-tokens:add", uid).returncode == 0
    run_env = {**double["env"], "PATH": f"{occ_double.parent}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(script), "ends1", "ghost", "bad uid!", "ends2"],
                          env=run_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = {line.split("\t")[0]: line.split("\t")[1:] for line in done.stdout.splitlines()}
    assert lines == {"ends1": ["0", "tokens deleted"], "ghost": ["0", "tokens deleted"],
                     "bad uid!": ["1", "not a member's uid"], "ends2": ["0", "tokens deleted"]}
    assert tokens(double, "ends1") == [] and tokens(double, "ends2") == []
