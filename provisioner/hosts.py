"""Reaching the coop's hosts from the machine that runs coopctl.

Changes go through Ansible (``playbook``: one run of a sync playbook for a whole batch).
Reads that a sync or an audit repeats often (listing the mail homes, reading DokuWiki's ACL
file) go through one plain SSH command (``read``), which costs a fraction of a second where an
Ansible run costs seconds; so does ending live sessions (``signal``: ``doveadm kick``), which
is urgent and stores nothing on the host. All take the hosts and their connection settings
from the same Ansible inventory, so a coop describes its servers once.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from provisioner.errors import CoopError


class HostError(CoopError):
    """A host of the inventory could not be reached or the command failed."""


def parse_results(text: str) -> dict[str, tuple[int, str]]:
    """``key<TAB>exit<TAB>text`` lines, as the commands run through `signal` answer per
    member (the mail kick script, coop-cloud-end-sessions), by key."""
    results: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        key, _, rest = line.partition("\t")
        code, _, output = rest.partition("\t")
        if key and code.strip().lstrip("-").isdigit():
            results[key] = (int(code), output.strip())
    return results


@dataclass
class InventoryHosts:
    """The hosts of one Ansible inventory (implements services.base.HostAccess)."""

    inventory: Path
    state_dir: Path
    echo: Callable[[str], None] | None = None
    _connections: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def _inventory(self) -> Any:
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.vars.manager import VariableManager

        if not self.inventory.exists():
            raise HostError(f"no Ansible inventory at {self.inventory}",
                            "set `inventory` in the configuration to the coop's inventory")
        loader = DataLoader()
        manager = InventoryManager(loader=loader, sources=[str(self.inventory)])
        return manager, VariableManager(loader=loader, inventory=manager)

    def _ssh_argv(self, group: str) -> list[str]:
        with self._lock:  # services read their hosts from several threads
            return self._ssh_argv_locked(group)

    def _ssh_argv_locked(self, group: str) -> list[str]:
        if group in self._connections:
            return self._connections[group]
        manager, variables = self._inventory
        hosts = manager.get_hosts(pattern=group)
        if not hosts:
            raise HostError(f"the inventory {self.inventory} has no host in group {group!r}",
                            f"add the host that runs this service to [{group}]")
        host = hosts[0]
        hv = variables.get_vars(host=host)
        # Only plain values are used: templated ones ({{ }}) would need Ansible's templar.
        address = str(hv.get("ansible_host", host.name))
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if hv.get("ansible_port"):
            argv += ["-p", str(hv["ansible_port"])]
        if hv.get("ansible_ssh_private_key_file"):
            argv += ["-i", str(hv["ansible_ssh_private_key_file"])]
        if hv.get("ansible_control_path_dir"):
            argv += ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                     "-o", f"ControlPath={hv['ansible_control_path_dir']}/%C"]
        argv += shlex.split(str(hv.get("ansible_ssh_common_args", "")))
        user = hv.get("ansible_user")
        argv.append(f"{user}@{address}" if user else address)
        self._connections[group] = argv
        return argv

    def read(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Run a read-only command on the first host of `group`; return its stdout.

        As root: over SSH as root, or through `sudo -n` when the inventory logs in as another
        user (doveadm and DokuWiki's ACL file need root; Ansible would `become` the same way).
        """
        return self._ssh_run(group, argv, timeout)

    def signal(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Run a command that acts now but stores nothing on the host (``doveadm kick``).

        Ending a suspended member's live sessions must take well under the watcher's 5 s
        target, where one Ansible run costs several seconds; it changes no file, so there is
        nothing for Ansible's idempotence and change reporting to add. Same channel as `read`.
        """
        return self._ssh_run(group, argv, timeout)

    def _ssh_run(self, group: str, argv: Sequence[str], timeout: float) -> str:
        ssh = self._ssh_argv(group)
        if "@" in ssh[-1] and not ssh[-1].startswith("root@"):
            argv = ["sudo", "-n", "--", *argv]
        command = " ".join(shlex.quote(a) for a in argv)
        try:
            done = subprocess.run([*ssh, command], capture_output=True, text=True,
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise HostError(f"{argv[0]} on {ssh[-1]} did not answer within {timeout:.0f} s",
                            "check that the host is up") from None
        if done.returncode == 255:
            raise HostError(f"cannot reach {ssh[-1]} over SSH: {done.stderr.strip()[-200:]}",
                            "check that the host is up and the inventory's SSH settings")
        if done.returncode != 0:
            raise HostError(f"{argv[0]} failed on {ssh[-1]} (exit {done.returncode}): "
                            f"{done.stderr.strip()[-300:]}")
        return done.stdout

    def playbook(self, name: str, extravars: Mapping[str, Any]) -> dict[str, Any]:
        """Run playbooks/NAME once; {'ok', 'error', 'failed_items', 'changed'}."""
        from provisioner.ansible import run_sync_playbook

        result = run_sync_playbook(self.inventory, state_dir=self.state_dir, playbook=name,
                                   extravars=dict(extravars), echo=self.echo)
        return {"ok": result.ok, "error": result.error, "failed_items": result.failed_items,
                "changed": result.recap.changed}
