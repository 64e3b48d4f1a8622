"""Where the watcher's batches go.

`SyncSink` is the real one: `Sync.plan(uids=batch)` then `Sync.apply`, reading exactly the
batch's members (a member deleted from the directory is simply absent: the sync never touches
a member it cannot read, and `coopctl audit` reports their leftovers); it times each step
(read, plan, apply, each service's part) for the watcher's batch log line. The connectors'
follow-ups (the cloud's token deletion after a disable) run beside the next batches, and
the members whose follow-up failed are retried with a later batch. `RecordingSink` touches
no service: it records the uids it is given, for the tests and the benchmark of the directory
side, where the connectors are not what is measured (they have their own tests).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.config import Config
from provisioner.errors import CoopError, DirectoryUnavailable
from provisioner.watch.watcher import BatchResult

if TYPE_CHECKING:
    from provisioner.services.base import ChangeResult

log = logging.getLogger("coopctl.watch")


class SyncSink:
    """The sync's connectors for exactly the members of each batch."""

    def __init__(self, config: Config) -> None:
        from provisioner.sync import Sync

        self.config = config
        self.engine = Sync(config)

    def apply(self, uids: set[str], hold_destructive: bool) -> BatchResult:
        from provisioner.sync import GuardStop

        started = time.monotonic()
        timing: dict[str, float] = {}
        try:
            # Members of the batch that still exist: a deleted one is simply not read.
            read = self.engine.read(uids, missing_ok=True)
        except DirectoryUnavailable:
            raise  # the watcher reconnects and gets the batch again
        except CoopError as exc:  # bad data for one batch must not stop the stream
            log.error("batch of %d member(s) not read: %s", len(uids), exc.message)
            return BatchResult(failed=len(uids), retry=set(uids))
        timing["read"] = time.monotonic() - started
        alert = None
        try:
            plan = self.engine.plan(uids=uids, read=read)
        except GuardStop as exc:
            alert = exc.message
            plan = self.engine.plan(uids=uids, read=read, force=True)
            hold_destructive = True
        held: set[str] = set()
        if hold_destructive:
            held = plan.destructive_members()
            for service_plan in plan.services.values():
                service_plan.changes = [c for c in service_plan.changes if not c.destructive]
            plan.archives, plan.due = [], set()
            if held and alert is None:
                alert = "destructive changes are held while the watcher's alert stands"
        retry = {uid for uid in uids if uid in plan.desired} \
            if any(p.error for p in plan.services.values()) else set()
        for name, service_plan in plan.services.items():
            if service_plan.error:
                log.warning("%s not reachable: %s", name, service_plan.error)
        timing["plan"] = time.monotonic() - started - timing["read"]
        retry |= self.engine.take_late_failed()
        if not plan.changes():
            return BatchResult(retry=retry, held=held, alert=alert, timing=_rounded(timing))
        applying = time.monotonic()

        def progress(result: ChangeResult) -> None:  # under the sync's journal lock
            timing[result.change.service] = time.monotonic() - applying

        summary = self.engine.apply(plan, progress=progress, background_follow_ups=True)
        timing["apply"] = time.monotonic() - applying
        retry |= {r.change.uid for r in summary.failed} | self.engine.take_late_failed()
        return BatchResult(summary.applied, len(summary.failed), retry, held, alert,
                           _rounded(timing))

    def full(self) -> BatchResult:
        from provisioner.sync import GuardStop

        try:
            plan = self.engine.plan()
        except GuardStop as exc:
            return BatchResult(alert=exc.message)
        if not plan.changes():
            return BatchResult(retry=self.engine.take_late_failed())
        summary = self.engine.apply(plan, background_follow_ups=True)
        return BatchResult(summary.applied, len(summary.failed),
                           {r.change.uid for r in summary.failed} | self.engine.take_late_failed())

    def close(self) -> None:
        """Let the connectors' follow-ups still running finish (the cloud's token deletion of
        the last suspensions): the watcher calls it before it exits. One that is killed
        instead leaves its members marked, and the next run finishes them."""
        self.engine.wait_follow_ups()


def _rounded(timing: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timing.items()}


class RecordingSink:
    """Records each batch's uids (in memory, and as JSON lines in `path` when given, flushed
    and fsynced before returning, so a test can kill the process at any moment)."""

    def __init__(self, path: Path | None = None, delay: float = 0.0,
                 on_apply: Callable[[set[str]], None] | None = None) -> None:
        self.path = path
        self.delay = delay
        self.on_apply = on_apply
        self.batches: list[set[str]] = []
        self.fulls = 0
        self.lock = threading.Lock()

    def _record(self, kind: str, uids: set[str]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"kind": kind, "uids": sorted(uids)}) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def apply(self, uids: set[str], hold_destructive: bool) -> BatchResult:
        with self.lock:
            self.batches.append(set(uids))
        self._record("batch", uids)
        if self.on_apply:
            self.on_apply(set(uids))
        if self.delay:
            threading.Event().wait(self.delay)
        return BatchResult(applied=len(uids))

    def full(self) -> BatchResult:
        with self.lock:
            self.fulls += 1
        self._record("full", set())
        return BatchResult()
