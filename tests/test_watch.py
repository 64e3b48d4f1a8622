"""`coopctl watch` against a real private slapd (Debian's, with syncprov): the stream, the
cookie, the entryUUID map, the guard, reconnection and crashes.

The services are NOT involved here: most tests drive the watcher with `RecordingSink`, which
records the member uids of each batch instead of running the sync's connectors (those are
tested in the connector and sync tests, and end to end on the lab). What is checked is the
directory side: which members reach the sync, when, how often, and what is stored. The CLI
tests at the end run the real `SyncSink` (the sync with no service configured).

Each test builds its own slapd (some restart or starve it) with fsync off: about 0.3 s each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ldap3
import pytest
import yaml
from click.testing import CliRunner

from provisioner.cli import cli
from provisioner.cli.demo import write_local_config
from provisioner.config import load
from provisioner.journal import Journal
from provisioner.localslapd import LocalDirectory
from provisioner.watch import status as status_mod
from provisioner.watch.sink import RecordingSink
from provisioner.watch.watcher import Watcher, WatchSettings
from tests.conftest import SUFFIX

PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
FAST = WatchSettings(batch_window=0.1, heartbeat=0.5, backoff_min=0.2, backoff_max=1.0,
                     full_sync_every=0)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll until `condition` holds (a bound on waiting, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"gave up waiting for: {what}")


class Coop:
    """A private slapd with an initialised coop (plans small and big), its config, an admin
    connection (ldapi, SASL EXTERNAL) and helpers to change members behind coopctl's back."""

    def __init__(self, workdir: Path, sync: dict | None = None) -> None:
        self.workdir = workdir
        self.slapd = LocalDirectory(workdir / "slapd", suffix=SUFFIX, durable=False)
        self.slapd.build()
        self.slapd.start()
        self.config_path = write_local_config(workdir, self.slapd)
        if sync:
            data = yaml.safe_load(self.config_path.read_text())
            data["sync"].update(sync)
            self.config_path.write_text(yaml.safe_dump(data))
        self.cli("init")
        for plan, quota in (("small", "1 GB"), ("big", "5 GB")):
            self.cli("plan", "add", plan, "--mail-quota", quota, "--cloud-quota", "5 GB",
                     "--service", "mail")
        self.config = load(self.config_path)
        self.state_dir = Path(self.config.sync.state_dir)
        self.admin = self.connect()

    def cli(self, *args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, ["--config", str(self.config_path), *args])
        assert result.exit_code == code, f"{args}: {result.output}"
        return result.stdout

    def connect(self) -> ldap3.Connection:
        return ldap3.Connection(ldap3.Server(self.slapd.ldapi_uri), authentication=ldap3.SASL,
                                sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="",
                                auto_bind=True)

    def reconnect(self) -> None:
        self.admin = self.connect()

    def add(self, uid: str, plan: str = "small") -> None:
        assert self.admin.add(f"uid={uid},{PEOPLE}", ["inetOrgPerson", "coopMember"], {
            "cn": uid, "sn": uid, "mail": f"{uid}@demo.coop", "coopMemberStatus": "active",
            "coopPlan": f"cn={plan},ou=plans,{SUFFIX}"}), self.admin.result

    def modify(self, uid: str, **values: str) -> None:
        changes = {k: [(ldap3.MODIFY_REPLACE, [v])] for k, v in values.items()}
        assert self.admin.modify(f"uid={uid},{PEOPLE}", changes), self.admin.result

    def delete(self, uid: str) -> None:
        assert self.admin.delete(f"uid={uid},{PEOPLE}"), self.admin.result

    def group(self, name: str, uids: list[str]) -> None:
        assert self.admin.add(f"cn={name},{GROUPS}", ["groupOfNames"], {
            "cn": name, "member": [f"uid={u},{PEOPLE}" for u in uids]}), self.admin.result

    def watcher(self, sink: RecordingSink, settings: WatchSettings = FAST) -> Watcher:
        made = Watcher(self.config, sink, settings)
        made.open()
        return made

    def status(self) -> dict:
        return status_mod.read(self.state_dir / "watch") or {}


@pytest.fixture
def coop(tmp_path: Path) -> Iterator[Coop]:
    made = Coop(tmp_path / "coop")
    yield made
    made.slapd.destroy()


class Running:
    """A watcher following the stream in a thread (refreshAndPersist)."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.watcher.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.watcher.stop()
        self.thread.join(timeout=30)
        self.watcher.close()
        assert self.error is None, self.error


def seen(sink: RecordingSink) -> set[str]:
    return set().union(*sink.batches) if sink.batches else set()


def once(coop: Coop, sink: RecordingSink, settings: WatchSettings = FAST) -> dict:
    made = coop.watcher(sink, settings)
    try:
        return made.run(once=True)
    finally:
        made.close()


def test_a_change_reaches_the_batch_within_the_window(coop: Coop) -> None:
    for n in range(5):
        coop.add(f"m{n}")
    sink = RecordingSink()
    running = Running(coop.watcher(sink))
    try:
        # no cookie yet: the first refresh lists everything and makes one full sync
        wait_for(lambda: coop.status().get("state") == "streaming", "the persist phase")
        assert sink.fulls == 1 and sink.batches == []
        # an attribute the sync does not read (as a failed login's ppolicy stamp) costs no
        # sync; the change after it does
        coop.modify("m0", description="not read by the sync")
        coop.modify("m1", displayName="Changed")
        wait_for(lambda: "m1" in seen(sink), "m1's change in a batch")
        assert sink.batches == [{"m1"}]
        # a new group: its members; a membership change: only the member added
        coop.group("board", ["m2", "m3"])
        wait_for(lambda: {"m2", "m3"} <= seen(sink), "the new group's members")
        before = len(sink.batches)
        assert coop.admin.modify(f"cn=board,{GROUPS}", {
            "member": [(ldap3.MODIFY_ADD, [f"uid=m4,{PEOPLE}"])]})
        wait_for(lambda: len(sink.batches) > before, "the membership change")
        assert sink.batches[-1] == {"m4"}
        # a plan's quota: every member on that plan
        coop.add("other", plan="big")
        wait_for(lambda: "other" in seen(sink), "the new member")
        before = len(sink.batches)
        coop.cli("plan", "modify", "big", "--mail-quota", "6 GB")
        wait_for(lambda: len(sink.batches) > before, "the plan change")
        assert sink.batches[-1] == {"other"}
        wait_for(lambda: coop.status()["counters"]["batches"] == 5, "the status file")
        status = coop.status()
        assert status["connected"] and status["cookie_time"] and status["alert"] is None
    finally:
        running.stop()
    assert coop.status()["state"] == "stopped"
    metrics = (coop.state_dir / "watch" / "metrics.prom").read_text()
    assert "coopctl_watch_up 0" in metrics and "coopctl_watch_batches_total 5" in metrics


def test_a_thousand_changes_while_stopped_are_applied_once_without_a_full_refresh(
        coop: Coop) -> None:
    for n in range(300):
        coop.add(f"m{n:03d}")
    first = RecordingSink()
    once(coop, first)
    assert first.fulls == 1
    cookie = (coop.state_dir / "watch" / "watch.sqlite").exists()
    assert cookie
    # 1,000 changes while no watcher runs: 775 modifications of 155 members, 200 new
    # members, 25 deletions
    for round_ in range(5):
        for n in range(155):
            coop.modify(f"m{n:03d}", displayName=f"round {round_}")
    for n in range(200):
        coop.add(f"new{n:03d}")
    for n in range(275, 300):
        coop.delete(f"m{n:03d}")
    expected = ({f"m{n:03d}" for n in range(155)} | {f"new{n:03d}" for n in range(200)}
                | {f"m{n:03d}" for n in range(275, 300)})
    second = RecordingSink()
    status = once(coop, second)
    assert second.fulls == 0, "the cookie was not used: a full refresh happened"
    assert seen(second) == expected
    assert sum(len(b) for b in second.batches) == len(expected), "a member came twice"
    refresh = status["refresh"]
    assert refresh["kind"] == "incremental"
    # only the changed entries came with attributes (the others at most as bare UUIDs)
    assert refresh["entries"] == 155 + 200
    # and nothing is replayed by the next start
    third = RecordingSink()
    once(coop, third)
    assert third.batches == [] and third.fulls == 0


def test_slapd_restarted_under_the_watcher_reconnects_and_continues(coop: Coop) -> None:
    for n in range(5):
        coop.add(f"m{n}")
    sink = RecordingSink()
    running = Running(coop.watcher(sink))
    try:
        wait_for(lambda: coop.status().get("state") == "streaming", "the persist phase")
        coop.modify("m0", displayName="before")
        wait_for(lambda: "m0" in seen(sink), "the change before the restart")
        coop.slapd.stop()
        wait_for(lambda: coop.status()["counters"]["reconnects"] >= 1, "a reconnection attempt")
        assert not coop.status()["connected"]
        coop.slapd.start()
        coop.reconnect()
        wait_for(lambda: coop.status().get("connected") and
                 coop.status().get("state") == "streaming", "the stream again")
        coop.modify("m1", displayName="after")
        wait_for(lambda: "m1" in seen(sink), "the change after the restart")
    finally:
        running.stop()
    assert [b for b in sink.batches if "m0" in b] == [{"m0"}], "m0 was replayed"
    assert sink.fulls == 1


def test_deletions_are_resolved_through_the_entryuuid_map(coop: Coop) -> None:
    for n in range(10):
        coop.add(f"m{n}")
    coop.group("wiki", ["m5", "m6"])
    sink = RecordingSink()
    running = Running(coop.watcher(sink))
    try:
        wait_for(lambda: coop.status().get("state") == "streaming", "the persist phase")
        coop.delete("m1")
        wait_for(lambda: "m1" in seen(sink), "the deleted member")
        assert coop.admin.delete(f"cn=wiki,{GROUPS}")
        wait_for(lambda: {"m5", "m6"} <= seen(sink), "the deleted group's members")
    finally:
        running.stop()
    # deleted while stopped: the refresh reports it by entryUUID only (a syncIdSet)
    coop.delete("m2")
    later = RecordingSink()
    once(coop, later)
    assert later.batches == [{"m2"}]
    # the map forgot them
    state = sqlite_rows(coop, "SELECT name FROM entries WHERE kind = 'member'")
    assert {"m1", "m2"}.isdisjoint(state) and "m3" in state


def sqlite_rows(coop: Coop, query: str) -> set[str]:
    import sqlite3

    db = sqlite3.connect(coop.state_dir / "watch" / "watch.sqlite")
    try:
        return {r[0] for r in db.execute(query)}
    finally:
        db.close()


def test_a_mass_deletion_is_held_and_raises_an_alert(coop: Coop) -> None:
    for n in range(100):
        coop.add(f"m{n:03d}")
    sink = RecordingSink()
    running = Running(coop.watcher(sink))
    try:
        wait_for(lambda: coop.status().get("state") == "streaming", "the persist phase")
        for n in range(40):  # the limit is max(5, 10% of 100) = 10
            coop.delete(f"m{n:03d}")
        wait_for(lambda: coop.status().get("alert") is not None, "the alert")
        deleted = {f"m{n:03d}" for n in range(40)}
        # the deletions before the limit went through; every one after it is held
        wait_for(lambda: coop.status().get("held", 0) + len(seen(sink) & deleted) == 40,
                 "every deletion seen")
        coop.modify("m099", displayName="still flows")
        wait_for(lambda: "m099" in seen(sink), "a later modification")
    finally:
        running.stop()
    assert len(seen(sink) & deleted) <= 10, "deletions beyond the limit reached the sync"
    assert coop.status()["held"] >= 30
    assert sqlite_rows(coop, "SELECT uid FROM pending WHERE reason = 'held'") \
        == deleted - seen(sink)
    journal = Journal(coop.config.sync.journal)
    alerts = [e for e in journal.entries(service="watch") if e.action == "alert"]
    journal.close()
    assert len(alerts) == 1 and alerts[0].result == "failed"
    assert "the limit is" in alerts[0].error
    out = CliRunner().invoke(cli, ["--config", str(coop.config_path), "watch", "--status"])
    assert out.exit_code == 9
    assert "ALERT" in out.output and "Error: the watcher's guard" in out.output
    assert "Hint: " in out.output and "Traceback" not in out.output
    # a full sync that succeeds (here the watcher's own, due at once) clears it
    cleared = RecordingSink()
    once(coop, cleared, WatchSettings(batch_window=0.1, full_sync_every=0.001))
    assert cleared.fulls == 1 and coop.status()["alert"] is None


CHILD = """
import sys, logging
from pathlib import Path
from provisioner.config import load
from provisioner.watch.sink import RecordingSink
from provisioner.watch.watcher import Watcher, WatchSettings
logging.basicConfig(level=logging.INFO)
config, record, delay, once = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
watcher = Watcher(load(Path(config)), RecordingSink(record, delay=delay),
                  WatchSettings(batch_window=0.2, heartbeat=0.5, full_sync_every=0))
watcher.open()
with watcher.signals():
    watcher.run(once=once == "once")
watcher.close()
"""


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_kill_9_mid_batch_then_converged_on_restart(coop: Coop, tmp_path: Path) -> None:
    """The watcher runs as its own process with a recording sink that takes 30 s per batch;
    it is killed (SIGKILL) inside a batch, so that batch's cookie is never stored."""
    for n in range(50):
        coop.add(f"m{n:02d}")
    record = tmp_path / "record.jsonl"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def start(delay: float, mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(coop.config_path),
                                 str(record), str(delay), mode], env=env, text=True,
                                stderr=subprocess.PIPE)

    child = start(30, "persist")
    try:
        wait_for(lambda: any(r["kind"] == "full" for r in records(record)), "the first refresh")
        wait_for(lambda: coop.status().get("state") == "streaming", "the persist phase")
        changed = {f"m{n:02d}" for n in range(0, 50, 2)}
        for uid in sorted(changed):
            coop.modify(uid, displayName="changed")
        wait_for(lambda: any(r["kind"] == "batch" for r in records(record)), "a batch begun")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    got_before = {u for r in records(record) if r["kind"] == "batch" for u in r["uids"]}
    assert got_before and got_before <= changed
    assert coop.status().get("state") != "stopped"  # it died without saying so
    # restart: the batch in flight comes again (its cookie was never stored), and more
    record.write_text("")
    rerun = start(0, "once")
    assert rerun.wait(timeout=60) == 0, rerun.stderr.read()
    again = [r for r in records(record) if r["kind"] == "batch"]
    assert {u for r in again for u in r["uids"]} == changed
    assert not any(r["kind"] == "full" for r in records(record))
    # converged: the next run has nothing left
    record.write_text("")
    last = start(0, "once")
    assert last.wait(timeout=60) == 0, last.stderr.read()
    assert records(record) == []


# -- the command line (the real SyncSink, with no service configured) ---------------------

def test_cli_once_status_and_errors(coop: Coop) -> None:
    coop.add("m0")
    missing = CliRunner().invoke(cli, ["--config", str(coop.config_path), "watch", "--status"])
    assert missing.exit_code == 9
    assert "Error: no watcher status" in missing.output and "Hint:" in missing.output
    out = coop.cli("watch", "--once")
    assert "1 full sync" in out
    coop.modify("m0", displayName="Other")
    coop.add("m1")
    out = coop.cli("watch", "--once", "--json")
    result = json.loads(out)
    assert result["counters"]["members"] == 2 and result["refresh"]["kind"] == "incremental"
    status = coop.cli("watch", "--status")
    assert "Watcher:          stopped" in status and "Applied up to:" in status
    bad = CliRunner().invoke(cli, ["--config", str(coop.config_path), "watch", "--once",
                                   "--batch-window", "soon"])
    assert bad.exit_code == 2 and "Error: --batch-window 'soon' is not a duration" in bad.output
    # a second watcher on the same state is refused before it touches anything
    first = coop.watcher(RecordingSink())
    try:
        busy = CliRunner().invoke(cli, ["--config", str(coop.config_path), "watch", "--once"])
    finally:
        first.close()
    assert busy.exit_code == 9 and "Error: another watcher is running" in busy.output
    # the directory gone: Error + Hint, no traceback
    coop.slapd.stop()
    down = CliRunner().invoke(cli, ["--config", str(coop.config_path), "watch", "--once"])
    assert down.exit_code != 0 and "Error: " in down.output and "Hint: " in down.output
    assert "Traceback" not in down.output
