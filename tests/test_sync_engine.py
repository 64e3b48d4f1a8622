"""The sync engine's own logic, on a real slapd: guards, order, archive before purge, journal.

The services here are one in-memory `LedgerService`: it is not a double of any real service
(the connectors are tested against the real servers in tests/lab and their own tests); it
stands for "a service" so that what the engine decides (what to plan, what to refuse, what
to archive before purging, what to record) can be checked precisely and quickly.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ldap3
import pytest

from provisioner import archive
from provisioner.journal import Journal
from provisioner.services.base import (
    Action,
    ChangeResult,
    Connector,
    Desired,
    Finding,
    Phase,
    ServiceChange,
    ServiceUnavailable,
)
from provisioner.sync import GuardStop, Sync
from tests.conftest import SUFFIX


@dataclass
class Ledger:
    accounts: dict[str, dict] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


class LedgerService(Connector):
    name = "cloud"

    def __init__(self, down: bool = False, export_fails: bool = False) -> None:
        self.state = Ledger()
        self.down = down
        self.export_fails = export_fails
        self.calls: list[str] = []

    def observe(self, uids: Collection[str] | None = None) -> Ledger:
        if self.down:
            raise ServiceUnavailable("the ledger is down")
        return Ledger({u: dict(a) for u, a in self.state.accounts.items()})

    def plan(self, desired: Mapping[str, Desired], observed: Ledger) -> list[ServiceChange]:
        out = []
        for uid, want in desired.items():
            have = observed.accounts.get(uid)
            if want.phase is Phase.ACTIVE and have is None:
                out.append(ServiceChange(self.name, Action.CREATE, uid))
            elif want.phase is Phase.ACTIVE and not have["enabled"]:
                out.append(ServiceChange(self.name, Action.RESTORE, uid))
            elif want.phase is Phase.DISABLED and have and have["enabled"]:
                out.append(ServiceChange(self.name, Action.SUSPEND, uid))
            elif want.phase in (Phase.PURGE, Phase.GONE) and have:
                out.append(ServiceChange(self.name, Action.PURGE, uid))
        return out

    def apply(self, changes: Sequence[ServiceChange], report) -> None:
        for c in changes:
            self.calls.append(f"{c.action} {c.uid}")
            if c.action is Action.CREATE:
                self.state.accounts[c.uid] = {"enabled": True, "files": {"notes.txt": c.uid}}
            elif c.action in (Action.SUSPEND, Action.RESTORE):
                self.state.accounts[c.uid]["enabled"] = c.action is Action.RESTORE
            elif c.action is Action.PURGE:
                del self.state.accounts[c.uid]
            report(ChangeResult(c, True))

    def export(self, member, dest: Path) -> list[Path]:
        self.calls.append(f"export {member.uid}")
        if self.export_fails:
            raise OSError("disk full")
        written = []
        for name, text in self.state.accounts.get(member.uid, {}).get("files", {}).items():
            (dest / name).write_text(text)
            written.append(dest / name)
        return written


class FollowingLedger(LedgerService):
    """A suspension is in effect when applied, with a follow-up left (as the cloud's token
    deletion after its disable): follow_up waits for `gate`, and fails when `fail` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail = False
        self.followed: list[list[str]] = []

    def apply(self, changes: Sequence[ServiceChange], report) -> None:
        def mark(result: ChangeResult) -> None:
            report(dataclasses.replace(result, follow_up=result.change.action is Action.SUSPEND))

        super().apply(changes, mark)

    def follow_up(self, changes: Sequence[ServiceChange], report) -> None:
        assert self.gate.wait(30)
        self.followed.append([c.uid for c in changes])
        for c in changes:
            report(ChangeResult(dataclasses.replace(c, detail={"step": "followed"}),
                                not self.fail, "it failed" if self.fail else None))


@pytest.fixture
def sync_config(with_plans, config, tmp_path: Path):
    settings = dataclasses.replace(config.sync, state_dir=tmp_path, journal=tmp_path / "j.db",
                                   archive_dir=tmp_path / "archives", grace_days=0)
    return dataclasses.replace(config, sync=settings)


def add(coopctl, *uids: str) -> None:
    for uid in uids:
        given, family = uid.split(".")
        coopctl("member", "add", "--given-name", given, "--family-name", family, "--plan", "small",
                "--generate-password")


def synced(coopctl, cfg, *uids: str, **settings) -> tuple[LedgerService, Sync]:
    """Members added and synced into a fresh LedgerService: (service, sync engine)."""
    add(coopctl, *uids)
    service = LedgerService()
    sync = engine(cfg, service, **settings)
    sync.apply(sync.plan())
    return service, sync


def engine(cfg, service: LedgerService, **settings) -> Sync:
    if settings:
        cfg = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, **settings))
    return Sync(cfg, Journal(cfg.sync.journal), connectors={"cloud": service})


def test_new_members_are_created_once_and_journalled(with_plans, sync_config) -> None:
    add(with_plans, "ana.lima", "bob.dupont")
    service = LedgerService()
    sync = engine(sync_config, service)
    plan = sync.plan()
    assert [(c.action, c.uid) for c in plan.changes()] == [
        (Action.CREATE, "ana.lima"), (Action.CREATE, "bob.dupont")]
    summary = sync.apply(plan)
    assert summary.applied == 2 and not summary.failed
    assert sync.plan().changes() == []
    records = list(sync.journal.entries())
    assert [(r.uid, r.action, r.result) for r in records] == [
        ("ana.lima", "create", "ok"), ("bob.dupont", "create", "ok")]
    assert sync.journal.last_member_count() == 2


def test_suspend_then_restore(with_plans, sync_config) -> None:
    service, sync = synced(with_plans, sync_config, "ana.lima")
    with_plans("member", "suspend", "ana.lima")
    plan = sync.plan()
    assert [(c.action, c.uid) for c in plan.changes()] == [(Action.SUSPEND, "ana.lima")]
    sync.apply(plan)
    assert service.state.accounts["ana.lima"]["enabled"] is False
    with_plans("member", "restore", "ana.lima")
    sync.apply(sync.plan())
    assert service.state.accounts["ana.lima"]["enabled"] is True
    assert sync.plan().changes() == []


def test_departure_archives_before_purging_and_marks_the_directory(with_plans, sync_config,
                                                                   admin) -> None:
    service, sync = synced(with_plans, sync_config, "ana.lima", "bob.dupont")
    with_plans("member", "depart", "ana.lima")
    plan = sync.plan()
    assert plan.archives == ["ana.lima"]
    summary = sync.apply(plan)
    assert service.calls[-2:] == ["export ana.lima", "purge ana.lima"]
    assert summary.purged == ["ana.lima"]
    path = Path(summary.archives[0])
    manifest = archive.verify(path)
    assert [f["path"] for f in manifest["files"]] == ["cloud/notes.txt"]
    with tarfile.open(path) as tar:
        assert tar.extractfile("cloud/notes.txt").read() == b"ana.lima"
    admin.search(f"uid=ana.lima,ou=people,{SUFFIX}", "(objectClass=*)", ldap3.BASE,
                 attributes=["coopMemberStatus", "employeeNumber"])
    assert admin.entries[0].coopMemberStatus.value == "purged"
    assert sync.plan().changes() == []
    assert "bob.dupont" in service.state.accounts
    # A purged member's status cannot be set back by hand: the uid is never reused.
    result = with_plans("member", "restore", "ana.lima", ok=False)
    assert result.exit_code != 0


def test_failed_export_removes_nothing(with_plans, sync_config, admin) -> None:
    service, sync = synced(with_plans, sync_config, "ana.lima")
    with_plans("member", "depart", "ana.lima")
    service.export_fails = True
    summary = sync.apply(sync.plan())
    assert "ana.lima" in service.state.accounts
    assert summary.purged == [] and summary.archives == []
    assert [r.change.action for r in summary.failed] == [Action.ARCHIVE]
    assert "disk full" in summary.failed[0].error
    assert list((sync_config.sync.archive_dir).glob("*.tar")) == []
    # The next run, with the export working again, finishes the job.
    service.export_fails = False
    summary = sync.apply(sync.plan())
    assert summary.purged == ["ana.lima"] and "ana.lima" not in service.state.accounts


def test_a_verified_archive_is_never_replaced(with_plans, sync_config) -> None:
    """Killed after the archive and before the purge: the next run purges, keeps the archive."""
    service, sync = synced(with_plans, sync_config, "ana.lima")
    with_plans("member", "depart", "ana.lima")
    plan = sync.plan()
    sync._archive(plan, {"cloud": service}, lambda r: None)  # the run dies right after
    first = archive.find_verified(sync_config.sync.archive_dir, "ana.lima")
    assert first is not None
    plan = sync.plan()
    assert plan.archives == [] and [c.action for c in plan.changes()] == [Action.PURGE]
    sync.apply(plan)
    assert archive.find_verified(sync_config.sync.archive_dir, "ana.lima") == first
    assert "ana.lima" not in service.state.accounts


def test_guard_fewer_members_than_last_run(with_plans, sync_config) -> None:
    add(with_plans, "ana.lima")
    sync = engine(sync_config, LedgerService())
    run = sync.journal.start_run()
    sync.journal.finish_run(run, 100, "ok")
    with pytest.raises(GuardStop, match="last successful sync saw 100"):
        sync.plan()
    assert sync.plan(force=True).changes()


def test_guard_mass_suspension(with_plans, sync_config) -> None:
    uids = [f"m{i}.member" for i in range(8)]
    service, sync = synced(with_plans, sync_config, *uids, min_destructive_count=2,
                           max_destructive_share=0.1)
    for uid in uids[:4]:
        with_plans("member", "suspend", uid)
    with pytest.raises(GuardStop, match="would suspend, archive or purge 4 of 8"):
        sync.plan()
    assert all(a["enabled"] for a in service.state.accounts.values())
    assert len(sync.plan(force=True).changes()) == 4


def test_a_service_down_is_reported_and_the_plan_goes_on(with_plans, sync_config) -> None:
    add(with_plans, "ana.lima")
    down = LedgerService(down=True)
    sync = engine(sync_config, down)
    plan = sync.plan()
    assert plan.services["cloud"].error == "the ledger is down"
    assert plan.changes() == []


def test_bad_data_is_reported_per_member(with_plans, sync_config, admin) -> None:
    add(with_plans, "ana.lima", "bob.dupont")
    admin.modify(f"uid=bob.dupont,ou=people,{SUFFIX}",
                 {"coopCloudQuota": [(ldap3.MODIFY_REPLACE, ["-5"])]})
    sync = engine(sync_config, LedgerService())
    plan = sync.plan()
    assert [c.uid for c in plan.changes()] == ["ana.lima"]
    assert [(f.uid, f.severity) for f in plan.findings] == [("bob.dupont", "error")]
    assert "cloud quota" in plan.findings[0].message
    json.dumps(plan.to_dict())  # the --json output is plain data


def test_grace_period_counts_from_the_departure_day(with_plans, sync_config) -> None:
    _service, sync = synced(with_plans, sync_config, "ana.lima", "bob.dupont", grace_days=30)
    with_plans("member", "depart", "ana.lima")
    long_ago = (datetime.now(UTC) - timedelta(days=31)).strftime("%Y-%m-%d")
    with_plans("member", "depart", "bob.dupont", "--on", long_ago)
    plan = sync.plan()
    assert sorted((str(c.action), c.uid) for c in plan.changes()) == [
        ("archive", "bob.dupont"), ("purge", "bob.dupont"), ("suspend", "ana.lima")]
    future = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d")
    result = with_plans("member", "depart", "ana.lima", "--on", future, ok=False)
    assert "in the future" in result.output
    # The ERP knew better: a departure date can be corrected, and the grace period follows it.
    with_plans("member", "depart", "ana.lima", "--on", long_ago)
    assert ("archive", "ana.lima") in {(str(c.action), c.uid) for c in sync.plan().changes()}


def test_a_run_narrowed_to_some_services_neither_archives_nor_marks_purged(
        with_plans, sync_config) -> None:
    add(with_plans, "ana.lima")
    cloud, other = LedgerService(), LedgerService()
    other.name = "pads"
    sync = Sync(sync_config, Journal(sync_config.sync.journal),
                connectors={"cloud": cloud, "pads": other})
    sync.apply(sync.plan())
    with_plans("member", "depart", "ana.lima")
    narrowed = sync.plan(services=["cloud"])
    assert narrowed.archives == [] and not narrowed.every_service
    summary = sync.apply(narrowed)
    assert summary.purged == [] and "ana.lima" in cloud.state.accounts  # no archive, no purge
    full = sync.plan()
    assert full.archives == ["ana.lima"]
    summary = sync.apply(full)
    assert summary.purged == ["ana.lima"]
    assert "ana.lima" not in cloud.state.accounts and "ana.lima" not in other.state.accounts


def test_directory_gone_mid_way_then_the_next_run_finishes(with_plans, sync_config) -> None:
    """The directory stops answering after the plan was read: the services are changed, the
    purge mark cannot be written (an Error, not a traceback), the next run finishes the job.

    The shared test slapd keeps running; the sync is pointed at a closed port instead, which
    is what a stopped slapd looks like from coopctl.
    """
    from provisioner.errors import DirectoryUnavailable
    from tests.sync_helpers import free_port

    service, sync = synced(with_plans, sync_config, "ana.lima")
    with_plans("member", "depart", "ana.lima")
    plan = sync.plan()
    reachable = sync.config
    sync.config = dataclasses.replace(reachable, directory=dataclasses.replace(
        reachable.directory, uri=f"ldap://127.0.0.1:{free_port()}"))
    with pytest.raises(DirectoryUnavailable):
        sync.apply(plan)
    sync.config = reachable
    assert "ana.lima" not in service.state.accounts  # archived, then purged
    assert archive.find_verified(sync_config.sync.archive_dir, "ana.lima") is not None
    plan = sync.plan()
    assert plan.changes() == [] and plan.due == {"ana.lima"}
    summary = sync.apply(plan)
    assert summary.purged == ["ana.lima"]
    assert sync.plan().due == set()


def test_a_sync_with_nothing_to_do_is_recorded_as_a_run(with_plans, config) -> None:
    """`coopctl sync` that finds nothing to do succeeded all the same: its run is recorded, so
    the member-count guard's reference is today's count and a watcher's alert (which waits for
    a full sync that succeeded after it) clears; a dry run records nothing."""
    add(with_plans, "ana.lima", "bob.dupont")
    journal_path = config.sync.journal
    if journal_path.exists():
        journal_path.unlink()
    with_plans("sync", "--dry-run")
    assert not journal_path.exists() or Journal(journal_path).last_member_count() is None
    result = with_plans("sync", "--yes")
    assert "No changes" in result.output or "0 change" in result.output
    journal = Journal(journal_path)
    try:
        assert journal.last_member_count() == 2
        rows = journal.db.execute("SELECT outcome, members FROM runs")
        assert [tuple(r) for r in rows] == [("ok", 2)]
    finally:
        journal.close()


def test_follow_ups_end_a_sync_and_run_beside_the_watchers_batches(with_plans,
                                                                   sync_config) -> None:
    """`coopctl sync` waits for the connectors' follow-ups before it ends; the watcher's
    batches (background_follow_ups) do not, and a failed one comes back for a retry."""
    add(with_plans, "ana.lima", "bob.dupont")
    service = FollowingLedger()
    sync = engine(sync_config, service)
    sync.apply(sync.plan())
    with_plans("member", "suspend", "ana.lima")
    service.gate.set()
    summary = sync.apply(sync.plan())
    assert (summary.applied, summary.failed, service.followed) == (1, [], [["ana.lima"]])
    assert [(r.uid, r.action, r.detail, r.result)
            for r in sync.journal.entries(uid="ana.lima")][-2:] == [
        ("ana.lima", "suspend", {}, "ok"), ("ana.lima", "suspend", {"step": "followed"}, "ok")]

    with_plans("member", "suspend", "bob.dupont")
    service.gate.clear()
    service.fail = True
    summary = sync.apply(sync.plan(), background_follow_ups=True)  # returns, gate shut
    assert (summary.applied, summary.failed) == (1, [])
    assert not service.state.accounts["bob.dupont"]["enabled"]
    assert sync.take_late_failed() == set() and service.followed == [["ana.lima"]]
    service.gate.set()
    sync.wait_follow_ups()
    assert service.followed == [["ana.lima"], ["bob.dupont"]]
    assert sync.take_late_failed() == {"bob.dupont"} and sync.take_late_failed() == set()
    last = list(sync.journal.entries(uid="bob.dupont"))[-1]
    assert (last.action, last.result, last.error) == ("suspend", "failed", "it failed")
