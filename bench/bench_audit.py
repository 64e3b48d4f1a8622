"""Benchmark of `coopctl audit` on a lab whose services hold the bench's members.

Run it after bench/bench_sync.py on the same lab (which leaves 10,000 members synced into every
service). Prints the wall time and peak memory of:

  drift   `coopctl audit --no-checks` (directory read, every service's bulk listing, plan)
  full    `coopctl audit` (drift plus the infrastructure checks on every host)
  html    the same as `full`, rendered as the HTML report

beside the targets (a full audit of 10,000 members under 60 s and 300 MB).

    .venv/bin/python bench/bench_audit.py --lab bench
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_sync import coopctl  # noqa: E402
from provisioner.lab.config import LabConfig, default_state_dir  # noqa: E402
from provisioner.lab.inventory import write_coopctl_config  # noqa: E402

TARGET_SECONDS = 60
TARGET_MB = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="bench", help="name of a deployed, synced lab")
    args = parser.parse_args()
    cfg = LabConfig.load(default_state_dir(args.lab))
    if cfg is None:
        raise SystemExit(f"no lab named {args.lab}: run bench/bench_sync.py on it first")
    work = cfg.state_dir / "bench-sync"
    config = work / "coopctl.yaml"
    if not config.exists():
        config = write_coopctl_config(cfg, Path(tempfile.mkdtemp()) / "coopctl.yaml")
    seconds, mb, out = coopctl(config, "audit", "--no-checks", "--format", "json",
                               "--fail-on", "none")
    data = json.loads(out)
    members = data["summary"]["members"]
    print(f"members in the directory: {members:,}; findings: {len(data['findings'])}")
    print(f"drift   (directory + every service's listing + plan)  {seconds:6.1f} s  {mb:4d} MB")
    seconds, mb, out = coopctl(config, "audit", "--format", "json", "--fail-on", "none")
    checks = json.loads(out)["summary"]["checks"]
    print(f"full    (drift + infrastructure checks {checks})  {seconds:6.1f} s  {mb:4d} MB   "
          f"target < {TARGET_SECONDS} s, < {TARGET_MB} MB: "
          f"{'met' if seconds < TARGET_SECONDS and mb < TARGET_MB else 'MISSED'}")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.html"
        seconds, mb, _ = coopctl(config, "audit", "--format", "html", "--output", str(report),
                                 "--fail-on", "none")
        print(f"html    (full audit rendered, {report.stat().st_size / 1e6:.1f} MB file)  "
              f"{seconds:6.1f} s  {mb:4d} MB")


if __name__ == "__main__":
    main()
