"""What every service connector shares: the desired state of a member, the change type, the
interface (observe, plan, apply, export) and the runtime a connector is given.

The sync (``provisioner.sync``) reads the directory once and turns each member into a
``MemberState``: what the directory implies for them in *every* service. Each connector then

1. ``observe()``s its service in bulk (one listing, never one request per member when the
   service has a listing), returning an ``Observation`` it alone understands;
2. ``plan()``s the difference as a list of ``ServiceChange`` (pure: no I/O, so `--dry-run`
   and the audit can call it freely, and it is tested without a server);
3. ``apply()``s a list of changes, reporting one ``ChangeResult`` per change as it goes (the
   sync journals each one), and never raises for one member's failure;
4. ``export()``s a departing member's data into a directory of the archive (before any purge).

A new service (SOGo, Sympa, MediaWiki...) is one module here with one ``Connector`` subclass
plus one role. Connectors are small and stateless between runs: what must be remembered
(a welcome mail already sent, say) is asked of ``Runtime.state``.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol


class Phase(enum.StrEnum):
    """Where a member stands for one service, derived from status, services and dates."""

    ACTIVE = "active"      # the account exists, is enabled, has the plan's quota and groups
    DISABLED = "disabled"  # suspended, departed within the grace period, or service dropped:
                           # cannot log in, every live session ended, nothing deleted
    PURGE = "purge"        # departed past the grace period: archive, then remove everything
    GONE = "gone"          # purged already: nothing of theirs may remain


class Action(enum.StrEnum):
    """Kinds of change, in the order the sync applies them within a service."""

    CREATE = "create"
    RESTORE = "restore"
    QUOTA = "quota"
    GROUPS = "groups"
    UPDATE = "update"      # other attributes (display name, mail address, namespace page...)
    WELCOME = "welcome"
    SUSPEND = "suspend"
    ARCHIVE = "archive"
    PURGE = "purge"


DESTRUCTIVE = frozenset({Action.SUSPEND, Action.ARCHIVE, Action.PURGE})


@dataclass(frozen=True)
class MemberState:
    """What the directory says about one member, as every connector needs it."""

    uid: str
    mail: str
    display_name: str
    language: str                 # "fr", "nl" or "en": the welcome mail's language
    status: str                   # active | suspended | departed | purged
    services: frozenset[str]
    groups: frozenset[str]
    mail_quota: int | None        # MiB, as in the directory
    cloud_quota: int | None       # MiB
    aliases: tuple[str, ...] = ()

    def phase(self, service: str, purge_due: bool) -> Phase:
        """The phase for `service`; `purge_due` says the grace period is over."""
        if self.status == "purged":
            return Phase.GONE
        if self.status == "departed":
            return Phase.PURGE if purge_due else Phase.DISABLED
        if self.status == "active" and service in self.services:
            return Phase.ACTIVE
        return Phase.DISABLED


@dataclass(frozen=True)
class Desired:
    """A member's state and phase for one service (what `plan` compares with)."""

    member: MemberState
    phase: Phase

    @property
    def uid(self) -> str:
        return self.member.uid


@dataclass(frozen=True)
class ServiceChange:
    """One change to one member's account in one service. Never carries a secret."""

    service: str
    action: Action
    uid: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def destructive(self) -> bool:
        return self.action in DESTRUCTIVE

    def describe(self) -> str:
        """One line for the plan, e.g. ``quota jan.vanderberg: 1 GB -> 2 GB``."""
        if not self.detail:
            return f"{self.action} {self.uid}"
        parts = ", ".join(f"{k}: {_text(v)}" for k, v in self.detail.items())
        return f"{self.action} {self.uid} ({parts})"

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "action": str(self.action), "uid": self.uid,
                "detail": dict(self.detail)}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return " ".join(sorted(map(str, value))) or "-"
    return str(value)


@dataclass(frozen=True)
class ChangeResult:
    change: ServiceChange
    ok: bool
    error: str | None = None   # what went wrong, for the journal and the summary (no secret)
    # In effect, with tidying left that no member waits for: the connector's follow_up()
    # finishes it (see Connector.follow_up).
    follow_up: bool = False


@dataclass
class Finding:
    """Something a connector saw that no change can fix by itself (the sync reports it)."""

    service: str
    uid: str
    message: str
    severity: str = "warning"  # info | warning | error


class Observation(Protocol):
    """Whatever a connector's observe() returns; only its own plan() reads it.

    ``findings`` are facts to report (a quota lowered below what the member uses, an
    account the directory does not know); ``accounts`` is the set of uids that have an
    account in the service (the audit reads it for orphans).
    """

    findings: list[Finding]

    @property
    def accounts(self) -> Collection[str]: ...


class ServiceUnavailable(Exception):
    """The service could not be observed or changed at all (down, refused our credentials).

    The sync reports it and goes on with the other services; the next run retries.
    """


class HostAccess(Protocol):
    """How connectors reach the coop's hosts (see ``provisioner.hosts``)."""

    def read(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Run a read-only command on the first host of inventory group `group`; stdout."""

    def signal(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Run a command that acts at once but stores nothing (ending sessions); stdout."""

    def playbook(self, name: str, extravars: Mapping[str, Any]) -> dict[str, Any]:
        """Run playbooks/NAME once against the inventory.

        Returns {"ok": bool, "error": str | None (the run as a whole failed),
        "failed_items": {uid: message} (loop items labelled with the member's uid),
        "changed": int}.
        """


class StateStore(Protocol):
    """Facts coopctl remembers between runs (kept with the journal, see provisioner.journal)."""

    def marks(self, service: str, kind: str) -> set[str]:
        """Uids marked `kind` for `service` (e.g. mail/welcome: welcome mail sent)."""

    def mark(self, service: str, kind: str, uid: str) -> None: ...

    def unmark(self, service: str, kind: str, uid: str) -> None: ...


@dataclass
class Runtime:
    """What a connector is given: its settings, the hosts, the state store, the CA."""

    settings: Mapping[str, Any]          # the `services.<name>` section of the configuration
    hosts: HostAccess
    state: StateStore
    mail_domain: str
    coop: str
    ca_file: str | None = None           # CA bundle for the services' HTTPS APIs
    secret: Callable[[str], str] = lambda name: ""  # reads a secret file named in settings


Report = Callable[[ChangeResult], None]

# Suspensions a connector applies at once when they come in a burst: a suspension must end
# sessions within seconds, and each one mostly waits for its service (bench_watch_lab.py).
SUSPEND_PARALLEL = 4


def in_parts(changes: Sequence[ServiceChange], parts: int,
             work: Callable[[int, Sequence[ServiceChange]], None]) -> None:
    """`work(i, part)` on `parts` interleaved parts of `changes`, each in a thread of its own;
    a part is done in order, so `work` may keep one connection per part (index i)."""
    with ThreadPoolExecutor(max_workers=parts) as pool:
        for future in [pool.submit(work, i, changes[i::parts]) for i in range(parts)]:
            future.result()


class Connector(ABC):
    """One service. Subclasses set `name` and implement the four methods."""

    name: ClassVar[str]

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @abstractmethod
    def observe(self, uids: Collection[str] | None = None) -> Observation:
        """The service's actual state, in bulk; `uids` narrows it when the service allows.

        Raises ServiceUnavailable when the service cannot be read at all.
        """

    @abstractmethod
    def plan(self, desired: Mapping[str, Desired], observed: Observation) -> list[ServiceChange]:
        """The changes that make `observed` match `desired` (pure, no I/O).

        Members absent from `desired` are never touched. ARCHIVE is not planned here: the
        sync plans it across services for members in Phase.PURGE, and calls export().
        """

    @abstractmethod
    def apply(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Apply `changes` (all of this service), calling `report` once per change."""

    def follow_up(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Finish the changes that `apply` reported in effect with ``follow_up=True``.

        For tidying that nobody waits for once the change is in effect: the cloud deletes a
        suspended member's auth tokens after the disable has already refused every one of
        them. A `coopctl sync` waits for it before it ends; the watcher runs it beside its
        next batches, so that a burst of suspensions is not held up by it. `report` once per
        change; a failure is retried by the next run (the connector remembers what is left).
        """
        for change in changes:
            report(ChangeResult(change, True))

    def export(self, member: MemberState, dest: Path) -> list[Path]:
        """Write the member's data into `dest` (created), return the files written.

        Services that hold nothing of the member's own (SSO) write nothing.
        """
        return []

    def export_many(self, items: Sequence[tuple[MemberState, Path]]
                    ) -> dict[str, list[Path] | Exception]:
        """Export several members at once: uid -> files written, or why it failed.

        The default calls export() per member; connectors whose export runs on a host
        override it (PlaybookExport) so that a batch of departures is one Ansible run.
        """
        out: dict[str, list[Path] | Exception] = {}
        for member, dest in items:
            try:
                out[member.uid] = self.export(member, dest)
            except (ServiceUnavailable, OSError, ValueError) as exc:
                out[member.uid] = exc
        return out


class PlaybookExport:
    """Export through playbooks/sync.yml: one run for every member of the batch.

    The role's tasks/sync.yml handles items ``{uid, action: export, dest}`` by archiving the
    member's data on the host and fetching it to ``dest/<export_file>`` on the controller.
    """

    export_var: ClassVar[str]   # the extra var of sync.yml, e.g. coop_sync_mail
    export_file: ClassVar[str]  # what the role fetches into dest, e.g. mailbox.tar
    runtime: Runtime
    name: ClassVar[str]

    def export_item(self, member: MemberState, dest: Path) -> dict[str, Any]:
        return {"uid": member.uid, "action": "export", "dest": str(dest.resolve())}

    def export_vars(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The extra vars of the one run; a role whose batch has another shape overrides it."""
        return {self.export_var: items}

    def export_many(self, items: Sequence[tuple[MemberState, Path]]
                    ) -> dict[str, list[Path] | Exception]:
        for _member, dest in items:
            dest.mkdir(parents=True, exist_ok=True)
            (dest / self.export_file).unlink(missing_ok=True)  # never an older file
        try:
            result = self.runtime.hosts.playbook(
                "sync.yml", self.export_vars([self.export_item(m, d) for m, d in items]))
        except Exception as exc:  # the run could not start: every export failed
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            return {m.uid: ServiceUnavailable(f"{self.name} export: {reason}") for m, _ in items}
        failed = result.get("failed_items") or {}
        out: dict[str, list[Path] | Exception] = {}
        for member, dest in items:
            target = dest / self.export_file
            if member.uid in failed or not result.get("ok") or not target.is_file():
                reason = failed.get(member.uid) or result.get("error") or f"no {target.name}"
                out[member.uid] = ServiceUnavailable(
                    f"{self.name} export of {member.uid} failed: {reason}")
            else:
                out[member.uid] = [target]
        return out

    def export(self, member: MemberState, dest: Path) -> list[Path]:
        result = self.export_many([(member, dest)])[member.uid]
        if isinstance(result, Exception):
            raise result
        return result
