"""Static checks as tests: ruff on the Python, yamllint and ansible-lint on the playbooks.

They run the real tools; a finding fails the test with the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(ROOT / ".cache"),
                               "ANSIBLE_HOME": str(ROOT / ".cache" / "ansible"),
                               "NO_COLOR": "1"})


def test_ruff() -> None:
    result = run(str(BIN / "ruff"), "check", "provisioner", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint() -> None:
    result = run(str(BIN / "yamllint"), "-s", "playbooks", "inventories", ".yamllint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint() -> None:
    result = run(str(BIN / "ansible-lint"), "--offline", "playbooks/site.yml", "playbooks/roles")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
