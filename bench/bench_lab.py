"""Benchmark of the local lab: base image build, up, deploy, no-op deploy, RAM, down.

Runs on a lab of its own (default name ``labbench``, index 8, state in a temporary directory)
so it never disturbs the default lab. Prints figures and asserts nothing.

    sudo .venv/bin/python bench/bench_lab.py [--cold-image] [--index 8] [--hosts dir,mail,apps]
        [--suite trixie|bookworm] [--noop-runs 3]

``--cold-image`` builds the base image into a temporary cache first to time a cold build (the
lab then uses that fresh image); otherwise the cached image is used and reported as cached.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner.ansible import deploy_playbook
from provisioner.lab import image
from provisioner.lab.config import SUITES, LabConfig, default_suite
from provisioner.lab.lab import Lab


def quiet(_: str) -> None:
    """Progress lines are not figures: keep the bench output to the results."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-image", action="store_true", help="time a cold base build")
    parser.add_argument("--index", type=int, default=8)
    parser.add_argument("--hosts", default="dir,mail,apps")
    parser.add_argument("--suite", choices=sorted(SUITES), default=default_suite(),
                        help="Debian release of the hosts (default: $COOPCTL_LAB_SUITE or trixie)")
    parser.add_argument("--no-deploy", action="store_true", help="only up/RAM/down")
    parser.add_argument("--verbose", action="store_true", help="show deploy progress")
    parser.add_argument("--noop-runs", type=int, default=3, help="no-op deploys to time")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="coopctl-bench-"))
    cfg = LabConfig(
        name="labbench", index=args.index, hosts=tuple(args.hosts.split(",")), state_dir=state,
        suite=args.suite,
    )
    print(f"Debian release:                {args.suite} ({SUITES[args.suite]})")
    lab = Lab(cfg)
    echo = print if args.verbose else quiet
    cold_cache = None
    try:
        if args.cold_image:
            cold_cache = Path(tempfile.mkdtemp(prefix="coopctl-image-", dir="/var/cache/coopctl"))
            _, built = image.ensure_base_image(quiet, cache_dir=cold_cache, suite=args.suite)
            print(f"base image build (cold):       {built:7.1f} s")
            image.IMAGE_CACHE_DIR = cold_cache  # type: ignore[misc]
        else:
            _, built = image.ensure_base_image(quiet, suite=args.suite)
            print(
                "base image build:              "
                + (f"{built:7.1f} s (was cold)" if built else "   cached")
            )

        t0 = time.monotonic()
        report = lab.up(log=quiet)
        t_up = time.monotonic() - t0
        print(
            f"lab up ({len(cfg.hosts)} hosts, to sshd):      {t_up:7.1f} s "
            f"(boot to ssh {report.boot_to_ssh:.1f} s)"
        )
        idle = sum(h.memory_bytes() or 0 for h in lab.hosts)
        print(f"RAM of the idle lab:           {idle / 2**20:7.0f} MiB")

        if not args.no_deploy:
            first = deploy_playbook(cfg.inventory, lab_dir=state, echo=echo)
            print(
                f"first deploy of site.yml:      {first.seconds:7.1f} s "
                f"(changed {first.changed}, failed {first.failed}, status {first.status})"
            )
            print(f"lab up to all deployed:        {time.monotonic() - t0:7.1f} s")
            noop = []
            for run in range(1, max(args.noop_runs, 1) + 1):
                again = deploy_playbook(cfg.inventory, lab_dir=state, echo=echo)
                noop.append(again.seconds)
                print(
                    f"no-op deploy #{run}:               {again.seconds:7.1f} s "
                    f"(changed {again.changed}, failed {again.failed})"
                )
            print(f"no-op deploy, median:          {statistics.median(noop):7.1f} s")
            per_host = {h.name: (h.memory_bytes() or 0) / 2**20 for h in lab.hosts}
            print(
                f"RAM of the deployed lab:       {sum(per_host.values()):7.0f} MiB ("
                + ", ".join(f"{k} {v:.0f}" for k, v in per_host.items())
                + ")"
            )
    finally:
        t1 = time.monotonic()
        lab.down(log=quiet, purge=True)
        print(f"lab down:                      {time.monotonic() - t1:7.1f} s")
        if cold_cache is not None:
            shutil.rmtree(cold_cache, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
