"""Run the infrastructure checks (testinfra tests in `checks/`) against the inventory's hosts.

The checks are ordinary pytest files so that a sysadmin can run them alone with
`pytest --ansible-inventory=INVENTORY provisioner/audit/checks`; the audit runs them the same way
in a child process (its own pytest session, no configuration picked up from the current
directory) and reads each test's outcome from the small JSON file their conftest writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from provisioner.audit.model import CheckResult, Severity
from provisioner.config import Config
from provisioner.errors import CoopError

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
TIMEOUT = 600


def run_checks(config: Config, timeout: float = TIMEOUT) -> list[CheckResult]:
    if config.inventory is None:
        return []
    with tempfile.TemporaryDirectory(prefix="coopctl-checks-") as tmp:
        report = Path(tmp) / "checks.json"
        # testinfra's Ansible backend runs `ansible-inventory`, which sits beside our Python.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "COOPCTL_CHECKS_REPORT": str(report),
               "PYTHONDONTWRITEBYTECODE": "1", "PATH": path}
        if config.source is not None:
            env["COOPCTL_CONFIG"] = str(config.source)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "-c", os.devnull, "--rootdir", str(CHECKS_DIR),
                f"--ansible-inventory={config.inventory}", str(CHECKS_DIR)]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise CoopError(f"the infrastructure checks took more than {timeout:.0f} s",
                            "check that every host of the inventory answers over SSH, or "
                            "run the audit with --no-checks") from None
        # pytest exits 0 (all passed), 1 (some failed) or 5 (none collected); anything else
        # (a collection error, an interrupted session) means the checks did not all run.
        if done.returncode not in (0, 1, 5) or not report.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise CoopError("the infrastructure checks could not run: " + " / ".join(tail),
                            f"run them by hand to see why: pytest --ansible-inventory="
                            f"{config.inventory} {CHECKS_DIR}")
        rows = json.loads(report.read_text(encoding="utf-8"))
    return [CheckResult(name=r["doc"] or r["name"], host=r["host"].removeprefix("ansible://"),
                        outcome=r["outcome"],
                        message=r["message"], severity=_severity(r["severity"]))
            for r in rows]


def _severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValueError:
        return Severity.HIGH
