"""The pads connector against a real Etherpad 1.8.14 on 127.0.0.1 (from the artifacts cache).

One Etherpad per test session (about 12 s to start: it runs `npm ls` at start), with a dirty
DB in a temporary directory, its update check replaced by the role's own no-op module and a
dead proxy as a second guard. Each test uses its own uids and group names, so the tests do not
depend on one another. A second, short-lived instance with a tiny export rate limit checks the
fallback to text and HTML.
"""

from __future__ import annotations

import html
import http.client
import http.server
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import requests

from provisioner.artifacts import DEFAULT_ARTIFACTS_DIR, ETHERPAD_VERSION
from provisioner.services.base import (
    Action,
    ChangeResult,
    Desired,
    MemberState,
    Phase,
    ServiceChange,
    ServiceUnavailable,
)
from provisioner.services.pads import (
    FORMER_MEMBER,
    EtherpadError,
    PadsConnector,
    PadsObservation,
    Session,
)
from tests.sync_helpers import MemoryState, free_port, runtime

ROOT = Path(__file__).resolve().parent.parent
NO_UPDATE_CHECK = ROOT / "playbooks" / "roles" / "pads" / "templates" / "no-update-check.js.j2"
API_KEY = "test-pads-key-0123456789abcdefXYZ"
DEAD_PROXY = "http://127.0.0.1:9"
START_TIMEOUT = 40.0


class NoHosts:
    """Pads never reaches the hosts: any use is a bug."""

    def read(self, group: str, argv: Any, timeout: float = 60) -> str:
        raise AssertionError("pads must not run commands on hosts")

    def playbook(self, name: str, extravars: Any) -> dict[str, Any]:
        raise AssertionError("pads must not run playbooks")


# -- a private Etherpad --------------------------------------------------------------------

def _artifact() -> Path:
    base = Path(os.environ.get("COOPCTL_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS_DIR)
    return base / f"etherpad-{ETHERPAD_VERSION}.tar.gz"


class Etherpad:
    """One Etherpad process on 127.0.0.1 from an unpacked tree, its data in `home`."""

    def __init__(self, tree: Path, home: Path, **settings: Any) -> None:
        self.tree, self.home = tree, home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "etherpad.log"
        home.mkdir(parents=True, exist_ok=True)
        self.key_file = home / "APIKEY.txt"
        self.key_file.write_text(API_KEY)
        self.key_file.chmod(0o600)
        config = {
            "title": "coopctl test pads",
            "ip": "127.0.0.1",
            "port": self.port,
            "dbType": "dirty",
            "dbSettings": {"filename": str(home / "dirty.db")},
            "requireSession": False,
            "minify": False,
            "users": {},
            "loglevel": "WARN",
            **settings,
        }
        (home / "settings.json").write_text(json.dumps(config, indent=2))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "NODE_ENV": "production",
            # Second guard against phone-homes (the update check itself is a no-op).
            "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY,
            "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY,
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
            "npm_config_offline": "true", "npm_config_update_notifier": "false",
            "npm_config_audit": "false", "npm_config_fund": "false",
            "npm_config_cache": str(self.home / "npm-cache"),
        }
        argv = [
            shutil.which("node") or "node",
            "--require", str(self.tree.parent / "no-update-check.js"),
            str(self.tree / "src" / "node" / "server.js"),
            "--settings", str(self.home / "settings.json"),
            "--apikey", str(self.key_file),             # a path: the key is never in argv
            "--sessionkey", str(self.home / "SESSIONKEY.txt"),
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=self.tree, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        http = requests.Session()
        http.trust_env = False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Etherpad exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if http.get(f"{self.url}/api", timeout=2).json().get("currentVersion"):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Etherpad did not answer /api within {START_TIMEOUT:.0f} s:\n"
                           f"{self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def api(self, method: str, **params: Any) -> dict[str, Any]:
        """A direct API call, as a portal would make it (the raw answer, code included)."""
        http = requests.Session()
        http.trust_env = False
        body = {k: str(v) for k, v in params.items()} | {"apikey": API_KEY}
        return http.post(f"{self.url}/api/1.2.15/{method}", data=body, timeout=10).json()

    def ok(self, method: str, **params: Any) -> Any:
        answer = self.api(method, **params)
        assert answer["code"] == 0, (method, answer)
        return answer["data"]


@pytest.fixture(scope="session")
def etherpad_tree(request: pytest.FixtureRequest) -> Path:
    """The artifact unpacked, with the role's no-update-check module next to it.

    Unpacking 150 MB of node_modules takes 10 to 60 s, so the tree is kept in pytest's cache
    (.pytest_cache/d/etherpad), keyed by the artifact's size and mtime, and unpacked under a
    temporary name then renamed (two runs at once cannot see half a tree). Etherpad itself
    writes only its var/ cache there; its data and settings are per run, in tmp.
    """
    artifact = _artifact()
    if not artifact.is_file():
        pytest.skip(f"Etherpad artifact {artifact} is absent: run `bash .ci/setup` "
                    "(it fetches ep_etherpad-lite with npm)")
    if shutil.which("node") is None:
        pytest.skip("node is not installed (bash .ci/setup installs nodejs)")
    stat = artifact.stat()
    cache = request.config.cache
    root = cache.mkdir("etherpad") if cache is not None else Path(tempfile.mkdtemp())
    base = root / f"{ETHERPAD_VERSION}-{stat.st_size}-{stat.st_mtime_ns}"
    tree = base / f"etherpad-{ETHERPAD_VERSION}"
    if not (tree / "src" / "node" / "server.js").is_file():
        for old in root.iterdir():  # trees of earlier artifacts
            if old != base:
                shutil.rmtree(old, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
        with tarfile.open(artifact) as tar:
            tar.extractall(partial, filter="data")
        try:
            partial.rename(base)
        except OSError:  # another run got there first
            shutil.rmtree(partial, ignore_errors=True)
    assert (tree / "src" / "node" / "server.js").is_file(), "unexpected artifact layout"
    module = jinja2.Template(NO_UPDATE_CHECK.read_text()).render(
        ansible_managed="rendered by tests/test_pads_connector.py",
        pads_install_root=str(base), pads_version=ETHERPAD_VERSION, pads_release_dir=str(tree))
    (base / "no-update-check.js").write_text(module)
    return tree


@pytest.fixture(scope="session")
def etherpad(etherpad_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etherpad]:
    server = Etherpad(etherpad_tree, tmp_path_factory.mktemp("etherpad-home"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TlsFront:
    """A stand-in for nginx: TLS on 127.0.0.1 with the test CA, proxying to Etherpad.

    It keeps each request line and Host header, as nginx's access log would.
    """

    def __init__(self, backend: Etherpad, pki: Path) -> None:
        self.log: list[tuple[str, str]] = []
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                front.log.append((self.requestline, self.headers.get("Host", "")))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("content-type", "cookie")}
                conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=10)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type") or "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki / "server.crt", pki / "server.key")
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_connector(url: str, key_file: Path, state: MemoryState | None = None,
                   ca_file: str | None = None, **more: Any) -> PadsConnector:
    settings = {"url": url, "api_key_file": str(key_file), **more}

    def secret(name: str) -> str:
        return Path(settings[name]).read_text()

    return PadsConnector(runtime(NoHosts(), state, settings=settings, ca_file=ca_file,
                                 secret=secret))


@pytest.fixture
def pads(etherpad: Etherpad) -> PadsConnector:
    return make_connector(etherpad.url, etherpad.key_file)


_counter = iter(range(1, 1_000_000))


def new_uid(prefix: str = "m") -> str:
    return f"{prefix}{next(_counter)}.{os.getpid()}"


def member(uid: str, groups: set[str] = frozenset(), status: str = "active",  # type: ignore[assignment]
           services: set[str] = frozenset({"pads"})) -> MemberState:  # type: ignore[assignment]
    return MemberState(uid=uid, mail=f"{uid}@demo.coop", display_name=f"Member {uid}",
                       language="fr", status=status, services=frozenset(services),
                       groups=frozenset(groups), mail_quota=None, cloud_quota=None)


def desired(*states: tuple[MemberState, Phase]) -> dict[str, Desired]:
    return {m.uid: Desired(m, phase) for m, phase in states}


def run(connector: PadsConnector, want: dict[str, Desired]) -> list[ChangeResult]:
    """observe, plan, apply; every change must succeed; returns the results."""
    changes = connector.plan(want, connector.observe())
    results: list[ChangeResult] = []
    connector.apply(changes, results.append)
    assert len(results) == len(changes)
    assert all(r.ok for r in results), [(r.change.describe(), r.error) for r in results]
    return results


def actions(results: list[ChangeResult]) -> list[tuple[Action, str]]:
    return [(r.change.action, r.change.uid) for r in results]


def assert_settled(connector: PadsConnector, want: dict[str, Desired]) -> None:
    """Idempotence: a plan right after apply is empty."""
    assert connector.plan(want, connector.observe()) == []


def portal_session(etherpad: Etherpad, uid: str, cn: str) -> str:
    """What the SSO portal does at login: a session of the member's author in a group."""
    author = etherpad.ok("createAuthorIfNotExistsFor", authorMapper=uid)["authorID"]
    group = etherpad.ok("createGroupIfNotExistsFor", groupMapper=cn)["groupID"]
    until = int(time.time()) + 3600
    return etherpad.ok("createSession", groupID=group, authorID=author,
                       validUntil=until)["sessionID"]


def session_exists(etherpad: Etherpad, sid: str) -> bool:
    answer = etherpad.api("getSessionInfo", sessionID=sid)
    if answer["code"] == 0:
        return True
    assert answer["message"] == "sessionID does not exist", answer
    return False


# -- tests ---------------------------------------------------------------------------------

def test_update_check_is_disabled(etherpad: Etherpad) -> None:
    log = etherpad.log.read_text(errors="replace")
    assert "update check disabled" in log
    assert "Can not perform Etherpad update check" not in log


def test_create_makes_author_and_personal_group(etherpad: Etherpad, pads: PadsConnector) -> None:
    uid = new_uid()
    want = desired((member(uid), Phase.ACTIVE))
    results = run(pads, want)
    assert actions(results) == [(Action.CREATE, uid)]
    author = pads.ids.authors()[uid]
    # Etherpad maps the uid to that author (the portal's call returns the same ID) ...
    again = etherpad.ok("createAuthorIfNotExistsFor", authorMapper=uid)["authorID"]
    assert again == author
    assert etherpad.ok("getAuthorName", authorID=author) == f"Member {uid}"
    # ... and the personal group exists under its mapper
    group = etherpad.ok("createGroupIfNotExistsFor", groupMapper=f"user:{uid}")["groupID"]
    assert group == pads.ids.groups()[f"user:{uid}"]
    assert group in etherpad.ok("listAllGroups")["groupIDs"]
    assert uid in pads.observe().accounts
    assert_settled(pads, want)


def test_groups_are_created_once(etherpad: Etherpad, pads: PadsConnector) -> None:
    a, b = new_uid(), new_uid()
    staff, board = f"staff-{a}", f"board-{a}"
    want = desired((member(a, {staff, board}), Phase.ACTIVE), (member(b, {staff}), Phase.ACTIVE))
    plan = pads.plan(want, pads.observe())
    groups = {c.uid: c.detail for c in plan if c.action is Action.GROUPS}
    assert groups == {a: {"add": sorted([board, staff]), "remove": []},
                      b: {"add": [staff], "remove": []}}
    results: list[ChangeResult] = []
    pads.apply(plan, results.append)
    assert all(r.ok for r in results), [r.error for r in results]
    all_groups = set(etherpad.ok("listAllGroups")["groupIDs"])
    for cn in (staff, board):
        gid = etherpad.ok("createGroupIfNotExistsFor", groupMapper=f"group:{cn}")["groupID"]
        assert gid == pads.ids.groups()[f"group:{cn}"]
        assert gid in all_groups
        assert etherpad.ok("listPads", groupID=gid)["padIDs"] == []  # no pad made for them
    assert_settled(pads, want)


def test_leaving_a_group_ends_its_sessions_only(etherpad: Etherpad, pads: PadsConnector) -> None:
    uid = new_uid()
    staff, board = f"staff-{uid}", f"board-{uid}"
    run(pads, desired((member(uid, {staff, board}), Phase.ACTIVE)))
    in_staff = portal_session(etherpad, uid, f"group:{staff}")
    in_board = portal_session(etherpad, uid, f"group:{board}")
    want = desired((member(uid, {board}), Phase.ACTIVE))
    plan = pads.plan(want, pads.observe())
    assert [(c.action, dict(c.detail)) for c in plan] == [
        (Action.GROUPS, {"add": [], "remove": [staff]})]
    assert in_staff not in plan[0].describe()  # session IDs are secrets: never in a change
    results: list[ChangeResult] = []
    pads.apply(plan, results.append)
    assert [r.ok for r in results] == [True]
    assert not session_exists(etherpad, in_staff)
    assert session_exists(etherpad, in_board)
    assert_settled(pads, want)


def test_suspend_kills_sessions_and_restore(etherpad: Etherpad, pads: PadsConnector) -> None:
    uid = new_uid()
    staff = f"staff-{uid}"
    active = member(uid, {staff})
    run(pads, desired((active, Phase.ACTIVE)))
    sid = portal_session(etherpad, uid, f"group:{staff}")
    personal = portal_session(etherpad, uid, f"user:{uid}")
    assert session_exists(etherpad, sid)

    suspended = member(uid, {staff}, status="suspended")
    want = desired((suspended, Phase.DISABLED))
    results = run(pads, want)
    assert actions(results) == [(Action.SUSPEND, uid)]
    # observe sees an active member's sessions in directory groups only; apply lists the
    # author's sessions itself and ends the one in the personal group too
    assert results[0].change.detail == {"sessions": 1}
    assert not session_exists(etherpad, sid)
    assert not session_exists(etherpad, personal)
    assert_settled(pads, want)  # the suspended mark: a second sync plans nothing

    # A session the portal hands out anyway is taken away at the next sync, in a directory
    # group or in the personal group (a suspended member's sessions are all observed).
    late = portal_session(etherpad, uid, f"group:{staff}")
    late_personal = portal_session(etherpad, uid, f"user:{uid}")
    results = run(pads, want)
    assert actions(results) == [(Action.SUSPEND, uid)]
    assert results[0].change.detail == {"sessions": 2}
    assert not session_exists(etherpad, late)
    assert not session_exists(etherpad, late_personal)

    want = desired((active, Phase.ACTIVE))
    assert actions(run(pads, want)) == [(Action.RESTORE, uid)]
    assert uid not in pads.ids.suspended()
    assert_settled(pads, want)


def test_disabled_member_without_author_needs_nothing(pads: PadsConnector) -> None:
    uid = new_uid()
    want = desired((member(uid, status="suspended"), Phase.DISABLED))
    assert pads.plan(want, pads.observe()) == []


def test_purge_removes_personal_pads(etherpad: Etherpad, pads: PadsConnector) -> None:
    uid = new_uid()
    run(pads, desired((member(uid), Phase.ACTIVE)))
    group = pads.ids.groups()[f"user:{uid}"]
    author = pads.ids.authors()[uid]
    pad = etherpad.ok("createGroupPad", groupID=group, padName="notes", text="mine\n")["padID"]
    sid = portal_session(etherpad, uid, f"user:{uid}")

    want = desired((member(uid, status="departed"), Phase.PURGE))
    results = run(pads, want)
    assert actions(results) == [(Action.PURGE, uid)]
    assert group not in etherpad.ok("listAllGroups")["groupIDs"]
    assert etherpad.api("getText", padID=pad)["message"] == "padID does not exist"
    assert not session_exists(etherpad, sid)
    # Etherpad 1.8 cannot delete an author: the record stays, without the member's name.
    assert etherpad.ok("getAuthorName", authorID=author) == FORMER_MEMBER
    assert uid not in pads.ids.known()
    assert_settled(pads, want)
    gone = desired((member(uid, status="purged"), Phase.GONE))
    assert_settled(pads, gone)


def test_export_writes_pad_contents(etherpad: Etherpad, pads: PadsConnector,
                                    tmp_path: Path) -> None:
    uid = new_uid()
    staff = f"staff-{uid}"
    departed = member(uid, {staff}, status="departed")
    run(pads, desired((member(uid, {staff}), Phase.ACTIVE)))
    group = pads.ids.groups()[f"user:{uid}"]
    pad = etherpad.ok("createGroupPad", groupID=group, padName="ideas")["padID"]
    etherpad.ok("setText", padID=pad, text="Bonjour, idées de la coop\n")

    # Pads the member edited elsewhere come from listPadsOfAuthor. Editing needs Etherpad's
    # socket.io client, so here Etherpad's answer is extended with a public pad and a pad in
    # a directory group (which, like the personal pads, needs a session to be exported).
    public = f"public-{uid}"
    etherpad.ok("createPad", padID=public, text="public words\n")
    shared_group = etherpad.ok("createGroupIfNotExistsFor", groupMapper=f"group:{staff}")
    shared = etherpad.ok("createGroupPad", groupID=shared_group["groupID"], padName="plan",
                         text="shared words\n")["padID"]
    call = pads.call

    def call_with_edits(method: str, **params: Any) -> Any:
        data = call(method, **params)
        if method == "listPadsOfAuthor":
            data = {"padIDs": [*data["padIDs"], public, shared]}
        return data

    pads.call = call_with_edits  # type: ignore[method-assign]
    files = pads.export(departed, tmp_path / "pads")
    pads.call = call  # type: ignore[method-assign]

    names = sorted(p.name for p in files)
    assert names == sorted(f"{p}{s}" for p in (pad, public, shared)
                           for s in (".txt", ".html", ".etherpad"))
    assert all(p.parent == tmp_path / "pads" and p.is_file() for p in files)
    by_name = {p.name: p for p in files}
    assert by_name[f"{pad}.txt"].read_text() == "Bonjour, idées de la coop\n"
    assert "Bonjour, idées de la coop" in html.unescape(by_name[f"{pad}.html"].read_text())
    raw = json.loads(by_name[f"{pad}.etherpad"].read_text())
    assert raw[f"pad:{pad}"]["atext"]["text"] == "Bonjour, idées de la coop\n"
    assert "shared words" in json.loads(by_name[f"{shared}.etherpad"].read_text())[
        f"pad:{shared}"]["atext"]["text"]
    assert "public words" in by_name[f"{public}.txt"].read_text()
    # the throw-away export sessions are gone again
    assert etherpad.ok("listSessionsOfAuthor", authorID=pads.ids.authors()[uid]) in ({}, None)


def test_export_failure_stops_the_purge(etherpad: Etherpad, pads: PadsConnector,
                                        tmp_path: Path) -> None:
    """A pad that cannot be exported is ServiceUnavailable: the sync then does not purge."""
    uid = new_uid()
    run(pads, desired((member(uid), Phase.ACTIVE)))
    group = pads.ids.groups()[f"user:{uid}"]
    etherpad.ok("createGroupPad", groupID=group, padName="kept", text="x\n")
    call = pads.call

    def failing(method: str, **params: Any) -> Any:
        if method == "getHTML":
            raise EtherpadError(method, 2, "internal error")
        return call(method, **params)

    pads.call = failing  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailable, match="cannot export"):
        pads.export(member(uid, status="departed"), tmp_path / "pads")


def test_export_of_a_member_unknown_to_pads_is_empty(pads: PadsConnector, tmp_path: Path) -> None:
    assert pads.export(member(new_uid(), status="departed"), tmp_path / "x") == []


def test_export_falls_back_to_text_when_rate_limited(etherpad_tree: Path,
                                                      tmp_path: Path) -> None:
    server = Etherpad(etherpad_tree, tmp_path / "home",
                      importExportRateLimiting={"windowMs": 90000, "max": 2})
    server.start()
    try:
        pads = make_connector(server.url, server.key_file)
        uid = new_uid()
        run(pads, desired((member(uid), Phase.ACTIVE)))
        group = pads.ids.groups()[f"user:{uid}"]
        for name in ("a", "b", "c"):
            server.ok("createGroupPad", groupID=group, padName=name, text=f"text {name}\n")
        files = pads.export(member(uid, status="departed"), tmp_path / "out")
    finally:
        server.stop()
    suffixes = sorted(p.suffix for p in files)
    assert suffixes.count(".txt") == 3 and suffixes.count(".html") == 3
    assert suffixes.count(".etherpad") == 2  # the third export hit the limit
    assert (tmp_path / "out" / f"{group}$c.txt").read_text().strip() == "text c"


def test_one_failing_member_does_not_stop_the_others(etherpad: Etherpad,
                                                     pads: PadsConnector) -> None:
    good = new_uid()
    bad = ServiceChange("pads", Action.SUSPEND, new_uid())
    pads.ids.set_author(bad.uid, "a.doesnotexist0000")  # an author Etherpad never had
    changes = [bad, ServiceChange("pads", Action.CREATE, good, {"name": "Good"})]
    results: list[ChangeResult] = []
    pads.apply(changes, results.append)
    assert [(r.change.uid, r.ok) for r in results] == [(bad.uid, False), (good, True)]
    assert "authorID does not exist" in (results[0].error or "")
    assert good in pads.ids.authors()


def test_wrong_key_is_a_clear_error_without_the_key(etherpad: Etherpad, tmp_path: Path) -> None:
    wrong = "wrong-key-that-must-not-leak-42"
    key_file = tmp_path / "wrong"
    key_file.write_text(wrong)
    pads = make_connector(etherpad.url, key_file)
    with pytest.raises(ServiceUnavailable) as caught:
        pads.observe()
    message = str(caught.value)
    assert "refused coopctl's API key" in message and "no or wrong API Key" in message
    assert wrong not in message and API_KEY not in message
    results: list[ChangeResult] = []
    with pytest.raises(ServiceUnavailable):
        pads.apply([ServiceChange("pads", Action.CREATE, "x", {"name": "X"}),
                    ServiceChange("pads", Action.RESTORE, "y")], results.append)
    assert [r.ok for r in results] == [False, False]
    assert all(wrong not in (r.error or "") for r in results)


def test_api_key_travels_in_the_body_only(etherpad: Etherpad, pads: PadsConnector) -> None:
    sent: list[requests.PreparedRequest] = []
    original = pads._http.send

    def spy(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        sent.append(request)
        return original(request, **kwargs)

    pads._http.send = spy  # type: ignore[method-assign]
    pads.observe()
    assert sent
    for request in sent:
        assert request.method == "POST"
        assert API_KEY not in (request.url or "")
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert f"apikey={API_KEY}" in str(request.body)


def test_through_tls_with_host_header(etherpad: Etherpad, tmp_path: Path) -> None:
    """As in production: HTTPS to an address, the vhost in Host, TLS checked with the coop CA;
    the front's request log (nginx's access log) never shows the key."""
    from tests.conftest import make_pki

    pki = make_pki(tmp_path / "pki")
    front = TlsFront(etherpad, pki)
    try:
        pads = make_connector(front.url, etherpad.key_file, ca_file=str(pki / "ca.crt"),
                              host_header="pads.demo.coop")
        uid = new_uid()
        run(pads, desired((member(uid), Phase.ACTIVE)))
        group = pads.ids.groups()[f"user:{uid}"]
        etherpad.ok("createGroupPad", groupID=group, padName="tls", text="over TLS\n")
        files = pads.export(member(uid, status="departed"), tmp_path / "out")
        assert sorted(p.suffix for p in files) == [".etherpad", ".html", ".txt"]
        assert front.log, "nothing went through the front"
        assert {host for _, host in front.log} == {"pads.demo.coop"}
        assert any("/export/etherpad" in line for line, _ in front.log)
        assert all(API_KEY not in line for line, _ in front.log)

        untrusting = make_connector(front.url, etherpad.key_file)  # system CAs only
        with pytest.raises(ServiceUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.observe()
    finally:
        front.close()


def test_etherpad_down_is_service_unavailable(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    pads = make_connector(f"http://127.0.0.1:{free_port()}", key_file)
    with pytest.raises(ServiceUnavailable) as caught:
        pads.observe()
    assert "does not answer" in str(caught.value)
    assert API_KEY not in str(caught.value)
    results: list[ChangeResult] = []
    with pytest.raises(ServiceUnavailable):
        pads.apply([ServiceChange("pads", Action.CREATE, "x", {"name": "X"})], results.append)
    assert [r.ok for r in results] == [False]


def test_stale_ids_are_recreated(etherpad: Etherpad, pads: PadsConnector) -> None:
    """After Etherpad lost its data (a reset dirty DB), the plan creates everything again.

    The reset is simulated by remembered IDs Etherpad never had: observe sees the personal
    group missing from listAllGroups (an active member), or listSessionsOfAuthor refused
    (a member marked suspended).
    """
    uid, held = new_uid(), new_uid()
    staff = f"staff-{uid}"
    want = desired((member(uid, {staff}), Phase.ACTIVE), (member(held), Phase.ACTIVE))
    run(pads, want)
    run(pads, desired((member(held, status="suspended"), Phase.DISABLED)))
    assert held in pads.ids.suspended()
    pads.ids.set_author(uid, "a.lostlostlost0000")
    pads.ids.set_group(f"user:{uid}", "g.lostlostlost0001")
    pads.ids.set_group(f"group:{staff}", "g.lostlostlost0000")
    pads.ids.set_author(held, "a.lostlostlost0002")
    pads.ids.set_group(f"user:{held}", "g.lostlostlost0002")
    observed = pads.observe()
    assert {f.uid for f in observed.findings} == {uid, held}
    assert uid not in observed.accounts and held not in observed.accounts
    assert {(c.action, c.uid) for c in pads.plan(want, observed)} == {
        (Action.CREATE, uid), (Action.GROUPS, uid), (Action.CREATE, held), (Action.RESTORE, held)}
    run(pads, want)
    assert_settled(pads, want)
    assert pads.observe().findings == []


def count_observe_calls(connector: PadsConnector) -> dict[str, int]:
    """API calls made by one observe(), by method."""
    calls: dict[str, int] = {}
    call = connector.call

    def counting(method: str, **params: Any) -> Any:
        calls[method] = calls.get(method, 0) + 1
        return call(method, **params)

    connector.call = counting  # type: ignore[method-assign]
    try:
        connector.observe()
    finally:
        connector.call = call  # type: ignore[method-assign]
    return calls


def test_observe_cost_does_not_grow_with_active_members(etherpad: Etherpad,
                                                        pads: PadsConnector) -> None:
    """Observe costs O(groups + suspended members): 3 or 30 active members, same calls."""
    staff, board = f"staff-{new_uid()}", f"board-{new_uid()}"
    members = [member(new_uid(), {staff} if i % 2 else {staff, board}) for i in range(30)]
    few = desired(*((m, Phase.ACTIVE) for m in members[:3]))
    run(pads, few)
    in_board = portal_session(etherpad, members[0].uid, f"group:{board}")
    with_few = count_observe_calls(pads)
    assert with_few == {"listAllGroups": 1, "listSessionsOfGroup": 2}

    many = desired(*((m, Phase.ACTIVE) for m in members))
    run(pads, many)
    assert count_observe_calls(pads) == with_few
    # the sessions of directory groups are still attributed to their members
    observed = pads.observe()
    assert set(observed.accounts) >= {m.uid for m in members}
    board_id = pads.ids.groups()[f"group:{board}"]
    assert [s.group_id for s in observed.sessions[members[0].uid]] == [board_id]
    # leaving the group is seen without a per-member call
    members[0] = member(members[0].uid, {staff})
    many = desired(*((m, Phase.ACTIVE) for m in members))
    assert [(c.action, c.uid, dict(c.detail)) for c in pads.plan(many, observed)] == [
        (Action.GROUPS, members[0].uid, {"add": [], "remove": [board]})]
    run(pads, many)
    assert not session_exists(etherpad, in_board)

    # a member marked suspended costs one listSessionsOfAuthor, and only that
    run(pads, desired((member(members[1].uid, status="suspended"), Phase.DISABLED)))
    assert count_observe_calls(pads) == {**with_few, "listSessionsOfAuthor": 1}


def test_plan_is_pure_and_skips_other_members(tmp_path: Path) -> None:
    """Members absent from `desired` are never touched; plan makes no call (no server here)."""
    pads = make_connector("http://127.0.0.1:9", tmp_path / "no-key")
    observed = PadsObservation(
        authors={"ann": "a.1", "bob": "a.2"}, personal_groups={"ann": "g.p1", "bob": "g.p2"},
        groups={"staff": "g.s"}, sessions={"ann": [Session("g.s", 1)], "bob": []},
        suspended=set(), known={"ann", "bob"})
    pads.call = None  # type: ignore[assignment,method-assign]  # any I/O would fail
    want = desired((member("ann", {"staff"}), Phase.ACTIVE))
    assert pads.plan(want, observed) == []
    want = desired((member("ann", set()), Phase.DISABLED))
    assert [(c.action, dict(c.detail)) for c in pads.plan(want, observed)] == [
        (Action.SUSPEND, {"sessions": 1})]


def test_etherpad_errors_carry_etherpads_message(etherpad: Etherpad,
                                                 pads: PadsConnector) -> None:
    with pytest.raises(EtherpadError, match="groupID does not exist"):
        pads.call("listPads", groupID="g.nonenonenone0000")


# -- the ID book ----------------------------------------------------------------------------
def test_the_id_book_reads_the_store_once_and_writes_through(tmp_path: Path) -> None:
    """Reading every remembered ID once per member made a first sync quadratic: the book is
    read once (and again after reload()), every write goes to the store at once, never two IDs
    for one key; a leftover second ID (an older version's) is forgotten, to be derived again."""
    from provisioner.journal import Journal
    from provisioner.services.pads import _IdBook

    journal = Journal(tmp_path / "journal.sqlite")
    journal.mark("pads", "author-id", "old=a.1")
    journal.mark("pads", "author-id", "old=a.2")  # two IDs for one key
    journal.mark("pads", "author-id", "kept=a.3")
    reads = 0
    marks = journal.marks

    def counting(service: str, kind: str) -> set[str]:
        nonlocal reads
        reads += 1
        return marks(service, kind)

    journal.marks = counting  # type: ignore[method-assign]
    book = _IdBook(journal)
    assert dict(book.authors()) == {"kept": "a.3"}
    assert marks("pads", "author-id") == {"kept=a.3"}
    for n in range(50):
        book.set_author(f"m{n}", f"a.{n}x")
        assert book.authors()[f"m{n}"] == f"a.{n}x"
    book.set_author("m0", "a.new")
    book._write(book.AUTHOR_ID, "m1", None)  # what forget() does
    before = reads
    assert book.authors()["m0"] == "a.new" and "m1" not in book.authors()
    assert reads == before  # no store read per call
    stored = marks("pads", "author-id")
    assert "m0=a.new" in stored and "m0=a.0x" not in stored and not any(
        e.startswith("m1=") for e in stored)
    # another process writes: seen after reload()
    marks_before = reads
    journal.mark("pads", "author-id", "other=a.9")
    assert "other" not in book.authors()
    book.reload()
    assert book.authors()["other"] == "a.9" and reads > marks_before
    journal.close()
