"""The cloud connector against the Nextcloud contract double, started for real on loopback.

Plan tests are pure (no server). The host side (token revocation, leftover files, exports)
is checked through what the connector hands to ``hosts.playbook``: the playbook itself runs
in the lab tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from provisioner.services.base import (
    Action,
    ChangeResult,
    Desired,
    MemberState,
    ServiceChange,
    ServiceUnavailable,
)
from provisioner.services.cloud import (
    MIB,
    CloudAccount,
    CloudConnector,
    CloudObservation,
    nextcloud_stored_quota,
)
from tests.sync_helpers import MemoryState, free_port, runtime, serve_nextcloud_double

ADMIN_PASSWORD = "cloud-admin-Secret-42"


# ------------------------------------------------------------------ helpers
class RecordingHosts:
    """HostAccess that records playbook runs; `fail` names uids whose item fails."""

    def __init__(self, fail: Mapping[str, str] | None = None, error: str | None = None):
        self.runs: list[tuple[str, dict[str, Any]]] = []
        self.signals: list[list[str]] = []
        self.fail = dict(fail or {})
        self.error = error

    def signal(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Answers as the role's coop-cloud-end-sessions does: a line per uid."""
        assert group == "cloud_servers" and argv[0] == "coop-cloud-end-sessions"
        self.signals.append(list(argv))
        if self.error is not None:
            raise OSError(self.error)
        return "".join(f"{uid}\t1\t{self.fail[uid]}\n" if uid in self.fail
                       else f"{uid}\t0\t2 token(s) deleted\n" for uid in argv[1:])

    def read(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        raise AssertionError("the cloud connector reads nothing over SSH")

    def playbook(self, name: str, extravars: Mapping[str, Any]) -> dict[str, Any]:
        self.runs.append((name, dict(extravars)))
        for item in extravars.get("coop_sync_cloud", []):
            if item["action"] == "export" and item["uid"] not in self.fail:
                Path(item["dest"], "files.tar").write_bytes(b"tar")  # what fetch would write
        return {"ok": self.error is None, "error": self.error,
                "failed_items": dict(self.fail), "changed": 1}


def member(uid: str, *, status: str = "active", groups: Sequence[str] = ("members",),
           quota: int | None = 1024, services: Sequence[str] = ("cloud", "mail")) -> MemberState:
    return MemberState(
        uid=uid, mail=f"{uid}@demo.coop", display_name=f"Member {uid}", language="en",
        status=status, services=frozenset(services), groups=frozenset(groups),
        mail_quota=1024, cloud_quota=quota,
    )


def desired(*members: MemberState, purge_due: bool = False) -> dict[str, Desired]:
    return {m.uid: Desired(m, m.phase("cloud", purge_due)) for m in members}


def connector(url: str = "http://127.0.0.1:9", secret_file: Path | None = None,
              hosts: RecordingHosts | None = None, state: MemoryState | None = None,
              **settings: Any) -> CloudConnector:
    def secret(name: str) -> str:
        assert name == "admin_secret_file"
        return Path(settings_all[name]).read_text()

    settings_all = {"url": url, "admin_user": "admin",
                    "admin_secret_file": str(secret_file or "/nonexistent"), **settings}
    return CloudConnector(runtime(hosts or RecordingHosts(), state, settings=settings_all,
                                  secret=secret))


def apply(conn: CloudConnector, changes: Sequence[ServiceChange]) -> list[ChangeResult]:
    """apply, then follow_up for what apply left to it (as `coopctl sync` does): each change's
    final result, the follow-up's where there was one."""
    results: list[ChangeResult] = []
    conn.apply(changes, results.append)
    assert len(results) == len(changes)
    later: dict[str, ChangeResult] = {}
    conn.follow_up([r.change for r in results if r.ok and r.follow_up],
                   lambda r: later.__setitem__(r.change.uid, r))
    assert set(later) == {r.change.uid for r in results if r.ok and r.follow_up}
    return [later.get(r.change.uid, r) if r.follow_up else r for r in results]


def account(uid: str, *, enabled: bool = True, quota: int | None = 1024 * MIB, used: int = 0,
            groups: Sequence[str] = ("members",)) -> CloudAccount:
    return CloudAccount(uid, enabled, quota, used, frozenset(groups))


def observation(*accounts: CloudAccount, groups: Sequence[str] = ("admin", "members"),
                managed: Sequence[str] = ()) -> CloudObservation:
    return CloudObservation({a.uid: a for a in accounts}, frozenset(groups), frozenset(managed))


@pytest.fixture
def cloud(tmp_path):
    """The double on loopback; yields what a test needs to reach it and its data."""
    secret = tmp_path / "cloud_admin"
    secret.write_text(ADMIN_PASSWORD + "\n")
    secret.chmod(0o600)
    store = tmp_path / "double" / "store.json"
    with serve_nextcloud_double(store, secret) as (base, env, _proc):
        hosts, state = RecordingHosts(), MemoryState()
        conn = connector(base, secret, hosts, state, page_size=2)
        yield {"conn": conn, "hosts": hosts, "state": state, "base": base, "secret": secret,
               "data": store.parent / "data", "store": store, "env": env}


def converge(conn: CloudConnector, want: Mapping[str, Desired]) -> list[ServiceChange]:
    """Observe, plan, apply (all must succeed); return the changes applied."""
    changes = conn.plan(want, conn.observe())
    results = apply(conn, changes)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return changes


# ------------------------------------------------------------------ pure plan
def test_plan_creates_a_missing_account_with_everything():
    conn = connector()
    changes = conn.plan(desired(member("jan", groups=["members", "board", "admin"],
                                       quota=5120)), observation())
    assert [c.to_dict() for c in changes] == [{
        "service": "cloud", "action": "create", "uid": "jan",
        "detail": {"email": "jan@demo.coop", "display_name": "Member jan", "quota": "5 GB",
                   "groups": ["board", "members"]},  # never Nextcloud's admin group
    }]


def test_plan_restore_quota_groups():
    conn = connector()
    obs = observation(account("jan", enabled=False, quota=1024 * MIB,
                              groups=["members", "old", "handmade", "admin"]),
                      managed=["old"])
    want = desired(member("jan", groups=["members", "new"], quota=5120))
    changes = {c.action: c for c in conn.plan(want, obs)}
    assert set(changes) == {Action.RESTORE, Action.QUOTA, Action.GROUPS}
    assert changes[Action.QUOTA].detail == {"from": "1 GB", "to": "5 GB"}
    # "old" was managed by coopctl before; "handmade" and "admin" are not the directory's
    assert changes[Action.GROUPS].detail == {"add": ["new"], "remove": ["old"]}
    assert obs.findings == []


def test_groups_of_other_desired_members_are_managed():
    conn = connector()
    obs = observation(account("jan", groups=["members", "board"]), account("eva"))
    want = desired(member("jan", groups=["members"]), member("eva", groups=["members", "board"]))
    changes = conn.plan(want, obs)
    assert [(c.uid, c.action, dict(c.detail)) for c in changes] == [
        ("eva", Action.GROUPS, {"add": ["board"], "remove": []}),
        ("jan", Action.GROUPS, {"add": [], "remove": ["board"]}),
    ]


def test_quota_as_nextcloud_stores_it_is_not_a_change():
    assert nextcloud_stored_quota(1500 * MIB) == 1536 * MIB  # "1.5 GB"
    assert nextcloud_stored_quota(5120 * MIB) == 5120 * MIB
    conn = connector()
    obs = observation(account("jan", quota=1536 * MIB))
    assert conn.plan(desired(member("jan", quota=1500)), obs) == []
    assert conn.plan(desired(member("jan", quota=None)), obs) == []  # directory says nothing


def test_lowering_below_usage_is_planned_and_reported():
    conn = connector()
    obs = observation(account("jan", quota=5120 * MIB, used=1300 * MIB))
    changes = conn.plan(desired(member("jan", quota=1024)), obs)
    assert [c.to_dict()["detail"] for c in changes] == [
        {"from": "5 GB", "to": "1 GB", "over_by": "276 MB"}
    ]
    assert len(obs.findings) == 1
    finding = obs.findings[0]
    assert (finding.service, finding.uid, finding.severity) == ("cloud", "jan", "warning")
    assert "Member jan" in finding.message and "1300 MB" in finding.message
    assert "1 GB" in finding.message and "276 MB" in finding.message
    conn.plan(desired(member("jan", quota=1024)), obs)
    assert len(obs.findings) == 1  # planning again does not repeat it


def test_phases_suspend_purge_gone_and_untouched_members():
    conn = connector()
    obs = observation(
        account("sus"), account("sus2", enabled=False), account("dep"), account("old"),
        account("purged"), account("stranger"), account("admin", groups=["admin"]),
    )
    want = {
        **desired(member("sus", status="suspended"), member("sus2", status="suspended"),
                  member("dep", status="departed"), member("gone", status="purged"),
                  member("purged", status="purged"), member("dropped", services=["mail"])),
        **desired(member("old", status="departed"), purge_due=True),
    }
    changes = conn.plan(want, obs)
    assert [(c.uid, c.action, dict(c.detail)) for c in changes] == [
        ("dep", Action.SUSPEND, {"login": "disable", "sessions": "revoke"}),
        ("old", Action.PURGE, {"account": "delete", "files": "delete"}),
        ("purged", Action.PURGE, {"account": "delete", "remnant": "yes"}),
        ("sus", Action.SUSPEND, {"login": "disable", "sessions": "revoke"}),
    ]
    # "stranger" is unknown to the directory: a finding, never a change; the admin is not one
    assert [(f.uid, "orphan" in f.message) for f in obs.findings] == [("stranger", True)]


# ------------------------------------------------------------------ against the double
def test_create_then_nothing_left_to_do(cloud):
    conn = cloud["conn"]
    want = desired(member("jan", groups=["members", "board"], quota=1500),
                   member("eva", quota=2048), *(member(f"m{i}") for i in range(4)))
    changes = converge(conn, want)
    assert sorted(c.uid for c in changes if c.action is Action.CREATE) == sorted(want)
    obs = conn.observe()  # page_size 2: seven users come in four pages
    assert set(obs.accounts) == {*want, "admin"}
    jan = obs.users["jan"]
    assert jan.enabled and jan.groups == {"members", "board"}
    assert jan.quota == nextcloud_stored_quota(1500 * MIB)
    assert obs.users["eva"].quota == 2048 * MIB
    assert {"members", "board"} <= obs.groups
    assert conn.plan(want, obs) == []  # idempotent
    assert obs.findings == []
    assert cloud["state"].marks("cloud", "managed-group") == {"members", "board"}
    assert (cloud["data"] / "jan" / "files").is_dir()
    # the account got e-mail and display name, and no password anyone knows
    answer = requests.get(f"{cloud['base']}/ocs/v2.php/cloud/users/jan",
                          params={"format": "json"}, headers={"OCS-APIRequest": "true"},
                          auth=("admin", ADMIN_PASSWORD), timeout=5).json()["ocs"]["data"]
    assert (answer["email"], answer["displayname"]) == ("jan@demo.coop", "Member jan")
    assert cloud["hosts"].runs == []  # nothing host-side for accounts
    # A sync narrowed to a few members searches for them instead of listing everyone;
    # "m1" also matches nobody else's uid exactly ("m10" would not exist here anyway).
    narrowed = conn.observe(["jan", "m1"])
    assert set(narrowed.users) == {"jan", "m1"} and narrowed.users["jan"] == jan


def test_quota_and_the_over_quota_finding(cloud):
    conn = cloud["conn"]
    converge(conn, desired(member("jan", quota=5120)))
    (cloud["data"] / "jan" / "files" / "big.bin").write_bytes(b"\0" * (3 * MIB))
    want = desired(member("jan", quota=2))
    obs = conn.observe()
    assert obs.users["jan"].used == 3 * MIB
    changes = conn.plan(want, obs)
    assert [c.to_dict()["detail"] for c in changes] == [
        {"from": "5 GB", "to": "2 MB", "over_by": "1 MB"}
    ]
    assert [f.uid for f in obs.findings] == ["jan"]
    assert all(r.ok for r in apply(conn, changes))
    obs = conn.observe()
    assert obs.users["jan"].quota == 2 * MIB
    assert conn.plan(want, obs) == []
    assert [f.uid for f in obs.findings] == ["jan"]  # still over: still reported


def test_groups_follow_the_directory(cloud):
    conn, base = cloud["conn"], cloud["base"]
    converge(conn, desired(member("jan", groups=["members", "board"]), member("eva")))
    auth = ("admin", ADMIN_PASSWORD)
    headers = {"OCS-APIRequest": "true"}
    requests.post(f"{base}/ocs/v2.php/cloud/groups", data={"groupid": "handmade"},
                  headers=headers, auth=auth, timeout=5)
    requests.post(f"{base}/ocs/v2.php/cloud/users/jan/groups", data={"groupid": "handmade"},
                  headers=headers, auth=auth, timeout=5)
    # jan leaves "board" (nobody else is in it now) and joins "garden"
    want = desired(member("jan", groups=["members", "garden"]), member("eva"))
    changes = converge(conn, want)
    assert [(c.uid, dict(c.detail)) for c in changes] == [
        ("jan", {"add": ["garden"], "remove": ["board"]})
    ]
    obs = conn.observe()
    assert obs.users["jan"].groups == {"members", "garden", "handmade"}
    assert obs.users["admin"].groups == {"admin"}
    assert conn.plan(want, obs) == []


def test_suspend_restore_and_one_ssh_command_for_the_sessions(cloud):
    conn, hosts = cloud["conn"], cloud["hosts"]
    converge(conn, desired(member("jan"), member("eva"), member("ole")))
    want = desired(member("jan", status="suspended"), member("eva", status="departed"),
                   member("ole"))
    changes = converge(conn, want)
    assert sorted((c.uid, c.action) for c in changes) == [
        ("eva", Action.SUSPEND), ("jan", Action.SUSPEND)
    ]
    assert hosts.runs == []  # no Ansible run: the sessions end over one SSH command
    assert hosts.signals == [["coop-cloud-end-sessions", "eva", "jan"]]
    obs = conn.observe()
    assert (obs.users["jan"].enabled, obs.users["eva"].enabled, obs.users["ole"].enabled) == (
        False, False, True)
    assert conn.plan(want, obs) == []
    changes = converge(conn, desired(member("jan"), member("eva", status="departed"),
                                     member("ole")))
    assert [(c.uid, c.action) for c in changes] == [("jan", Action.RESTORE)]
    assert conn.observe().users["jan"].enabled
    assert len(hosts.signals) == 1


def test_a_suspension_is_in_effect_once_disabled_and_the_tokens_follow(cloud):
    """apply reports the suspension as soon as the account is disabled (Nextcloud refuses a
    disabled account's every session from then on: tests/test_nextcloud_double.py's
    test_disabled_users_tokens_stop_working), before any SSH; the token deletion is the
    follow-up, and until it ran the member stays marked for the next run."""
    conn, hosts, state = cloud["conn"], cloud["hosts"], cloud["state"]
    converge(conn, desired(member("jan"), member("eva")))
    changes = conn.plan(desired(member("jan", status="suspended"), member("eva")),
                        conn.observe())
    results: list[ChangeResult] = []
    conn.apply(changes, results.append)
    assert [(r.change.uid, r.ok, r.follow_up) for r in results] == [("jan", True, True)]
    assert hosts.signals == [] and not conn.observe().users["jan"].enabled
    assert state.marks("cloud", "sessions-to-end") == {"jan"}
    later: list[ChangeResult] = []
    conn.follow_up([r.change for r in results], later.append)
    assert [(r.change.uid, r.ok, dict(r.change.detail)) for r in later] == [
        ("jan", True, {"sessions": "auth tokens deleted"})]
    assert hosts.signals == [["coop-cloud-end-sessions", "jan"]]
    assert state.marks("cloud", "sessions-to-end") == set()


def test_purge_and_remnant(cloud):
    conn, hosts = cloud["conn"], cloud["hosts"]
    converge(conn, desired(member("old"), member("rem")))
    (cloud["data"] / "old" / "files" / "notes.txt").write_text("mine")
    want = {**desired(member("old", status="departed"), purge_due=True),
            **desired(member("rem", status="purged"))}
    changes = converge(conn, want)
    assert sorted((c.uid, c.action) for c in changes) == [
        ("old", Action.PURGE), ("rem", Action.PURGE)
    ]
    assert hosts.runs == [("sync.yml", {"coop_sync_cloud": [
        {"uid": "old", "action": "purge_files"}, {"uid": "rem", "action": "purge_files"},
    ]})]
    obs = conn.observe()
    assert {"old", "rem"}.isdisjoint(obs.accounts)
    assert not (cloud["data"] / "old").exists()
    assert conn.plan(want, obs) == []


def test_one_members_failure_does_not_stop_the_others(cloud):
    conn = cloud["conn"]
    bad = ServiceChange("cloud", Action.CREATE, "bad/uid", {"email": "x@demo.coop"})
    good = ServiceChange("cloud", Action.CREATE, "zoe", {"email": "zoe@demo.coop",
                                                         "quota": "1 GB"})
    results = {r.change.uid: r for r in apply(conn, [bad, good])}
    assert results["zoe"].ok
    assert not results["bad/uid"].ok and "OCS 101" in (results["bad/uid"].error or "")
    assert "zoe" in conn.observe().accounts


def test_failed_host_item_is_reported_against_its_member(cloud):
    hosts = RecordingHosts(fail={"jan": "occ failed"})
    conn = connector(cloud["base"], cloud["secret"], hosts)
    converge(conn, desired(member("jan"), member("eva")))
    changes = conn.plan(desired(member("jan", status="suspended"),
                                member("eva", status="suspended")), conn.observe())
    results = {r.change.uid: r for r in apply(conn, changes)}
    assert results["eva"].ok
    assert not results["jan"].ok and "occ failed" in (results["jan"].error or "")
    assert "disabled" in (results["jan"].error or "")
    assert not conn.observe().users["jan"].enabled  # login is cut even so


def test_sessions_not_ended_are_ended_by_the_next_run(cloud):
    """The token deletion failed (the cloud host unreachable): the account is disabled, so
    only the state store remembers that jan's sessions live on; the next run ends them and
    forgets it. The mark is set before the disable, so a run that dies in between counts too."""
    state = MemoryState()
    down = RecordingHosts(error="ssh: connect to host apps port 22: No route to host")
    conn = connector(cloud["base"], cloud["secret"], down, state)
    converge(conn, desired(member("jan"), member("eva")))
    want = desired(member("jan", status="suspended"), member("eva"))
    [result] = apply(conn, conn.plan(want, conn.observe()))
    assert not result.ok
    assert state.marks("cloud", "sessions-to-end") == {"jan"}
    up = RecordingHosts()
    conn = connector(cloud["base"], cloud["secret"], up, state)
    [change] = conn.plan(want, conn.observe())
    assert (change.uid, change.action, dict(change.detail)) == (
        "jan", Action.SUSPEND, {"login": "already disabled", "sessions": "revoke"})
    [result] = apply(conn, [change])
    assert result.ok and up.signals == [["coop-cloud-end-sessions", "jan"]]
    assert state.marks("cloud", "sessions-to-end") == set()
    assert conn.plan(want, conn.observe()) == []
    # a run that dies after the disable and before the SSH command: the mark is there
    crashing = desired(member("jan", status="suspended"), member("eva", status="suspended"))
    [suspend_eva] = conn.plan(crashing, conn.observe())
    conn._apply_one(conn._client(), suspend_eva, set())  # disable, then "die"
    assert state.marks("cloud", "sessions-to-end") == {"eva"}
    assert [(c.uid, c.detail["login"]) for c in conn.plan(crashing, conn.observe())] == [
        ("eva", "already disabled")]
    # restored before the sessions were ended: nothing left to end
    restored = [c for c in conn.plan(desired(member("jan", status="suspended"), member("eva")),
                                     conn.observe())]
    assert [(c.uid, c.action) for c in restored] == [("eva", Action.RESTORE)]
    apply(conn, restored)
    assert state.marks("cloud", "sessions-to-end") == set()


def test_an_unreachable_cloud_host_fails_each_suspension_but_the_login_is_cut(cloud):
    hosts = RecordingHosts(error="ssh: connect to host apps port 22: No route to host")
    conn = connector(cloud["base"], cloud["secret"], hosts)
    converge(conn, desired(member("jan")))
    changes = conn.plan(desired(member("jan", status="suspended")), conn.observe())
    [result] = apply(conn, changes)
    assert not result.ok and "deleting its auth tokens failed: ssh: connect" in (result.error or "")
    assert not conn.observe().users["jan"].enabled


def test_export_goes_through_the_sync_playbook(tmp_path):
    hosts = RecordingHosts()
    conn = connector(hosts=hosts)
    dest = tmp_path / "stage" / "cloud"
    assert conn.export(member("old"), dest) == [dest / "files.tar"]
    assert hosts.runs == [("sync.yml", {"coop_sync_cloud": [
        {"uid": "old", "action": "export", "dest": str(dest.resolve())}
    ]})]
    conn = connector(hosts=RecordingHosts(fail={"old": "tar: files: Cannot open"}),
                     data_dir="/srv/nc/data")
    with pytest.raises(ServiceUnavailable, match="Cannot open"):
        conn.export(member("old"), tmp_path / "other")
    assert conn.runtime.hosts.runs[0][1]["coop_sync_cloud"][0]["data_dir"] == "/srv/nc/data"  # type: ignore[attr-defined]


# ------------------------------------------------------------------ unavailable
def test_service_down_is_service_unavailable(tmp_path):
    secret = tmp_path / "s"
    secret.write_text(ADMIN_PASSWORD)
    conn = connector(f"http://127.0.0.1:{free_port()}", secret)
    with pytest.raises(ServiceUnavailable, match="cannot reach"):
        conn.observe()
    changes = [ServiceChange("cloud", Action.RESTORE, "jan"),
               ServiceChange("cloud", Action.QUOTA, "eva", {"from": "1 GB", "to": "2 GB"})]
    results = apply(conn, changes)  # reported, never raised
    assert not any(r.ok for r in results)
    assert all("cannot reach" in (r.error or "") for r in results)
    with pytest.raises(ServiceUnavailable, match="admin_secret_file"):
        connector(f"http://127.0.0.1:{free_port()}").observe()


def test_wrong_admin_password_is_refused_without_leaking_it(cloud, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-Password-77")
    conn = connector(cloud["base"], wrong)
    with pytest.raises(ServiceUnavailable, match="refused the admin") as caught:
        conn.observe()
    assert "not-the-Password-77" not in str(caught.value)
    results = apply(conn, [ServiceChange("cloud", Action.CREATE, "jan", {})])
    assert not results[0].ok and "not-the-Password-77" not in (results[0].error or "")
    assert ADMIN_PASSWORD not in (results[0].error or "")
