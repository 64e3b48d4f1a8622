"""`coopctl watch`: follow the directory's syncrepl stream and sync exactly the members that
changed, batching changes that arrive together.

The loop, on one thread:

1. connect (ldapconn.connect: TLS, bind) and start a syncrepl search from the stored cookie:
   refreshAndPersist for the service, refreshOnly for `--once`;
2. collect entries into a batch until `batch_window` seconds after its first change, or
   `batch_max` entries, or the end of the refresh phase;
3. resolve the batch to member uids through the entryUUID map (a member's own entry; the
   members whose group membership changed; everyone on a changed plan; deletions by UUID);
4. hand those uids to the sink (`SyncSink`: `Sync.plan(uids=...)` + `Sync.apply`);
5. store the map changes and the cookie in one transaction, *after* the sink returned.

A watcher killed between 4 and 5 gets the same batch again at its next start, and the sync
plans nothing for what was already done: changes are applied at least once, and a repeated
one is a no-op. Without a cookie (first start, or the provider refused it) the refresh lists
every entry: the map is rebuilt from it and one full sync runs instead of per-member batches.

Guards. Deletions are counted as the members they touch (a deleted member, the members of a
deleted group or plan) over a sliding window; above the sync's own limit
(`max(min_destructive_count, max_destructive_share x members)`) they are held: not handed to
the sync, journalled as an alert, shown by `--status`. While an alert stands, destructive
changes (suspend, archive, purge) of any batch are held too, and a batch the sync's
`GuardStop` refuses is applied without its destructive part. A full sync that succeeds after
the alert (the periodic one or an operator's `coopctl sync`) clears it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ldap3.core.exceptions import LDAPException

from provisioner.config import Config
from provisioner.errors import CoopError
from provisioner.model import MEMBER_ATTRIBUTES, rdn_value
from provisioner.watch import status as status_mod
from provisioner.watch.state import Known, WatchState
from provisioner.watch.syncrepl import (
    EntryChange,
    RefreshRequired,
    SearchDone,
    Stream,
    StreamError,
    SyncInfo,
)

log = logging.getLogger("coopctl.watch")

FILTER = "(|(objectClass=coopMember)(objectClass=groupOfNames)(objectClass=coopPlan))"
# What the sync reads of a plan: a change of description or price concerns no service.
PLAN_SYNCED = ["cn", "coopCloudQuota", "coopMailQuota", "coopService"]
# Everything the sync reads, and nothing else: a modification of anything else (a failed
# login's pwdFailureTime, a password) is seen as an unchanged digest and costs no sync.
ATTRIBUTES = sorted({*MEMBER_ATTRIBUTES, *PLAN_SYNCED, "member"})


class WatchError(CoopError):
    exit_code = 9


@dataclass(frozen=True)
class WatchSettings:
    """How the watcher batches and paces itself (`coopctl watch` options)."""

    batch_window: float = 0.25      # seconds after a batch's first change before it is applied
    batch_max: int = 500            # entries that make a batch at once
    full_sync_every: float = 86400  # seconds between full syncs (0: never)
    heartbeat: float = 30           # seconds between status updates when idle
    backoff_min: float = 1.0        # first wait before reconnecting
    backoff_max: float = 60.0       # longest wait between reconnection attempts
    retry_every: float = 60         # seconds between retries of members whose change failed
    deletion_window: float = 600    # seconds over which implied deletions are added up


@dataclass
class BatchResult:
    """What the sink did with one batch."""

    applied: int = 0
    failed: int = 0
    retry: set[str] = field(default_factory=set)  # failed or unreachable: try again later
    held: set[str] = field(default_factory=set)   # destructive changes held by a guard
    alert: str | None = None                      # why they were held
    # where the batch's time went (seconds): read, plan (the services observed at once),
    # apply, and each service's part of the apply (its last change journalled), so a
    # latency target missed can be traced to a step from the watcher's log alone
    timing: dict[str, float] = field(default_factory=dict)


class Sink(Protocol):
    """Where batches go: the sync (SyncSink), or a recorder in tests and the benchmark."""

    def apply(self, uids: set[str], hold_destructive: bool) -> BatchResult:
        """Sync exactly these members; raise CoopError if the directory cannot be read."""

    def full(self) -> BatchResult:
        """A full sync of every member."""


@dataclass
class _Batch:
    ops: dict[str, EntryChange] = field(default_factory=dict)  # uuid -> latest change
    implied: set[str] = field(default_factory=set)  # uuids deleted by a present phase
    cookie: bytes | None = None
    first: float | None = None

    def add(self, change: EntryChange) -> None:
        self.ops.pop(change.uuid, None)  # keep arrival order of the latest change
        self.ops[change.uuid] = change
        if self.first is None:
            self.first = time.monotonic()

    def __len__(self) -> int:
        return len(self.ops) + len(self.implied)


@dataclass
class _Resolved:
    upserts: dict[str, Known]
    deletes: set[str]
    changed: set[str]   # uids touched by additions and modifications
    removed: set[str]   # uids touched by deletions (counted by the guard)


class Watcher:
    """One watcher on one state directory (a lock file keeps it alone there)."""

    def __init__(self, config: Config, sink: Sink, settings: WatchSettings | None = None,
                 state_dir: Path | None = None) -> None:
        self.config = config
        self.sink = sink
        self.settings = settings or WatchSettings()
        base = state_dir or config.sync.state_dir  # type: ignore[union-attr]
        self.dir = Path(base) / "watch"
        self.stop_event = threading.Event()
        self.state: WatchState | None = None
        self._lock_fd: int | None = None
        cfg = config.directory
        self.people = cfg.people_dn.lower()
        self.groups = cfg.groups_dn.lower()
        self.plans = cfg.plans_dn.lower()
        self._deletions: deque[tuple[float, int]] = deque()
        self._last_retry = 0.0
        self.status: dict[str, Any] = {
            "pid": os.getpid(), "started": status_mod.now_iso(), "state": "starting",
            "connected": False, "heartbeat_seconds": self.settings.heartbeat,
            "counters": {k: 0 for k in ("batches", "members", "changes_applied",
                                        "changes_failed", "reconnects", "errors",
                                        "full_syncs")},
            "pending": 0, "last_batch": None, "last_error": None, "refresh": None,
        }

    # -- life cycle ------------------------------------------------------------------------
    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WatchError(f"another watcher is running on {self.dir}",
                             "stop it first (systemctl stop coopctl-watch), or use "
                             "`coopctl watch --status` to see what it does") from None
        self._lock_fd = fd
        self.state = WatchState(self.dir)
        self._load_alert()
        self._write_status()

    def close(self) -> None:
        finish = getattr(self.sink, "close", None)
        if finish is not None:  # follow-ups still running (SyncSink.close)
            finish()
        if self.state is not None:
            self.status.update(state="stopped", connected=False)
            self._write_status()
            self.state.close()
            self.state = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT end the loop after the batch in hand (main thread only)."""
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def run(self, once: bool = False) -> dict[str, Any]:
        """Follow the stream until stopped (or, with `once`, until the refresh is done)."""
        assert self.state is not None, "open() first"
        backoff = self.settings.backoff_min
        while not self.stop_event.is_set():
            try:
                refreshed = self._session(once)
                if once:
                    break
                if refreshed:
                    backoff = self.settings.backoff_min
            except RefreshRequired as exc:
                log.warning("%s: starting again with a full refresh", exc)
                self.state.put("cookie", None)
                continue
            except (StreamError, CoopError, OSError, LDAPException) as exc:
                self._error(exc)
                if once:
                    raise WatchError(f"the watcher stopped: {_text(exc)}",
                                     getattr(exc, "hint", None)
                                     or "check that the directory runs and answers, then "
                                     "run again: it resumes from the last applied batch"
                                     ) from None
                self.status.update(state="reconnecting", connected=False)
                self.status["counters"]["reconnects"] += 1
                self._write_status()
                log.warning("reconnecting in %.0f s", backoff)
                if self.stop_event.wait(backoff):
                    break
                backoff = min(backoff * 2, self.settings.backoff_max)
        return self.status

    # -- one connection --------------------------------------------------------------------
    def _session(self, once: bool) -> bool:
        """One connection's stream; True once its refresh phase completed."""
        from provisioner.ldapconn import close_quietly, connect

        assert self.state is not None
        cookie = self.state.cookie()
        full = cookie is None
        conn = connect(self.config.directory)
        try:
            stream = Stream(conn, self.config.directory.base_dn, FILTER, ATTRIBUTES)
            stream.start(cookie, persist=not once)
            self.status.update(state="refreshing", connected=True, last_error=None)
            self._write_status()
            log.info("stream open (%s)", "full refresh: no cookie yet" if full
                     else "resuming from the stored cookie")
            return self._consume(stream, full, once)
        finally:
            close_quietly(conn)

    def _consume(self, stream: Stream, full: bool, once: bool) -> bool:
        assert self.state is not None
        s = self.settings
        batch = _Batch()
        refreshing = True
        present: set[str] = set()
        seen: set[str] = set()
        full_map: dict[str, Known] = {}
        counts = {"entries": 0, "present": 0, "deleted": 0, "implied": 0}
        beat = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if batch.first is not None and not (refreshing and full):
                timeout = max(0.0, batch.first + s.batch_window - now)
            else:
                timeout = 1.0  # notice a stop request within a second
            message = stream.read(timeout)
            if message is None:
                if batch and not refreshing:
                    self._flush(batch)
                    batch = _Batch()
                if not refreshing and time.monotonic() - beat >= s.heartbeat:
                    beat = time.monotonic()
                    self._idle()
                continue
            end_of_refresh = False
            if log.isEnabledFor(logging.DEBUG):
                log.debug("stream: %s", _describe(message))
            if isinstance(message, EntryChange):
                if message.state == "present":
                    present.add(message.uuid)
                    counts["present"] += 1
                    continue
                counts["entries" if message.state != "delete" else "deleted"] += 1
                if refreshing:
                    seen.add(message.uuid)
                if refreshing and full:
                    known = self._known_from(message)
                    if known is not None:
                        full_map[message.uuid] = known
                    continue
                batch.add(message)
                if message.cookie:
                    batch.cookie = message.cookie
            elif isinstance(message, SyncInfo):
                if message.cookie:
                    batch.cookie = message.cookie
                if message.kind == "syncIdSet":
                    if message.refresh_deletes:
                        counts["deleted"] += len(message.uuids)
                        for u in message.uuids:
                            batch.add(EntryChange("delete", u, ""))
                    else:
                        present.update(message.uuids)
                        counts["present"] += len(message.uuids)
                elif message.kind == "refreshPresent" and refreshing and not full:
                    counts["implied"] += self._implied(batch, present, seen)
                if message.kind in ("refreshDelete", "refreshPresent") and message.refresh_done:
                    end_of_refresh = refreshing
                elif message.kind == "newcookie" and not batch and not refreshing:
                    self._store_cookie(batch.cookie)
            elif isinstance(message, SearchDone):
                if message.result_code != 0:
                    raise StreamError(f"the directory ended the change stream: "
                                      f"{message.diagnostic or message.result_code}")
                if message.cookie:
                    batch.cookie = message.cookie
                if refreshing and not full and not message.refresh_deletes:
                    # the refresh was a present phase: whatever it did not list is gone
                    counts["implied"] += self._implied(batch, present, seen)
                end_of_refresh = refreshing
            if end_of_refresh:
                refreshing = False
                self.status["refresh"] = {"at": status_mod.now_iso(),
                                          "kind": "full" if full else "incremental", **counts}
                log.info("refresh done: %s", json.dumps(self.status["refresh"]))
                if full:
                    self._full_refresh(full_map, batch.cookie)
                    full_map = {}
                    batch = _Batch()
                else:
                    self._flush(batch, force_cookie=True)
                    batch = _Batch()
                present.clear()
                seen.clear()
                self.status["state"] = "streaming"
                self._write_status()
                self._full_sync_if_due()
                if isinstance(message, SearchDone):
                    return True
                continue
            if isinstance(message, SearchDone):  # a persist the server ended: reconnect
                self._flush(batch)
                raise StreamError("the directory ended the change stream")
            if len(batch.ops) >= s.batch_max and not (refreshing and full):
                self._flush(batch)
                batch = _Batch()
        if batch and not refreshing:
            self._flush(batch)
        return not refreshing

    # -- resolving changes to members ------------------------------------------------------
    def _kind(self, dn: str) -> str | None:
        low = dn.lower()
        for kind, parent in (("member", self.people), ("group", self.groups),
                             ("plan", self.plans)):
            if low.endswith("," + parent):
                return kind
        return None

    def _known_from(self, change: EntryChange) -> Known | None:
        kind = self._kind(change.dn)
        if kind is None:
            return None
        a = change.attributes
        if kind == "member":
            uid = (a.get("uid") or [rdn_value(change.dn).encode()])[0].decode()
            plan = a.get("coopPlan")
            return Known("member", uid, rdn_value(plan[0].decode()) if plan else None,
                         digest=_digest(a, MEMBER_ATTRIBUTES))
        name = (a.get("cn") or [rdn_value(change.dn).encode()])[0].decode()
        if kind == "group":
            members = frozenset(rdn_value(m.decode()) for m in a.get("member", [])
                                if m.decode().lower().endswith("," + self.people))
            return Known("group", name, members=members)
        return Known("plan", name, digest=_digest(a, PLAN_SYNCED))

    def _implied(self, batch: _Batch, present: set[str], seen: set[str]) -> int:
        """Entries the map knows that a present phase neither listed nor changed: gone."""
        assert self.state is not None
        gone = self.state.all_uuids() - present - seen - set(batch.ops)
        batch.implied |= gone
        return len(gone)

    def _resolve(self, batch: _Batch) -> _Resolved:
        assert self.state is not None
        before = self.state.known([*batch.ops, *batch.implied])
        upserts: dict[str, Known] = {}
        deletes: set[str] = set()
        changed: set[str] = set()
        removed: set[str] = set()
        for uuid, change in batch.ops.items():
            old = before.get(uuid)
            if change.state == "delete":
                deletes.add(uuid)
                if old is None:
                    log.info("deleted entry %s was not followed: nothing to do", uuid)
                else:
                    removed |= self._members_of(old)
                continue
            new = self._known_from(change)
            if new is None:
                continue
            upserts[uuid] = new
            if old is not None and (old.kind, old.name, old.digest) == \
                    (new.kind, new.name, new.digest) and new.digest is not None:
                continue  # nothing the sync reads changed (a login's ppolicy stamp, say)
            if new.kind == "member":
                changed.add(new.name)
                if old is not None and old.kind == "member" and old.name != new.name:
                    changed.add(old.name)
            elif new.kind == "group":
                if old is None or old.name != new.name:
                    changed |= new.members | (old.members if old else frozenset())
                else:
                    changed |= new.members ^ old.members
            else:
                changed |= self.state.on_plan(new.name)
                if old is not None and old.name != new.name:
                    changed |= self.state.on_plan(old.name)
        for uuid in batch.implied:
            deletes.add(uuid)
            if uuid in before:
                removed |= self._members_of(before[uuid])
        return _Resolved(upserts, deletes, changed, removed - changed)

    def _members_of(self, known: Known) -> set[str]:
        assert self.state is not None
        if known.kind == "member":
            return {known.name}
        if known.kind == "group":
            return set(known.members)
        return self.state.on_plan(known.name)

    # -- applying --------------------------------------------------------------------------
    def _flush(self, batch: _Batch, force_cookie: bool = False) -> None:
        assert self.state is not None
        if not batch and not force_cookie:
            return
        started = time.monotonic()
        resolved = self._resolve(batch)
        held = self._guard_deletions(resolved.removed)
        uids = resolved.changed | (resolved.removed - held)
        if time.monotonic() - self._last_retry >= self.settings.retry_every:
            retry = self.state.pending("retry")
            uids |= retry
            self._last_retry = time.monotonic()
        result = BatchResult()
        if uids:
            before = self.status["state"]
            self.status.update(pending=len(uids), state="applying")
            self._write_status()
            try:
                result = self.sink.apply(uids, hold_destructive=self._alert() is not None)
            finally:
                self.status["state"] = before
        at = status_mod.now_iso()
        self.state.clear_pending("retry", uids - result.retry)
        self.state.set_pending("retry", result.retry, at)
        if result.held:
            self._raise_alert(result.alert or "the sync's guard stopped destructive changes",
                              result.held)
        self.state.commit(resolved.upserts, resolved.deletes, batch.cookie)
        if batch.cookie:
            self.status["cookie_time"] = status_mod.cookie_time(batch.cookie)
            self.status["cookie_stored"] = at
        c = self.status["counters"]
        c["batches"] += 1 if uids else 0
        c["members"] += len(uids)
        c["changes_applied"] += result.applied
        c["changes_failed"] += result.failed
        self.status["pending"] = 0
        if uids:
            self.status["last_batch"] = {
                "at": at, "members": len(uids), "entries": len(batch),
                "applied": result.applied, "failed": result.failed,
                "seconds": round(time.monotonic() - started, 3),
                **({"timing": result.timing} if result.timing else {})}
            log.info("batch: %d member(s), %d change(s) applied, %d failed, %.2f s%s",
                     len(uids), result.applied, result.failed, time.monotonic() - started,
                     _timing(result.timing))
        self._write_status()

    def _store_cookie(self, cookie: bytes | None) -> None:
        if cookie and self.state is not None:
            self.state.commit({}, (), cookie)
            self.status["cookie_time"] = status_mod.cookie_time(cookie)
            self.status["cookie_stored"] = status_mod.now_iso()

    def _full_refresh(self, full_map: dict[str, Known], cookie: bytes | None) -> None:
        """No cookie: the refresh listed everything. One full sync, then the new map."""
        assert self.state is not None
        self._full_sync(reason="no cookie: first start or a refused cookie")
        self.state.commit(full_map, (), cookie, replace_map=True)
        self.status["cookie_time"] = status_mod.cookie_time(cookie)
        self.status["cookie_stored"] = status_mod.now_iso()

    def _full_sync_if_due(self) -> None:
        every = self.settings.full_sync_every
        if every <= 0 or self.state is None:
            return
        last = self.state.get("last_full_sync")
        if last and (datetime.now(UTC) - datetime.fromisoformat(str(last))).total_seconds() \
                < every:
            return
        self._full_sync(reason="periodic")

    def _full_sync(self, reason: str) -> None:
        assert self.state is not None
        log.info("full sync (%s)", reason)
        started = time.monotonic()
        self.status["state"] = "full sync"
        self._write_status()
        result = self.sink.full()
        at = status_mod.now_iso()
        self.state.put("last_full_sync", at)
        self.status["counters"]["full_syncs"] += 1
        self.status["counters"]["changes_applied"] += result.applied
        self.status["counters"]["changes_failed"] += result.failed
        self.status["last_full_sync"] = {"at": at, "reason": reason,
                                         "applied": result.applied, "failed": result.failed,
                                         "seconds": round(time.monotonic() - started, 3),
                                         "stopped": result.alert}
        if result.alert:
            self._raise_alert(result.alert, result.held)
        else:
            self._clear_alert("a full sync succeeded")
            self.state.clear_pending("retry")

    def _idle(self) -> None:
        """Heartbeat: status, retries, the periodic full sync, an alert cleared by hand."""
        assert self.state is not None
        if self._alert() is not None and self._full_run_since(self._alert()["at"]):
            self._clear_alert("a full `coopctl sync` succeeded since")
        if self.state.pending("retry") and \
                time.monotonic() - self._last_retry >= self.settings.retry_every:
            self._flush(_Batch(), force_cookie=True)
        self._full_sync_if_due()
        self._write_status()

    # -- the deletion guard ----------------------------------------------------------------
    def _limit(self) -> int:
        s = self.config.sync
        assert s is not None and self.state is not None
        return max(s.min_destructive_count,
                   int(self.state.member_count() * s.max_destructive_share))

    def _guard_deletions(self, removed: set[str]) -> set[str]:
        """Members whose deletion is held (all of them once the window's total is too big)."""
        assert self.state is not None
        now = time.monotonic()
        while self._deletions and now - self._deletions[0][0] > self.settings.deletion_window:
            self._deletions.popleft()
        if not removed:
            return set()
        total = sum(n for _t, n in self._deletions) + len(removed)
        self._deletions.append((now, len(removed)))
        limit = self._limit()
        if self._alert() is None and total <= limit:
            return set()
        if self._alert() is None:
            self._raise_alert(
                f"{total} members were deleted from the directory (or lost a group or plan "
                f"by a deletion) within {self.settings.deletion_window:.0f} s; the limit is "
                f"{limit} (sync.max_destructive_share): nothing was done for them", removed)
        else:
            self._hold(removed)
        return set(removed)

    def _alert(self) -> dict[str, Any] | None:
        return self.status.get("alert")

    def _load_alert(self) -> None:
        assert self.state is not None
        raw = self.state.get("alert")
        self.status["alert"] = json.loads(raw) if raw else None
        self.status["held"] = len(self.state.pending("held"))
        self.status["retry"] = len(self.state.pending("retry"))

    def _hold(self, uids: set[str]) -> None:
        assert self.state is not None
        self.state.set_pending("held", uids, status_mod.now_iso())
        self.status["held"] = len(self.state.pending("held"))

    def _raise_alert(self, message: str, held: set[str]) -> None:
        assert self.state is not None
        self._hold(held)
        first = self._alert() is None
        alert = self._alert() or {"at": status_mod.now_iso(), "message": message}
        alert["held"] = self.status["held"]
        self.status["alert"] = alert
        self.state.put("alert", json.dumps(alert))
        log.error("ALERT: %s (%d member(s) held); resolve with `coopctl sync --dry-run`, then "
                  "`coopctl sync`", message, len(held))
        self._journal_alert(message, held, first)

    def _clear_alert(self, why: str) -> None:
        assert self.state is not None
        if self._alert() is None and not self.state.pending("held"):
            return
        log.warning("alert cleared: %s", why)
        self.status["alert"] = None
        self.state.put("alert", None)
        self.state.clear_pending("held")
        self.status["held"] = 0

    def _journal_alert(self, message: str, held: set[str], first: bool) -> None:
        """One journal record per alert (not per held batch), in a run of its own."""
        if not first:
            return
        from provisioner.journal import Journal

        try:
            journal = Journal(self.config.sync.journal)  # type: ignore[union-attr]
        except CoopError as exc:
            log.error("the alert could not be journalled: %s", exc.message)
            return
        try:
            run = journal.start_run()
            journal.append(run, "watch", "-", "alert",
                           {"held": len(held), "members": sorted(held)[:50]}, False, message)
            journal.finish_run(run, None, "stopped")
        finally:
            journal.close()

    def _full_run_since(self, since: str) -> bool:
        """A full `coopctl sync` finished well after `since` (read from the journal's runs)."""
        from provisioner.journal import Journal

        path = self.config.sync.journal  # type: ignore[union-attr]
        if not Path(path).exists():
            return False
        try:
            journal = Journal(path, readonly=True)
        except CoopError:
            return False
        try:
            row = journal.db.execute(
                "SELECT max(finished) FROM runs WHERE outcome = 'ok' AND members IS NOT NULL"
            ).fetchone()
        finally:
            journal.close()
        return bool(row and row[0] and row[0] > since[:19])

    # -- status ----------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> None:
        text = _text(exc)
        log.error("%s", text)
        self.status["counters"]["errors"] += 1
        self.status["last_error"] = {"at": status_mod.now_iso(), "error": text}

    def _write_status(self) -> None:
        self.status["updated"] = status_mod.now_iso()
        if self.state is not None:
            self.status["retry"] = len(self.state.pending("retry"))
        try:
            status_mod.write(self.dir, self.status)
        except OSError as exc:
            log.error("cannot write the status file in %s: %s", self.dir, exc)


def _digest(attributes: dict[str, list[bytes]], names: list[str]) -> str:
    """A hash of the values of `names` (case-insensitive names, values in any order)."""
    lower = {k.lower(): v for k, v in attributes.items()}
    digest = hashlib.sha256()
    for name in sorted(n.lower() for n in names):
        for value in sorted(lower.get(name, [])):
            digest.update(name.encode() + b"\0" + value + b"\0")
    return digest.hexdigest()


def _timing(timing: dict[str, float]) -> str:
    """` (read 0.03 s, plan 0.41 s, apply 0.80 s: cloud 0.80 s, mail 0.21 s)` or nothing."""
    steps = [f"{k} {timing[k]:.2f} s" for k in ("read", "plan", "apply") if k in timing]
    services = [f"{k} {v:.2f} s" for k, v in sorted(timing.items())
                if k not in ("read", "plan", "apply")]
    if not steps:
        return ""
    return f" ({', '.join(steps)}{': ' + ', '.join(services) if services else ''})"


def _describe(message: EntryChange | SyncInfo | SearchDone) -> str:
    if isinstance(message, EntryChange):
        return f"{message.state} {message.dn or message.uuid}"
    if isinstance(message, SyncInfo):
        return f"sync info {message.kind} ({len(message.uuids)} uuid(s), " \
               f"refresh done: {message.refresh_done})"
    return f"search done ({message.result_code})"


def _text(exc: BaseException) -> str:
    if isinstance(exc, CoopError):
        return exc.message
    return str(exc) or type(exc).__name__
