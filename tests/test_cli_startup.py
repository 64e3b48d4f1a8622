"""The command line loads each command group only when it runs.

`coopctl member list` is typed many times a day; it must not pay for importing the lab,
Ansible's runner or the demo. Every command must still be listed and reachable.
"""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from provisioner.cli import LAZY_COMMANDS, cli

PROBE = """
import sys
from click.testing import CliRunner
from provisioner.cli import cli
result = CliRunner().invoke(cli, ["member", "list", "--help"])
assert result.exit_code == 0, result.output
print(" ".join(sorted(m for m in sys.modules if m.startswith(("provisioner", "ansible")))))
"""


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for name in [*LAZY_COMMANDS, "init"]:
        assert f"\n  {name} " in result.output, name


def test_every_lazy_command_resolves() -> None:
    for name in LAZY_COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_member_commands_do_not_load_the_lab_or_ansible() -> None:
    modules = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "provisioner.cli.member" in modules
    for heavy in ("provisioner.lab.cli", "provisioner.cli.demo", "ansible_runner", "ansible"):
        assert heavy not in modules, heavy
