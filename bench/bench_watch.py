"""Benchmark of `coopctl watch`, directory side, on a private slapd (Debian's, with syncprov).

What is measured here is the watcher's own part of each latency path: from the LDAP write
(a suspension, a new member, a quota change) to the moment the watcher hands the member to the
sync (`Sink.apply`). The sink is `RecordingSink`: no service is touched, so the connectors'
time (doveadm kick, Keycloak logout, Nextcloud's OCS calls, the welcome mail) is NOT in these
figures; the end-to-end paths of issue 11 (suspension -> every session ended, new member ->
mailbox + welcome + cloud, quota -> visible in IMAP and cloud) need the lab: `--lab NAME` runs
bench_watch_lab.py (a real `coopctl watch` and the lab's services; a separate script because
nothing of this setup is shared). Also measured: catch-up after 1,000 changes made while the
watcher was stopped (with its cookie), the full refresh a cookie-less restart costs, and the
watcher's peak memory at 10,000 members (a separate process, so the figure is its own).

    .venv/bin/python bench/bench_watch.py [--members 10000] [--count 200] [--window 250ms]
    .venv/bin/python bench/bench_watch.py --lab NAME [...]   # end to end, bench_watch_lab.py

Anchor: LSC's asynchronous mode polls every 5 s (or follows syncrepl without a cookie) and
restarts with a full refresh: a change waits 0-5 s for the next poll (p50 2.5 s, p95 4.75 s,
max 5 s), and every restart re-reads all N entries.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ldap3
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provisioner.cli import cli  # noqa: E402
from provisioner.cli.demo import write_local_config  # noqa: E402
from provisioner.cli.watch import parse_duration  # noqa: E402
from provisioner.config import load  # noqa: E402
from provisioner.localslapd import LocalDirectory  # noqa: E402
from provisioner.watch.sink import RecordingSink  # noqa: E402
from provisioner.watch.watcher import Watcher, WatchSettings  # noqa: E402

SUFFIX = "dc=bench,dc=coop"
PEOPLE = f"ou=people,{SUFFIX}"
TARGETS = {"suspension": 5.0, "new member": 30.0, "quota change": 10.0}  # p95, end to end
LSC = {"p50": 2.5, "p95": 4.75, "max": 5.0}

CHILD = """
import resource, sys, time
from pathlib import Path
from provisioner.config import load
from provisioner.watch.sink import RecordingSink
from provisioner.watch.watcher import Watcher, WatchSettings
watcher = Watcher(load(Path(sys.argv[1])), RecordingSink(), WatchSettings(full_sync_every=0))
watcher.open()
started = time.monotonic()
status = watcher.run(once=True)
watcher.close()
print(time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      status["refresh"]["kind"], status["refresh"]["entries"], status["refresh"]["present"])
"""


class Bench:
    def __init__(self, workdir: Path, members: int) -> None:
        self.slapd = LocalDirectory(workdir / "slapd", suffix=SUFFIX, durable=True)
        self.slapd.build()
        self.slapd.start()
        self.config_path = write_local_config(workdir, self.slapd)
        data = yaml.safe_load(self.config_path.read_text())
        data["coop"] = "bench"
        # the bench suspends 400 of N members on purpose: keep the deletion guard out of it
        data["sync"]["max_destructive_share"] = 1
        self.config_path.write_text(yaml.safe_dump(data))
        run = CliRunner().invoke
        assert run(cli, ["--config", str(self.config_path), "init"]).exit_code == 0
        assert run(cli, ["--config", str(self.config_path), "plan", "add", "small",
                         "--mail-quota", "1 GB", "--cloud-quota", "5 GB",
                         "--service", "mail"]).exit_code == 0
        self.config = load(self.config_path)
        self.admin = ldap3.Connection(
            ldap3.Server(self.slapd.ldapi_uri), authentication=ldap3.SASL,
            sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="", auto_bind=True)
        started = time.monotonic()
        self.load(workdir / "members.ldif", members)
        print(f"setup: {members} members loaded (slapadd) in {time.monotonic() - started:.1f} s")

    def load(self, ldif: Path, members: int) -> None:
        """The members offline with slapadd -w (contextCSN updated, so syncprov serves them
        as if added online): seconds where 10,000 durable adds take minutes."""
        ldif.write_text("".join(
            f"dn: uid=m{n:05d},{PEOPLE}\nobjectClass: inetOrgPerson\nobjectClass: coopMember\n"
            f"uid: m{n:05d}\ncn: m{n:05d}\nsn: m{n:05d}\nmail: m{n:05d}@bench.coop\n"
            f"coopMemberStatus: active\ncoopPlan: cn=small,ou=plans,{SUFFIX}\n\n"
            for n in range(members)))
        self.admin.unbind()
        self.slapd.stop()
        subprocess.run(["/usr/sbin/slapadd", "-q", "-w", "-n1", "-F",
                        str(self.slapd.workdir / "slapd.d"), "-l", str(ldif)], check=True)
        self.slapd.start()
        self.admin = ldap3.Connection(
            ldap3.Server(self.slapd.ldapi_uri), authentication=ldap3.SASL,
            sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="", auto_bind=True)

    def add(self, uid: str) -> None:
        ok = self.admin.add(f"uid={uid},{PEOPLE}", ["inetOrgPerson", "coopMember"], {
            "cn": uid, "sn": uid, "mail": f"{uid}@bench.coop", "coopMemberStatus": "active",
            "coopPlan": f"cn=small,ou=plans,{SUFFIX}"})
        assert ok, self.admin.result

    def modify(self, uid: str, **values: str | int) -> None:
        ok = self.admin.modify(f"uid={uid},{PEOPLE}",
                               {k: [(ldap3.MODIFY_REPLACE, [v])] for k, v in values.items()})
        assert ok, self.admin.result


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def measure(bench: Bench, settings: WatchSettings, count: int, first: int
            ) -> dict[str, dict[str, list[float]]]:
    """Latency write -> Sink.apply for each kind of change, one by one and in a burst."""
    applied: dict[str, float] = {}
    event = threading.Condition()

    def on_apply(uids: set[str]) -> None:
        now = time.monotonic()
        with event:
            for uid in uids:
                applied.setdefault(uid, now)
            event.notify_all()

    sink = RecordingSink(on_apply=on_apply)
    watcher = Watcher(bench.config, sink, settings)
    watcher.open()
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    while (watcher.status.get("state") != "streaming"):
        time.sleep(0.05)
    kinds: dict[str, Callable[[str], None]] = {
        "suspension": lambda uid: bench.modify(uid, coopMemberStatus="suspended"),
        "new member": bench.add,
        "quota change": lambda uid: bench.modify(uid, coopMailQuota=2048),
    }
    results: dict[str, dict[str, list[float]]] = {}
    offset = first
    try:
        for kind, change in kinds.items():
            results[kind] = {}
            for mode in ("one by one", "burst"):
                uids = [f"new{offset + n:05d}" if kind == "new member" else
                        f"m{offset + n:05d}" for n in range(count)]
                offset += count
                written: dict[str, float] = {}
                for uid in uids:
                    written[uid] = time.monotonic()
                    change(uid)
                    if mode == "one by one":
                        with event:
                            event.wait_for(lambda u=uid: u in applied, timeout=60)
                with event:
                    event.wait_for(lambda us=uids: all(u in applied for u in us), timeout=120)
                results[kind][mode] = [applied[u] - written[u] for u in uids if u in applied]
    finally:
        watcher.stop()
        thread.join(timeout=30)
        watcher.close()
    return results


def child_run(config: Path) -> tuple[float, float, str, int, int]:
    run = subprocess.run([sys.executable, "-c", CHILD, str(config)], capture_output=True,
                         text=True, check=False, cwd=ROOT)
    if run.returncode != 0:
        raise SystemExit(f"the watcher failed:\n{run.stderr}")
    out = run.stdout.split()
    return float(out[0]), int(out[1]) / 1024, out[2], int(out[3]), int(out[4])


def main() -> None:
    if any(a == "--lab" or a.startswith("--lab=") for a in sys.argv[1:]):
        # the end-to-end paths on a deployed lab: another setup entirely (a real watcher
        # process, the services, members to clean up), in a script of its own
        from bench_watch_lab import main as lab_main

        lab_main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10000)
    parser.add_argument("--count", type=int, default=200, help="changes of each kind and mode")
    parser.add_argument("--window", default="250ms", help="the watcher's --batch-window")
    args = parser.parse_args()
    window = parse_duration("--window", args.window)
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        bench = Bench(Path(tmp), args.members)
        try:
            # 1. the first start: no cookie, a full refresh of every entry (what LSC does at
            # every restart), in its own process for its memory
            seconds, rss, kind, entries, _present = child_run(bench.config_path)
            print(f"\nfirst start (no cookie, {kind} refresh of {entries} entries): "
                  f"{seconds:.2f} s, peak RSS {rss:.0f} MiB")
            # 2. latencies
            settings = WatchSettings(batch_window=window, full_sync_every=0)
            results = measure(bench, settings, args.count, first=0)
            print(f"\nlatency, LDAP write -> member handed to the sync "
                  f"(batch window {window * 1000:.0f} ms, {args.count} changes each):")
            print(f"  {'path':<14}{'mode':<12}{'p50':>8}{'p95':>8}{'max':>8}   "
                  f"{'target p95 (end to end)':<24}{'LSC p50/p95/max':<16}")
            for kind, modes in results.items():
                for mode, values in modes.items():
                    p = percentiles(values)
                    print(f"  {kind:<14}{mode:<12}{p['p50']:>7.3f}s{p['p95']:>7.3f}s"
                          f"{p['max']:>7.3f}s   {TARGETS[kind]:>5.0f} s (lab only)       "
                          f"{LSC['p50']}/{LSC['p95']}/{LSC['max']} s")
            # 3. catch-up after 1,000 changes made while stopped
            for n in range(1000):
                bench.modify(f"m{n % min(5000, args.members):05d}", displayName=f"catch-up {n}")
            seconds, rss, kind, entries, present = child_run(bench.config_path)
            print(f"\ncatch-up after 1,000 changes while stopped ({kind} refresh, "
                  f"{entries} entries with attributes, {present} unchanged ones as bare "
                  f"entryUUIDs): {seconds:.2f} s, peak RSS {rss:.0f} MiB"
                  f"\n  LSC: no cookie, every restart re-reads all {args.members} entries "
                  f"(here the first start above)")
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"\nmemory at {args.members} members: the peak RSS of the first start "
                  f"(full refresh) above; this bench process {own:.0f} MiB")
            print("\nlab only (not measured here): suspension -> every live session ended; "
                  "new member -> mailbox, welcome mail and cloud account; quota change -> "
                  "visible in IMAP and cloud (the connectors' time on top of the figures above): "
                  "bench_watch.py --lab NAME")
        finally:
            bench.slapd.destroy()


if __name__ == "__main__":
    main()
