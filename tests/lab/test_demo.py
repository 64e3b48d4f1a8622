"""The README's demo, run against the lab: it provisions the sample coop and finds no drift,
and a second run changes nothing at all.

The demo uses the lab the suite uses: it reads ``COOPCTL_LAB_NAME`` / ``COOPCTL_LAB_INDEX``
as tests/lab/conftest.py does.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.resources import demo_members_csv

COOPCTL = str(Path(sys.executable).with_name("coopctl"))
with demo_members_csv().open(encoding="utf-8") as _sample:
    SAMPLE_NUMBERS = {row["member_number"] for row in csv.DictReader(_sample)}


def run_demo() -> str:
    result = subprocess.run([COOPCTL, "demo", "--no-deploy"], capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def sample_members_in_directory(config: Path) -> set[str]:
    """The member numbers of the demo's sample members the lab's directory holds."""
    out = subprocess.run([COOPCTL, "--config", str(config), "member", "list", "--json"],
                         capture_output=True, text=True, check=True, timeout=120)
    return {m["member_number"] for m in json.loads(out.stdout)} & SAMPLE_NUMBERS


@pytest.fixture(scope="module")
def demo_ran_before(lab, coopctl_config: Path) -> bool:
    """Whether this lab had the demo already (a developer's lab, or README's first command
    run on this machine before the tests): then the first run below is a re-run."""
    return bool(sample_members_in_directory(coopctl_config))


@pytest.fixture(scope="module")
def demo_runs(lab, demo_ran_before: bool) -> tuple[str, str]:
    """The demo run twice in a row on the same lab: (first output, second output)."""
    first = run_demo()
    return first, run_demo()


@pytest.fixture(scope="module")
def demo_output(demo_runs: tuple[str, str]) -> str:
    return demo_runs[0]


def commands(output: str) -> list[tuple[str, str]]:
    """(command line, its output) for each `$ coopctl ...` the demo echoed."""
    blocks = output.split("$ coopctl ")[1:]
    return [(block.split("\n", 1)[0], block.split("\n", 1)[1] if "\n" in block else "")
            for block in blocks]


def test_demo_imports_then_converges(demo_output: str, demo_ran_before: bool,
                                     coopctl_config: Path) -> None:
    imports = [out for command, out in commands(demo_output) if command.startswith("member import")]
    assert len(imports) == 3
    if demo_ran_before:
        assert all("No changes: the directory already says so." in out for out in imports)
    else:
        # the dry run plans every sample member and writes nothing; the import then makes them
        assert f"Dry run: {len(SAMPLE_NUMBERS)} to create," in imports[0]
        assert f"Applied: {len(SAMPLE_NUMBERS)} created," in imports[1]
    assert "No changes: the directory already says so." in imports[2]
    assert sample_members_in_directory(coopctl_config) == SAMPLE_NUMBERS


def test_demo_audit_sees_the_directory_in_the_services(demo_output: str) -> None:
    assert "drift: 0 finding(s)" in demo_output, demo_output[-3000:]
    matrix = demo_output.split("Who can log in where", 1)[1]
    ines = next(line for line in matrix.splitlines() if line.startswith("ines.benali"))
    assert ines.split()[1:4] == ["suspended", "no", "no"]
    # Imported with a password coopctl gave out: the SSO takes it (to have her choose her own),
    # mail refuses it until then, and the audit says so rather than calling it drift.
    zoe = next(line for line in matrix.splitlines() if line.startswith("zoe.oneill"))
    assert zoe.split()[1:4] == ["active", "no", "yes"]
    waiting = next(line for line in matrix.splitlines() if "still have the password" in line)
    assert "zoe.oneill" in waiting and "backerei.muller" not in waiting
    # Mail only, no single sign-on: no page to change the password on, so it keeps working.
    muller = next(line for line in matrix.splitlines() if line.startswith("backerei.muller"))
    assert muller.split()[1:4] == ["active", "yes", "no"]
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


def test_the_second_run_of_the_demo_changes_nothing(demo_runs: tuple[str, str]) -> None:
    """The README says so: no import, no modify, no status change, and the sync plans 0."""
    second = demo_runs[1]
    seen = set()
    for command, output in commands(second):
        verb = " ".join(command.split()[:2])
        seen.add(verb)
        if verb == "member import":
            assert "No changes: the directory already says so." in output, (command, output)
        elif verb in ("member modify", "member suspend", "member depart"):
            assert "No changes" in output, (command, output)
        elif command.startswith("sync"):
            assert "No changes: every service matches the directory." in output, (command, output)
        elif verb in ("plan add", "group add", "member add"):
            pytest.fail(f"the second run created something: {command}")
    assert {"member import", "member modify", "member suspend"} <= seen
    assert sum(1 for c, _ in commands(second) if c.startswith("sync")) >= 2
    assert "Applied:" not in second and "+ member" not in second and "~ member" not in second
    # jan.vanderberg keeps the 2 GB mailbox the first run gave him by hand
    jan = second.split("$ coopctl member show jan.vanderberg", 1)[1]
    assert "mail quota:  2 GB (set by hand)" in jan


def test_demo_ends_with_coopctl_audit_and_its_html_report(demo_output: str) -> None:
    audit = demo_output.split("coopctl audit: drift, access", 1)[1]
    assert "journal:" in audit and "hash chain verified" in audit
    assert "infrastructure checks:" in audit
    report = Path(audit.split("the board's report (one offline HTML file): ", 1)[1].split()[0])
    html = report.read_text(encoding="utf-8")
    assert 'id="verdict"' in html and "Audit of demo" in html
    assert report.stat().st_mode & 0o077 == 0
