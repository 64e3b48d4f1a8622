"""The services' own CPU floor for a first sync, against Keycloak's first import.

Issue 7 asks for a first sync of every member into every service faster than Keycloak's own
LDAP full sync (its first import). bench_sync.py measures the whole sync; this bench asks what
the *services* cost by themselves, whatever coopctl does: it syncs N new members one service at
a time (``coopctl sync --service S``), watches every process's CPU (bench/cpu_by_process.py:
the lab's hosts are containers on this machine), and adds up what the services' own processes
used for the work the issue requires per member (a welcome mail delivered through Postfix and
Dovecot, an Etherpad author and personal group, the wiki's pages and ACLs, Keycloak's reads).

    floor = CPU-seconds of the services' processes / this machine's CPUs

is the shortest wall time any sync can take on this machine, even if coopctl cost nothing and
every service ran in parallel at full speed. Left out of the floor, so that it only ever
underestimates: coopctl, Ansible and SSH (coopctl's own transport), the kernel's threads, and
the Nextcloud contract double (not Nextcloud, whose per-request cost would only add).
Keycloak's first import of the same directory is measured in the same run
(bench_sync.keycloak_anchor) and the ratio printed.

Run on a deployed lab; its members (``floor100000``...) are added and left there:

    .venv/bin/python bench/bench_service_floor.py --lab bench [--members 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_sync import (  # noqa: E402
    bench_config,
    changes,
    coopctl,
    ensure_plans_and_groups,
    keycloak_anchor,
    sync,
    write_csv,
)
from bench.cpu_by_process import CpuWatch  # noqa: E402
from provisioner.lab.config import LabConfig  # noqa: E402

#: The services' own processes (bench/cpu_by_process.kind): the only ones the floor counts.
#: Not counted, so that the floor only ever underestimates: coopctl, Ansible and the Python
#: of its modules on the hosts, SSH, the kernel's threads, and the Nextcloud double.
SERVICE_KINDS = frozenset({"postfix", "dovecot", "etherpad", "keycloak", "slapd", "nginx",
                           "php", "postgres"})
#: First member number: far from bench_sync's (0...), so both can run on one lab.
START = 100_000
#: The order the services are synced in; the cloud (a double here) last.
ORDER = ["wiki", "sso", "mail", "pads", "cloud"]


def wait_for_empty_queue(cfg: LabConfig, limit: float = 1800) -> None:
    """Until Postfix's queue on the mail host is empty: every welcome mail delivered."""
    import subprocess

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        out = subprocess.run(["ssh", "-F", str(cfg.ssh_config), "-o", "BatchMode=yes", "mail",
                              "postqueue -p"], capture_output=True, text=True, check=False)
        if "Mail queue is empty" in out.stdout:
            return
        time.sleep(1)
    raise SystemExit("the mail host's queue did not drain in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--lab", default="lab")
    parser.add_argument("--skip-anchor", action="store_true")
    args = parser.parse_args()
    cfg, work, config = bench_config(args.lab, "bench-floor")
    ensure_plans_and_groups(config, ("bench",))
    # The members already in the lab (the lab's samples, an earlier bench's) are synced
    # first, so that each measured run below does only these N members' work.
    seconds, _, data = sync(config)
    print(f"(catch-up sync of the lab's other members: {seconds:.1f} s, {changes(data)} "
          "changes)", flush=True)
    write_csv(work / "members.csv", START, args.members, "bench", uid_prefix="floor",
              number_prefix="F")
    seconds = coopctl(config, "member", "import", str(work / "members.csv"))[0]
    print(f"imported {args.members} members in {seconds:.1f} s", flush=True)

    rows: list[tuple[str, float, int, float, str, float]] = []
    total_service = 0.0
    for service in ORDER:
        with CpuWatch() as watch:
            started = time.monotonic()
            _, _, data = sync(config, "--service", service)
            if service == "mail":  # the sync ends when Postfix accepted; delivery goes on
                wait_for_empty_queue(cfg)
            seconds = time.monotonic() - started
        by_kind = watch.seconds_by_kind()
        own = sum(sec for kind, sec in by_kind.items() if kind in SERVICE_KINDS)
        top = next((k for k in by_kind if k in SERVICE_KINDS), "-")
        if service != "cloud":
            total_service += own
        failed = data.get("summary", {}).get("failed", [])
        rows.append((service, seconds, changes(data), own, top, by_kind.get(top, 0.0)))
        print(f"{service}: {seconds:.1f} s, {changes(data)} changes"
              + (f", {len(failed)} failed" if failed else "")
              + f"; services' own CPU {own:.1f} s ("
              + ", ".join(f"{k} {v:.1f} s" for k, v in by_kind.items() if k in SERVICE_KINDS)
              + f")\n  {watch.summary(per=args.members)}", flush=True)
    cpus = os.cpu_count() or 1
    floor = total_service / cpus
    e1 = None
    if not args.skip_anchor:
        e1, e2, users = keycloak_anchor(cfg)
        print(f"(e) Keycloak's full sync of {users} users: first import {e1:.1f} s, "
              f"nothing changed {e2:.1f} s", flush=True)

    print("\n| service | sync alone | changes | services' own CPU | per member "
          "| busiest kind of process |")
    print("| --- | --- | --- | --- | --- | --- |")
    for service, seconds, count, own, top, top_seconds in rows:
        note = " (not in the floor: a double)" if service == "cloud" else ""
        print(f"| {service} | {seconds:.1f} s | {count} | {own:.1f} s{note} | "
              f"{own / args.members * 1000:.1f} ms | {top} {top_seconds:.1f} s |")
    print("(A single-process service, such as Etherpad's one Node.js process, cannot go faster "
          "than its own CPU time, however many CPUs its host has.)")
    print(f"\nservices' own CPU for {args.members} new members (cloud double left out): "
          f"{total_service:.1f} s on {cpus} CPUs -> floor {floor:.1f} s of wall time")
    if e1 is not None:
        print(f"Keycloak's first import of the same directory: {e1:.1f} s; "
              f"floor / Keycloak = {floor / e1:.2f} (a first sync can beat it only if < 1)")


if __name__ == "__main__":
    main()
