"""Benchmark: import 10,000 members through `coopctl member import`, then list them.

Runs against a private slapd from Debian's package with its durability left
on (fsync on every commit, as in production). Prints figures; asserts
nothing. Targets (issue 2): import >= 1,000 members/s, `member list` of
10,000 under 1 s, peak memory under 200 MB.

    .venv/bin/python bench/bench_directory.py [--members 10000]
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.cli import cli  # noqa: E402
from provisioner.cli.demo import write_local_config  # noqa: E402
from provisioner.localslapd import LocalDirectory  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
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
            csv_path.write_text(generate_csv(args.members), encoding="utf-8")

            start = time.perf_counter()
            with redirect_stdout(io.StringIO()):
                run(config, "member", "import", str(csv_path), "--json")
            imported = time.perf_counter() - start

            start = time.perf_counter()
            again = run(config, "member", "import", str(csv_path))
            reimport = time.perf_counter() - start

            start = time.perf_counter()
            listing = run(config, "member", "list")
            listed = time.perf_counter() - start
            count = int(listing.strip().splitlines()[-1].split()[0])

            start = time.perf_counter()
            run(config, "member", "list", "--json")
            listed_json = time.perf_counter() - start

            # The command as a sysadmin types it: a new process, imports included.
            # Median of five: one start-up alone is at the mercy of the machine's load.
            coopctl = Path(sys.executable).with_name("coopctl")
            process_runs = []
            for _ in range(5):
                start = time.perf_counter()
                subprocess.run([str(coopctl), "--config", str(config), "member", "list"],
                               check=True, stdout=subprocess.DEVNULL)
                process_runs.append(time.perf_counter() - start)
            listed_process = statistics.median(process_runs)
        finally:
            server.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"members imported:          {count}")
    print(f"import (one transaction):  {imported:.2f} s = {count / imported:,.0f} members/s "
          "(target >= 1,000/s, durability on)")
    print(f"re-import (no change):     {reimport:.2f} s ({again.strip().splitlines()[0]})")
    print(f"member list (in process):  {listed:.2f} s (target < 1 s)")
    print(f"member list --json:        {listed_json:.2f} s")
    print(f"`coopctl member list`:     {listed_process:.2f} s (a new process, start-up included; "
          f"median of 5, {min(process_runs):.2f}-{max(process_runs):.2f} s)")
    print(f"peak memory (coopctl):     {peak_mb:.0f} MB (target < 200 MB)")


if __name__ == "__main__":
    main()
