"""Benchmark: `coopctl member import` and `member list` at 10,000, 50,000 and 100,000 members.

For each size, a fresh private slapd from Debian's package (durability on: fsync on every
commit, as in production) gets the same generated CSV; then it times, each as a new process
as a sysadmin runs it: the import, the same import again (nothing to change), `member list`
and `member list --json`. It prints wall time, members/s, the CPU time of coopctl and of
slapd, and each command's peak memory (its own maximum resident set). Asserts nothing.

Targets (issue 8): import of 100,000 in under 100 s and at least 1,000 members/s at every
size; re-import and `member list` proportional to the size; peak memory under 300 MB.

    .venv/bin/python bench/bench_directory.py [--sizes 10000,50000,100000]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.cli import cli  # noqa: E402
from provisioner.cli.demo import write_local_config  # noqa: E402
from provisioner.localslapd import LocalDirectory  # noqa: E402

COOPCTL = Path(sys.executable).with_name("coopctl")
GIVEN = ["Stéphanie", "Jan", "Zoë", "Amadou", "Chloé", "Pieter", "Maëlle", "Jürgen", "Inès",
         "Lotte", "José María", "Søren", "Łukasz", "Anne-Marie", "Noël", "Fatou", "Wim",
         "Brigitte", "Hélène", "Koen", "Aïcha", "Björn", "Emma", "Lucas", "Léa", "Nathan"]
FAMILY = ["Dupré-Noël", "van der Berg", "O'Neill", "Diallo", "Lefèvre", "De Smet", "Le Gall",
          "Weiß", "Benali", "Janssens", "García Márquez", "Kierkegaard", "Żółć", "D'Arcy",
          "Peeters", "Martin", "Bernard", "Dubois", "Maes", "Claes", "Nguyễn", "Müller",
          "de la Fontaine", "Van Damme", "Rousseau", "Mertens", "Willems", "Fontaine"]


def generate_csv(count: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    lines = ["member_number,given_name,family_name,plan,groups,mail_quota"]
    for n in range(count):
        plan = rnd.choices(["small", "family", "pro"], weights=[70, 25, 5])[0]
        groups = " ".join(sorted(rnd.sample(["board", "wiki-editors", "volunteers",
                                             "staff", "newsletter"], rnd.randint(0, 2))))
        quota = "3 GB" if rnd.random() < 0.03 else ""
        lines.append(f"M-{n:06d},{rnd.choice(GIVEN)},{rnd.choice(FAMILY)},{plan},{groups},"
                     f"{quota}")
    return "\n".join(lines) + "\n"


def run(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    if result.exit_code != 0:
        raise SystemExit(f"coopctl {' '.join(args)} failed: {result.output} {result.exception!r}")
    return result.output


@dataclass
class Measure:
    wall: float
    cpu: float        # coopctl's user + system time
    slapd_cpu: float  # the server's, over the same span
    peak_mb: float    # coopctl's own maximum resident set (VmHWM)
    first_line: str


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: LocalDirectory, config: Path, *args: str) -> Measure:
    """One coopctl command as a new process: its wall time, CPU and peak memory."""
    slapd_pid = int(server.pidfile.read_text())
    slapd_before = cpu_of(slapd_pid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen([str(COOPCTL), "--config", str(config), *args],
                                   stdout=out, stderr=err)
        # The peak is the process's own high-water mark (VmHWM), read until it exits:
        # ru_maxrss would also count the benchmark's memory, inherited at the fork.
        peak_kb = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, high_water_kb(process.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f"coopctl {' '.join(args)} failed: {err.read().decode()[-2000:]}")
        first = out.readline().decode().strip()
    return Measure(wall, usage.ru_utime + usage.ru_stime, cpu_of(slapd_pid) - slapd_before,
                   peak_kb / 1024, first)


def high_water_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def bench(size: int, workdir: Path) -> dict[str, Measure]:
    server = LocalDirectory(workdir / "slapd", durable=True)
    server.build()
    server.start()
    try:
        config = write_local_config(workdir, server)
        run(config, "init")
        for plan, quota in (("small", "5 GB"), ("family", "50 GB"), ("pro", "200 GB")):
            run(config, "plan", "add", plan, "--cloud-quota", quota, "--mail-quota", "1 GB",
                "--service", "mail", "--service", "cloud", "--service", "sso")
        for group in ("board", "wiki-editors", "volunteers", "staff", "newsletter"):
            run(config, "group", "add", group)
        csv_path = workdir / "members.csv"
        csv_path.write_text(generate_csv(size), encoding="utf-8")
        results = {
            "import": measure(server, config, "member", "import", str(csv_path)),
            "re-import (no change)": measure(server, config, "member", "import", str(csv_path)),
            "member list": measure(server, config, "member", "list"),
            "member list --json": measure(server, config, "member", "list", "--json"),
        }
        count = int(run(config, "member", "list").strip().splitlines()[-1].split()[0])
        if count != size:
            raise SystemExit(f"{count} members in the directory, {size} expected")
        return results
    finally:
        server.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,50000,100000",
                        help="comma-separated numbers of members")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'members':>8}  {'command':<22} {'wall s':>7} {'members/s':>10} {'coopctl cpu':>11} "
          f"{'slapd cpu':>9} {'peak MB':>8}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results = bench(size, Path(tmp))
        for name, m in results.items():
            rate = f"{size / m.wall:,.0f}" if name == "import" else ""
            print(f"{size:>8}  {name:<22} {m.wall:>7.2f} {rate:>10} {m.cpu:>10.2f}s "
                  f"{m.slapd_cpu:>8.2f}s {m.peak_mb:>8.0f}", flush=True)
        reimport = results["re-import (no change)"].first_line
        print(f"{'':>8}  (re-import said: {reimport})", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 CPUs; wall times suffer "
          "from other work on the machine, CPU times much less)")


if __name__ == "__main__":
    main()
