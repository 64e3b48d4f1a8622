"""The hosts themselves: security updates applied, disk enough for the quotas handed out."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.audit.probes import NOT_APPLICABLE

testinfra_hosts = ["ansible://all"]


@pytest.mark.severity("high")
def test_no_pending_security_updates(host: Any) -> None:
    """no Debian security update is waiting (apt-get's simulation, reads only)"""
    out = host.run("apt-get -s -o Debug::NoLocking=1 upgrade")
    if out.rc != 0:
        pytest.fail(f"apt-get -s upgrade failed: {out.stderr.strip()[:200]}")
    pending = sorted({line.split()[1] for line in out.stdout.splitlines()
                      if line.startswith("Inst ") and "security" in line.lower()})
    assert not pending, f"{len(pending)} security update(s) pending: {', '.join(pending[:10])}"


@pytest.mark.severity("medium")
def test_disk_room_for_mail_quotas(host: Any, hostvars: dict[str, Any]) -> None:
    """the mail store's filesystem has less than 90 % used"""
    if "mail_servers" not in hostvars.get("group_names", []):
        pytest.skip(f"{NOT_APPLICABLE}: not a mail host")
    store = hostvars.get("mail_vmail_dir", "/var/vmail")
    out = host.check_output(f"df --output=pcent {store} | tail -1")
    used = int(out.strip().rstrip("%"))
    assert used < 90, f"{store} is {used}% full"
