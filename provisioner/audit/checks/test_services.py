"""Each service runs under systemd, enabled at boot, on the hosts of its inventory group."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.audit.probes import NOT_APPLICABLE

testinfra_hosts = ["ansible://all"]

# inventory group -> systemd units that must run there
UNITS = {
    "ldap_servers": ["slapd"],
    "sso_servers": ["keycloak"],
    "mail_servers": ["postfix", "dovecot"],
    "wiki_servers": ["nginx"],
    "pads_servers": ["nginx", "etherpad"],
    "cloud_servers": ["nginx"],
}


def _units(hostvars: dict[str, Any]) -> list[str]:
    groups = hostvars.get("group_names", [])
    return sorted({u for g in groups for u in UNITS.get(g, [])})


@pytest.mark.severity("high")
def test_services_running_and_enabled(host: Any, hostvars: dict[str, Any]) -> None:
    """every service of the host's groups is running and enabled"""
    wrong = []
    for unit in _units(hostvars):
        service = host.service(unit)
        if not service.is_running:
            wrong.append(f"{unit} is not running")
        elif not service.is_enabled:
            wrong.append(f"{unit} is not enabled at boot")
    assert not wrong, "; ".join(wrong)


@pytest.mark.severity("medium")
def test_no_failed_units(host: Any) -> None:
    """no systemd unit is in the failed state"""
    out = host.check_output("systemctl list-units --state=failed --no-legend --plain")
    failed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert not failed, f"failed units: {', '.join(failed)}"


@pytest.mark.severity("high")
def test_keycloak_management_port_local(host: Any, hostvars: dict[str, Any]) -> None:
    """Keycloak's management port (9000) answers on loopback only"""
    if "sso_servers" not in hostvars.get("group_names", []):
        pytest.skip(f"{NOT_APPLICABLE}: not an SSO host")
    public = [s for s in host.socket.get_listening_sockets()
              if s.endswith(":9000")
              # Java's dual-stack sockets show 127.0.0.1 as ::ffff:127.0.0.1.
              and not s.startswith(("tcp://127.", "tcp://[::1]", "tcp://::1:",
                                    "tcp://::ffff:127."))]
    assert not public, f"port 9000 listens on {', '.join(public)}"
