"""The README's demo, run against the lab: it provisions the sample coop and finds no drift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COOPCTL = str(Path(sys.executable).with_name("coopctl"))


@pytest.fixture(scope="module")
def demo_output(lab) -> str:
    result = subprocess.run([COOPCTL, "demo", "--no-deploy"], capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_demo_imports_then_converges(demo_output: str) -> None:
    assert "Dry run:" in demo_output
    # the third import of the same file finds nothing to do
    assert "No changes: the directory already says so." in demo_output


def test_demo_audit_sees_the_directory_in_the_services(demo_output: str) -> None:
    assert "drift: 0 finding(s)" in demo_output, demo_output[-3000:]
    matrix = demo_output.split("Who can log in where", 1)[1]
    ines = next(line for line in matrix.splitlines() if line.startswith("ines.benali"))
    assert ines.split()[1:4] == ["suspended", "no", "no"]
    zoe = next(line for line in matrix.splitlines() if line.startswith("zoe.oneill"))
    assert zoe.split()[1:4] == ["active", "yes", "yes"]
    muller = next(line for line in matrix.splitlines() if line.startswith("backerei.muller"))
    assert muller.split()[1:4] == ["active", "yes", "no"]  # mail only: no single sign-on
    assert "pads: Etherpad's API answers coopctl" in demo_output


def test_demo_provisions_through_sync_and_archives_a_departure(demo_output: str) -> None:
    """The plan is shown, applied, the leaver's data archived and verified, then nothing left."""
    assert "Plan: " in demo_output and "welcome" in demo_output
    listing = demo_output.split("departure archive ", 1)[1]
    assert "(verified:" in listing.splitlines()[0]
    assert "MANIFEST.json" not in listing.splitlines()[0]
    assert "mail/mailbox.tar" in listing and "cloud/files.tar" in listing
    last_sync = demo_output.rsplit("$ coopctl sync", 1)[1]
    assert "No changes: every service matches the directory." in last_sync


def test_demo_members_are_in_the_lab_directory(coopctl_config: Path) -> None:
    out = subprocess.run([COOPCTL, "--config", str(coopctl_config), "member", "list", "--json",
                          "--status", "suspended"], capture_output=True, text=True, check=True)
    assert "ines.benali" in [m["uid"] for m in json.loads(out.stdout)]
