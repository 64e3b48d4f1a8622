"""End-to-end latency of `coopctl watch` on a deployed lab: issue 11's three paths, from the
LDAP write to the effect in the services, beside their targets and LSC's polling.

A real `coopctl watch` (the sync's real connectors, the lab's coopctl configuration, a state
directory of its own) follows the lab's directory; this process writes to the directory with
ldap3 as coopctl's service account (no command start-up in the figures: t0 is the moment the
write returned) and measures, for COUNT members each, one by one (each write waits for its
effect, and for the watcher to be idle again, before the next) and in a burst (COUNT writes back
to back, each latency from its own write):

  new member    -> mailbox, welcome mail and cloud account: the later of the journal records
                   mail/welcome (the SMTP server accepted it) and cloud/create     target 30 s
  quota change  -> cloud/quota (Dovecot reads its quota from the directory)        target 10 s
  suspension    -> mail/suspend (doveadm kick), cloud/suspend (disabled: the cloud refuses
                   every session and app password of a disabled account at once),
                   pads/suspend (sessions deleted); Keycloak refuses at once (its
                   federation's filter admits active members only)                  target  5 s
                   The cloud's follow-up (its auth tokens deleted, which the watcher does
                   not wait for) is printed apart: "cloud/suspend (follow-up)".

The journal's own timestamps are to the second, so the watcher's journal is polled read-only
every 50 ms and a record's time is when it first appeared (late by at most one poll). For a
sample (every SAMPLE-th member) the effect is also checked in the service itself, probed every
0.2 s: the welcome mail in the IMAP inbox and the cloud account (OCS); the IMAP quota
(GETQUOTAROOT on a new login) and the cloud quota; an open IMAP session cut, a Keycloak refresh
token refused and the cloud account disabled. The watcher's batch log lines (with each step's
time: read, plan, apply and each service's part) say where the time goes.

The 2 x COUNT members (plan `wbench`: mail, cloud, pads, sso) are created by the new-member
path, then get the quota change, then the suspension. At the end they are departed 40 days
ago, purged from every service by one `coopctl sync` and deleted from the directory;
`--keep` leaves them.

    coopctl lab up --name wbench --index 6              # a deployed lab of its own
    .venv/bin/python bench/bench_watch_lab.py --lab wbench [--count 200] [--sample-every 20]
    .venv/bin/python bench/bench_watch.py --lab wbench ...     # the same

Anchor: LSC's asynchronous mode polls every 5 s: a change waits 0-5 s for the next poll
(p50 2.5 s, p95 4.75 s, max 5 s) before any work, and every restart is a full refresh.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import re
import secrets
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ldap3
import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.config import Config, load  # noqa: E402
from provisioner.lab.config import LabConfig, default_state_dir  # noqa: E402
from provisioner.lab.inventory import write_coopctl_config  # noqa: E402
from provisioner.ldapconn import connect  # noqa: E402
from provisioner.model import Member, ldap_time  # noqa: E402
from provisioner.watch import status as watch_status  # noqa: E402

COOPCTL = str(Path(sys.executable).with_name("coopctl"))
PLAN = "wbench"
SERVICES = ("mail", "cloud", "pads", "sso")
KINDS = ("new member", "quota change", "suspension")
MODES = ("one by one", "burst")
TARGETS = {"new member": 30.0, "quota change": 10.0, "suspension": 5.0}  # p95, end to end
LSC = "2.5/4.75/5 s"
# The journal records whose latest is each path's effect.
EFFECTS: dict[str, tuple[tuple[str, str], ...]] = {
    "new member": (("mail", "welcome"), ("cloud", "create")),
    "quota change": (("cloud", "quota"),),
    "suspension": (("mail", "suspend"), ("cloud", "suspend"), ("pads", "suspend")),
}
REALM, TEST_CLIENT = "demo", "coopctl-test"  # the sso role's test client (lab group_vars)
MAIL_QUOTA, CLOUD_QUOTA = (1024, 2048), (5120, 10240)  # MB: before, after the quota change
POLL, PROBE_EVERY = 0.05, 0.2
BATCH = re.compile(r"batch: (\d+) member\(s\), (\d+) change\(s\) applied, (\d+) failed, "
                   r"([\d.]+) s(?: \((.*)\))?")


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 (median), p95 (nearest rank) and max, as bench_watch.py computes them."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    p = percentiles(values)
    return f"{p['p50']:.2f} / {p['p95']:.2f} / {p['max']:.2f} s"


# -- what the watcher did: its journal and its log ---------------------------------------------
class JournalWatch(threading.Thread):
    """When each journal record first appeared: (uid, service, action) -> (time, result)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.seen: dict[tuple[str, str, str], tuple[float, str, str | None]] = {}
        self.changed = threading.Condition()
        self.halt = threading.Event()
        self.last = 0

    def run(self) -> None:
        db: sqlite3.Connection | None = None
        while not self.halt.is_set():
            try:
                if db is None and self.path.exists():
                    db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=5, check_same_thread=False)
                rows = [] if db is None else db.execute(
                    "SELECT id, uid, service, action, result, error FROM journal WHERE id > ? "
                    "ORDER BY id", (self.last,)).fetchall()
            except sqlite3.Error:  # not created yet, or a checkpoint in the way: next poll
                rows = []
            if rows:
                now = time.monotonic()
                with self.changed:
                    for row_id, uid, service, action, result, error in rows:
                        self.last = row_id
                        key = (uid, service, action)
                        if self.seen.get(key, (0, ""))[1] == "ok":  # a second record: the
                            key = (uid, service, f"{action} (follow-up)")  # follow-up's
                        if key not in self.seen or self.seen[key][1] != "ok":
                            self.seen[key] = (now, result, error)
                    self.changed.notify_all()
            self.halt.wait(POLL)

    def effect(self, uid: str, kind: str) -> tuple[float | None, str | None]:
        """(time of the latest required record, None) when all are ok; (None, error) when one
        failed; (None, None) while some are missing. Call with `changed` held."""
        times = []
        for service, action in EFFECTS[kind]:
            seen = self.seen.get((uid, service, action))
            if seen is None:
                return None, None
            if seen[1] != "ok":
                return None, f"{service}/{action}: {seen[2]}"
            times.append(seen[0])
        return max(times), None


class WatcherLog(threading.Thread):
    """The watcher's output, each line stamped with this process's clock (kept in a file)."""

    def __init__(self, process: subprocess.Popen, path: Path) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.path = path
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        assert self.process.stdout is not None
        with self.path.open("w", encoding="utf-8") as out:
            for line in self.process.stdout:
                now = time.monotonic()
                self.lines.append((now, line.rstrip()))
                out.write(f"{now:.3f} {line}")
                out.flush()

    def batches(self, start: float, end: float) -> list[dict[str, Any]]:
        found = []
        for at, line in self.lines:
            match = BATCH.search(line)
            if match and start <= at <= end:
                timing = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s",
                                                             match.group(5) or "")}
                found.append({"members": int(match.group(1)), "applied": int(match.group(2)),
                              "failed": int(match.group(3)),
                              "seconds": float(match.group(4)), "timing": timing})
        return found


# -- the services themselves, for the sample ---------------------------------------------------
class Services:
    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(cfg.ca_file)
        self.lock = threading.Lock()

    def imap(self, uid: str, password: str) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.cfg.address("mail"), 143, timeout=20)
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file))
        ctx.check_hostname = False  # the certificate names the host; we dial its address
        conn.starttls(ssl_context=ctx)
        conn.login(uid, password)
        return conn

    def inbox_has_mail(self, uid: str, password: str) -> bool:
        conn = self.imap(uid, password)
        try:
            _typ, data = conn.select("INBOX", readonly=True)
            return int(data[0] or 0) > 0
        finally:
            conn.logout()

    def imap_quota_mb(self, uid: str, password: str) -> int | None:
        conn = self.imap(uid, password)
        try:
            _typ, data = conn.getquotaroot("INBOX")
        finally:
            conn.logout()
        found = re.search(rb"STORAGE \d+ (\d+)", b" ".join(
            x for part in data for x in (part if isinstance(part, list) else [part])
            if isinstance(x, bytes)))
        return int(found.group(1)) // 1024 if found else None

    def cloud_user(self, uid: str) -> dict | None:
        r = self.http.get(f"https://{self.cfg.address('apps')}/ocs/v2.php/cloud/users/{uid}",
                          params={"format": "json"},
                          headers={"Host": "cloud.demo.coop", "OCS-APIRequest": "true"},
                          auth=("admin", self.cfg.secret("cloud_admin")), timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()["ocs"]["data"]

    def _token(self, **data: str) -> requests.Response:
        return self.http.post(
            f"https://{self.cfg.address('dir')}:8443/realms/{REALM}/protocol/openid-connect/token",
            data={"client_id": TEST_CLIENT,
                  "client_secret": self.cfg.secret(f"oidc_{TEST_CLIENT}"), **data}, timeout=60)

    def refresh_token(self, uid: str, password: str) -> str:
        answer = self._token(grant_type="password", username=uid, password=password,
                             scope="openid").json()
        if "refresh_token" not in answer:
            raise SystemExit(f"Keycloak gave {uid} no token: {answer}")
        return answer["refresh_token"]

    def refused(self, token: str) -> bool:
        return self._token(grant_type="refresh_token", refresh_token=token).status_code == 400


class Probe(threading.Thread):
    """Polls `check` from t0 until it holds: the effect seen in the service itself."""

    def __init__(self, what: str, check: Callable[[], object], t0: float,
                 timeout: float) -> None:
        super().__init__(daemon=True)
        self.what, self.check, self.t0, self.timeout = what, check, t0, timeout
        self.latency: float | None = None

    def run(self) -> None:
        while time.monotonic() - self.t0 < self.timeout:
            try:
                if self.check():
                    self.latency = time.monotonic() - self.t0
                    return
            except (imaplib.IMAP4.error, OSError, requests.RequestException, ValueError,
                    KeyError):
                pass
            time.sleep(PROBE_EVERY)


def session_cut(session: imaplib.IMAP4) -> Callable[[], bool]:
    def cut() -> bool:
        try:
            session.noop()
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
            return True
        return False
    return cut


# -- the bench ---------------------------------------------------------------------------------
@dataclass
class Phase:
    kind: str
    mode: str
    latencies: dict[str, float] = field(default_factory=dict)
    records: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    written: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, cfg: LabConfig, config: Config, journal: JournalWatch,
                 status_dir: Path, timeout: float) -> None:
        self.cfg = cfg
        self.config = config
        self.journal = journal
        self.status_dir = status_dir
        self.timeout = timeout
        self.services = Services(cfg)
        self.conn = connect(config.directory)
        self.people = config.directory.people_dn
        self.passwords: dict[str, str] = {}
        self.created: list[str] = []

    def dn(self, uid: str) -> str:
        return f"uid={uid},{self.people}"

    # the writes: one LDAP operation each, as coopctl's service account
    def add(self, uid: str) -> None:
        language = ("en", "fr", "nl")[len(self.created) % 3]
        member = Member(uid=uid, given_name="Bench", family_name=f"Watch {uid}",
                        mail=f"{uid}@demo.coop", plan=PLAN, services=sorted(SERVICES),
                        mail_quota=MAIL_QUOTA[0], cloud_quota=CLOUD_QUOTA[0], language=language)
        attributes = {k: v for k, v in member.attributes(self.config.directory.plans_dn).items()
                      if v is not None}
        attributes["uid"] = uid
        if uid in self.passwords:  # hashed by the server (ppolicy's olcPPolicyHashCleartext)
            attributes["userPassword"] = self.passwords[uid]
        if not self.conn.add(self.dn(uid), ["inetOrgPerson", "coopMember"], attributes):
            raise SystemExit(f"adding {uid} failed: {self.conn.result}")
        self.created.append(uid)

    def modify(self, uid: str, values: dict[str, list[Any]]) -> None:
        changes = {k: [(ldap3.MODIFY_REPLACE, v)] for k, v in values.items()}
        if not self.conn.modify(self.dn(uid), changes):
            raise SystemExit(f"modifying {uid} failed: {self.conn.result}")

    def quota(self, uid: str) -> None:
        self.modify(uid, {"coopMailQuota": [MAIL_QUOTA[1]], "coopCloudQuota": [CLOUD_QUOTA[1]],
                          "coopQuotaOverride": ["cloud", "mail"]})

    def suspend(self, uid: str) -> None:
        self.modify(uid, {"coopMemberStatus": ["suspended"],
                          "coopStatusChanged": [ldap_time(datetime.now(UTC))]})

    # the sample's probes
    def prepare(self, kind: str, uid: str) -> dict[str, Any]:
        """What a sampled member's probes need before the write (open sessions)."""
        if kind != "suspension":
            return {}
        password = self.passwords[uid]
        session = self.services.imap(uid, password)
        session.select("INBOX")
        return {"imap": session, "token": self.services.refresh_token(uid, password)}

    def probes(self, kind: str, uid: str, t0: float, ready: dict[str, Any]) -> list[Probe]:
        s, password = self.services, self.passwords[uid]
        if kind == "new member":
            checks: dict[str, Callable[[], object]] = {
                "welcome mail in the IMAP inbox": lambda: s.inbox_has_mail(uid, password),
                "cloud account (OCS)": lambda: s.cloud_user(uid)}
        elif kind == "quota change":
            checks = {
                "IMAP quota (GETQUOTAROOT)":
                    lambda: s.imap_quota_mb(uid, password) == MAIL_QUOTA[1],
                "cloud quota (OCS)": lambda: (s.cloud_user(uid) or {}).get("quota", {})
                .get("quota") == CLOUD_QUOTA[1] * 1024**2}
        else:
            checks = {
                "open IMAP session cut": session_cut(ready["imap"]),
                "Keycloak refresh token refused": lambda: s.refused(ready["token"]),
                "cloud account disabled (OCS)":
                    lambda: (s.cloud_user(uid) or {}).get("enabled") is False}
        probes = [Probe(what, check, t0, self.timeout) for what, check in checks.items()]
        for probe in probes:
            probe.start()
        return probes

    def idle(self) -> None:
        """Until the watcher has no batch in hand (its status file, rewritten per batch)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            status = watch_status.read(self.status_dir) or {}
            if status.get("state") == "streaming" and not status.get("pending"):
                return
            time.sleep(POLL)

    def wait(self, phase: Phase, uids: list[str], written: dict[str, float],
             timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(uids)
        with self.journal.changed:
            while pending and time.monotonic() < deadline:
                for uid in list(pending):
                    at, error = self.journal.effect(uid, phase.kind)
                    if at is not None:
                        phase.latencies[uid] = at - written[uid]
                        pending.discard(uid)
                    elif error is not None:
                        phase.failed[uid] = error
                        pending.discard(uid)
                if pending:
                    self.journal.changed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
        phase.missing += sorted(pending)
        for uid in uids:
            for service, action in EFFECTS[phase.kind]:
                seen = self.journal.seen.get((uid, service, action))
                if seen and seen[1] == "ok":
                    phase.records.setdefault(f"{service}/{action}", []).append(
                        seen[0] - written[uid])

    def phase(self, kind: str, mode: str, uids: list[str]) -> Phase:
        phase = Phase(kind, mode)
        write = {"new member": self.add, "quota change": self.quota,
                 "suspension": self.suspend}[kind]
        sampled = [uid for uid in uids if uid in self.passwords]
        self.idle()
        ready = {uid: self.prepare(kind, uid) for uid in sampled} if mode == "burst" else {}
        written: dict[str, float] = {}
        phase.started = time.monotonic()
        for uid in uids:
            if mode == "one by one" and uid in self.passwords:
                ready[uid] = self.prepare(kind, uid)
            write(uid)
            written[uid] = time.monotonic()
            phase.load.append(os.getloadavg()[0])
            if uid in self.passwords:
                phase.probes += self.probes(kind, uid, written[uid], ready[uid])
            if mode == "one by one":
                self.wait(phase, [uid], written, self.timeout)
                for probe in phase.probes:
                    probe.join()
                self.idle()
        if mode == "burst":
            self.wait(phase, uids, written, max(600.0, 3.0 * len(uids)))
            for probe in phase.probes:
                probe.join()
            self.idle()
        phase.ended = time.monotonic()
        phase.written = written
        for session in (r.get("imap") for r in ready.values()):
            if session is not None:
                with contextlib.suppress(imaplib.IMAP4.error, OSError):
                    session.logout()
        return phase

    def cleanup(self, config_path: Path) -> str:
        """Depart the bench's members 40 days ago, purge them with one sync, delete them."""
        if not self.created:
            return "no member created"
        left = ldap_time(datetime.now(UTC) - timedelta(days=40))
        for uid in self.created:
            self.modify(uid, {"coopMemberStatus": ["departed"], "coopDepartureDate": [left],
                              "coopStatusChanged": [left]})
        started = time.monotonic()
        run = subprocess.run([COOPCTL, "--config", str(config_path), "sync", "--yes", "--force",
                              "--json"], capture_output=True, text=True, check=False,
                             timeout=3600)
        seconds = time.monotonic() - started
        try:
            summary = json.loads(run.stdout).get("summary", {})
        except ValueError:
            summary = {"output": run.stdout[-500:], "errors": run.stderr[-500:]}
        failed = summary.get("failed") or []
        if run.returncode != 0 or failed:
            return (f"the purge sync exited {run.returncode} after {seconds:.0f} s "
                    f"({len(failed)} failed: {str(failed)[:300]}); the members are left "
                    f"in the directory ({self.created[0]}...)")
        # a fresh connection: the directory ends one left idle through a long purge
        with contextlib.suppress(ldap3.core.exceptions.LDAPException):
            self.conn.unbind()
        self.conn = connect(self.config.directory)
        for uid in self.created:
            self.conn.delete(self.dn(uid))
        return (f"{len(self.created)} members departed, purged from every service by one "
                f"sync ({seconds:.0f} s) and deleted from the directory")


def start_watcher(config_path: Path, work: Path, window: str) -> tuple[subprocess.Popen,
                                                                       WatcherLog]:
    process = subprocess.Popen(
        [COOPCTL, "--config", str(config_path), "watch", "--full-sync-every", "0",
         "--heartbeat", "2s", "--batch-window", window],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    log = WatcherLog(process, work / "watch.log")
    log.start()
    return process, log


def report(args: argparse.Namespace, phases: list[Phase], log: WatcherLog,
           loads: dict[str, tuple[float, float, float]], journal: JournalWatch) -> None:
    every = [x for p in phases for x in p.load]
    print(f"\n`coopctl watch` on lab {args.lab}, end to end: the LDAP write returned -> the "
          f"effect (journal records, polled every {POLL * 1000:.0f} ms); {args.count} changes "
          f"of each kind, one by one and in a burst; batch window {args.window}; plan {PLAN} "
          f"({', '.join(SERVICES)})")
    print(f"load average (1/5/15 min) at the start {'/'.join(f'{x:.1f}' for x in loads['start'])}"
          f", at the end {'/'.join(f'{x:.1f}' for x in loads['end'])}; 1-min load at the "
          f"writes: mean {statistics.mean(every) if every else 0:.1f}, "
          f"max {max(every, default=0):.1f} ({os.cpu_count()} CPUs)")
    print(f"\n  {'path':<14}{'mode':<12}{'n':>5}{'p50':>9}{'p95':>9}{'max':>9}  "
          f"{'target p95':<13}{'LSC p50/p95/max (polling alone)':<33}load")
    for p in phases:
        if not p.latencies:
            print(f"  {p.kind:<14}{p.mode:<12}{0:>5}  no effect recorded")
            continue
        q = percentiles(list(p.latencies.values()))
        verdict = "met" if q["p95"] < TARGETS[p.kind] else "MISSED"
        print(f"  {p.kind:<14}{p.mode:<12}{len(p.latencies):>5}{q['p50']:>8.2f}s"
              f"{q['p95']:>8.2f}s{q['max']:>8.2f}s  {TARGETS[p.kind]:>4.0f} s {verdict:<6} "
              f"{LSC:<33}{statistics.mean(p.load):.1f}")
    print("\n  effect = the latest of: "
          + "; ".join(f"{k}: {' + '.join(f'{s}/{a}' for s, a in v)}"
                      for k, v in EFFECTS.items()))
    problems = [(p, uid, why) for p in phases for uid, why in p.failed.items()] + \
        [(p, uid, "no effect within the timeout") for p in phases for uid in p.missing]
    for p, uid, why in problems[:20]:
        print(f"  FAILED {p.kind}, {p.mode}: {uid}: {why}")
    if problems:
        print(f"  {len(problems)} change(s) failed or timed out (not in the figures)")
    print("\nper journal record (p50 / p95 / max from the write):")
    for p in phases:
        for (uid, service, action), seen in journal.seen.items():
            if action.endswith("(follow-up)") and uid in p.written and seen[1] == "ok" and (
                    (service, action.split(" ")[0]) in EFFECTS[p.kind]):
                p.records.setdefault(f"{service}/{action}", []).append(seen[0] - p.written[uid])
        print(f"  {p.kind + ', ' + p.mode + ':':<26} " + "; ".join(
            f"{what} {fmt(values)}" for what, values in sorted(p.records.items())))
    print(f"\nin the services themselves, one member in {args.sample_every} (probed every "
          f"{PROBE_EVERY:.1f} s; p50 / max from the write, n):")
    for p in phases:
        found: dict[str, list[float]] = {}
        lost: dict[str, int] = {}
        for probe in p.probes:
            if probe.latency is None:
                lost[probe.what] = lost.get(probe.what, 0) + 1
            else:
                found.setdefault(probe.what, []).append(probe.latency)
        parts = []
        for what in sorted({*found, *lost}):
            values = found.get(what, [])
            shown = f"{statistics.median(values):.2f} / {max(values):.2f} s, {len(values)}" \
                if values else "never seen"
            parts.append(f"{what} {shown}" + (f" ({lost[what]} not seen)" if what in lost
                                               else ""))
        print(f"  {p.kind + ', ' + p.mode + ':':<26} " + "; ".join(parts))
    print("\nthe watcher's batches (its log; seconds: p50 / max, steps: mean):")
    for p in phases:
        batches = log.batches(p.started, p.ended + 0.2)  # the last line, read late
        if not batches:
            print(f"  {p.kind + ', ' + p.mode + ':':<26} none logged")
            continue
        seconds = [b["seconds"] for b in batches]
        steps: dict[str, list[float]] = {}
        for b in batches:
            for k, v in b["timing"].items():
                steps.setdefault(k, []).append(v)
        order = [k for k in ("read", "plan", "apply") if k in steps]
        services = sorted(k for k in steps if k not in order)
        print(f"  {p.kind + ', ' + p.mode + ':':<26} {len(batches)} batches, "
              f"{statistics.mean(b['members'] for b in batches):.1f} member(s) each, "
              f"{statistics.median(seconds):.2f} / {max(seconds):.2f} s; "
              + ", ".join(f"{k} {statistics.mean(steps[k]):.2f}" for k in order)
              + (" (" + ", ".join(f"{k} {statistics.mean(steps[k]):.2f}" for k in services)
                 + ")" if services else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", required=True, help="a deployed lab (coopctl lab up --name)")
    parser.add_argument("--count", type=int, default=200, help="changes of each kind and mode")
    parser.add_argument("--sample-every", type=int, default=20,
                        help="check the effect in the services for every Nth member")
    parser.add_argument("--window", default="250ms", help="the watcher's --batch-window")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds to wait for one change's effect, one by one")
    parser.add_argument("--keep", action="store_true",
                        help="leave the bench's members in the directory and the services")
    args = parser.parse_args(argv)
    cfg = LabConfig.load(default_state_dir(args.lab))
    if cfg is None:
        raise SystemExit(f"no lab {args.lab!r}: run `coopctl lab up --name {args.lab}` first")
    work = cfg.state_dir / "bench-watch"
    shutil.rmtree(work, ignore_errors=True)  # a fresh journal and watcher state each run
    work.mkdir()
    config_path = write_coopctl_config(cfg, work / "coopctl.yaml")
    data = yaml.safe_load(config_path.read_text())
    # 2 x COUNT suspensions on purpose: keep the sync's destructive guard out of the way
    data["sync"].update({"state_dir": str(work / "state"), "max_destructive_share": 1.0})
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    plans = subprocess.run([COOPCTL, "--config", str(config_path), "plan", "list", "--json"],
                           capture_output=True, text=True, check=True).stdout
    if PLAN not in {p["name"] for p in json.loads(plans)}:
        subprocess.run([COOPCTL, "--config", str(config_path), "plan", "add", PLAN,
                        "--mail-quota", "1 GB", "--cloud-quota", "5 GB", "--price", "3",
                        *[x for s in SERVICES for x in ("--service", s)]],
                       check=True, capture_output=True)
    config = load(config_path)
    loads = {"start": os.getloadavg()}
    journal = JournalWatch(config.sync.journal)  # type: ignore[union-attr]
    journal.start()
    process, log = start_watcher(config_path, work, args.window)
    status_dir = Path(config.sync.state_dir) / "watch"  # type: ignore[union-attr]
    started = time.monotonic()
    while (watch_status.read(status_dir) or {}).get("state") != "streaming":
        if process.poll() is not None or time.monotonic() - started > 900:
            raise SystemExit("the watcher did not start:\n"
                             + "\n".join(line for _, line in log.lines[-30:]))
        time.sleep(0.2)
    print(f"watcher streaming after {time.monotonic() - started:.1f} s (first start: a full "
          f"sync of the lab's directory); log: {work / 'watch.log'}", flush=True)
    bench = Bench(cfg, config, journal, status_dir, args.timeout)
    run = secrets.token_hex(2)
    groups = {mode: [f"wb{run}{'ab'[i]}{n:04d}" for n in range(args.count)]
              for i, mode in enumerate(MODES)}
    for uids in groups.values():
        for n in range(0, len(uids), max(1, args.sample_every)):
            bench.passwords[uids[n]] = secrets.token_urlsafe(18)
    phases: list[Phase] = []
    try:
        for kind in KINDS:
            for mode in MODES:
                phase = bench.phase(kind, mode, groups[mode])
                phases.append(phase)
                values = list(phase.latencies.values())
                print(f"  {kind}, {mode}: {fmt(values)} (p50 / p95 / max, n={len(values)}, "
                      f"{phase.ended - phase.started:.0f} s)", flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=150)
        except subprocess.TimeoutExpired:
            process.kill()
        journal.halt.set()
        loads["end"] = os.getloadavg()
        if phases:
            report(args, phases, log, loads, journal)
        if args.keep:
            print(f"\nleft in the lab: {len(bench.created)} members {PLAN} "
                  f"(wb{run}a..., wb{run}b...)")
        else:
            print(f"\ncleanup: {bench.cleanup(config_path)}")
        with contextlib.suppress(ldap3.core.exceptions.LDAPException):
            bench.conn.unbind()


if __name__ == "__main__":
    main()
