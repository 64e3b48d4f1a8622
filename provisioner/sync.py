"""`coopctl sync`: make every service match the directory (read, plan, apply, verify).

One reconcile loop in the style of kopf: desired state from the directory, observed state
from each service (in bulk), the difference as a plan, applied change by change with each
result journalled, then observed again. It is safe to re-run at any point: every step is
planned from what the services show *now*, so a run killed half-way is finished by the next
one, and a second run right after a successful one plans nothing.

Guards stop a run before any service is touched when the directory looks wrong (unreadable,
or far fewer members than the last successful run saw) or when the plan would suspend,
archive or purge more than a configured share of the members. A service that is down is
reported and skipped; the others go on. Departed members past their grace period are
archived (every service's export into one verified archive) and only then purged; the
directory then records them as purged, keeping the entry so uid and number are never reused.
"""

from __future__ import annotations

import importlib
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from provisioner import archive
from provisioner.config import Config, SyncSettings, read_secret_file
from provisioner.errors import CoopError
from provisioner.journal import Journal
from provisioner.model import Member, Plan, ldap_time
from provisioner.services.base import (
    Action,
    ChangeResult,
    Connector,
    Desired,
    Finding,
    MemberState,
    Observation,
    Runtime,
    ServiceChange,
    ServiceUnavailable,
)

if TYPE_CHECKING:  # the hosts (and Ansible's inventory code) load only when a run needs them
    from provisioner.hosts import InventoryHosts

# Registry: a new service is one line here, one module in provisioner/services, one role.
CONNECTORS = {
    "sso": "provisioner.services.sso:SsoConnector",
    "mail": "provisioner.services.mail:MailConnector",
    "cloud": "provisioner.services.cloud:CloudConnector",
    "pads": "provisioner.services.pads:PadsConnector",
    "wiki": "provisioner.services.wiki:WikiConnector",
}
# SSO first: a suspension ends the single sign-on sessions before anything else.
ORDER = list(CONNECTORS)
ACTION_ORDER = {a: i for i, a in enumerate(Action)}
ARCHIVE_SERVICE = "archive"
# Up to this many --member, the sync reads only those members from the directory.
NARROW_READ_MAX = 50
DIRECTORY_SERVICE = "directory"


class GuardStop(CoopError):
    """The sync refused to touch any service; the message says why."""

    exit_code = 7


@dataclass
class ServicePlan:
    service: str
    changes: list[ServiceChange] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # the service could not be observed: nothing planned for it
    observed: Observation | None = None  # what observe() saw (the audit's access matrix)


# The Connector method a batch goes through (Sync._in_parallel).
Step = Literal["apply", "follow_up"]


@dataclass
class SyncPlan:
    """Everything one run would do, and everything it noticed."""

    members_read: int
    desired: dict[str, MemberState]
    services: dict[str, ServicePlan]
    archives: list[str] = field(default_factory=list)  # uids to archive before purging
    due: set[str] = field(default_factory=set)  # departed members past their grace period
    every_service: bool = True  # False with --service: no archive, no `purged` mark
    findings: list[Finding] = field(default_factory=list)  # bad data in the directory

    def changes(self) -> list[ServiceChange]:
        out = [c for p in self.services.values() for c in p.changes]
        out += [ServiceChange(ARCHIVE_SERVICE, Action.ARCHIVE, uid) for uid in self.archives]
        return out

    def destructive_members(self) -> set[str]:
        return {c.uid for c in self.changes() if c.destructive}

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for c in self.changes():
            counts.setdefault(c.service, Counter())[str(c.action)] += 1  # type: ignore[index]
        return {s: dict(v) for s, v in counts.items()}

    def all_findings(self) -> list[Finding]:
        return self.findings + [f for p in self.services.values() for f in p.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "members_read": self.members_read,
            "changes": [c.to_dict() for c in self.changes()],
            "counts": self.counts(),
            "findings": [f.__dict__ for f in self.all_findings()],
            "unavailable": {s: p.error for s, p in self.services.items() if p.error},
        }


@dataclass
class SyncSummary:
    applied: int = 0
    failed: list[ChangeResult] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    left: int | None = None  # changes still planned after the run (verify)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied,
                "failed": [{**r.change.to_dict(), "error": r.error} for r in self.failed],
                "archives": self.archives, "purged": self.purged, "left": self.left}


def member_state(member: Member, default_language: str) -> MemberState:
    return MemberState(
        uid=member.uid,
        mail=member.mail,
        display_name=member.display_name or member.full_name,
        language=member.language or default_language,
        status=member.status,
        services=frozenset(member.services),
        groups=frozenset(member.groups),
        mail_quota=member.mail_quota,
        cloud_quota=member.cloud_quota,
        aliases=tuple(member.aliases),
    )


def purge_due(member: Member, grace_days: int, now: datetime) -> bool:
    """Departed at least `grace_days` ago (the departure date, else the status change)."""
    since = member.departure_date or member.status_changed
    return since is None or since + timedelta(days=grace_days) <= now


def check_member(member: Member, plans: Mapping[str, Plan]) -> list[Finding]:
    """Bad data that stops this member's sync (reported; the others go on)."""
    problems = []
    if member.status not in ("active", "suspended", "departed", "purged"):
        problems.append(f"unknown status {member.status!r}: the member is left as it is")
    if not member.mail and member.status != "purged":
        problems.append("no mail address: the member is left as it is")
    if member.plan and member.plan not in plans:
        problems.append(f"unknown plan {member.plan!r}: the member is left as it is")
    for kind in ("mail", "cloud"):
        quota = getattr(member, f"{kind}_quota")
        if quota is not None and quota <= 0:
            problems.append(f"{kind} quota {quota} is not a size: the member is left as it is")
    return [Finding(DIRECTORY_SERVICE, member.uid, p, "error") for p in problems]


class Sync:
    """One sync run's machinery: configuration, journal, connectors."""

    def __init__(self, config: Config, journal: Journal | None = None,
                 echo: Callable[[str], None] | None = None,
                 connectors: Mapping[str, Connector] | None = None) -> None:
        self.config = config
        self.settings: SyncSettings = config.sync  # type: ignore[assignment]
        self.journal = journal or Journal(self.settings.journal)
        self.echo = echo
        # Connectors given by the caller are used as they are; otherwise each configured
        # service's connector is built on first use and kept for the run.
        self._injected = connectors is not None
        self._connectors: dict[str, Connector] = dict(connectors or {})
        self._hosts: InventoryHosts | None = None
        # Follow-ups run beside later runs (the watcher's batches): one worker per service,
        # so that a service's follow-ups keep their order; the uids whose follow-up failed
        # wait in `late_failed` for the caller's retry.
        self._follow_pools: dict[str, ThreadPoolExecutor] = {}
        self._late_lock = threading.Lock()
        self.late_failed: set[str] = set()

    # -- connectors --------------------------------------------------------------------
    def connectors(self, only: Iterable[str] = ()) -> dict[str, Connector]:
        """The configured services' connectors, in ORDER; `only` narrows them."""
        wanted = set(only)
        unknown = wanted - set(CONNECTORS)
        if unknown:
            raise CoopError(f"unknown service {', '.join(sorted(unknown))}",
                            f"services are: {', '.join(CONNECTORS)}")
        if not self._injected:
            for name in ORDER:
                if name in self.config.services and name not in self._connectors and (
                        not wanted or name in wanted):
                    self._connectors[name] = self._build(name)
        missing = wanted - set(self._connectors)
        if missing:
            raise CoopError(f"service {', '.join(sorted(missing))} is not configured",
                            "add it under `services:` in the configuration")
        return {n: self._connectors[n] for n in ORDER
                if n in self._connectors and (not wanted or n in wanted)}

    def _build(self, name: str) -> Connector:
        if self._hosts is None:
            from provisioner.hosts import InventoryHosts

            self._hosts = InventoryHosts(self.config.inventory or Path("/nonexistent"),
                                         self.settings.state_dir)
        settings = self.config.services[name]
        module, cls = CONNECTORS[name].split(":")
        connector_cls = getattr(importlib.import_module(module), cls)
        return connector_cls(Runtime(
            settings=settings, hosts=self._hosts, state=self.journal,
            mail_domain=self.config.mail_domain, coop=self.config.coop,
            ca_file=self.settings.ca_file,
            secret=_secret_reader(name, settings, self.config.source)))

    # -- read --------------------------------------------------------------------------
    def read(self, uids: Iterable[str] = (), missing_ok: bool = False
             ) -> tuple[list[Member], dict[str, Plan], int]:
        """Members, plans and how many members the directory holds; raises if it cannot
        answer. A sync narrowed to a few members reads only theirs (and counts the others).
        A named uid the directory lacks is an error, unless `missing_ok` (the watcher's
        batches name members that were just deleted)."""
        from provisioner.directory import Directory
        from provisioner.ldapconn import connect

        wanted = sorted(set(uids))
        conn = connect(self.config.directory)
        try:
            directory = Directory(self.config, conn)
            if wanted and len(wanted) <= NARROW_READ_MAX:
                members = directory.members_named(wanted)
                total = directory.count_members()
            else:
                members = directory.members()
                total = len(members)
            plans = {p.name: p for p in directory.plans()}
        finally:
            conn.unbind()
        if wanted and not missing_ok:
            missing = set(wanted) - {m.uid for m in members}
            if missing:
                raise CoopError(f"no member with uid {', '.join(sorted(missing))}",
                                "list members with `coopctl member list`")
        return members, plans, total

    # -- plan --------------------------------------------------------------------------
    def plan(self, services: Iterable[str] = (), uids: Iterable[str] = (),
             force: bool = False, now: datetime | None = None,
             read: tuple[list[Member], dict[str, Plan], int] | None = None) -> SyncPlan:
        """Read (unless `read` gives what the caller already read), observe, plan."""
        now = now or datetime.now(UTC)
        uids = set(uids)
        connectors = self.connectors(services)
        members, plans, total = read or self.read(uids)
        self._guard_member_count(total, narrowed=bool(uids), force=force)
        findings: list[Finding] = []
        desired: dict[str, MemberState] = {}
        due: set[str] = set()
        for m in members:
            if uids and m.uid not in uids:
                continue
            problems = check_member(m, plans)
            if problems:
                findings += problems
                continue
            desired[m.uid] = member_state(m, self.settings.default_language)
            if m.status == "departed" and purge_due(m, self.settings.grace_days, now):
                due.add(m.uid)
        result = SyncPlan(members_read=total, desired=desired, services={},
                          findings=findings, due=due)
        # Services are observed at the same time (each waits on its own server or host).
        with ThreadPoolExecutor(max_workers=max(1, len(connectors))) as pool:
            futures = {name: pool.submit(self._plan_service, name, connector, desired, due, uids)
                       for name, connector in connectors.items()}
            for name, future in futures.items():
                result.services[name] = future.result()
        # An archive holds every service's data: a run narrowed to some services neither
        # archives nor marks anyone purged (it may purge with an earlier verified archive).
        configured = (set(self._connectors) if self._injected
                      else set(self.config.services) & set(CONNECTORS))
        result.every_service = set(connectors) == configured
        result.archives = sorted(
            uid for uid in due if result.every_service
            and archive.find_verified(self.settings.archive_dir, uid) is None)
        self._guard_destructive(result, total, force)
        return result

    def _plan_service(self, name: str, connector: Connector, desired: dict[str, MemberState],
                      due: set[str], uids: set[str]) -> ServicePlan:
        wanted = {uid: Desired(state, state.phase(name, uid in due))
                  for uid, state in desired.items()}
        try:
            observed = connector.observe(uids or None)
            changes = connector.plan(wanted, observed)
        except (ServiceUnavailable, CoopError, OSError) as exc:
            return ServicePlan(name, error=_message(exc))
        changes.sort(key=lambda c: (ACTION_ORDER[c.action], c.uid))
        return ServicePlan(name, changes, list(observed.findings), observed=observed)

    def _guard_member_count(self, count: int, narrowed: bool, force: bool) -> None:
        last = self.journal.last_member_count()
        if force or narrowed or not last:
            return
        if count < last * self.settings.min_member_ratio:
            raise GuardStop(
                f"the directory returned {count} members, the last successful sync saw {last}: "
                "a wrong base DN or filter would look like everyone left, so nothing was touched",
                "check directory.base_dn and the directory; if the members really left, "
                "run again with --force")

    def _guard_destructive(self, plan: SyncPlan, members: int, force: bool) -> None:
        hit = plan.destructive_members()
        limit = max(self.settings.min_destructive_count,
                    int(members * self.settings.max_destructive_share))
        if not force and len(hit) > limit:
            raise GuardStop(
                f"this run would suspend, archive or purge {len(hit)} of {members} members "
                f"(the limit is {limit}, sync.max_destructive_share "
                f"{self.settings.max_destructive_share:.0%}): nothing was touched",
                "look at `coopctl sync --dry-run`; if it is right, run again with --force")

    # -- apply -------------------------------------------------------------------------
    def apply(self, plan: SyncPlan, progress: Callable[[ChangeResult], None] | None = None,
              background_follow_ups: bool = False) -> SyncSummary:
        """Apply the plan: changes, then archives, then purges, then the directory; then the
        connectors' follow-ups (Connector.follow_up), waited for unless
        `background_follow_ups` (the watcher: they run beside its next batches)."""
        run = self.journal.start_run()
        summary = SyncSummary()
        connectors = self.connectors(plan.services)
        lock = threading.Lock()
        follow: dict[str, list[ServiceChange]] = {}

        def report(result: ChangeResult) -> None:
            with lock:  # services apply at the same time; one record at a time
                _record(result)

        def _record(result: ChangeResult) -> None:
            c = result.change
            self.journal.append(run, c.service, c.uid, str(c.action), dict(c.detail),
                                result.ok, result.error)
            if result.ok:
                summary.applied += 1
                if result.follow_up:
                    follow.setdefault(c.service, []).append(c)
            else:
                summary.failed.append(result)
            if progress:
                progress(result)

        outcome = "failed"
        try:
            self._in_parallel(connectors, {
                name: [c for c in sp.changes if c.action != Action.PURGE]
                for name, sp in plan.services.items()}, report)
            summary.archives = self._archive(plan, connectors, report)
            purgeable = self._purgeable(plan)
            self._in_parallel(connectors, {
                name: [c for c in sp.changes if c.action == Action.PURGE and c.uid in purgeable]
                for name, sp in plan.services.items()}, report)
            summary.purged = self._mark_purged(plan, summary, purgeable, report)
            if not background_follow_ups:
                self._follow_up(run, connectors, follow, summary.failed.append)
            outcome = "ok" if not summary.failed and not any(
                p.error for p in plan.services.values()) else "partial"
        finally:
            self.journal.finish_run(run, self._members_seen(plan), outcome)
        if background_follow_ups:
            for name, changes in follow.items():
                pool = self._follow_pools.setdefault(
                    name, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"follow-{name}"))
                pool.submit(self._follow_up, run, connectors, {name: changes}, self._late)
        return summary

    def _late(self, result: ChangeResult) -> None:
        with self._late_lock:
            self.late_failed.add(result.change.uid)

    def take_late_failed(self) -> set[str]:
        """The members whose follow-up failed since the last call (the watcher retries them)."""
        with self._late_lock:
            taken, self.late_failed = self.late_failed, set()
        return taken

    def wait_follow_ups(self) -> None:
        """Let the follow-ups still running finish (the watcher, before it exits)."""
        for pool in self._follow_pools.values():
            pool.shutdown(wait=True)
        self._follow_pools.clear()

    def _follow_up(self, run: str, connectors: Mapping[str, Connector],
                   follow: Mapping[str, list[ServiceChange]],
                   failed: Callable[[ChangeResult], None]) -> None:
        """Each service's follow-ups, journalled under the run that applied their changes;
        a success is not counted again (its change was), a failure is given to `failed`."""
        lock = threading.Lock()

        def report(result: ChangeResult) -> None:
            c = result.change
            with lock:
                self.journal.append(run, c.service, c.uid, str(c.action), dict(c.detail),
                                    result.ok, result.error)
                if not result.ok:
                    failed(result)

        self._in_parallel(connectors, follow, report, step="follow_up")

    def record_no_changes(self, plan: SyncPlan) -> None:
        """A sync that found nothing to do is a successful run too: recorded, it is the
        member-count guard's new reference and clears a watcher's alert (which waits for a
        full sync that succeeded after it)."""
        run = self.journal.start_run()
        outcome = "partial" if any(p.error for p in plan.services.values()) else "ok"
        self.journal.finish_run(run, self._members_seen(plan), outcome)

    @staticmethod
    def _members_seen(plan: SyncPlan) -> int | None:
        """How many members the run read, when it read them all (no member left out)."""
        complete = not plan.desired or len(plan.desired) == plan.members_read - sum(
            1 for f in plan.findings if f.severity == "error")
        return plan.members_read if complete else None

    def _in_parallel(self, connectors: Mapping[str, Connector],
                     batches: Mapping[str, list[ServiceChange]],
                     report: Callable[[ChangeResult], None], step: Step = "apply") -> None:
        """Each service's batch in its own thread, through the connector's `step` (apply, or
        follow_up): a sync takes as long as its slowest service, not the sum of all (they
        wait on different servers)."""
        work = [(connectors[name], batch) for name, batch in batches.items() if batch]
        if not work:
            return
        with ThreadPoolExecutor(max_workers=len(work)) as pool:
            for future in [pool.submit(self._apply_batch, c, b, report, step)
                           for c, b in work]:
                future.result()

    def _apply_batch(self, connector: Connector, batch: list[ServiceChange],
                     report: Callable[[ChangeResult], None], step: Step = "apply") -> None:
        reported: set[int] = set()

        def once(result: ChangeResult) -> None:
            reported.add(id(result.change))
            report(result)

        try:
            getattr(connector, step)(batch, once)
        except Exception as exc:  # a connector bug or outage must not stop the others
            detail = _message(exc) if isinstance(exc, CoopError | ServiceUnavailable | OSError) \
                else f"{type(exc).__name__}: {exc} ({traceback.extract_tb(exc.__traceback__)[-1]})"
            for change in batch:
                if id(change) not in reported:
                    report(ChangeResult(change, False, detail))

    def _archive(self, plan: SyncPlan, connectors: Mapping[str, Connector],
                 report: Callable[[ChangeResult], None]) -> list[str]:
        """Export every member due for archiving (one batch per service), pack and verify."""
        done: list[str] = []
        if not plan.archives:
            return done
        archive_dir = self.settings.archive_dir
        archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        down = [s for s, p in plan.services.items() if p.error]
        if down:
            for uid in plan.archives:
                report(ChangeResult(ServiceChange(ARCHIVE_SERVICE, Action.ARCHIVE, uid), False,
                                    f"not archived: {', '.join(down)} could not be read, so "
                                    "the archive would be incomplete"))
            return done
        stages = {uid: archive.staging_dir(archive_dir, uid) for uid in plan.archives}
        results: dict[str, dict[str, list[Path] | Exception]] = {}
        def export(name: str, connector: Connector) -> dict[str, list[Path] | Exception]:
            items = [(plan.desired[uid], stages[uid] / name) for uid in plan.archives]
            for _member, dest in items:
                dest.mkdir(mode=0o700, exist_ok=True)
            try:
                return connector.export_many(items)
            except Exception as exc:  # a connector bug must not let a purge through
                return {uid: exc for uid in plan.archives}

        with ThreadPoolExecutor(max_workers=max(1, len(connectors))) as pool:
            futures = {name: pool.submit(export, name, c) for name, c in connectors.items()}
            results = {name: f.result() for name, f in futures.items()}
        for uid in plan.archives:
            change = ServiceChange(ARCHIVE_SERVICE, Action.ARCHIVE, uid)
            errors = [f"{name}: {_message(r[uid])}" for name, r in results.items()
                      if isinstance(r.get(uid), Exception) or uid not in r]
            if errors:
                report(ChangeResult(change, False, "archive failed: " + "; ".join(errors)))
                continue
            member = plan.desired[uid]
            files = {name: len(r[uid]) for name, r in results.items()}  # type: ignore[arg-type]
            try:
                path = archive.pack(stages[uid], archive_dir, uid, {
                    "mail": member.mail, "display_name": member.display_name,
                    "services": files, "coop": self.config.coop})
            except (CoopError, OSError) as exc:
                report(ChangeResult(change, False, f"archive failed: {_message(exc)}"))
                continue
            report(ChangeResult(ServiceChange(ARCHIVE_SERVICE, Action.ARCHIVE, uid,
                                              {"archive": str(path), "files": files}), True))
            done.append(str(path))
        return done

    def _purgeable(self, plan: SyncPlan) -> set[str]:
        """Members who may be purged: a verified archive exists (made now or by an earlier
        run), or they were purged already (a remnant). Each archive is re-read once."""
        candidates = {c.uid for p in plan.services.values() for c in p.changes
                      if c.action == Action.PURGE} | plan.due
        return {uid for uid in candidates
                if (uid in plan.desired and plan.desired[uid].status == "purged")
                or archive.find_verified(self.settings.archive_dir, uid) is not None}

    def _mark_purged(self, plan: SyncPlan, summary: SyncSummary, purgeable: set[str],
                     report: Callable[[ChangeResult], None]) -> list[str]:
        """Record `purged` in the directory for members now gone from every service."""
        if not plan.every_service or any(p.error for p in plan.services.values()):
            return []
        failed = {r.change.uid for r in summary.failed}
        ready = [uid for uid, m in plan.desired.items()
                 if m.status == "departed" and uid not in failed
                 and uid in plan.due and uid in purgeable]
        if not ready:
            return []
        from ldap3 import MODIFY_REPLACE

        from provisioner.ldapconn import connect

        conn = connect(self.config.directory)
        done = []
        try:
            stamp = ldap_time(datetime.now(UTC))
            for uid in ready:
                dn = f"uid={uid},{self.config.directory.people_dn}"
                ok = conn.modify(dn, {"coopMemberStatus": [(MODIFY_REPLACE, ["purged"])],
                                      "coopStatusChanged": [(MODIFY_REPLACE, [stamp])]})
                change = ServiceChange(DIRECTORY_SERVICE, Action.PURGE, uid,
                                       {"status": "purged"})
                error = None if ok else str((conn.result or {}).get("description"))
                report(ChangeResult(change, ok, error))
                if ok:
                    done.append(uid)
        finally:
            conn.unbind()
        return done


def _message(exc: BaseException) -> str:
    if isinstance(exc, CoopError):
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    return str(exc) or type(exc).__name__


def _secret_reader(service: str, settings: Mapping[str, Any],
                   source: Path | None) -> Callable[[str], str]:
    def read(key: str) -> str:
        value = settings.get(key)
        if not value:
            raise CoopError(f"services.{service}.{key} is not set",
                            "name the file that holds this secret (mode 0600)")
        path = Path(value)
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        return read_secret_file(path, f"services.{service}.{key}")

    return read
