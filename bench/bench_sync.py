"""Benchmark of `coopctl sync` on the lab, with Keycloak's own LDAP full sync as the anchor.

Run on a deployed lab (``coopctl lab up``); it adds bench members to the lab's directory
(plans ``bench`` and ``bench-b``, groups ``bench-1`` and ``bench-2``) and leaves them there.
Prints, for N members in the directory (default 10,000):

  full   the first sync of the N - BATCH members already in the directory into every service
  (b)    the first sync of BATCH (1,000) new members into every service
  (a)    a no-op sync (median of 3)
  (c)    a plan change for BATCH members (plan bench-b's quotas)
  (d)    a one-member sync (one quota changed, --member)
  (f)    reading the raw state: the directory search plus each service's bulk listing
  (e)    Keycloak's own LDAP full sync of the same directory (a second federation with import
         on, in a realm of its own, triggerFullSync), run twice: the first import, then again
         with nothing changed
  and the peak memory of each sync process, with the ratios a/e and a/f and the targets;
  for the full sync, where its time went per service (from the journal's timestamps, to the
  second): read and plan, then when each service journaled its first and last change; and for
  the full sync and (b), the CPU seconds each kind of process used (coopctl, the services on
  the lab's hosts) and how busy the machine was (bench/cpu_by_process.py).

    coopctl lab down --name bench; coopctl lab up --name bench --index 5   # a fresh lab
    .venv/bin/python bench/bench_sync.py --lab bench [--members 10000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cpu_by_process import CpuWatch  # noqa: E402
from provisioner.lab.config import LabConfig, default_state_dir  # noqa: E402
from provisioner.lab.inventory import write_coopctl_config  # noqa: E402

COOPCTL = str(Path(sys.executable).with_name("coopctl"))
SERVICES = ["mail", "cloud", "pads", "wiki", "sso"]
KEYCLOAK_BACKEND_PORT = 8080  # sso_backend_port: Keycloak's HTTP port, on the dir host's loopback
GIVEN = ["Anna", "Bram", "Chloé", "Daan", "Elif", "Femke", "Gilles", "Hanne", "Ines", "Joris",
         "Karin", "Lucas", "Mila", "Noah", "Olga", "Pieter", "Rania", "Sven", "Tess", "Yusuf"]
FAMILY = ["Peeters", "Janssens", "Maes", "Dubois", "Lambert", "Martin", "Claes", "Wouters",
          "Leroy", "Goossens", "Dupont", "Mertens", "Willems", "Simon", "Laurent", "Jacobs"]


def coopctl(config: Path, *args: str, check: bool = True) -> tuple[float, int, str]:
    """Run coopctl as a new process: (seconds, its own peak RSS in MB, stdout)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen([COOPCTL, "--config", str(config), *args], stdout=out,
                                stderr=err, text=True)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if check and proc.returncode != 0:
        raise SystemExit(f"coopctl {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{stdout[-2000:]}\n{stderr[-2000:]}")
    return seconds, int(usage.ru_maxrss / 1024), stdout


def write_csv(path: Path, start: int, count: int, plan: str, uid_prefix: str = "bench",
              number_prefix: str = "B") -> None:
    """Members start..start+count-1 in `plan`, groups bench-1/bench-2, three languages."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["member_number", "uid", "given_name", "family_name", "plan", "groups",
                    "language"])
        for i in range(start, start + count):
            given, family = GIVEN[i % len(GIVEN)], FAMILY[(i // len(GIVEN)) % len(FAMILY)]
            w.writerow([f"{number_prefix}-{i:06d}", f"{uid_prefix}{i:06d}", given, family, plan,
                        f"bench-{1 + i % 2}", ["fr", "nl", "en"][i % 3]])


def bench_config(lab: str, name: str) -> tuple[LabConfig, Path, Path]:
    """The lab, a fresh work directory `name` in its state dir, and a coopctl configuration
    whose sync state lives there: the journal's marks (welcome sent...) must describe these
    services, so a bench starts on a freshly deployed lab, with a fresh state."""
    cfg = LabConfig.load(default_state_dir(lab))
    if cfg is None:
        raise SystemExit(f"no lab {lab!r}: run `coopctl lab up` first")
    work = cfg.state_dir / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    config = write_coopctl_config(cfg, work / "coopctl.yaml")
    import yaml

    data = yaml.safe_load(config.read_text())
    data["sync"].update({"state_dir": str(work / "state"), "max_destructive_share": 0.5})
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg, work, config


def ensure_plans_and_groups(config: Path, plans: Sequence[str]) -> None:
    """The bench's plans (every service) and groups bench-1/bench-2, unless already there."""
    names = {p["name"] for p in json.loads(coopctl(config, "plan", "list", "--json")[2])}
    for plan in plans:
        if plan not in names:
            coopctl(config, "plan", "add", plan, "--cloud-quota", "5 GB", "--mail-quota", "1 GB",
                    "--price", "2.50", *[x for s in SERVICES for x in ("--service", s)])
    groups = {g["name"] for g in json.loads(coopctl(config, "group", "list", "--json")[2])}
    for group in ("bench-1", "bench-2"):
        if group not in groups:
            coopctl(config, "group", "add", group)


def sync(config: Path, *extra: str) -> tuple[float, int, dict]:
    seconds, rss, out = coopctl(config, "sync", "--yes", "--json", *extra, check=False)
    try:
        data = json.loads(out)
    except ValueError:
        raise SystemExit(f"sync printed no JSON:\n{out[-3000:]}") from None
    return seconds, rss, data


def changes(data: dict) -> int:
    return len(data.get("plan", {}).get("changes", []))


def service_breakdown(config: Path, started: datetime, ended: datetime) -> list[str]:
    """Where the last sync's time went, from its journal (opened read-only): the read and plan
    before the run's first record, then when each service's last change was journaled (the
    services apply in parallel, so the last one to finish bounds the sync), then the rest."""
    import sqlite3

    from provisioner.config import load

    db = sqlite3.connect(f"file:{load(config).sync.journal}?mode=ro", uri=True)
    try:
        run, run_started, run_finished = db.execute(
            "SELECT run, started, finished FROM runs ORDER BY started DESC, rowid DESC "
            "LIMIT 1").fetchone()
        rows = db.execute("SELECT service, action, count(*), min(at), max(at), "
                          "sum(result != 'ok') FROM journal WHERE run = ? "
                          "GROUP BY service, action", (run,)).fetchall()
    finally:
        db.close()
    start = datetime.fromisoformat(run_started)

    def at(text: str) -> float:
        return (datetime.fromisoformat(text) - start).total_seconds()

    lines = [f"  read + observe + plan before applying: {(start - started).total_seconds():.0f} s"]
    per: dict[str, list[tuple[str, int, float, float, int]]] = {}
    for service, action, count, first, last, failed in rows:
        per.setdefault(service, []).append((action, count, at(first), at(last), failed))
    for service, acts in sorted(per.items(), key=lambda kv: max(a[3] for a in kv[1])):
        what = ", ".join(f"{a} {n}" + (f" ({f} failed)" if f else "") for a, n, _, _, f in acts)
        lines.append(f"  {service:5} first change at +{min(a[2] for a in acts):.0f} s, last at "
                     f"+{max(a[3] for a in acts):.0f} s: {what}")
    if run_finished:
        tail = (ended - datetime.fromisoformat(run_finished)).total_seconds()
        lines.append(f"  run finished at +{at(run_finished):.0f} s; exit {tail:.0f} s later")
    return lines


def raw_read(config: Path) -> float:
    """The directory search plus every service's bulk listing, in this process."""
    from provisioner.config import load
    from provisioner.sync import Sync

    engine = Sync(load(config))
    started = time.monotonic()
    engine.read()
    for connector in engine.connectors().values():
        connector.observe()
    return time.monotonic() - started


@contextlib.contextmanager
def keycloak_tunnel(cfg: LabConfig) -> Iterator[str]:
    """Keycloak's own HTTP port on the dir host, through an SSH tunnel: a first import of
    10,000 members can take longer than the 60 s nginx in front of it waits for an answer
    (a 504 cut the anchor on a loaded lab twice), and the anchor is Keycloak's time, not the
    proxy's."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tunnel = subprocess.Popen(["ssh", "-F", str(cfg.ssh_config), "-o", "BatchMode=yes",
                               "-o", "ExitOnForwardFailure=yes", "-N",
                               "-L", f"127.0.0.1:{port}:127.0.0.1:{KEYCLOAK_BACKEND_PORT}", "dir"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if tunnel.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the SSH tunnel to Keycloak did not open") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        tunnel.terminate()
        tunnel.wait()


def keycloak_anchor(cfg: LabConfig) -> tuple[float, float, int]:
    """Keycloak's full sync of the directory into a realm of its own, twice."""
    with keycloak_tunnel(cfg) as url:
        return _keycloak_anchor(cfg, url)


def _keycloak_anchor(cfg: LabConfig, url: str) -> tuple[float, float, int]:
    from keycloak import KeycloakAdmin

    admin = KeycloakAdmin(server_url=url, username="admin", password=cfg.secret("keycloak_admin"),
                          realm_name="master", timeout=900)
    demo = KeycloakAdmin(server_url=url, username="admin", password=cfg.secret("keycloak_admin"),
                         realm_name="demo", user_realm_name="master", timeout=900)
    source = next(c for c in demo.get_components({"type":
                                                  "org.keycloak.storage.UserStorageProvider"}))
    realm = "bench-anchor"
    if any(r["realm"] == realm for r in admin.get_realms()):
        admin.delete_realm(realm)
    admin.create_realm({"realm": realm, "enabled": True})
    bench = KeycloakAdmin(server_url=url, username="admin",
                          password=cfg.secret("keycloak_admin"), realm_name=realm,
                          user_realm_name="master", timeout=900)
    config = {k: v for k, v in source["config"].items()}
    config["importEnabled"] = ["true"]
    config["bindCredential"] = [cfg.secret("ldap_sso")]
    config["customUserSearchFilter"] = ["(objectClass=coopMember)"]
    config["batchSizeForSync"] = ["1000"]
    realm_id = bench.get_realm(realm)["id"]
    bench.create_component({"name": "ldap-anchor", "providerId": "ldap",
                            "providerType": "org.keycloak.storage.UserStorageProvider",
                            "parentId": realm_id, "config": config})
    storage = next(c for c in bench.get_components({"type":
                                                    "org.keycloak.storage.UserStorageProvider"}))
    times = []
    for _ in range(2):
        started = time.monotonic()
        result = bench.sync_users(storage["id"], "triggerFullSync")
        times.append(time.monotonic() - started)
        print(f"  keycloak full sync: {times[-1]:.1f} s {result}", flush=True)
    users = bench.users_count()
    admin.delete_realm(realm)
    return times[0], times[1], users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--lab", default="lab")
    parser.add_argument("--skip-anchor", action="store_true")
    args = parser.parse_args()
    cfg, work, config = bench_config(args.lab, "bench-sync")
    ensure_plans_and_groups(config, ("bench", "bench-b"))
    base = args.members - args.batch
    write_csv(work / "base.csv", 0, base, "bench")
    write_csv(work / "batch.csv", base, args.batch, "bench-b")
    results: dict[str, tuple[float, int]] = {}

    seconds, rss, _ = coopctl(config, "member", "import", str(work / "base.csv"))
    print(f"imported {base} members in {seconds:.1f} s", flush=True)
    began = datetime.now(UTC)
    with CpuWatch() as full_cpu:
        seconds, rss, data = sync(config)
    results["full"] = (seconds, rss)
    print(f"first sync of {base} members: {seconds:.1f} s, {changes(data)} changes, "
          f"{rss} MB, summary {data.get('summary', {}).get('failed', [])[:3]}", flush=True)
    full_breakdown = [*service_breakdown(config, began, datetime.now(UTC)),
                      "  " + full_cpu.summary(per=base)]
    print("\n".join(full_breakdown), flush=True)
    coopctl(config, "member", "import", str(work / "batch.csv"))
    with CpuWatch() as batch_cpu:
        results["b"] = sync(config)[:2]
    print(f"(b) first sync of {args.batch} new members: {results['b'][0]:.1f} s\n  "
          + batch_cpu.summary(per=args.batch), flush=True)
    noop = []
    for _ in range(3):
        seconds, rss, data = sync(config)
        noop.append((seconds, rss, changes(data)))
    results["a"] = (statistics.median(s for s, _, _ in noop), max(r for _, r, _ in noop))
    print(f"(a) no-op sync: {[round(s, 1) for s, _, _ in noop]} s, "
          f"changes {[c for _, _, c in noop]}", flush=True)
    coopctl(config, "plan", "modify", "bench-b", "--cloud-quota", "10 GB", "--mail-quota",
            "2 GB")
    results["c"] = sync(config)[:2]
    print(f"(c) plan change for {args.batch} members: {results['c'][0]:.1f} s", flush=True)
    coopctl(config, "member", "modify", "bench000007", "--mail-quota", "3 GB",
            "--cloud-quota", "7 GB")
    results["d"] = sync(config, "--member", "bench000007")[:2]
    print(f"(d) one-member sync: {results['d'][0]:.1f} s", flush=True)
    f = raw_read(config)
    print(f"(f) raw state read: {f:.1f} s", flush=True)
    e1 = e2 = users = None
    if not args.skip_anchor:
        from keycloak.exceptions import KeycloakError

        try:
            e1, e2, users = keycloak_anchor(cfg)
        except KeycloakError as exc:  # e.g. nginx's 504 when a loaded host imports slowly
            print(f"(e) Keycloak's full sync failed: {str(exc).splitlines()[0][:120]}; "
                  f"realm bench-anchor may be left (deleted on the next run)", flush=True)

    print("\n| what | measured | target |\n| --- | --- | --- |")
    print(f"| first sync of {base} members | {results['full'][0]:.1f} s | faster than "
          f"Keycloak's first import ({e1 and f'{e1:.1f} s'}) |")
    print(f"| (b) first sync of {args.batch} new members | {results['b'][0]:.1f} s | < 120 s |")
    print(f"| (a) no-op sync, {args.members} members | {results['a'][0]:.1f} s | < 3 x (f) and "
          f"< (e2) |")
    print(f"| (c) plan change for {args.batch} members | {results['c'][0]:.1f} s | |")
    print(f"| (d) one-member sync | {results['d'][0]:.1f} s | < 5 s |")
    print(f"| (f) raw state read | {f:.1f} s | |")
    if e1 is not None:
        print(f"| (e) Keycloak full sync, first import ({users} users) | {e1:.1f} s | anchor |")
        print(f"| (e2) Keycloak full sync, nothing changed | {e2:.1f} s | anchor |")
        print(f"| ratio a/e2 | {results['a'][0] / e2:.2f} | < 1 |")
        print(f"| ratio first sync / e | {results['full'][0] / e1:.1f} | < 1 |")
    print(f"| ratio a/f | {results['a'][0] / f:.2f} | < 3 |")
    print(f"| peak memory of a sync process | {max(r for _, r in results.values())} MB "
          "| < 300 MB |")
    print(f"\nfirst sync of {base} members, per service (from the journal):")
    print("\n".join(full_breakdown))


if __name__ == "__main__":
    main()
